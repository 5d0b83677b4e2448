"""Keras layers that domain generalization methods put inside the network.

`MixStyle` (Zhou et al., *Domain Generalization with MixStyle*, ICLR 2021)
mixes the per-example channel statistics of a feature map with those of
another example of the batch. It is what the MixStyle algorithm adds to a
ResNet (`kdg.models.build(..., mixstyle_layers=(1, 2, 3))`, after the first
three stages as the MixStyle code used by DomainBed-style repositories
does); training with it is ERM.
"""

from __future__ import annotations

import keras
from keras import ops


def mix_statistics(x, lam, perm, eps=1e-6):
    """MixStyle's mixing of a channels-last feature map x (B, H, W, C), or
    (B, ..., C), with given weights `lam` (B,) and permutation `perm` (B,):

        mu, sig = mean and sqrt(unbiased variance + eps) over the spatial axes
        out = (x - mu) / sig * sig_mix + mu_mix,
        mu_mix = lam * mu + (1 - lam) * mu[perm]   (the same for sig)

    mu and sig are held constant for the gradient (``detach`` in the
    authors' code)."""
    axes = tuple(range(1, len(x.shape) - 1))
    n = 1
    for axis in axes:
        n = n * ops.shape(x)[axis]
    mu = ops.mean(x, axis=axes, keepdims=True)
    var = ops.sum(ops.square(x - mu), axis=axes, keepdims=True) / ops.cast(n - 1, x.dtype)
    sig = ops.sqrt(var + eps)
    mu, sig = ops.stop_gradient(mu), ops.stop_gradient(sig)
    lam = ops.reshape(ops.cast(lam, x.dtype), (-1,) + (1,) * (len(x.shape) - 1))
    mu_mix = lam * mu + (1.0 - lam) * ops.take(mu, perm, axis=0)
    sig_mix = lam * sig + (1.0 - lam) * ops.take(sig, perm, axis=0)
    return (x - mu) / sig * sig_mix + mu_mix


@keras.saving.register_keras_serializable(package="kdg")
class MixStyle(keras.layers.Layer):
    """MixStyle: in training, with probability `p` per batch, each example's
    channel statistics (spatial mean and standard deviation) are replaced by
    a mix of its own and those of a random other example of the batch, with
    a weight drawn from Beta(alpha, alpha) per example (`mix_statistics`).
    In inference (``training`` false or unset) it returns its input.

    Args:
        p: probability that a batch is mixed (0.5 in the authors' code).
        alpha: the Beta distribution's parameter (0.1, the authors' setting
            for image classification).
        eps: added to the variance before the square root (1e-6).
        seed: seed of the layer's `keras.random.SeedGenerator`, the source
            of its randomness (usable under JAX tracing; its state is saved
            and carried like a Dropout layer's).

    Input: a channels-last feature map (B, H, W, C) (any rank >= 3).
    """

    #: It mixes the examples of a batch: a concatenated batch is not the
    #: mean of its parts (GGA-L's and GGA's "auto" options read this).
    mixes_batch = True

    def __init__(self, p=0.5, alpha=0.1, eps=1e-6, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"MixStyle p must be a probability in [0, 1]; given {p!r}.")
        if not float(alpha) > 0.0:
            raise ValueError(f"MixStyle alpha must be a number > 0; given {alpha!r}.")
        if not float(eps) >= 0.0:
            raise ValueError(f"MixStyle eps must be a number >= 0; given {eps!r}.")
        self.p, self.alpha, self.eps, self.seed = float(p), float(alpha), float(eps), seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    def draw(self, batch_size):
        """The random choices of one training call, in the order `call`
        draws them: (mix, lam, perm): whether the batch is mixed (a boolean
        scalar), the weights (batch_size,) ~ Beta(alpha, alpha) and a random
        permutation of range(batch_size)."""
        mix = keras.random.uniform((), seed=self.seed_generator) < self.p
        lam = keras.random.beta((batch_size,), self.alpha, self.alpha,
                                seed=self.seed_generator)
        perm = ops.argsort(keras.random.uniform((batch_size,), seed=self.seed_generator))
        return mix, lam, perm

    def call(self, inputs, training=None):
        if not training:
            return inputs
        if len(inputs.shape) < 3:
            raise ValueError(
                f"MixStyle takes a feature map (batch, ..., channels); got shape "
                f"{tuple(inputs.shape)}. Put it after a convolution stage."
            )
        mix, lam, perm = self.draw(ops.shape(inputs)[0])
        return ops.where(mix, mix_statistics(inputs, lam, perm, self.eps), inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "p": self.p, "alpha": self.alpha,
                "eps": self.eps, "seed": self.seed}


def find_layers(model, cls):
    """Every layer of type ``cls`` in ``model``, nested models included."""
    found, stack = [], [model]
    while stack:
        layer = stack.pop()
        if isinstance(layer, cls):
            found.append(layer)
        stack.extend(reversed(getattr(layer, "layers", None) or []))
    return found
