"""ERM: the loss on the concatenation of the D minibatches, one optimizer step.

Every other algorithm's cost is measured as a ratio to this step.
"""

from kdg.algorithms.base import Algorithm, flatten_domains


class ERM(Algorithm):
    name = "erm"
    title = "ERM"

    def step(self, ctx, x, y):
        loss, grads, y_pred, state = ctx.loss_and_grads(
            flatten_domains(x), flatten_domains(y)
        )
        ctx.set_state(state)
        ctx.apply(grads)
        return {"loss": loss}, y_pred
