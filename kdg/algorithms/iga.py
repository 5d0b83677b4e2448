"""IGA, inter-environmental gradient alignment (Koyama & Yamaguchi, "When is
invariance useful in an out-of-distribution generalization problem?",
arXiv:2008.01883), as DomainBed's `IGA` writes it.

Per step, one pass per domain d on its minibatch (the model state threaded
through, as DomainBed's consecutive forward passes update BatchNorm), L_d its
loss and g_d = dL_d/dtheta over all trainable parameters:

    loss    = mean_d L_d
    penalty = sum_d ||g_d - mean_d' g_d'||^2     (summed over all parameters)
    objective = loss + penalty_weight * penalty, one optimizer step on its gradient.

The gradient of the penalty is second order: the g_d are differentiable
gradients (`ctx.value_and_grad(fn, differentiable=True)`). DomainBed computes
the mean gradient by a further backward pass and treats it as a constant;
here it is the mean of the g_d, which is the same value, and its derivative
would not change the objective's gradient either (sum_d (g_d - mean g) = 0),
so no pass is spent on it. IGA and the gradient penalty of DANN/CDANN are
the only second-order users in kdg (IRM's penalty has a closed form).

Logs `loss` (mean_d L_d, DomainBed's) and `penalty`.
"""

from keras import ops

from kdg.algorithms.base import Algorithm, domain, number


class IGA(Algorithm):
    name = "iga"
    title = "IGA"
    hparams = {"penalty_weight": number(0)}
    # DomainBed's: penalty 10^U(1, 5)
    search_space = {"penalty_weight": {"log_uniform": [1, 5]}}

    def __init__(self, penalty_weight=1e3):
        """penalty_weight: the weight of the gradient-variance penalty
        (DomainBed's `penalty`, default 1000)."""
        self.check_hparams(locals())
        self.penalty_weight = float(penalty_weight)

    def step(self, ctx, x, y):
        num = y.shape[0]

        def domain_loss(params, state, x_d, y_d):
            loss, y_pred, state = ctx.loss(x_d, y_d, params, state)
            return loss, (y_pred, state)

        domain_grad = ctx.value_and_grad(domain_loss, differentiable=True)

        def objective(params, state):
            losses, grads, preds = [], [], []
            for d in range(num):
                (loss, (y_pred, state)), g = domain_grad(params, state, domain(x, d), domain(y, d))
                losses.append(loss)
                grads.append(g)
                preds.append(y_pred)
            loss = sum(losses) / num
            penalty = ops.zeros(())
            for k in range(len(params)):
                mean = sum(g[k] for g in grads) / num
                penalty = penalty + sum(ops.sum(ops.square(g[k] - mean)) for g in grads)
            return loss + self.penalty_weight * penalty, (
                loss, penalty, ops.concatenate(preds), state)

        (_, (loss, penalty, y_pred, state)), grads = ctx.value_and_grad(objective)(
            ctx.params(), ctx.state())
        ctx.set_state(state)
        ctx.apply(grads)
        return {"loss": loss, "penalty": penalty}, y_pred

    def get_config(self):
        return {"penalty_weight": self.penalty_weight}
