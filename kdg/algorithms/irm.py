"""IRM, invariant risk minimization (Arjovsky et al.), as DomainBed writes it
(IRMv1).

Per step, one forward pass on the concatenated batch; for each domain d, its
logits z and labels split into the even- and odd-numbered examples (halves
a and b):

    L_d = CE(z, y);  penalty_d = dL_a/ds * dL_b/ds at s = 1,

the derivatives of the cross-entropy of the logits scaled by a dummy s;
loss = mean_d L_d + w * mean_d penalty_d, w = 1 for the first
`anneal_steps` steps and `penalty_weight` from then on; at step
`anneal_steps` the model's optimizer is reset to a fresh state (DomainBed's
"Reset Adam"). One optimizer step on the gradient of `loss`.

No second-order autodiff: for softmax cross-entropy the derivative with
respect to the dummy scale is a closed-form function of the logits,

    dCE(s z, y)/ds at s = 1 = mean_n sum_k (softmax(z_n)_k - onehot(y_n)_k) z_nk,

so the penalty is an ordinary function of the logits and its gradient needs
one backward pass. The penalty therefore needs the model to output logits
and to be compiled with `SparseCategoricalCrossentropy(from_logits=True)`.

`rescale_loss=True` divides the loss by w when w > 1, as the IRM authors'
code does (DomainBed does not). Logs `nll` (mean_d L_d) and `penalty`.
"""

import keras
from keras import ops

from kdg.algorithms.anneal import AnnealedPenalty


def dummy_scale_grad(logits, y):
    """d CE(s * logits, y) / ds at s = 1, in closed form."""
    p = ops.softmax(logits, axis=-1)
    onehot = ops.one_hot(y, ops.shape(logits)[-1], dtype=logits.dtype)
    return ops.mean(ops.sum((p - onehot) * logits, axis=-1))


def check_logits_loss(model, who):
    """A ValueError unless the model is compiled with softmax cross-entropy on
    logits (the closed forms of IRM's and Fishr's penalties assume it)."""
    loss = model.loss
    if not (isinstance(loss, keras.losses.SparseCategoricalCrossentropy)
            and loss.get_config().get("from_logits")):
        raise ValueError(
            f"{who}'s penalty is written for softmax cross-entropy on logits; the "
            f"model is compiled with loss={loss!r}. Compile it with "
            "loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True) "
            "and a model whose outputs are logits."
        )


class IRM(AnnealedPenalty):
    name = "irm"
    title = "IRM"
    def __init__(self, penalty_weight=1e2, anneal_steps=500, rescale_loss=False):
        super().__init__(penalty_weight, anneal_steps, rescale_loss)

    def build(self, model):
        check_logits_loss(model, "IRM")
        super().build(model)

    def objective(self, ctx, losses, logits, y):
        penalties = [
            dummy_scale_grad(logits[d][0::2], y[d][0::2])
            * dummy_scale_grad(logits[d][1::2], y[d][1::2])
            for d in range(y.shape[0])
        ]
        return ops.mean(ops.stack(penalties)), {}

    def get_config(self):
        return {
            "penalty_weight": self.penalty_weight,
            "anneal_steps": self.anneal_steps,
            "rescale_loss": self.rescale_loss,
        }
