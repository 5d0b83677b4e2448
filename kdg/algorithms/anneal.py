"""What IRM and VREx share: a penalty whose weight is 1 for the first
`anneal_steps` steps and `penalty_weight` from then on, with the model's
optimizer reset to a fresh state at step `anneal_steps` (DomainBed: "Reset
Adam, because it doesn't like the sharp jump in gradient magnitudes").

The reset gives the optimizer the state of a new optimizer of its config
(Fish's `reset_inner_optimizer` does the same to its inner optimizer): zero
moments, iteration 0; the learning rate is kept.
"""

from keras import ops

from kdg.algorithms.base import Algorithm, flag, flatten_domains, integer, number
from kdg.algorithms.fish import Fish


def split_domains(t, num):
    """(D*B, ...) -> (D, B, ...)."""
    return ops.reshape(t, (num, -1) + tuple(ops.shape(t)[1:]))


class AnnealedPenalty(Algorithm):
    """Base of IRM and VREx: their hyperparameters, search space and the
    annealing (Fishr, with its own weights and step, uses its optimizer
    reset: `build` and `_reset_optimizer`); subclasses give `penalty_weight` its default in their
    signature and define `objective(ctx, losses, logits, y) -> (penalty,
    logs)` where `losses` are the D per-domain losses of one forward pass on
    the concatenated batch and `logits` its (D, B, K) predictions."""

    hparams = {
        "penalty_weight": number(0),
        "anneal_steps": integer(0),
        "rescale_loss": flag(),
    }
    # DomainBed's: lambda 10^U(-1, 5), annealing steps int(10^U(0, 4))
    search_space = {
        "penalty_weight": {"log_uniform": [-1, 5]},
        "anneal_steps": {"log_uniform": [0, 4], "int": True},
    }

    def __init__(self, penalty_weight, anneal_steps=500, rescale_loss=False):
        self.check_hparams(locals())
        self.penalty_weight = float(penalty_weight)
        self.anneal_steps = int(anneal_steps)
        self.rescale_loss = bool(rescale_loss)

    def build(self, model):
        self._fresh = Fish._fresh_state(model.optimizer, model)

    def _reset_optimizer(self, optimizer):
        if len(optimizer.variables) != len(self._fresh):
            raise ValueError(
                f"{type(self).__name__}: the optimizer has {len(optimizer.variables)} "
                f"variables, a new one of its config {len(self._fresh)}; compile "
                "the model before training it."
            )
        for v, value in zip(optimizer.variables, self._fresh):
            if v.name != "learning_rate":
                v.assign(ops.cast(ops.broadcast_to(value, v.shape), v.dtype))

    def step(self, ctx, x, y):
        num = y.shape[0]
        weight = ops.cast(
            ops.where(ctx.step_count >= self.anneal_steps, self.penalty_weight, 1.0), "float32"
        )

        def loss_fn(params, state):
            y_pred, state = ctx.forward(flatten_domains(x), params, state)
            logits = split_domains(y_pred, num)
            losses = ops.stack(
                [ctx.compiled_loss(y[d], logits[d], params, state) for d in range(num)]
            )
            penalty, logs = self.objective(ctx, losses, logits, y)
            nll = ops.mean(losses)
            loss = nll + weight * penalty
            if self.rescale_loss:
                loss = loss / ops.maximum(weight, 1.0)
            return loss, (y_pred, state, dict(logs, nll=nll, penalty=penalty))

        (loss, (y_pred, state, logs)), grads = ctx.value_and_grad(loss_fn)(
            ctx.params(), ctx.state()
        )
        ctx.set_state(state)
        ctx.cond(
            ctx.step_count == self.anneal_steps,
            lambda: self._reset_optimizer(ctx.optimizer),
            lambda: None,
        )
        ctx.apply(grads)
        return dict(logs, loss=loss), y_pred
