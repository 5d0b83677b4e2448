"""Fishr (Rame et al., "Fishr: Invariant Gradient Variances for
Out-of-Distribution Generalization", ICML 2022), as DomainBed writes it.

Per step, one forward pass on the concatenated batch: features f = the
featurizer's output, logits z = classifier(f) (a linear layer, z = f W + b).
For each example n of domain d, g_n is the gradient of its own cross-entropy
CE(z_n, y_n) with respect to the classifier's weights (W and b). Then:

    v_d   = mean_n (g_n - mean_n g_n)^2           the centered variance, per weight
    m_d  <- ema * m_d + (1 - ema) * v_d           the domain's moving average (state)
    V_d   = m_d / (1 - ema)                        DomainBed's "oneminusema" correction
    penalty = mean_d mean_w (V_d - mean_d V_d)^2   mean over all of W's and b's entries
    loss    = mean CE(z, y) + w * penalty,

w = 0 for the first `anneal_steps` steps and `penalty_weight` from then on;
at step `anneal_steps` (if it is not 0) the model's optimizer is reset to a
fresh state (DomainBed's "Reset Adam", as for IRM and VREx). One optimizer
step on the gradient of `loss`. The moving average is updated every step,
also before `anneal_steps`; its stored value carries no gradient (the
gradient flows through this step's v_d only), it starts at 0, and it is
the algorithm's state (saved with the model, restored on resume).

DomainBed gets the per-example gradients g_n from BackPACK. For a linear
classifier they have a closed form: with e_n = softmax(z_n) - onehot(y_n),

    dCE_n/dW = outer(f_n, e_n),   dCE_n/db = e_n,

so kdg needs no extra library and no per-example backward pass, and the
variance over the B examples of a domain is two matrix products,

    v_d(W) = (f^2)^T (e^2) / B - (f^T e / B)^2     (F x K),

never the (B, F, K) per-example gradients. The classifier must therefore be
one Dense layer without activation (the model outputs logits; kdg's
backbones' heads are), and the model compiled with
`SparseCategoricalCrossentropy(from_logits=True)`.

DomainBed's hyperparameter names: lambda (`penalty_weight`),
penalty_anneal_iters (`anneal_steps`), ema. Logs `nll` and `fishr_penalty`.
"""

import math

import keras
from keras import ops

from kdg.algorithms.anneal import AnnealedPenalty
from kdg.algorithms.base import domain_count, flatten_domains, integer, number
from kdg.algorithms.irm import check_logits_loss
from kdg.algorithms.mtl import check_linear_classifier


def gradient_variance(f, e):
    """Per-domain centered variance of the per-example classifier gradients,
    from features f (D, B, F) and softmax errors e (D, B, K): the kernel's
    (D, F, K) and the bias's (D, K)."""
    batch = f.shape[1]
    mean_w = ops.einsum("dbf,dbk->dfk", f, e) / batch
    var_w = ops.einsum("dbf,dbk->dfk", ops.square(f), ops.square(e)) / batch - ops.square(mean_w)
    var_b = ops.mean(ops.square(e - ops.mean(e, axis=1, keepdims=True)), axis=1)
    return var_w, var_b


class Fishr(AnnealedPenalty):
    name = "fishr"
    title = "Fishr"
    hparams = {
        "penalty_weight": number(0),
        "anneal_steps": integer(0),
        "ema": number(0, 1, high_open=True),
        "num_domains": integer(1, optional=True),
    }
    # DomainBed's: lambda 10^U(1, 4), penalty_anneal_iters int(U(0, 5000)), ema U(0.90, 0.99)
    search_space = {
        "penalty_weight": {"log_uniform": [1, 4]},
        "anneal_steps": {"uniform": [0, 5000], "int": True},
        "ema": {"uniform": [0.90, 0.99]},
    }

    def __init__(self, penalty_weight=1000.0, anneal_steps=1500, ema=0.95, num_domains=None):
        """penalty_weight: the penalty's weight from `anneal_steps` on (DomainBed's
        lambda, 1000); anneal_steps: steps without the penalty, the optimizer
        reset at it (penalty_anneal_iters, 1500); ema: the moving average's
        decay (0.95); num_domains: the number of training domains (the model's
        by default), the size of the state."""
        self.check_hparams(locals())
        self.penalty_weight = float(penalty_weight)
        self.anneal_steps = int(anneal_steps)
        self.ema = float(ema)
        self.num_domains = None if num_domains is None else int(num_domains)
        self.ema_kernel = self.ema_bias = None

    def build(self, model):
        check_logits_loss(model, "Fishr")
        dense = check_linear_classifier(
            model, "Fishr", "computes the per-example gradients of the classifier in closed form")
        super().build(model)  # the fresh optimizer state of the reset
        self.num_domains = domain_count(model, self.num_domains, "Fishr")
        features, classes = dense.kernel.shape
        self.ema_kernel = keras.Variable(ops.zeros((self.num_domains, features, classes)),
                                         trainable=False, name="fishr_ema_kernel")
        self.ema_bias = (None if dense.bias is None else keras.Variable(
            ops.zeros((self.num_domains, classes)), trainable=False, name="fishr_ema_bias"))

    @property
    def variables(self):
        return [v for v in (self.ema_kernel, self.ema_bias) if v is not None]

    def step(self, ctx, x, y):
        num, batch = y.shape[0], y.shape[1]
        if num != self.num_domains:
            raise ValueError(
                f"Fishr keeps a moving average per training domain ({self.num_domains}); the "
                f"batch has {num} domains. Train on the same domains, or make a new Fishr."
            )
        weight = ops.cast(
            ops.where(ctx.step_count >= self.anneal_steps, self.penalty_weight, 0.0), "float32")
        old = [v.value for v in self.variables]

        def loss_fn(params, state):
            f, state = ctx.features(flatten_domains(x), params, state)
            logits = ctx.classify(f, params, state)
            labels = flatten_domains(y)
            nll = ctx.compiled_loss(labels, logits, params, state)
            classes = ops.shape(logits)[-1]
            e = ops.softmax(logits, axis=-1) - ops.one_hot(labels, classes, dtype=logits.dtype)
            var_w, var_b = gradient_variance(ops.reshape(f, (num, batch, -1)),
                                             ops.reshape(e, (num, batch, classes)))
            current = [var_w, var_b][:len(old)]
            averaged = [self.ema * m + (1 - self.ema) * v for m, v in zip(old, current)]
            corrected = [a / (1 - self.ema) for a in averaged]
            squares = [ops.square(c - ops.mean(c, axis=0, keepdims=True)) for c in corrected]
            count = sum(math.prod(s.shape[1:]) for s in squares)  # entries of W and b
            penalty = sum(ops.sum(s) for s in squares) / (num * count)
            loss = nll + weight * penalty
            averaged = [ops.stop_gradient(a) for a in averaged]
            return loss, (logits, state, averaged, nll, penalty)

        (loss, (y_pred, state, averaged, nll, penalty)), grads = ctx.value_and_grad(loss_fn)(
            ctx.params(), ctx.state())
        ctx.set_state(state)
        ctx.assign(self.variables, averaged)
        if self.anneal_steps != 0:  # DomainBed: no reset when the penalty is on from the start
            ctx.cond(ctx.step_count == self.anneal_steps,
                     lambda: self._reset_optimizer(ctx.optimizer), lambda: None)
        ctx.apply(grads)
        return {"loss": loss, "nll": nll, "fishr_penalty": penalty}, y_pred

    def get_config(self):
        return {"penalty_weight": self.penalty_weight, "anneal_steps": self.anneal_steps,
                "ema": self.ema, "num_domains": self.num_domains}
