"""SAM, sharpness-aware minimization (Foret et al., ICLR 2021), as the GGA
repository's `SAM` runs it on DomainBed.

Per step, on the concatenation of the D minibatches (ERM's loss):

1. g = grad L(w);
2. the ascent step e = rho * g / (|g| + 1e-12), |g| the norm of all
   trainable variables' gradients together;
3. g' = grad L(w + e);
4. one optimizer step with g' at w (the weights are not left perturbed).

BatchNorm in training mode updates its moving statistics in both passes, as
the GGA code's two forward passes do. The logged `loss` is L(w + e), the
loss the GGA code returns; `sharpness` is L(w + e) - L(w).

The GGA code divides by |g| alone; the 1e-12 (GSAM's and SAGM's
`perturb_eps`) only matters at a zero gradient, which it turns into a zero
ascent step instead of NaN.

`sharpness_passes` is the two-pass computation SAM, GSAM and SAGM share.
"""

from keras import backend as keras_backend
from keras import ops

from kdg.algorithms.base import Algorithm, flatten_domains, number

#: added to gradient norms before dividing by them (the SAM-family codes' perturb_eps)
EPS = 1e-12

#: GGA's hparams_registry search space for rho (SAM, GSAM and SAGM)
RHO_CHOICES = [0.01, 0.02, 0.05, 0.1]


def global_norm(grads):
    """The norm of a list of tensors taken as one vector."""
    return ops.sqrt(sum(ops.sum(ops.square(g)) for g in grads))


def dot(a, b):
    """The inner product of two lists of tensors taken as vectors."""
    return sum(ops.sum(x * y) for x, y in zip(a, b))


class Passes:
    """The two passes of a SAM-type step: at w (`loss0`, `grads0`, `pred0`,
    `state0`) and at the perturbed w + e (`loss1`, `grads1`, `pred1`,
    `state1`, the state threaded through both passes)."""

    def __init__(self, first, second):
        self.loss0, self.grads0, self.pred0, self.state0 = first
        self.loss1, self.grads1, self.pred1, self.state1 = second

    def state_without_second_statistics(self):
        """The state after both passes, but the floating-point state
        (BatchNorm's moving statistics) as the first pass left it: GSAM's and
        SAGM's `disable_running_stats` for the second pass. Seeds advance."""
        return [
            s0 if "float" in keras_backend.standardize_dtype(s0.dtype) else s1
            for s0, s1 in zip(self.state0, self.state1)
        ]


def sharpness_passes(ctx, x, y, rho, alpha=0.0):
    """g = grad L(w) on the concatenated batch, then the gradient at
    w + (rho / (|g| + EPS) - alpha) * g (SAGM's ascent; alpha = 0 is SAM's)."""
    x, y = flatten_domains(x), flatten_domains(y)
    params = ctx.params()
    first = ctx.loss_and_grads(x, y, params)
    grads0 = first[1]
    scale = rho / (global_norm(grads0) + EPS) - alpha
    perturbed = [p + scale * g for p, g in zip(params, grads0)]
    second = ctx.loss_and_grads(x, y, perturbed, first[3])
    return Passes(first, second)


class SAM(Algorithm):
    name = "sam"
    title = "SAM"
    hparams = {"rho": number(0)}  # 0: ERM's step
    search_space = {"rho": {"choice": RHO_CHOICES}}

    def __init__(self, rho=0.05):
        """`rho`: the radius of the ascent step (GGA's default 0.05)."""
        self.check_hparams(locals())
        self.rho = float(rho)

    def step(self, ctx, x, y):
        p = sharpness_passes(ctx, x, y, self.rho)
        ctx.set_state(p.state1)
        ctx.apply(p.grads1)
        return {"loss": p.loss1, "sharpness": p.loss1 - p.loss0}, p.pred1

    def get_config(self):
        return {"rho": self.rho}
