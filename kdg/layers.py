"""Keras layers that domain generalization methods put inside the network.

`MixStyle` (Zhou et al., *Domain Generalization with MixStyle*, ICLR 2021)
mixes the per-example channel statistics of a feature map with those of
another example of the batch. It is what the MixStyle algorithm adds to a
ResNet (`kdg.models.build(..., mixstyle_layers=(1, 2, 3))`, after the first
three stages as the MixStyle code used by DomainBed-style repositories
does); training with it is ERM.

`ARMContext` (Zhang et al., *Adaptive Risk Minimization*, ARM-CML as
DomainBed's ``ARM``) appends to each image the mean, over the batch, of a
context network's one-channel map. It is what the ARM algorithm needs at the
model's input (`kdg.models.build(..., arm_context=True)`).
"""

from __future__ import annotations

import contextlib
import math

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


# -- ARM's context network ----------------------------------------------------------


@keras.saving.register_keras_serializable(package="kdg")
class TorchBatchNorm(keras.layers.Layer):
    """PyTorch's ``BatchNorm2d`` (as DomainBed's ContextNet uses it): in
    training, normalised with the batch's mean and biased variance over all
    axes but the last, and the moving statistics updated as PyTorch does,
    ``m <- (1 - momentum) m + momentum * batch`` with the *unbiased* batch
    variance for the moving variance (Keras' BatchNormalization uses the
    biased one and the other momentum convention); in inference, the moving
    statistics. gamma starts at 1, beta at 0.

    It is not a `keras.layers.BatchNormalization`, so a `kdg.DGModel`'s
    ``freeze_bn`` (DomainBed's frozen ResNet BatchNorm) leaves it in
    training mode, as DomainBed leaves its ContextNet; ``trainable = False``
    freezes gamma and beta only."""

    def __init__(self, momentum=0.1, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.momentum, self.epsilon = float(momentum), float(epsilon)

    def build(self, input_shape):
        channels = (int(input_shape[-1]),)
        self.gamma = self.add_weight(shape=channels, initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=channels, initializer="zeros", name="beta")
        self.moving_mean = self.add_weight(shape=channels, initializer="zeros",
                                           trainable=False, name="moving_mean")
        self.moving_variance = self.add_weight(shape=channels, initializer="ones",
                                               trainable=False, name="moving_variance")

    def call(self, inputs, training=None):
        if training:
            axes = tuple(range(len(inputs.shape) - 1))
            mean = ops.mean(inputs, axis=axes)
            var = ops.mean(ops.square(inputs - mean), axis=axes)
            shape = ops.shape(inputs)
            count = 1
            for axis in axes:
                count = count * shape[axis]
            count = ops.cast(count, inputs.dtype)
            m = self.momentum
            self.moving_mean.assign((1.0 - m) * self.moving_mean + m * mean)
            self.moving_variance.assign(
                (1.0 - m) * self.moving_variance + m * var * count / (count - 1.0))
        else:
            mean, var = self.moving_mean, self.moving_variance
        scale = self.gamma * ops.rsqrt(var + self.epsilon)
        return (inputs - mean) * scale + self.beta

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon}


def torch_conv2d(filters, kernel_size, in_channels, name):
    """A "same"-padded stride-1 Conv2D initialised as PyTorch's ``nn.Conv2d``:
    kernel and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in =
    in_channels * kernel_size**2."""
    bound = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
    return keras.layers.Conv2D(
        filters, kernel_size, padding="same", name=name,
        kernel_initializer=keras.initializers.VarianceScaling(
            1.0 / 3.0, mode="fan_in", distribution="uniform"),
        bias_initializer=keras.initializers.RandomUniform(-bound, bound),
    )


@keras.saving.register_keras_serializable(package="kdg")
class ARMContext(keras.layers.Layer):
    """ARM-CML's context (Zhang et al., *Adaptive Risk Minimization*, as
    DomainBed's ``ARM`` and ``ContextNet``): a context network maps each
    image (B, H, W, C) to a one-channel map (B, H, W, 1); the maps are
    averaged over the batch the layer is called on (the *support set*) and
    that mean is appended to every image as an extra channel: output
    (B, H, W, C + 1). Put it at the model's input
    (``kdg.models.build(..., arm_context=True)``, in a recipe
    ``model: {arm_context: true}``) and train with ``ARM``.

    The context network is DomainBed's: Conv(hidden, k) -> BatchNorm ->
    ReLU -> Conv(hidden, k) -> BatchNorm -> ReLU -> Conv(1, k), "same"
    padding, PyTorch's initialisation and BatchNorm (`TorchBatchNorm`, in
    training mode whenever the model trains, even with ``freeze_bn``).

    The support set: in training ``ARM`` calls the model once on the D
    domains' concatenated minibatches (DomainBed's ``ARM.update``) inside
    `support_sets(D)`, so each domain's minibatch is one support set while
    the context network's BatchNorm normalizes the whole batch; in
    ``evaluate`` / ``predict`` it is each evaluation batch
    (``eval_batch_size``).

    Args:
        hidden: channels of the two hidden convolutions (DomainBed: 64).
        kernel_size: the convolutions' size (DomainBed: 5).
    """

    #: The context is a mean over the batch: a concatenated batch is not
    #: the mean of its parts (GGA's and GGA-L's "auto" options read this).
    mixes_batch = True

    def __init__(self, hidden=64, kernel_size=5, **kwargs):
        super().__init__(**kwargs)
        self.hidden, self.kernel_size = int(hidden), int(kernel_size)
        if self.hidden < 1 or self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(
                "ARMContext takes hidden >= 1 channels and an odd kernel_size (DomainBed: "
                f"64 and 5); given hidden={hidden!r}, kernel_size={kernel_size!r}.")
        self._support_sets = None  # None: the batch is one support set

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                f"ARMContext takes images (batch, height, width, channels); got input "
                f"shape {tuple(input_shape)}. Put it at the input of an image model.")
        h, k, c = self.hidden, self.kernel_size, int(input_shape[-1])
        self.conv1 = torch_conv2d(h, k, c, "conv1")
        self.norm1 = TorchBatchNorm(name="norm1")
        self.conv2 = torch_conv2d(h, k, h, "conv2")
        self.norm2 = TorchBatchNorm(name="norm2")
        self.conv3 = torch_conv2d(1, k, h, "conv3")
        hidden_shape = tuple(input_shape[:-1]) + (h,)
        self.conv1.build(input_shape)
        self.norm1.build(hidden_shape)
        self.conv2.build(hidden_shape)
        self.norm2.build(hidden_shape)
        self.conv3.build(hidden_shape)
        if not self.trainable:  # a frozen layer (from its config) freezes what it builds
            self.trainable = False

    def context(self, images, training=None):
        """The context network's map of each image, (B, H, W, 1)."""
        x = ops.relu(self.norm1(self.conv1(images), training=training))
        x = ops.relu(self.norm2(self.conv2(x), training=training))
        return self.conv3(x)

    @contextlib.contextmanager
    def support_sets(self, count):
        """Within the block, a batch the layer is called on is ``count``
        support sets of equal size, one after the other (ARM's training pass
        on the domains' concatenated minibatches); outside it, and after it,
        the whole batch is one. It is read when the call is traced (JAX,
        tf.function) or run (torch), so ARM wraps its step's forward in it."""
        self._support_sets = int(count)
        try:
            yield
        finally:
            self._support_sets = None

    def call(self, inputs, training=None):
        maps = self.context(inputs, training=training)
        if not self._support_sets:
            context = ops.mean(maps, axis=0, keepdims=True)
            return ops.concatenate([inputs, ops.zeros_like(maps) + context], axis=-1)
        sets = ops.reshape(maps, (self._support_sets, -1) + tuple(ops.shape(maps)[1:]))
        context = ops.zeros_like(sets) + ops.mean(sets, axis=1, keepdims=True)
        return ops.concatenate([inputs, ops.reshape(context, ops.shape(maps))], axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (input_shape[-1] + 1,)

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden, "kernel_size": self.kernel_size}
