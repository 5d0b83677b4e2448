"""SelfReg, self-supervised contrastive regularization (Kim et al.,
"SelfReg: Self-supervised Contrastive Regularization for Domain
Generalization", ICCV 2021), as DomainBed's `SelfReg`.

Like DomainBed, SelfReg ignores the domains: it concatenates all domains'
examples into one batch (x, y) of N = D*B examples and pairs examples of the
same class, whatever their domain.

SelfReg's own network, the projection g (DomainBed's `cdpl`) on the
featurizer's output f (N, F), H = F if F == 2048 else 2F:

    Linear(F, H) - BatchNorm - ReLU - Linear(H, H) - BatchNorm - ReLU - Linear(H, F) - BatchNorm

its BatchNorm always in training mode (batch mean and biased variance,
eps 1e-5, PyTorch's affine weight 1 and bias 0 at first), the Linear layers
initialized as PyTorch's (weight and bias U(+-1/sqrt(fan_in))) from a fixed
key, the same on every backend.

Per step, examples in class order (a stable sort of y), with
f = featurizer(x), z = classify(f) (the logits) and p = g(f):

1. two random permutations pi_1, pi_2 inside each class (an example's
   partners are examples of its class), lam ~ Beta(alpha, alpha) (one per
   step; DomainBed: Beta(0.5, 0.5));
2. z_2 = z[pi_1], p_2 = p[pi_1]; mixed partners
   z_3 = lam z[pi_1] + (1 - lam) z[pi_2], p_3 = lam p[pi_1] + (1 - lam) p[pi_2];
3. with MSE the mean squared difference over all elements:
   L_ind = MSE(z, z_2) + w MSE(f, p_2),  L_hdl = MSE(z, z_3) + w MSE(f, p_3)
   (w = `feature_weight`, DomainBed's 0.3). DomainBed's quirk, followed: the
   feature terms compare an example's features f with its partners'
   *projections* p (not projection with projection);
4. C = min(CE, 1) of the step's cross-entropy CE = mean CE(z, y), a number
   without gradient;
5. loss = CE + C (lam L_ind + (1 - lam) L_hdl), one optimizer step.

DomainBed's quirk, followed by default: the projection is **never trained**
(SelfReg's optimizer is ERM's, built on the featurizer and classifier before
the projection exists); its gradients reach the featurizer through p only.
`train_projection=True` trains it too (the paper), with a copy of the
model's optimizer. The BatchNorm moving statistics DomainBed's projection
updates are never read (the projection is used in training mode only) and
are not kept.

The permutations and lam come from the step's key (`kdg.rng`): the same on
every backend. Logs loss (the objective), nll (CE) and the regularizer's
scale C (`selfreg_scale`). Prediction: the model, classify(f(x)).
"""

import math

import keras
from keras import ops

from kdg import rng as kdg_rng
from kdg.algorithms import own
from kdg.algorithms.base import Algorithm, flag, flatten_domains, number

EPS = 1e-5


def _batch_norm(h, gamma, beta):
    """BatchNorm in training mode: batch mean and biased variance."""
    mean = ops.mean(h, axis=0, keepdims=True)
    var = ops.mean(ops.square(h - mean), axis=0, keepdims=True)
    return (h - mean) / ops.sqrt(var + EPS) * gamma + beta


def project(weights, f):
    """DomainBed's cdpl on features f (N, F) with `weights`, the projection's
    [kernel, bias, gamma, beta] of each of its three blocks."""
    h = f
    for i in range(3):
        kernel, bias, gamma, beta = weights[4 * i:4 * i + 4]
        h = _batch_norm(ops.matmul(h, kernel) + bias, gamma, beta)
        if i < 2:
            h = ops.relu(h)
    return h


def _mse(a, b):
    return ops.mean(ops.square(a - b))


class SelfReg(Algorithm):
    name = "selfreg"
    title = "SelfReg"
    hparams = {
        "feature_weight": number(0),
        "alpha": number(0, low_open=True),
        "train_projection": flag(),
    }
    search_space = {}

    def __init__(self, feature_weight=0.3, alpha=0.5, train_projection=False):
        """feature_weight: the feature terms' weight (DomainBed's fixed 0.3);
        alpha: lam ~ Beta(alpha, alpha) mixes the two partners (DomainBed's
        fixed 0.5); train_projection: train the projection network too (the
        paper), False: DomainBed's untrained projection."""
        self.check_hparams(locals())
        self.feature_weight = float(feature_weight)
        self.alpha = float(alpha)
        self.train_projection = bool(train_projection)
        self.projection = None

    def build(self, model):
        dim = own.feature_dim(model)
        hidden = dim if dim == 2048 else 2 * dim
        key = ops.convert_to_tensor([41, 43], dtype="int32")
        self.projection = []
        for i, (fan_in, fan_out) in enumerate([(dim, hidden), (hidden, hidden), (hidden, dim)]):
            bound = 1.0 / math.sqrt(fan_in)
            draw = lambda shape, j: kdg_rng.uniform(  # noqa: E731
                shape, kdg_rng.fold_in(key, 2 * i + j), minval=-bound, maxval=bound)
            self.projection += [
                keras.Variable(draw((fan_in, fan_out), 0), trainable=self.train_projection,
                               name=f"selfreg_kernel_{i}"),
                keras.Variable(draw((fan_out,), 1), trainable=self.train_projection,
                               name=f"selfreg_bias_{i}"),
                keras.Variable(ops.ones((fan_out,)), trainable=self.train_projection,
                               name=f"selfreg_gamma_{i}"),
                keras.Variable(ops.zeros((fan_out,)), trainable=self.train_projection,
                               name=f"selfreg_beta_{i}"),
            ]
        self.optimizer = (own.copy_optimizer(model, self.projection)
                          if self.train_projection else None)

    @property
    def variables(self):
        if self.projection is None:
            return []
        return list(self.projection) + (list(self.optimizer.variables) if self.optimizer else [])

    def draws(self, key, y):
        """The step's class order (N,) (a stable sort of the labels y (N,)),
        the two partners (N,) of each position of that order (pi_1, pi_2: an
        example of the same class, each a permutation inside each class) and
        lam. Partner k of the order is example partner[k]."""
        n = y.shape[0]
        labels = ops.cast(y, "int32") * n
        order = ops.argsort(labels + ops.arange(n, dtype="int32"))
        partners = []
        for i in range(2):
            u = kdg_rng.uniform((n,), kdg_rng.fold_in(key, i))
            rank = ops.cast(ops.argsort(ops.argsort(u)), "int32")
            partners.append(ops.argsort(labels + rank))
        lam = kdg_rng.beta((), kdg_rng.fold_in(key, 2), self.alpha, self.alpha)
        return order, partners[0], partners[1], lam

    def step(self, ctx, x, y):
        x, y = flatten_domains(x), flatten_domains(y)
        order, first, second, lam = self.draws(ctx.key, y)
        w, own_count = self.feature_weight, len(self.projection)

        def objective(values, state):
            params, weights = values[:-own_count], values[-own_count:]
            f, state = ctx.features(x, params, state)
            z = ctx.classify(f, params, state)
            p = project(weights, f)
            nll = ctx.compiled_loss(y, z, params, state)
            scale = ops.minimum(ops.stop_gradient(nll), 1.0)
            z_1, f_1 = ops.take(z, order, axis=0), ops.take(f, order, axis=0)
            z_2, p_2 = ops.take(z, first, axis=0), ops.take(p, first, axis=0)
            z_3 = lam * z_2 + (1.0 - lam) * ops.take(z, second, axis=0)
            p_3 = lam * p_2 + (1.0 - lam) * ops.take(p, second, axis=0)
            individual = _mse(z_1, z_2) + w * _mse(f_1, p_2)
            hallucinated = _mse(z_1, z_3) + w * _mse(f_1, p_3)
            loss = nll + scale * (lam * individual + (1.0 - lam) * hallucinated)
            return loss, (z, state, nll, scale)

        values = ctx.params() + own.values(self.projection)
        (loss, (y_pred, state, nll, scale)), grads = ctx.value_and_grad(objective)(
            values, ctx.state())
        ctx.set_state(state)
        ctx.apply(grads[:-own_count])
        if self.train_projection:
            own.apply(ctx.model, self.optimizer, grads[-own_count:], self.projection)
        return {"loss": loss, "nll": nll, "selfreg_scale": scale}, y_pred

    def get_config(self):
        return {"feature_weight": self.feature_weight, "alpha": self.alpha,
                "train_projection": self.train_projection}
