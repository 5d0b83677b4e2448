"""VREx, variance risk extrapolation (Krueger et al., "Out-of-Distribution
Generalization via Risk Extrapolation"), as DomainBed writes it.

Per step, one forward pass on the concatenated batch, L_d the loss of
domain d's part of it:

    loss = mean_d L_d + w * mean_d (L_d - mean L)^2

(the variance is the biased one, a mean over the D domains), w = 1 for the
first `anneal_steps` steps and `penalty_weight` from then on; at step
`anneal_steps` the model's optimizer is reset to a fresh state (DomainBed's
"Reset Adam"). One optimizer step on the gradient of `loss`.

`rescale_loss=True` divides the loss by w when w > 1, as the IRM authors'
code does (DomainBed does not). Logs `nll` (mean_d L_d) and `penalty`.
"""

from kdg.algorithms.anneal import AnnealedPenalty
from keras import ops


class VREx(AnnealedPenalty):
    name = "vrex"
    title = "VREx"
    def __init__(self, penalty_weight=1e1, anneal_steps=500, rescale_loss=False):
        super().__init__(penalty_weight, anneal_steps, rescale_loss)

    def objective(self, ctx, losses, logits, y):
        return ops.mean(ops.square(losses - ops.mean(losses))), {}

    def get_config(self):
        return {
            "penalty_weight": self.penalty_weight,
            "anneal_steps": self.anneal_steps,
            "rescale_loss": self.rescale_loss,
        }
