"""Fish (Shi et al., "Gradient Matching for Domain Generalization").

A first-order approximation of maximising the inner product of the
per-domain gradients. Per step (DomainBed's version, the default):

1. theta_inner = theta (all model variables, moving statistics included);
2. for each domain d in order: one step of the inner optimizer on L_d at
   theta_inner (the inner optimizer's state persists across steps);
3. theta <- theta + meta_lr * (theta_inner - theta).

Here the model's own variables serve as theta_inner during the inner loop
(one saved copy of theta, no second network). The inner optimizer is the
compiled one unless `inner_optimizer` is given; the compiled optimizer is
then unused, as in DomainBed.

The authors' WILDS variant is available by option: `meta_lr_per_domain=True`
(meta_lr / D), `shuffle_domains=True` (random domain order each step),
`warmup_steps` (plain ERM steps before Fish starts) and
`reset_inner_optimizer=True` (a fresh inner optimizer every step).

The inner optimizer's state (moments, iteration count): DomainBed's code
carries it from step to step for the whole run (its `optimizer_inner_state`),
as the default does. The WILDS code makes a new inner optimizer every step and
reloads the previous one's state if `reload_inner_optim` is true (every WILDS
dataset; the state is dropped at the start of each epoch), not if it is false
(CdSprites): that is `reset_inner_optimizer=True`, which sets the state to a
fresh optimizer's (a new optimizer of the same config: zero moments,
iteration 0, Adagrad's initial accumulator) at the start of every step; the
learning rate is kept (a learning-rate schedule of the inner optimizer starts
again every step, as with a new optimizer).
"""

import keras
from keras import ops

from kdg import rng as kdg_rng
from kdg.algorithms.base import Algorithm, domain, flag, integer, number, other
from kdg.algorithms.erm import ERM


def _optimizer(identifier):
    """A Keras optimizer from an instance, a name or a config; None if none."""
    try:
        return keras.optimizers.get(identifier)
    except (TypeError, ValueError):
        return None


class Fish(Algorithm):
    name = "fish"
    title = "Fish"
    search_space = {"meta_lr": {"choice": [0.05, 0.1, 0.5]}}  # DomainBed's
    hparams = {
        # a step from theta towards theta_inner, at most all the way
        "meta_lr": number(0, 1, low_open=True),
        "inner_optimizer": other(
            "None (the compiled optimizer), an optimizer's name like 'sgd', "
            "its config {class_name: SGD, config: {learning_rate: 0.01}}, or an optimizer",
            check=lambda value: value is None or _optimizer(value) is not None,
        ),
        "meta_lr_per_domain": flag(),
        "shuffle_domains": flag(),
        "warmup_steps": integer(0),
        "reset_inner_optimizer": flag(),
    }

    def __init__(
        self,
        meta_lr=0.5,
        inner_optimizer=None,
        meta_lr_per_domain=False,
        shuffle_domains=False,
        warmup_steps=0,
        reset_inner_optimizer=False,
    ):
        self.check_hparams(locals())
        self.meta_lr = float(meta_lr)
        self.inner_optimizer = None if inner_optimizer is None else _optimizer(inner_optimizer)
        self.meta_lr_per_domain = bool(meta_lr_per_domain)
        self.shuffle_domains = bool(shuffle_domains)
        self.warmup_steps = int(warmup_steps)
        self.reset_inner_optimizer = bool(reset_inner_optimizer)

    def build(self, model):
        if self.inner_optimizer is not None and not self.inner_optimizer.built:
            self.inner_optimizer.build(model.trainable_variables)
        if self.reset_inner_optimizer:
            self._fresh = self._fresh_state(self.inner_optimizer or model.optimizer, model)

    @staticmethod
    def _fresh_state(optimizer, model):
        """The state of a new optimizer of the same config, variable by
        variable: a scalar where the new variable is uniform (zero moments,
        iteration 0, Adagrad's initial accumulator), else its array."""
        fresh = type(optimizer).from_config(optimizer.get_config())
        fresh.build(model.trainable_variables)
        state = []
        for v in fresh.variables:
            value = ops.convert_to_numpy(v)
            uniform = value.size and (value == value.flat[0]).all()
            state.append(value.flat[0] if uniform else value)
        return state

    @property
    def variables(self):
        return list(self.inner_optimizer.variables) if self.inner_optimizer else []

    def _reset(self, optimizer):
        """A fresh optimizer's state (iteration count, moments, accumulators),
        as `build` recorded it, but the learning rate, which Keras names
        'learning_rate' and a user may have changed."""
        if len(optimizer.variables) != len(self._fresh):
            raise ValueError(
                f"Fish reset_inner_optimizer: the inner optimizer has "
                f"{len(optimizer.variables)} variables, a new one of its config "
                f"{len(self._fresh)}; compile the model before training it."
            )
        for v, value in zip(optimizer.variables, self._fresh):
            if v.name != "learning_rate":
                v.assign(ops.cast(ops.broadcast_to(value, v.shape), v.dtype))

    def _fish_step(self, ctx, x, y):
        num = y.shape[0]
        if self.reset_inner_optimizer:
            self._reset(self.inner_optimizer or ctx.optimizer)
        if self.shuffle_domains:
            order = ops.argsort(kdg_rng.uniform((num,), ctx.key))
            x = ops.take(x, order, axis=0)
            y = ops.take(y, order, axis=0)
        variables = ctx.model_variables()
        theta = [ops.copy(v.value) for v in variables]  # a copy: torch updates in place
        losses, preds = [], []
        for d in range(num):
            loss, grads, y_pred, state = ctx.loss_and_grads(domain(x, d), y[d])
            ctx.set_state(state)
            ctx.apply(grads, self.inner_optimizer)
            losses.append(loss)
            preds.append(y_pred)
        meta_lr = self.meta_lr / num if self.meta_lr_per_domain else self.meta_lr
        ctx.assign(
            variables,
            [t + meta_lr * (v.value - t) for v, t in zip(variables, theta)],
        )
        return {"loss": ops.mean(ops.stack(losses))}, ops.concatenate(preds)

    def step(self, ctx, x, y):
        if self.warmup_steps <= 0:
            return self._fish_step(ctx, x, y)
        optimizers = [self.inner_optimizer] if self.inner_optimizer else []
        return ctx.cond(
            ctx.step_count < self.warmup_steps,
            lambda: ERM().step(ctx, x, y),
            lambda: self._fish_step(ctx, x, y),
            optimizers=optimizers,
        )

    def get_config(self):
        return {
            "meta_lr": self.meta_lr,
            "inner_optimizer": (
                keras.optimizers.serialize(self.inner_optimizer)
                if self.inner_optimizer is not None
                else None
            ),
            "meta_lr_per_domain": self.meta_lr_per_domain,
            "shuffle_domains": self.shuffle_domains,
            "warmup_steps": self.warmup_steps,
            "reset_inner_optimizer": self.reset_inner_optimizer,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("inner_optimizer") is not None:
            config["inner_optimizer"] = keras.optimizers.deserialize(
                config["inner_optimizer"]
            )
        return cls(**config)
