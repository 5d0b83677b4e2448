"""AND-mask (Parascandolo et al., "Learning explanations that are hard to
vary", ICLR 2021), as DomainBed's `ANDMask` runs it.

Per step:

1. per-domain gradients g_d (D passes of B);
2. for each trainable variable, element by element: the agreement
   a = |mean_d sign(g_d)| (1 when every domain's gradient has the same sign;
   sign(0) = 0) and the mask m = [a >= tau];
3. the update is m * mean_d g_d / (1e-10 + mean(m)), mean(m) the fraction of
   the variable's elements kept (each variable rescaled on its own);
4. one optimizer step.

The logged `loss` is the mean of the domains' losses; `mask_fraction` is the
fraction of all trainable elements the mask keeps.

`masked_mean_gradient` is the step AND-mask and SAND-mask share; they differ
only in the mask.
"""

import math

from keras import ops

from kdg.algorithms.base import Algorithm, number


def sign_agreement(stacked_grad):
    """|mean over domains of sign(g_d)|, element by element."""
    return ops.abs(ops.mean(ops.sign(stacked_grad), axis=0))


def masked_mean_gradient(stacked, mask_of):
    """Per variable, mask * mean_d g_d / (1e-10 + mean(mask)), with
    mask = mask_of(g stacked over domains); and the mask's mean over every
    element of every variable."""
    grads, kept, size = [], 0.0, 0
    for g in stacked:
        mask = mask_of(g)
        grads.append(mask * ops.mean(g, axis=0) / (1e-10 + ops.mean(mask)))
        kept = kept + ops.sum(mask)
        size += math.prod(mask.shape)
    return grads, kept / size


def masked_step(ctx, x, y, mask_of):
    """The masks' step: per-domain gradients, the masked mean, one optimizer step."""
    losses, stacked, y_pred, state = ctx.domain_grads(x, y)
    grads, fraction = masked_mean_gradient(stacked, mask_of)
    ctx.set_state(state)
    ctx.apply(grads)
    return {"loss": ops.mean(losses), "mask_fraction": fraction}, y_pred


class ANDMask(Algorithm):
    name = "andmask"
    title = "AND-mask"
    hparams = {"tau": number(0, 1)}  # 0: every element kept, ERM's mean gradient
    search_space = {"tau": {"uniform": [0.5, 1.0]}}

    def __init__(self, tau=1.0):
        """`tau`: the sign agreement an element needs to be updated
        (DomainBed's default 1: every domain agrees)."""
        self.check_hparams(locals())
        self.tau = float(tau)

    def _mask(self, g):
        return ops.cast(sign_agreement(g) >= self.tau, g.dtype)

    def step(self, ctx, x, y):
        return masked_step(ctx, x, y, self._mask)

    def get_config(self):
        return {"tau": self.tau}
