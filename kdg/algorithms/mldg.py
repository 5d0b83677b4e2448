"""MLDG, meta-learning domain generalization (Li et al. 2018), DomainBed's
first-order version.

Per step: a random order p of the D domains; the last `n_meta_test` are the
meta-test domains, the others the meta-train domains; meta-train domain
p_k pairs with meta-test domain p_{D - n + (k mod n)} (DomainBed's
`split_meta_train_test`). For each pair (i, j), from theta:

1. L_i, G_i: the loss of domain i and its gradient at theta;
2. theta_i = one step of a fresh optimizer (the compiled optimizer's config,
   zero state: DomainBed makes a new Adam per pair) on G_i from theta;
3. L_j, G_j: the loss of domain j and its gradient at theta_i (first order:
   no gradient through step 2);
4. G += (G_i + beta * G_j) / D.

Then theta returns to its value and the model's optimizer takes one step on
G. The logged loss is sum over pairs (L_i + beta * L_j) / D. The order is
drawn from the step's key (`kdg.rng`). The model's state (BatchNorm
statistics, dropout seeds) is threaded through the passes and kept
(DomainBed's copies of the network update theirs and the network's stay as
they were). The metrics see the predictions of a forward pass at theta.
"""

from keras import ops

from kdg import rng as kdg_rng
from kdg.algorithms.base import Algorithm, domain, flatten_domains, integer, number
from kdg.algorithms.fish import Fish


class MLDG(Algorithm):
    name = "mldg"
    title = "MLDG"
    hparams = {
        "beta": number(0),
        "n_meta_test": integer(1),  # and < the number of training domains
    }
    search_space = {"beta": {"log_uniform": [-1, 1]}, "n_meta_test": {"choice": [1, 2]}}

    def __init__(self, beta=1.0, n_meta_test=2):
        self.check_hparams(locals())
        self.beta = float(beta)
        self.n_meta_test = int(n_meta_test)
        self.inner = None

    def build(self, model):
        optimizer = model.optimizer
        self.inner = type(optimizer).from_config(optimizer.get_config())
        self.inner.build(model.trainable_variables)
        self._fresh = Fish._fresh_state(self.inner, model)

    @property
    def variables(self):
        return [] if self.inner is None else list(self.inner.variables)

    def _reset_inner(self):
        for v, value in zip(self.inner.variables, self._fresh):
            if v.name != "learning_rate":
                v.assign(ops.cast(ops.broadcast_to(value, v.shape), v.dtype))

    def pairs(self, key, num):
        """The step's domain order (num,) and its (meta-train, meta-test)
        positions in that order."""
        n = self.n_meta_test
        if n >= num:
            raise ValueError(
                f"MLDG n_meta_test must be less than the number of training domains "
                f"({num}); given {n}. Set n_meta_test to at most {num - 1}."
            )
        order = ops.argsort(kdg_rng.uniform((num,), key))
        return order, [(k, num - n + k % n) for k in range(num - n)]

    def step(self, ctx, x, y):
        num = y.shape[0]
        order, pairs = self.pairs(ctx.key, num)
        y_pred, _ = ctx.forward(flatten_domains(x), training=False)
        x, y = ops.take(x, order, axis=0), ops.take(y, order, axis=0)
        theta = [ops.copy(v.value) for v in ctx.trainable_variables]  # a copy: torch updates in place
        total = [ops.zeros_like(v.value) for v in ctx.trainable_variables]
        objective = 0.0
        for i, j in pairs:
            self._reset_inner()
            loss_i, grads_i, _, state = ctx.loss_and_grads(domain(x, i), y[i])
            ctx.set_state(state)
            ctx.apply(grads_i, self.inner)
            loss_j, grads_j, _, state = ctx.loss_and_grads(domain(x, j), y[j])
            ctx.set_state(state)
            ctx.assign(ctx.trainable_variables, theta)
            total = [t + (gi + self.beta * gj) / num
                     for t, gi, gj in zip(total, grads_i, grads_j)]
            objective = objective + (loss_i + self.beta * loss_j) / num
        ctx.apply(total)
        return {"loss": objective}, y_pred

    def get_config(self):
        return {"beta": self.beta, "n_meta_test": self.n_meta_test}
