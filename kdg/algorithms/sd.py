"""SD, spectral decoupling (Pezeshki et al., "Gradient Starvation: A Learning
Proclivity in Neural Networks", Eq. 25), as DomainBed writes it.

Per step, one forward pass on the concatenated batch of the D domains
(N = D*B examples, logits z of shape (N, K)):

    loss = CE(z, y) + sd_reg * mean(z^2)

CE the mean cross-entropy over the N examples (the compiled loss) and
mean(z^2) the mean of the squared logits over all N*K entries
(DomainBed's `(all_p ** 2).mean()`). One optimizer step on its gradient.
Logs `loss` (the whole objective), `nll` (the cross-entropy, DomainBed's
"loss") and `penalty` (mean(z^2)).
"""

from keras import ops

from kdg.algorithms.base import Algorithm, flatten_domains, number


class SD(Algorithm):
    name = "sd"
    title = "SD"
    # DomainBed's: 10^U(-5, -1)
    search_space = {"sd_reg": {"log_uniform": [-5, -1]}}
    hparams = {"sd_reg": number(0)}

    def __init__(self, sd_reg=0.1):
        """`sd_reg`: the weight of the squared-logits penalty."""
        self.check_hparams(locals())
        self.sd_reg = float(sd_reg)

    def step(self, ctx, x, y):
        x, y = flatten_domains(x), flatten_domains(y)

        def objective(params, state):
            y_pred, state = ctx.forward(x, params, state)
            nll = ctx.compiled_loss(y, y_pred, params, state)
            penalty = ops.mean(ops.square(y_pred))
            return nll + self.sd_reg * penalty, (y_pred, state, nll, penalty)

        (loss, (y_pred, state, nll, penalty)), grads = ctx.value_and_grad(objective)(
            ctx.params(), ctx.state())
        ctx.set_state(state)
        ctx.apply(grads)
        return {"loss": loss, "nll": nll, "penalty": penalty}, y_pred

    def get_config(self):
        return {"sd_reg": self.sd_reg}
