"""Measuring tools shared by the benchmark's workers: the synthetic batch,
step-time statistics, the process's memory and a description of the machine.

Nothing here imports Keras or PyTorch: the workers import this module
before (or instead of) a framework.
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
import platform
import statistics
import sys
import time

import numpy as np


def make_batch(domains, batch, image_size, channels, num_classes, seed=0):
    """One training batch, channels last: x (D, B, H, W, C) float32 in
    [0, 1.5], y (D, B) int32. Each domain has its own brightness and
    contrast, so that the per-domain gradients differ (and CorGrad finds
    conflicts to remove, as on real data)."""
    rng = np.random.default_rng(seed)
    shape = (domains, batch, image_size, image_size, channels)
    x = rng.random(shape, dtype=np.float32)
    scale = rng.uniform(0.5, 1.0, size=(domains, 1, 1, 1, 1)).astype(np.float32)
    shift = rng.uniform(0.0, 0.5, size=(domains, 1, 1, 1, 1)).astype(np.float32)
    x = x * scale + shift
    y = rng.integers(0, num_classes, size=(domains, batch)).astype(np.int32)
    return x, y


def summarize(times):
    """Median, quartiles and range (seconds) of repeated step times."""
    times = sorted(float(t) for t in times)
    if len(times) >= 2:
        q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    else:
        q1 = q3 = times[0]
    return {
        "median_s": statistics.median(times),
        "q1_s": q1,
        "q3_s": q3,
        "min_s": times[0],
        "max_s": times[-1],
        "n": len(times),
        "times_s": times,
    }


def time_call(fn):
    """(seconds, result) of one call of fn()."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


# -- memory --------------------------------------------------------------------
# The peak resident set size of this process (Linux's VmHWM), which Linux lets a
# process reset: writing "5" to /proc/self/clear_refs sets the peak to the
# current size. Freed memory is handed back to the system first (glibc's
# malloc_trim), so that a peak measured after a reset is the memory the steps
# themselves touch, not memory an earlier measurement left in malloc's pools.

def _status_kb(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _trim():
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def memory_supported():
    return _status_kb("VmHWM") is not None and os.access("/proc/self/clear_refs", os.W_OK)


def rss_mb():
    """The resident set size now, in MB (None where not measurable)."""
    _trim()
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024.0


def reset_peak():
    """Make the current resident size the peak; returns it in MB."""
    _trim()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    kb = _status_kb("VmHWM")
    return None if kb is None else kb / 1024.0


def peak_mb():
    """The peak resident set size since the last reset, in MB."""
    kb = _status_kb("VmHWM")
    return None if kb is None else kb / 1024.0


# -- the machine -------------------------------------------------------------------

def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine():
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    memory_gb = None
    kb = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    kb = int(line.split()[1])
    except OSError:
        pass
    if kb:
        memory_gb = round(kb / 1024 ** 2, 1)
    return {
        "cpu": cpu_model(),
        "cores": usable,
        "memory_gb": memory_gb,
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
    }


def finite_positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0
