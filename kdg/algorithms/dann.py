"""DANN and CDANN, domain-adversarial networks (Ganin et al., *Domain-Adversarial
Training of Neural Networks*; Li et al., *Deep Domain Generalization via
Conditional Invariant Adversarial Networks*), as DomainBed's `AbstractDANN`.
One file for both: they are one rule, CDANN switching on two of its terms
(DomainBed's `conditional` and `class_balance`), as DomainBed writes them.

Networks: the model's featurizer f and classifier c (the generator, what the
model predicts with), and the algorithm's own discriminator d, DomainBed's
`networks.MLP` on the features: Dense(mlp_width), dropout, ReLU, then
mlp_depth - 2 times Dense(mlp_width), dropout, ReLU, then Dense(D), one
logit per training domain (PyTorch's initialization: U(-1/sqrt(fan_in),
1/sqrt(fan_in)) for kernels and biases). CDANN also owns class embeddings
E (num_classes, F), N(0, 1) at the start. Two Adams, as DomainBed's: the
discriminator's over d (and E) with lr_d, weight_decay_d and betas (beta1,
0.9); the generator's over f and c with lr_g, weight_decay_g and the same
betas. The weight decays are PyTorch Adam's (L2 added to the gradient).

Per step, on the concatenated batch (x, y) of the D domains, l_i the domain
of example i:

    z = f(x);  h = z (DANN) or z + E[y] (CDANN);  o = d(h)
    disc_loss = mean_i CE(o_i, l_i)                                   (DANN)
              = sum_i w_i CE(o_i, l_i),  w_i = 1 / (n_{y_i} * K)      (CDANN)
    disc_loss += grad_penalty * mean_i ||d(sum_j CE(o_j, l_j)) / d h_i||^2

(n_c the examples of class c in the batch, K the largest label + 1: the width
of DomainBed's `F.one_hot(y)`). With u the step's number counted from 1
(DomainBed's `update_count`), the step is the discriminator's when
u mod (1 + d_steps_per_g_step) < d_steps_per_g_step: one step of its Adam on
disc_loss's gradient over d (and E); else the generator's: one step of its
Adam on the gradient over f and c of

    gen_loss = CE(c(z), y) - lambda_ * disc_loss

(the penalty's dependence on f included: a gradient of a gradient). The
model's compiled optimizer is not stepped: its class and settings are
copied for the two Adams (learning rate and betas replaced).

Logs `loss` (the classifier's cross-entropy, on both kinds of step),
`disc_loss`, `disc_acc` (the discriminator's accuracy at telling the
domains apart, before the step) and `gen_loss`. Prediction is c(f(x)).
"""

import math

import keras
from keras import ops

from kdg import rng as kdg_rng
from kdg.algorithms import own
from kdg.algorithms.base import Algorithm, Hparam, flatten_domains, integer, number

#: the two Adams' second beta, fixed by DomainBed
BETA2 = 0.9


class DANN(Algorithm):
    """DomainBed's DANN: an adversarial domain discriminator on the features."""

    name = "dann"
    title = "DANN"
    #: CDANN: the discriminator sees z + E[y], and its loss is class-balanced.
    conditional = False
    hparams = {
        "lambda_": number(0),
        "d_steps_per_g_step": integer(1),
        "grad_penalty": number(0),
        "beta1": number(0, 1, high_open=True),
        "mlp_width": integer(1),
        "mlp_depth": integer(2),
        "mlp_dropout": number(0, 1, high_open=True),
        "lr_d": Hparam("number", 0, low_open=True, optional=True),
        "lr_g": Hparam("number", 0, low_open=True, optional=True),
        "weight_decay_d": number(0),
        "weight_decay_g": Hparam("number", 0, optional=True),
    }
    #: DomainBed's hparams_registry, its ResNet (large-image) ranges where it
    #: has two (lr_g, lr_d: 10^U(-4.5, -2.5) and weight_decay_g 0 on MNIST).
    search_space = {
        "lambda_": {"log_uniform": [-2, 2]},
        "d_steps_per_g_step": {"log_uniform": [0, 3], "base": 2, "int": True},
        "grad_penalty": {"log_uniform": [-2, 1]},
        "beta1": {"choice": [0.0, 0.5]},
        "mlp_width": {"log_uniform": [6, 10], "base": 2, "int": True},
        "mlp_depth": {"choice": [3, 4, 5]},
        "mlp_dropout": {"choice": [0.0, 0.1, 0.5]},
        "lr_d": {"log_uniform": [-5, -3.5]},
        "lr_g": {"log_uniform": [-5, -3.5]},
        "weight_decay_d": {"log_uniform": [-6, -2]},
        "weight_decay_g": {"log_uniform": [-6, -2]},
    }

    def __init__(self, lambda_=1.0, d_steps_per_g_step=1, grad_penalty=0.0, beta1=0.5,
                 mlp_width=256, mlp_depth=3, mlp_dropout=0.0, lr_d=None, lr_g=None,
                 weight_decay_d=0.0, weight_decay_g=None):
        """lambda_: the adversarial term's weight in the generator's loss
        (DomainBed's `lambda`); d_steps_per_g_step: discriminator steps per
        generator step; grad_penalty: the weight of the discriminator's
        input-gradient penalty; beta1: both Adams' first beta (the second is
        0.9); mlp_width, mlp_depth, mlp_dropout: the discriminator MLP's;
        lr_d, lr_g: the discriminator's and generator's learning rates (None:
        the model optimizer's, the run's `lr`: DomainBed's defaults equal its
        `lr`'s); weight_decay_d, weight_decay_g: their L2 weight decays (None:
        the model's `l2_weight_decay`, the run's `weight_decay`)."""
        self.check_hparams(locals())
        self.lambda_ = float(lambda_)
        self.d_steps_per_g_step = int(d_steps_per_g_step)
        self.grad_penalty = float(grad_penalty)
        self.beta1 = float(beta1)
        self.mlp_width = int(mlp_width)
        self.mlp_depth = int(mlp_depth)
        self.mlp_dropout = float(mlp_dropout)
        self.lr_d = None if lr_d is None else float(lr_d)
        self.lr_g = None if lr_g is None else float(lr_g)
        self.weight_decay_d = float(weight_decay_d)
        self.weight_decay_g = None if weight_decay_g is None else float(weight_decay_g)
        self.discriminator = None

    # -- the own networks and optimizers -------------------------------------
    def build(self, model):
        dim = own.feature_dim(model)
        classes = int(model.outputs[0].shape[-1])
        num = model.num_domains
        if num is None:
            raise ValueError(f"{type(self).__name__}'s discriminator has one output per "
                             "training domain, and the number of training domains is not "
                             "known: set the model's num_domains.")
        sizes = [dim] + [self.mlp_width] * (self.mlp_depth - 1) + [int(num)]
        key = ops.convert_to_tensor([41, 43], dtype="int32")
        self.discriminator = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            bound = 1.0 / math.sqrt(fan_in)
            for j, shape in enumerate([(fan_in, fan_out), (fan_out,)]):
                init = kdg_rng.uniform(shape, kdg_rng.fold_in(key, 2 * i + j),
                                       minval=-bound, maxval=bound)
                self.discriminator.append(keras.Variable(
                    init, name=f"{self.name}_disc_{'kernel' if j == 0 else 'bias'}_{i}"))
        if self.conditional:
            self.discriminator.append(keras.Variable(
                kdg_rng.normal((classes, dim), kdg_rng.fold_in(key, 1000)),
                name=f"{self.name}_class_embeddings"))
        self.optimizer_d = self._adam(model, self.discriminator, self.lr_d)
        self.optimizer_g = self._adam(model, list(model.trainable_variables), self.lr_g)

    def _adam(self, model, variables, lr):
        """A copy of the model's optimizer (class and settings) with learning
        rate `lr` (None: the model's) and betas (beta1, 0.9)."""
        source = model.optimizer
        if source is None:
            raise ValueError("Compile the model (model.compile(optimizer=...)) before training it.")
        config = source.get_config()
        if lr is not None:
            config["learning_rate"] = lr
        if "beta_1" in config:
            config["beta_1"], config["beta_2"] = self.beta1, BETA2
        optimizer = type(source).from_config(config)
        optimizer.build(variables)
        return optimizer

    @property
    def variables(self):
        if self.discriminator is None:
            return []
        return (list(self.discriminator) + list(self.optimizer_d.variables)
                + list(self.optimizer_g.variables))

    # -- the rule --------------------------------------------------------------
    def discriminate(self, weights, h, key):
        """The discriminator MLP's logits on h (N, F), `weights` its kernels and
        biases in order; dropout masks drawn from `key` (the same for the same
        key: the penalty's inner pass sees the same network)."""
        layers = (len(weights) - (1 if self.conditional else 0)) // 2
        for i in range(layers):
            h = ops.matmul(h, weights[2 * i]) + weights[2 * i + 1]
            if i < layers - 1:
                if self.mlp_dropout > 0:
                    draw = kdg_rng.uniform(ops.shape(h), kdg_rng.fold_in(key, i))
                    keep = draw >= self.mlp_dropout
                    h = ops.where(keep, h / (1.0 - self.mlp_dropout), 0.0)
                h = ops.relu(h)
        return h

    def disc_loss(self, ctx, weights, z, y, domains, key):
        """(disc_loss with its gradient penalty, discriminator accuracy)."""
        h = z + ops.take(weights[-1], y, axis=0) if self.conditional else z
        xent = lambda o: -ops.take_along_axis(
            o - ops.logsumexp(o, axis=-1, keepdims=True), domains[:, None], axis=-1)[:, 0]
        out = self.discriminate(weights, h, key)
        per_example = xent(out)
        if self.conditional:  # class-balanced, as DomainBed's F.one_hot(y) counts
            counts = ops.sum(ops.one_hot(y, ops.shape(weights[-1])[0]), axis=0)
            width = ops.cast(ops.max(y) + 1, per_example.dtype)
            loss = ops.sum(per_example / (ops.take(counts, y) * width))
        else:
            loss = ops.mean(per_example)
        if self.grad_penalty > 0:
            penalty = self._input_gradient_penalty(ctx, weights, h, xent, key)
            loss = loss + self.grad_penalty * penalty
        hits = ops.equal(ops.cast(ops.argmax(out, axis=-1), "int32"), ops.cast(domains, "int32"))
        accuracy = ops.mean(ops.cast(hits, "float32"))
        return loss, accuracy

    def _input_gradient_penalty(self, ctx, weights, h, xent, key):
        """mean_i ||d(sum_j CE(d(h)_j, l_j)) / d h_i||^2, itself differentiable
        (over the discriminator's weights and, through h, the featurizer's)."""

        def summed(inputs):
            return ops.sum(xent(self.discriminate(weights, inputs[0], key))), None

        _, (grad,) = ctx.value_and_grad(summed, differentiable=True)([h])
        return ops.mean(ops.sum(ops.square(grad), axis=-1))

    def step(self, ctx, x, y):
        num, batch = y.shape[0], y.shape[1]
        x, y = flatten_domains(x), flatten_domains(y)
        domains = ops.repeat(ops.arange(num, dtype=y.dtype), batch)
        key = ctx.key
        model = ctx.model

        def forward(gen_params, disc_weights, state):
            z, state = ctx.features(x, gen_params, state)
            disc_loss, accuracy = self.disc_loss(ctx, disc_weights, z, y, domains, key)
            y_pred = ctx.classify(z, gen_params, state)
            ce = ctx.compiled_loss(y, y_pred, gen_params, state)
            logs = {"loss": ce, "disc_loss": disc_loss, "disc_acc": accuracy,
                    "gen_loss": ce - self.lambda_ * disc_loss}
            return logs, y_pred, state

        def discriminator_step():
            params = ctx.params()

            def objective(weights, state):
                logs, y_pred, state = forward(params, weights, state)
                return logs["disc_loss"], (logs, y_pred, state)

            (_, (logs, y_pred, state)), grads = ctx.value_and_grad(objective)(
                own.values(self.discriminator), ctx.state())
            self._apply(self.optimizer_d, grads, self.discriminator, self.weight_decay_d)
            ctx.set_state(state)
            return logs, y_pred

        def generator_step():
            weights = own.values(self.discriminator)

            def objective(params, state):
                logs, y_pred, state = forward(params, weights, state)
                return logs["gen_loss"], (logs, y_pred, state)

            (_, (logs, y_pred, state)), grads = ctx.value_and_grad(objective)(
                ctx.params(), ctx.state())
            wd = model.l2_weight_decay if self.weight_decay_g is None else self.weight_decay_g
            self._apply(self.optimizer_g, grads, ctx.trainable_variables, wd)
            ctx.set_state(state)
            return logs, y_pred

        count = self.d_steps_per_g_step
        return ctx.cond(
            (ctx.step_count + 1) % (1 + count) < count,
            discriminator_step, generator_step,
            optimizers=[self.optimizer_d, self.optimizer_g],
        )

    @staticmethod
    def _apply(optimizer, grads, variables, weight_decay):
        """One step of `optimizer` with PyTorch Adam's L2 weight decay."""
        if weight_decay:
            grads = [g + weight_decay * v.value for g, v in zip(grads, variables)]
        optimizer.apply(grads, variables)

    def get_config(self):
        return {"lambda_": self.lambda_, "d_steps_per_g_step": self.d_steps_per_g_step,
                "grad_penalty": self.grad_penalty, "beta1": self.beta1,
                "mlp_width": self.mlp_width, "mlp_depth": self.mlp_depth,
                "mlp_dropout": self.mlp_dropout, "lr_d": self.lr_d, "lr_g": self.lr_g,
                "weight_decay_d": self.weight_decay_d, "weight_decay_g": self.weight_decay_g}


class CDANN(DANN):
    """DomainBed's CDANN: DANN with class embeddings added to the
    discriminator's input and a class-balanced discriminator loss."""

    name = "cdann"
    title = "CDANN"
    conditional = True
