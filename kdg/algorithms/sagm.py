"""SAGM, sharpness-aware gradient matching (Wang et al., CVPR 2023), as the
SAGM authors' code (and the GGA repository, which uses it) runs it.

Per step, on the concatenation of the D minibatches (ERM's loss):

1. g = grad L(w);
2. the ascent step e = (rho / (|g| + 1e-12) - alpha) * g;
3. g' = grad L(w + e);
4. one optimizer step with (g + g') / 2 at w.

The paper writes the update as g + g' (the gradient of L(w) + L_p(w)); the
authors' code takes half of it (`p.grad += old_g / 2 - p.grad / 2`), as here:
with Adam the factor is immaterial, with SGD it halves the step.

The second pass leaves BatchNorm's moving statistics as the first left them
(the authors' `disable_running_stats`). The logged `loss` is L(w) and
`sharpness` L(w + e) - L(w).

rho: the GGA and SAGM codes pass a constant rho_t = 0.05 to the optimizer
(their scheduler's max and min are both 0.05), whatever the registry's
`rho`; kdg uses `rho` (default 0.05, the same).
"""

from kdg.algorithms.base import Algorithm, number
from kdg.algorithms.sam import RHO_CHOICES, sharpness_passes


class SAGM(Algorithm):
    name = "sagm"
    title = "SAGM"
    hparams = {
        "rho": number(0),
        "alpha": number(0),
    }
    search_space = {
        "rho": {"choice": RHO_CHOICES},
        "alpha": {"choice": [0.01, 0.02, 0.05, 0.1]},
    }

    def __init__(self, rho=0.05, alpha=0.001):
        """`rho`: the radius of the ascent step; `alpha`: how far the ascent
        point is moved back along g (GGA's and SAGM's defaults: 0.05, 0.001)."""
        self.check_hparams(locals())
        self.rho = float(rho)
        self.alpha = float(alpha)

    def step(self, ctx, x, y):
        p = sharpness_passes(ctx, x, y, self.rho, self.alpha)
        ctx.set_state(p.state_without_second_statistics())
        ctx.apply([0.5 * a + 0.5 * b for a, b in zip(p.grads0, p.grads1)])
        return {"loss": p.loss0, "sharpness": p.loss1 - p.loss0}, p.pred0

    def get_config(self):
        return {"rho": self.rho, "alpha": self.alpha}
