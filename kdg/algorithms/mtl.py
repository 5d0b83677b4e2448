"""MTL, marginal transfer learning (Blanchard et al., "Domain Generalization
by Marginal Transfer Learning"), as DomainBed's neural `MTL`.

DomainBed's classifier reads [features, embedding], the embedding of the
example's domain; its weights are [W1; W2]. kdg keeps the model's own
classifier (the split's last Dense layer: W1 and the bias) on the features,
and MTL owns W2 (F, C), the embedding half, so that

    logits = classify(f) + e @ W2.

State: the embeddings, one per training domain (D, F), zeros at first.
Per step, for each domain d, f_d = featurizer(x_d):

1. e_d <- mtl_ema * mean(f_d) + (1 - mtl_ema) * e_d  (kept, no gradient);
2. DomainBed's quirk, followed: the embedding fed to the classifier is then
   overwritten with N(0, 1) noise (`.normal_()`), one draw per example and
   feature, so what the classifier sees is [f_d, noise_d] (noise_d (B, F)),
   and no gradient flows through the embedding;
3. loss = SUM over d of CE(classify(f_d) + noise_d @ W2, y_d) (a sum, not a
   mean, as DomainBed), one step of the model's optimizer on the model's
   weights and one of MTL's copy of it on W2 (DomainBed: one Adam on both).

The noise comes from the step's key (`kdg.rng`): the same on every
backend. The stored embeddings never reach the loss (step 2), as in
DomainBed; they are kept (saved, restored) for a faithful state.

Prediction: DomainBed's `predict` adds fresh N(0, 1) noise @ W2 to the logits
too, so its evaluations are random. kdg models predict with the plain
network, `classify(f)`: the embedding term at the noise's mean, 0 (Keras
sees an ordinary model; `evaluate` and `predict` are deterministic). W2
matters only through training.

The classifier part must be linear (one Dense layer producing logits,
DomainBed's default `nonlinear_classifier=False`): the embedding's term is
added to its output. W2 starts from Glorot-uniform numbers drawn from a fixed
key (the same on every backend), for the fan-in 2F of DomainBed's layer.
"""

import math

import keras
from keras import ops

from kdg import rng as kdg_rng
from kdg.algorithms import own
from kdg.algorithms.base import Algorithm, domain, domain_count, flatten_domains, integer, number


def check_linear_classifier(model, who, why="adds its term to the classifier's logits"):
    """A ValueError unless the split's classifier is one Dense layer without
    activation (logits = f W + b); `why` says what the algorithm needs it for."""
    classifier = model.dg_split.classifier
    layers = [classifier] if not isinstance(classifier, keras.Model) else [
        layer for layer in classifier.layers if not isinstance(layer, keras.layers.InputLayer)]
    dense = layers[0] if len(layers) == 1 else None
    if not isinstance(dense, keras.layers.Dense) or dense.activation not in (
        keras.activations.linear, None
    ):
        names = ", ".join(type(layer).__name__ for layer in layers)
        raise ValueError(
            f"{who} {why}, which needs a linear "
            f"classifier: one Dense layer without activation after the features "
            f"(DomainBed's nonlinear_classifier=False); the model's classifier part is "
            f"[{names}]. Build the model with a last Dense layer producing logits, or "
            f"name it: kdg.DGModel(..., classifier='<layer name>')."
        )
    return dense


class MTL(Algorithm):
    name = "mtl"
    title = "MTL"
    hparams = {
        "mtl_ema": number(0, 1),
        "num_domains": integer(1, optional=True),
    }
    search_space = {"mtl_ema": {"choice": [0.5, 0.9, 0.99, 1.0]}}

    def __init__(self, mtl_ema=0.99, num_domains=None):
        """mtl_ema: the weight of the new minibatch mean in each domain's
        embedding average (DomainBed's default 0.99); num_domains: the number
        of training domains, read from the model (`model.num_domains`) when
        None."""
        self.check_hparams(locals())
        self.mtl_ema = float(mtl_ema)
        self.num_domains = None if num_domains is None else int(num_domains)
        self.w2 = None

    def build(self, model):
        self.num_domains = domain_count(model, self.num_domains, "MTL")
        dense = check_linear_classifier(model, "MTL")
        dim = own.feature_dim(model)
        classes = int(dense.kernel.shape[-1])
        limit = math.sqrt(6.0 / (2 * dim + classes))
        key = ops.convert_to_tensor([17, 29], dtype="int32")
        self.w2 = keras.Variable(
            kdg_rng.uniform((dim, classes), key, minval=-limit, maxval=limit),
            trainable=True, name="mtl_w2")
        self.embeddings = keras.Variable(
            ops.zeros((self.num_domains, dim)), trainable=False, name="mtl_embeddings")
        self.optimizer = own.copy_optimizer(model, [self.w2])

    @property
    def variables(self):
        if self.w2 is None:
            return []
        return [self.w2, self.embeddings] + list(self.optimizer.variables)

    @staticmethod
    def noise(key, shape):
        """The step's N(0, 1) embeddings (D, B, F)."""
        return kdg_rng.normal(shape, key)

    def step(self, ctx, x, y):
        num, batch = y.shape[0], y.shape[1]
        if num != self.num_domains:
            raise ValueError(
                f"MTL has one embedding per training domain ({self.num_domains}); the "
                f"batch has {num} domains. Train on the same domains, or make a new MTL.")
        dim = self.embeddings.shape[-1]
        noise = self.noise(ctx.key, (num, batch, dim))
        per_domain = ctx.batch_dependent

        def objective(values, state):
            params, w2 = values[:-1], values[-1]
            if per_domain:
                feats = []
                for d in range(num):
                    f, state = ctx.features(domain(x, d), params, state)
                    feats.append(f)
            else:
                flat, state = ctx.features(flatten_domains(x), params, state)
                feats = [flat[d * batch:(d + 1) * batch] for d in range(num)]
            total, preds = 0.0, []
            for d in range(num):
                logits = ctx.classify(feats[d], params, state) + ops.matmul(noise[d], w2)
                total = total + ctx.compiled_loss(y[d], logits, params, state)
                preds.append(logits)
            means = ops.stack([ops.mean(f, axis=0) for f in feats])
            return total, (ops.concatenate(preds), state, means)

        values = ctx.params() + [self.w2.value]
        (loss, (y_pred, state, means)), grads = ctx.value_and_grad(objective)(
            values, ctx.state())
        ctx.set_state(state)
        ctx.apply(grads[:-1])
        own.apply(ctx.model, self.optimizer, grads[-1:], [self.w2])
        means = ops.stop_gradient(means)
        ctx.assign([self.embeddings],
                   [self.mtl_ema * means + (1.0 - self.mtl_ema) * self.embeddings.value])
        return {"loss": loss}, y_pred

    def get_config(self):
        return {"mtl_ema": self.mtl_ema, "num_domains": self.num_domains}
