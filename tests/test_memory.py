"""Peak memory in run records and `kdg bench` (kdg.memory): the accelerator's
when training on one, the host's otherwise, and which of the two."""

import resource
import sys

import keras
import numpy as np
import pytest

from kdg import memory
from kdg.bench import measure, tables
from tests.bench.test_bench import _results

BACKEND = keras.backend.backend()


def _rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: kilobytes


def test_host_peak_on_a_machine_without_accelerator():
    """Here every backend computes on the CPU: the host's peak resident size, so labelled."""
    keras.ops.convert_to_numpy(keras.ops.ones((256, 256)) @ keras.ops.ones((256, 256)))
    assert memory.accelerator_peak(BACKEND) is None
    before = _rss_gb()
    gb, where = memory.peak(BACKEND)
    assert where == "host"
    assert before <= gb <= _rss_gb()


@pytest.mark.parametrize("platform, kind", [("cpu", "host"), ("CPU", "host"), ("gpu", "gpu"),
                                            ("cuda", "gpu"), ("rocm", "gpu"), ("tpu", "tpu")])
def test_device_kind(platform, kind):
    assert memory.device_kind(platform) == kind


class _Device:
    """A JAX device as jax.Device presents itself: a platform and memory_stats()."""

    def __init__(self, platform, stats):
        self.platform, self._stats = platform, stats

    def memory_stats(self):
        return self._stats


def test_jax_peak_bytes_reads_the_accelerator_and_never_the_cpu():
    """No GPU here: the GPU case is a device of JAX's shape; the CPU case is
    JAX's own CPU device where JAX runs."""
    gpu = _Device("gpu", {"peak_bytes_in_use": 3 * 2**30, "bytes_in_use": 2**30})
    assert memory.jax_peak_bytes(gpu) == 3 * 2**30
    assert memory.jax_peak_bytes(_Device("cuda", None)) is None  # no statistics kept
    assert memory.jax_peak_bytes(_Device("cpu", {"peak_bytes_in_use": 5})) is None
    if BACKEND == "jax":
        import jax

        assert memory.jax_peak_bytes(jax.local_devices()[0]) is None


def test_bench_records_say_where_memory_was_counted():
    """measure.time_algorithms with the session's backend: on the CPU the
    accelerator fields say "host", with no device figure."""
    records = measure.time_algorithms(
        ["a"], lambda name: (lambda: float(np.ones(1000).sum())),
        {"warmup": 1, "repeats": 2}, backend=BACKEND)
    record = records["a"]
    assert record["memory_device"] == "host"
    assert record["device_peak_mb"] is None and record["device_peak_reset"] is False


def test_bench_table_of_accelerator_memory():
    """Shown only for runners that trained on an accelerator: MB, the ratio
    to ERM's, and * where the peak could not be reset (JAX)."""
    results = _results()
    assert "Peak accelerator memory" not in tables.markdown(results)
    runs = results["scenarios"][0]["runs"]
    for name, mb in {"erm": 1000.0, "fish": 1500.0, "corgrad": 1200.0}.items():
        runs["jax"]["algorithms"][name].update(memory_device="gpu", device_peak_mb=mb,
                                               device_peak_reset=False)
    text = tables.markdown(results)
    assert "Peak accelerator memory" in text
    assert "| ERM | 1000* |" in text and "| Fish | 1500* (1.50x) |" in text
    assert "| CorGrad | 1200* (1.20x) |" in text
    runs["jax"]["algorithms"]["fish"]["device_peak_reset"] = True
    assert "| Fish | 1500 (1.50x) |" in tables.markdown(results)


def test_frameworks_not_loaded_are_not_imported():
    """Asking about a framework this process has not imported answers "host"
    without importing it (the bench's measure module imports no framework)."""
    absent = next((b for b, mod in (("torch", "torch"), ("jax", "jax"))
                   if mod not in sys.modules), None)
    if absent is None:
        pytest.skip("both jax and torch are loaded in this process")
    assert memory.accelerator_peak(absent) is None
    assert absent not in sys.modules
