"""Data-parallel training of kdg models on several devices (JAX).

kdg's training batches are ``(D, B, ...)``: D domains first, then the B
examples of each. Keras' `keras.distribution.DataParallel` shards the first
axis of every input, which here would put whole domains on different devices
(and fails outright when D is not a multiple of the device count).
`DataParallel` below shards the *examples* axis B of training batches and,
as Keras does, the first axis of ordinary ``(B, ...)`` evaluation and
prediction batches.

The algorithms need no change for this: under JAX, a sharded step computes
exactly what the one-device step computes (the data layout only tells XLA
where to put the work), so the per-domain losses and gradients are the
global ones, averaged over all devices' examples, before any gradient
surgery (CorGrad), matching (Fish) or acceptance test (GGA) sees them.

    import kdg.distribution
    kdg.distribution.configure(4)        # or a list: ["gpu:0", "gpu:1"]
    model = kdg.models.build(...)        # after configure: variables are placed
    model.compile(...); model.fit(...)

Only JAX is supported: Keras 3.15's distribution API (`keras.distribution`)
is implemented for JAX alone. See the README's "Multi-device training".
"""

from __future__ import annotations

import sys

import keras

#: the Keras trainer entry points whose batches are kdg training batches
#: (D, B, ...), and those whose batches are ordinary (B, ...) ones
_TRAINING = frozenset({"fit", "train_on_batch"})
_EVALUATION = frozenset({"evaluate", "test_on_batch", "predict", "predict_on_batch"})


def _dg_model_class():
    from kdg.model import DGModel

    return DGModel


def _training_batches():
    """True when the data being laid out is a kdg model's training data.

    Keras asks a distribution for the layout of each input tensor from its
    shape alone (`get_data_layout(shape)`), and a (D, B, ...) training batch
    cannot be told from a (B, ...) batch by its shape. What tells them apart
    is who is asking: the innermost Keras trainer method on the call stack
    (`fit`/`train_on_batch` of a `kdg.DGModel`: training batches;
    `evaluate`/`predict`, also when `fit` runs validation: ordinary ones).
    """
    frame = sys._getframe(2)
    dg_model = None
    while frame is not None:
        name = frame.f_code.co_name
        if name in _TRAINING or name in _EVALUATION:
            owner = frame.f_locals.get("self")
            if isinstance(owner, keras.Model):
                if dg_model is None:
                    dg_model = _dg_model_class()
                return name in _TRAINING and isinstance(owner, dg_model)
        frame = frame.f_back
    return False


class DataParallel(keras.distribution.DataParallel):
    """`keras.distribution.DataParallel` for kdg: training batches (D, B, ...)
    are sharded along B (axis 1), so that every device holds a share of every
    domain's examples; evaluation and prediction batches (B, ...) along
    axis 0. A batch axis that the devices do not divide evenly is replicated
    instead of sharded (correct, only not parallel).

    Takes Keras' arguments: ``devices`` (e.g. ``["cpu:0", "cpu:1"]``) or a
    one-dimensional ``device_mesh``; by default all devices.
    """

    def batch_axis(self, data_shape):
        """The axis of an input of this shape that is sharded, or None."""
        if not data_shape:
            return None
        axis = 1 if len(data_shape) >= 2 and _training_batches() else 0
        size = data_shape[axis]
        devices = self.device_mesh.devices.size
        if size is None or size % devices:
            return None
        return axis

    def get_data_layout(self, data_shape):
        axes = [None] * len(data_shape)
        axis = self.batch_axis(data_shape)
        if axis is not None:
            axes[axis] = self.batch_dim_name
        return keras.distribution.TensorLayout(axes, self.device_mesh)

    def distribute_dataset(self, dataset):
        """Several processes (multi-host): each keeps its share of every
        domain's examples of a training dataset of (D, B, ...) batches;
        other datasets are left to Keras."""
        if not self._is_multi_process or not self.auto_shard_dataset:
            return dataset
        import tensorflow as tf

        if not isinstance(dataset, tf.data.Dataset) or not _is_domain_batched(dataset):
            return super().distribute_dataset(dataset)
        count, index = self.num_processes, self._process_id

        def shard(*batch):
            def part(t):
                share = tf.shape(t)[1] // count
                return t[:, index * share:(index + 1) * share]

            return tf.nest.map_structure(part, batch)

        return dataset.map(shard, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
            tf.data.AUTOTUNE)


def _is_domain_batched(dataset):
    """A dataset of kdg training batches: integer labels y of shape (D, B),
    every x tensor of shape (D, B, ...) (the rule `kdg.DGModel` uses)."""
    import tensorflow as tf

    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) < 2:
        return False
    x, y = spec[0], spec[1]
    if not isinstance(y, tf.TensorSpec) or y.shape.rank != 2 or not y.dtype.is_integer:
        return False
    return all(s.shape.rank is not None and s.shape.rank >= 2
               and s.shape[:2].as_list() == y.shape.as_list()
               for s in tf.nest.flatten(x))


def configure(devices=None):
    """Train on several devices: set a `DataParallel` distribution over
    `devices` as Keras' global distribution, and return it.

    Args:
        devices: None or 1: one device, nothing is set (returns None); an
            int n: the first n of `keras.distribution.list_devices()`; a list
            of device names ("gpu:0", "cpu:1", ...).

    Call it before building the model, so that its variables are created on
    the devices. Multi-device training needs the JAX backend.
    """
    chosen = check_devices(devices)
    if chosen is None:
        return None
    distribution = DataParallel(devices=chosen)
    keras.distribution.set_distribution(distribution)
    return distribution


def check_devices(devices=None):
    """The device names `configure(devices)` would use (None for one
    device), or a ValueError that names the problem and the fix."""
    if devices is None or (isinstance(devices, int) and not isinstance(devices, bool)
                           and devices == 1):
        return None
    backend = keras.backend.backend()
    if backend != "jax":
        raise ValueError(
            f"Multi-device training (devices={devices!r}) needs the JAX backend; Keras is "
            f"running on {backend}. Keras 3.15's distribution API is implemented for JAX "
            "only: set KERAS_BACKEND=jax (or the recipe's backend: jax), or train on one "
            "device."
        )
    available = keras.distribution.list_devices()
    if isinstance(devices, int) and not isinstance(devices, bool):
        if devices < 1:
            raise ValueError(f"devices must be at least 1; got {devices}.")
        if devices > len(available):
            raise ValueError(
                f"devices={devices}, but only {len(available)} are available "
                f"({', '.join(available)}). On a CPU, XLA_FLAGS="
                f"--xla_force_host_platform_device_count={devices} (set before JAX "
                "starts) makes that many virtual devices."
            )
        chosen = available[:devices]
    else:
        chosen = [str(d) for d in devices]
        unknown = [d for d in chosen if d not in available]
        if unknown:
            raise ValueError(f"Unknown device(s) {', '.join(unknown)}; available: "
                             f"{', '.join(available)}.")
        if not chosen:
            raise ValueError("devices is an empty list.")
        if len(chosen) == 1:
            return None
    return chosen


__all__ = ["DataParallel", "check_devices", "configure"]
