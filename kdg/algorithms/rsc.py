"""RSC, Representation Self-Challenging (Huang et al., ECCV 2020), as
DomainBed's `RSC`.

Per step, on the concatenated batch (x, y), with f = featurizer(x) (N, F),
p = classify(f) and o the one-hot labels:

1. g = d sum(p * o) / d f, the gradient of the true-class outputs with
   respect to the features (first order: g is a constant afterwards);
2. feature mask: m_f[n, k] = 1 if g[n, k] < q_n else 0, q_n the
   (1 - rsc_f_drop_factor) * 100 th percentile of g[n, :] (NumPy's linear
   interpolation): the features with the largest gradients are dropped;
3. change[n] = softmax(p)[n, y_n] - softmax(classify(f * m_f))[n, y_n];
   batch mask: m_b[n] = 1 if change[n] < the (1 - rsc_b_drop_factor) * 100
   th percentile of change, else 0;
4. mask = m_f OR m_b (an example whose confidence dropped most keeps its
   mask; the others keep every feature);
5. loss = cross-entropy of classify(f * mask), one optimizer step.

Differences from the paper's code, as in DomainBed: the percentile is taken
over the features of each example (no spatial/channel choice) and there is no
random choice between the two; kdg follows DomainBed, which draws nothing.
The masks are computed from a forward without gradients and the loss from a
second forward of the featurizer with the same state (the same dropout
mask), so the featurizer runs twice where DomainBed's runs once.
"""

from keras import ops

from kdg.algorithms.base import Algorithm, flatten_domains, number


def percentile(values, q, axis=None):
    """NumPy's default (linear) percentile, q in [0, 100]."""
    return ops.quantile(values, q / 100.0, axis=axis, method="linear")


class RSC(Algorithm):
    name = "rsc"
    title = "RSC"
    hparams = {
        "rsc_f_drop_factor": number(0, 1),
        "rsc_b_drop_factor": number(0, 1),
    }
    search_space = {
        "rsc_f_drop_factor": {"uniform": [0, 0.5]},
        "rsc_b_drop_factor": {"uniform": [0, 0.5]},
    }

    def __init__(self, rsc_f_drop_factor=1 / 3, rsc_b_drop_factor=1 / 3):
        """rsc_f_drop_factor: the fraction of each example's features dropped
        (those with the largest gradients); rsc_b_drop_factor: the fraction
        of the batch that is challenged (DomainBed's defaults, 1/3 each)."""
        self.check_hparams(locals())
        self.rsc_f_drop_factor = float(rsc_f_drop_factor)
        self.rsc_b_drop_factor = float(rsc_b_drop_factor)

    def step(self, ctx, x, y):
        x, y = flatten_domains(x), flatten_domains(y)
        params, state0 = ctx.params(), ctx.state()
        features, _ = ctx.features(x, params, state0)
        logits = ctx.classify(features, params)
        onehot = ops.one_hot(y, logits.shape[-1], dtype=logits.dtype)

        def true_class(f):
            return ops.sum(ctx.classify(f[0], params) * onehot), None

        grads = ctx.value_and_grad(true_class)([features])[1][0]
        drop_f = (1.0 - self.rsc_f_drop_factor) * 100.0
        drop_b = (1.0 - self.rsc_b_drop_factor) * 100.0
        q = percentile(grads, drop_f, axis=1)
        mask_f = ops.cast(grads < q[:, None], features.dtype)
        muted = ctx.classify(features * mask_f, params)
        changes = (ops.sum(ops.softmax(logits) * onehot, axis=1)
                   - ops.sum(ops.softmax(muted) * onehot, axis=1))
        mask_b = ops.cast(changes < percentile(changes, drop_b), features.dtype)
        mask = ops.maximum(mask_f, mask_b[:, None])  # logical or of 0/1 masks

        def objective(params, state):
            f, state = ctx.features(x, params, state)
            y_pred = ctx.classify(f * mask, params, state)
            return ctx.compiled_loss(y, y_pred, params, state), (y_pred, state)

        (loss, (y_pred, state)), grads = ctx.value_and_grad(objective)(params, state0)
        ctx.set_state(state)
        ctx.apply(grads)
        return {"loss": loss}, y_pred

    def get_config(self):
        return {
            "rsc_f_drop_factor": self.rsc_f_drop_factor,
            "rsc_b_drop_factor": self.rsc_b_drop_factor,
        }
