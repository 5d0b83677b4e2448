"""GSAM, surrogate-gap guided sharpness-aware minimization (Zhuang et al.,
ICLR 2022), as the GGA repository runs it (the GSAM authors' optimizer).

Per step, on the concatenation of the D minibatches (ERM's loss):

1. g = grad L(w); e = rho * g / (|g| + 1e-12); g' = grad L(w + e);
2. the part of g orthogonal to g':
   cos = g.g' / (|g'| |g| + 1e-12),
   v = g - cos * |g| * g' / (|g'| + 1e-12);
3. one optimizer step with g' - alpha * v at w. Descending along -v raises
   L(w) relative to L(w + e): it shrinks the surrogate gap
   L(w + e) - L(w) without changing the SAM direction's loss to first order.

The second pass leaves BatchNorm's moving statistics as the first left them
(the authors' `disable_running_stats`). The logged `loss` is L(w) and
`sharpness` the surrogate gap L(w + e) - L(w).

rho: the GSAM paper decays rho with the learning rate (rho_t between
rho_min and rho_max); the GGA code's scheduler has rho_max = rho_min, a
constant rho, as here.
"""

from kdg.algorithms.base import Algorithm, number
from kdg.algorithms.sam import EPS, RHO_CHOICES, dot, global_norm, sharpness_passes


class GSAM(Algorithm):
    name = "gsam"
    title = "GSAM"
    hparams = {
        "rho": number(0),
        "alpha": number(0),  # 0: SAM's update
    }
    search_space = {
        "rho": {"choice": RHO_CHOICES},
        "alpha": {"choice": [0.01, 0.02, 0.05, 0.1]},
    }

    def __init__(self, rho=0.05, alpha=0.001):
        """`rho`: the radius of the ascent step; `alpha`: the weight of the
        surrogate-gap direction (GGA's defaults: 0.05 and 0.001)."""
        self.check_hparams(locals())
        self.rho = float(rho)
        self.alpha = float(alpha)

    def step(self, ctx, x, y):
        p = sharpness_passes(ctx, x, y, self.rho)
        g, g1 = p.grads0, p.grads1
        norm, norm1 = global_norm(g), global_norm(g1)
        cos = dot(g, g1) / (norm1 * norm + EPS)
        along = cos * norm / (norm1 + EPS)
        ctx.set_state(p.state_without_second_statistics())
        ctx.apply([b - self.alpha * (a - along * b) for a, b in zip(g, g1)])
        return {"loss": p.loss0, "sharpness": p.loss1 - p.loss0}, p.pred0

    def get_config(self):
        return {"rho": self.rho, "alpha": self.alpha}
