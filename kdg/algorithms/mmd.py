"""MMD (Li et al., "Domain Generalization with Adversarial Feature
Learning"), as DomainBed's `MMD` (its `AbstractMMD` with the gaussian kernel).

Per step, with f_d = featurizer(x_d) for each domain's minibatch:

    objective = mean over d of L_d            (cross-entropy of classify(f_d))
    penalty   = mean over pairs i < j of mmd(f_i, f_j)
    loss      = objective + mmd_gamma * penalty, one optimizer step.

mmd(x, y) = mean K(x, x) + mean K(y, y) - 2 mean K(x, y), with
K(a, b) = sum over g in (0.001, 0.01, 0.1, 1, 10, 100, 1000) of
exp(-g |a - b|^2), the squared distances clamped below at 1e-30 (DomainBed's
`my_cdist`). With one training domain the penalty is 0.

The logged "loss" is the objective (DomainBed's), "penalty" the penalty.
The features are computed on each domain's minibatch separately when a layer
computes batch statistics (BatchNorm not frozen), as DomainBed does, else on
the concatenated batch (the same numbers).
"""

from keras import ops

from kdg.algorithms.base import Algorithm, domain, flatten_domains, number

GAMMAS = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


def gaussian_kernel(a, b):
    """sum_g exp(-g |a_i - b_j|^2), (N, M), DomainBed's kernel mixture."""
    a2 = ops.sum(ops.square(a), axis=-1, keepdims=True)
    b2 = ops.sum(ops.square(b), axis=-1, keepdims=True)
    dist = ops.maximum(a2 - 2.0 * ops.matmul(a, ops.transpose(b)) + ops.transpose(b2), 1e-30)
    return sum(ops.exp(-g * dist) for g in GAMMAS)


class MMD(Algorithm):
    name = "mmd"
    title = "MMD"
    hparams = {"mmd_gamma": number(0)}
    search_space = {"mmd_gamma": {"log_uniform": [-1, 1]}}

    def __init__(self, mmd_gamma=1.0):
        """mmd_gamma: the penalty's weight (DomainBed's default 1)."""
        self.check_hparams(locals())
        self.mmd_gamma = float(mmd_gamma)

    @staticmethod
    def discrepancy(a, b):
        """The distance between two domains' features (N, F) and (M, F)."""
        return (ops.mean(gaussian_kernel(a, a)) + ops.mean(gaussian_kernel(b, b))
                - 2.0 * ops.mean(gaussian_kernel(a, b)))

    def step(self, ctx, x, y):
        num = y.shape[0]
        per_domain = ctx.batch_dependent

        def objective(params, state):
            if per_domain:
                features = []
                for d in range(num):
                    f, state = ctx.features(domain(x, d), params, state)
                    features.append(f)
                flat = ops.concatenate(features)
            else:
                flat, state = ctx.features(flatten_domains(x), params, state)
                features = [flat[d * y.shape[1]:(d + 1) * y.shape[1]] for d in range(num)]
            y_pred = ctx.classify(flat, params, state)
            loss = ctx.compiled_loss(flatten_domains(y), y_pred, params, state)
            pairs = [(i, j) for i in range(num) for j in range(i + 1, num)]
            penalty = (sum(self.discrepancy(features[i], features[j]) for i, j in pairs)
                       / len(pairs)) if pairs else ops.zeros(())
            return loss + self.mmd_gamma * penalty, (loss, penalty, y_pred, state)

        (_, (loss, penalty, y_pred, state)), grads = ctx.value_and_grad(objective)(
            ctx.params(), ctx.state())
        ctx.set_state(state)
        ctx.apply(grads)
        return {"loss": loss, "penalty": penalty}, y_pred

    def get_config(self):
        return {"mmd_gamma": self.mmd_gamma}
