"""Peak memory of a training process: the accelerator's when the model
trains on one, the host's otherwise.

The one owner of that choice, for ``mem_gb`` / ``mem_device`` in a run's
``results.jsonl`` (:mod:`kdg.training`) and the peak memory of ``kdg bench``.
On a GPU, as DomainBed reports ``torch.cuda.max_memory_allocated``, the
figure is what the framework allocated on the device: PyTorch's
``torch.cuda.max_memory_allocated()``, JAX's ``peak_bytes_in_use`` of the
first local device, TensorFlow's ``get_memory_info("GPU:0")["peak"]``. On
the host it is the process's peak resident set size. Nothing here imports a
framework that the process has not imported already.
"""

from __future__ import annotations

import resource
import sys

HOST = "host"


def device_kind(platform: str) -> str:
    """Where memory is counted for a device of this platform: ``"host"`` for
    the CPU, else the accelerator (``"gpu"`` for JAX's ``gpu``/``cuda``/``rocm``)."""
    platform = platform.lower()
    if platform == "cpu":
        return HOST
    return "gpu" if platform in ("gpu", "cuda", "rocm") else platform


def jax_peak_bytes(device) -> int | None:
    """A JAX device's peak allocated bytes, None for the CPU (or where the
    device keeps no statistics)."""
    if device_kind(device.platform) == HOST:
        return None
    stats = device.memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def accelerator_peak(backend: str) -> tuple[int, str] | None:
    """(peak bytes, device kind) on the accelerator the backend computes on,
    None when it computes on the host."""
    if backend == "jax" and "jax" in sys.modules:
        import jax

        device = jax.local_devices()[0]
        peak = jax_peak_bytes(device)
        return None if peak is None else (peak, device_kind(device.platform))
    if backend == "torch" and "torch" in sys.modules:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return torch.cuda.max_memory_allocated(), "gpu"
        return None
    if backend == "tensorflow" and "tensorflow" in sys.modules:
        import tensorflow as tf  # the backend itself, not data: kdg.tf_data is not needed

        if tf.config.list_logical_devices("GPU"):
            return tf.config.experimental.get_memory_info("GPU:0")["peak"], "gpu"
    return None


def reset_accelerator_peak(backend: str) -> bool:
    """Start the accelerator's peak afresh where the framework can (PyTorch,
    TensorFlow); False where it cannot (JAX: the peak stays the process's)."""
    if backend == "torch" and "torch" in sys.modules:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()
            return True
    if backend == "tensorflow" and "tensorflow" in sys.modules:
        import tensorflow as tf

        if tf.config.list_logical_devices("GPU"):
            tf.config.experimental.reset_memory_stats("GPU:0")
            return True
    return False


def host_peak_bytes() -> int:
    """The process's peak resident set size (ru_maxrss: kilobytes on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def peak(backend: str) -> tuple[float, str]:
    """(peak GB, where): the accelerator's peak when `backend` computes on
    one (where = ``"gpu"``), else the host's (where = ``"host"``)."""
    found = accelerator_peak(backend)
    if found is not None:
        return found[0] / 2**30, found[1]
    return host_peak_bytes() / 2**30, HOST
