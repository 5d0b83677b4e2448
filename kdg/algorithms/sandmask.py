"""SAND-mask (Shahtalebi et al., "SAND-mask: an enhanced gradient masking
strategy for the discovery of invariances in domain generalization"), as
DomainBed's `SANDMask` runs it: AND-mask's step (`kdg.algorithms.andmask`)
with a smooth mask.

Per step, for each trainable variable, element by element, from the
per-domain gradients g_d:

1. the agreement a = |mean_d sign(g_d)|, as AND-mask;
2. the variance over domains, var = sum_d (g_d - mean)^2 / (D - 1)
   (unbiased, torch's `var`; with one domain, NaN, replaced by 1e-17);
3. the mask m = max(0, tanh(k * (1 / var) * (a - tau))), NaN replaced by 1e-17
   (0 * inf where var = 0 and a = tau);
4. the update m * mean_d g_d / (1e-10 + mean(m)), one optimizer step.

DomainBed's SANDMask makes its own Adam (betas 0.9, 0.999, the run's lr and
weight decay), whatever the run's optimizer; kdg uses the compiled optimizer
(the same with the protocol's Adam). Its `update_count` is never read.

Logs `loss` (the mean of the domains' losses) and `mask_fraction` (the mean
mask value over every trainable element).
"""

from keras import ops

from kdg.algorithms.andmask import masked_step, sign_agreement
from kdg.algorithms.base import Algorithm, number

#: what DomainBed puts in place of NaN variances and masks
TINY = 1e-17


class SANDMask(Algorithm):
    name = "sandmask"
    title = "SAND-mask"
    hparams = {
        "tau": number(0, 1),
        "k": number(0, low_open=True),  # the mask's steepness
    }
    search_space = {
        "tau": {"uniform": [0.0, 1.0]},
        "k": {"log_uniform": [-3, 5]},
    }

    def __init__(self, tau=1.0, k=10.0):
        """`tau`: the agreement above which the mask opens; `k`: its
        steepness (DomainBed's defaults: 1.0 and 10)."""
        self.check_hparams(locals())
        self.tau = float(tau)
        self.k = float(k)

    def _mask(self, g):
        num = g.shape[0]
        mean = ops.mean(g, axis=0)
        if num > 1:
            var = ops.sum(ops.square(g - mean), axis=0) / float(num - 1)
        else:
            var = ops.full_like(mean, TINY)
        var = ops.where(ops.isnan(var), TINY, var)
        raw = ops.tanh(self.k * (1.0 / var) * (sign_agreement(g) - self.tau))
        return ops.where(ops.isnan(raw), TINY, ops.maximum(raw, 0.0))

    def step(self, ctx, x, y):
        return masked_step(ctx, x, y, self._mask)

    def get_config(self):
        return {"tau": self.tau, "k": self.k}
