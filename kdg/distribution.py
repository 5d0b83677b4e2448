"""Data-parallel training of kdg models on several devices (JAX), with
Keras' own `keras.distribution.DataParallel`.

kdg's training batches are ordinary ``(N, ...)`` batches whose N = D*B
examples are laid out domain-minor (`kdg.layout`): Keras' `DataParallel`
cuts the batch axis into equal contiguous parts, one per device, so each
device holds B/n examples of every domain (B a multiple of the device
count). Evaluation and prediction batches are sharded the same way.

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

import keras


def configure(devices=None):
    """Train on several devices: set Keras' `keras.distribution.DataParallel`
    over `devices` as Keras' global distribution, and return it.

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
    distribution = keras.distribution.DataParallel(devices=chosen)
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


__all__ = ["check_devices", "configure"]
