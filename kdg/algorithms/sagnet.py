"""SagNet, style-agnostic networks (Nam et al., "Reducing Domain Gap by
Reducing Style Bias"), as DomainBed's `SagNet` (its Algorithm 1 on the
featurizer's output).

Networks: the model's featurizer f and classifier c (the content network,
what the model predicts with), and SagNet's own style network s, a linear
layer on the features (DomainBed's default `nonlinear_classifier=False`).
Three optimizers, as DomainBed's three Adams: the model's optimizer for f,
SagNet's copies of it for c and for s (so f's optimizer steps twice a step).

randomize(z, what), z (N, F): per example, mu and var (unbiased) of its
features (for (N, H, W, C) features: per example and channel, over H, W),
z_n = (z - mu) / sqrt(var + 1e-5), alpha ~ U(0, 1) per example, p a random
permutation of the batch;
- "style":   mu <- alpha mu + (1 - alpha) mu[p], var likewise;
- "content": z_n <- z_n[p], without gradient;
then z_n sqrt(var + 1e-5) + mu.

Per step, on the concatenated batch (x, y):

1. content: loss_c = CE(c(randomize(f(x), "style")), y); one step on f and c;
2. style: loss_s = CE(s(randomize(f(x), "content")), y); one step on s;
3. adversary: loss_adv = -sag_w_adv * mean over examples and classes of
   log_softmax(s(randomize(f(x), "content"))); one step on f only.

Each randomization draws its own alpha and permutation from the step's key
(`kdg.rng`): the same on every backend. Steps 2 and 3 use the weights as
updated by the previous steps; the model state (BatchNorm statistics) is
threaded through the three forwards and kept. Logs loss (= loss_c),
loss_c, loss_s and loss_adv; the metrics see step 1's predictions.
Prediction is the model, c(f(x)), as DomainBed's.
"""

import math

import keras
from keras import ops

from kdg import rng as kdg_rng
from kdg import split as split_lib
from kdg.algorithms import own
from kdg.algorithms.base import Algorithm, flatten_domains, number

EPS = 1e-5


def randomize(z, what, alpha, perm):
    """DomainBed's SagNet.randomize with given alpha (N,) and permutation (N,)."""
    axes = tuple(range(1, len(z.shape) - 1)) or (-1,)
    count = math.prod(z.shape[a] for a in axes)
    mean = ops.mean(z, axis=axes, keepdims=True)
    var = ops.sum(ops.square(z - mean), axis=axes, keepdims=True) / (count - 1)
    normed = (z - mean) / ops.sqrt(var + EPS)
    if what == "style":
        a = ops.reshape(alpha, (-1,) + (1,) * (len(z.shape) - 1))
        mean = a * mean + (1.0 - a) * ops.take(mean, perm, axis=0)
        var = a * var + (1.0 - a) * ops.take(var, perm, axis=0)
    else:
        normed = ops.stop_gradient(ops.take(normed, perm, axis=0))
    return normed * ops.sqrt(var + EPS) + mean


class SagNet(Algorithm):
    name = "sagnet"
    title = "SagNet"
    hparams = {"sag_w_adv": number(0)}
    search_space = {"sag_w_adv": {"log_uniform": [-2, 1]}}

    def __init__(self, sag_w_adv=0.1):
        """sag_w_adv: the adversarial style loss's weight (DomainBed's default
        0.1, search 10^U(-2, 1))."""
        self.check_hparams(locals())
        self.sag_w_adv = float(sag_w_adv)
        self.style = None

    def build(self, model):
        dim = own.feature_dim(model)
        classes = int(model.outputs[0].shape[-1])
        limit = math.sqrt(6.0 / (dim + classes))
        key = ops.convert_to_tensor([31, 37], dtype="int32")
        self.style = keras.layers.Dense(classes, name="sagnet_style")
        self.style.build((None, dim))
        self.style.kernel.assign(kdg_rng.uniform((dim, classes), key, minval=-limit, maxval=limit))
        self.optimizer_s = own.copy_optimizer(model, self.style.trainable_variables)
        classifier = {id(v) for v in split_lib.classifier_variables(model)}
        self._content = [i for i, v in enumerate(model.trainable_variables) if id(v) in classifier]
        self._features = [i for i, v in enumerate(model.trainable_variables)
                          if id(v) not in classifier]
        content = [model.trainable_variables[i] for i in self._content]
        self.optimizer_c = own.copy_optimizer(model, content)

    @property
    def variables(self):
        if self.style is None:
            return []
        return (list(self.style.variables) + list(self.optimizer_c.variables)
                + list(self.optimizer_s.variables))

    @staticmethod
    def draws(key, n):
        """The three randomizations' (alpha (n,), permutation (n,)): content,
        style and adversary steps, in order."""
        out = []
        for i in range(3):
            alpha = kdg_rng.uniform((n,), kdg_rng.fold_in(key, 2 * i))
            perm = ops.argsort(kdg_rng.uniform((n,), kdg_rng.fold_in(key, 2 * i + 1)))
            out.append((alpha, perm))
        return out

    def _style_logits(self, weights, z):
        return self.style.stateless_call(weights, [], z)[0]

    def step(self, ctx, x, y):
        x, y = flatten_domains(x), flatten_domains(y)
        (a_c, p_c), (a_s, p_s), (a_adv, p_adv) = self.draws(ctx.key, y.shape[0])
        model = ctx.model
        f_vars = [ctx.trainable_variables[i] for i in self._features]
        c_vars = [ctx.trainable_variables[i] for i in self._content]
        s_vars = self.style.trainable_variables
        xent = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        # 1. content: f and c on style-randomized features
        def content(params, state):
            z, state = ctx.features(x, params, state)
            y_pred = ctx.classify(randomize(z, "style", a_c, p_c), params, state)
            return ctx.compiled_loss(y, y_pred, params, state), (y_pred, state)

        (loss_c, (y_pred, state)), grads = ctx.value_and_grad(content)(ctx.params(), ctx.state())
        own.apply(model, ctx.optimizer, [grads[i] for i in self._features], f_vars)
        own.apply(model, self.optimizer_c, [grads[i] for i in self._content], c_vars)

        # 2. style: s on content-randomized features
        z, state = ctx.features(x, ctx.params(), state)
        z_s = ops.stop_gradient(randomize(z, "content", a_s, p_s))

        def style(weights):
            return ops.mean(xent(y, self._style_logits(weights, z_s))), None

        (loss_s, _), grads = ctx.value_and_grad(style)(own.values(s_vars))
        own.apply(model, self.optimizer_s, grads, s_vars)

        # 3. adversary: f makes s's predictions uniform
        s_now = own.values(s_vars)

        def adversary(f_values, state):
            params = ctx.params()
            for i, value in zip(self._features, f_values):
                params[i] = value
            z, state = ctx.features(x, params, state)
            logits = self._style_logits(s_now, randomize(z, "content", a_adv, p_adv))
            log_p = logits - ops.logsumexp(logits, axis=-1, keepdims=True)
            return -self.sag_w_adv * ops.mean(log_p), state

        (loss_adv, state), grads = ctx.value_and_grad(adversary)(own.values(f_vars), state)
        own.apply(model, ctx.optimizer, grads, f_vars)
        ctx.set_state(state)
        logs = {"loss": loss_c, "loss_c": loss_c, "loss_s": loss_s, "loss_adv": loss_adv}
        return logs, y_pred

    def get_config(self):
        return {"sag_w_adv": self.sag_w_adv}
