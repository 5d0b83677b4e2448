"""Mixup between domains (Xu et al. 2020; Yan et al. 2020), as DomainBed
writes it.

Per step: a random order p of the D domains; for each i, the pair
(p_i, p_{i+1}) (cyclically: the last domain pairs with the first), a fresh
lam_i ~ Beta(alpha, alpha), the mixed minibatch x = lam_i x_{p_i} +
(1 - lam_i) x_{p_{i+1}} and its own forward pass;

    loss = (1 / D) sum_i [lam_i CE(f(x), y_{p_i}) + (1 - lam_i) CE(f(x), y_{p_{i+1}})],

one optimizer step on its gradient. The order and the lam_i are drawn from
the step's key (`kdg.rng`): seeded, the same on every backend. The
predictions passed to the metrics are those on the mixed minibatches, each
against the labels of its first domain.
"""

from keras import ops

from kdg import rng as kdg_rng
from kdg.algorithms.base import Algorithm, number


class Mixup(Algorithm):
    name = "mixup"
    title = "Mixup"
    hparams = {"alpha": number(0, low_open=True)}
    search_space = {"alpha": {"log_uniform": [-1, 1]}}

    def __init__(self, alpha=0.2):
        self.check_hparams(locals())
        self.alpha = float(alpha)

    def draws(self, key, num):
        """The step's domain order (num,) and mixing weights lam (num,)."""
        order = ops.argsort(kdg_rng.uniform((num,), kdg_rng.fold_in(key, 0)))
        lam = kdg_rng.beta((num,), kdg_rng.fold_in(key, 1), self.alpha, self.alpha)
        return order, lam

    def step(self, ctx, x, y):
        num = y.shape[0]
        order, lam = self.draws(ctx.key, num)
        x, y = ops.take(x, order, axis=0), ops.take(y, order, axis=0)

        def loss_fn(params, state):
            total, preds = 0.0, []
            for i in range(num):
                j = (i + 1) % num
                mixed = lam[i] * x[i] + (1.0 - lam[i]) * x[j]
                y_pred, state = ctx.forward(mixed, params, state)
                total = total + lam[i] * ctx.compiled_loss(y[i], y_pred, params, state)
                total = total + (1.0 - lam[i]) * ctx.compiled_loss(y[j], y_pred, params, state)
                preds.append(y_pred)
            return total / num, (ops.stack(preds), state)

        (loss, (preds, state)), grads = ctx.value_and_grad(loss_fn)(ctx.params(), ctx.state())
        ctx.set_state(state)
        ctx.apply(grads)
        preds = ops.take(preds, ops.argsort(order), axis=0)  # back to the domains' order
        return {"loss": loss}, ops.reshape(preds, (-1,) + tuple(ops.shape(preds)[2:]))

    def get_config(self):
        return {"alpha": self.alpha}
