"""PCGrad, projecting conflicting gradients (Yu et al., "Gradient Surgery for
Multi-Task Learning", 2020), with the training domains as the tasks.

Per step:
1. per-domain gradients g_d of the whole model (D passes of B), flattened
   into one vector each;
2. for each domain i, h_i starts as g_i and meets every other domain j in a
   random order (argsort of D uniform draws of the step's key folded with
   i); when h_i . g_j < 0 (g_j the ORIGINAL gradient of domain j):

       h_i <- h_i - (h_i . g_j / |g_j|^2) g_j

3. the update is the SUM of the h_i (the paper's Algorithm 1 and the
   authors' TensorFlow code), one optimizer step; `reduction="mean"`
   divides it by D (the default of the popular PyTorch port), which makes
   PCGrad without conflicts exactly ERM's step.

"< 0" means more than rounding, as in CorGrad: h_i . g_j < -tie_tolerance
|h_i| |g_j|, with neither cancelled to rounding residue.

PCGrad is CorGrad's surgery with one chunk (the whole model), the random
order and no smoothing: `PCGrad()` takes the steps of
`CorGrad(granularity="model", projection="pcgrad", smoothing=False)` (the
same code, `kdg.algorithms.corgrad.surgery_step`). DomainBed has no PCGrad;
it has no hyperparameters of its own in a sweep (only the common ones).

Logs, as CorGrad: `modification_frequency` (the fraction of the D(D-1)
ordered domain pairs (i, j) projected), `modification_ratio` (sqrt(sum_i |g_i -
h_i|^2 / sum_i |g_i|^2): how much the projections removed) and the
cosines between the domains' gradients, `grad_cos_min` / `grad_cos_mean`.
"""

from kdg.algorithms.base import Algorithm, choice, number
from kdg.algorithms.corgrad import CorGrad, surgery_step


class PCGrad(Algorithm):
    name = "pcgrad"
    title = "PCGrad"
    search_space = {}  # none of its own in DomainBed-style sweeps
    needs_domain_pairs = True
    hparams = {
        "reduction": choice("sum", "mean"),
        "tie_tolerance": number(0, 1, high_open=True),
    }

    def __init__(self, reduction="sum", tie_tolerance=1e-5):
        """`reduction`: "sum" (the paper) or "mean" of the projected
        per-domain gradients; `tie_tolerance`: cosines within it of 0 are
        ties, not conflicts."""
        self.check_hparams(locals())
        self.reduction = reduction
        self.tie_tolerance = float(tie_tolerance)
        self._surgery = CorGrad(granularity="model", projection="pcgrad", smoothing=False,
                                tie_tolerance=self.tie_tolerance)

    def step(self, ctx, x, y):
        scale = 1.0 / y.shape[0] if self.reduction == "mean" else None
        return surgery_step(self._surgery, ctx, x, y, scale=scale)

    def get_config(self):
        return {"reduction": self.reduction, "tie_tolerance": self.tie_tolerance}
