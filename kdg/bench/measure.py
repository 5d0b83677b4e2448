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


# -- the protocol shared by the workers ------------------------------------------------

def repeats_of(name, config):
    """(warm-up steps, timed steps) of an algorithm under a scenario."""
    if name == "gga":
        return int(config["gga_warmup"]), int(config["gga_repeats"])
    return int(config["warmup"]), int(config["repeats"])


def time_algorithms(names, prepare, config, memory_steps=2, backend=None):
    """Time each algorithm's step: the protocol of both workers.

    `prepare(name)` builds the algorithm's model and returns `step`, a
    function doing one training step and returning its loss (a float, so
    that the step has finished when it returns).

    Per algorithm, one after the other: the process's resident size, then
    `prepare`, the first step (timed: compiling included), the warm-up
    steps, and `memory_steps` steps during which the peak resident size is
    taken. Then the timed steps, *interleaved*: round r times one step of
    every algorithm that still has steps to time, so that a change in the
    machine's load during the run touches every algorithm alike and not the
    ratios between them.

    With `config["compiles"]` = N > 1, every algorithm's model is then
    built N - 1 more times, again interleaved, and only its first step is
    timed: a compile takes seconds and varies by a quarter from one to the
    next on a busy CPU, so that a ratio of two compile times near a target
    is not decided by one draw.

    Returns {name: record}, a record holding the statistics of
    `summarize`, `first_step_s` (the median of the N first steps, each in
    `first_steps_s`), `compile_s` (that median less the median step, the
    same for each first step in `compiles_s`), the memory and the losses
    seen. With `backend` (the framework that trains: "jax", "tensorflow",
    "torch"), the accelerator's peak during those steps too, where it
    trains on one (`kdg.memory`): `device_peak_mb` and `memory_device`
    ("gpu"; "host" and None on the CPU), `device_peak_reset` False where the
    framework cannot reset its peak (JAX: the process's peak so far)."""
    from kdg import memory  # imports no framework the process has not loaded

    steps, records, losses = {}, {}, {}
    for name in names:
        warmup, _ = repeats_of(name, config)
        base = rss_mb()
        step = prepare(name)
        first, loss = time_call(step)
        losses[name] = [loss] + [step() for _ in range(warmup)]
        reset_peak()
        device_reset = memory.reset_accelerator_peak(backend) if backend else False
        losses[name] += [step() for _ in range(memory_steps)]
        peak = peak_mb()
        device = memory.accelerator_peak(backend) if backend else None
        steps[name] = step
        records[name] = {
            "algorithm": name,
            "first_step_s": first,
            "base_rss_mb": base,
            "peak_rss_mb": peak,
            "peak_over_base_mb": None if peak is None or base is None else peak - base,
            "memory_device": memory.HOST if device is None else device[1],
            "device_peak_mb": None if device is None else device[0] / 2**20,
            "device_peak_reset": device_reset,
        }
    times = {name: [] for name in names}
    rounds = max(repeats_of(name, config)[1] for name in names)
    for r in range(rounds):
        for name in names:
            if r < repeats_of(name, config)[1]:
                seconds, loss = time_call(steps[name])
                times[name].append(seconds)
                losses[name].append(loss)
    steps.clear()  # the timed models can go before more are built
    firsts = {name: [records[name]["first_step_s"]] for name in names}
    for _ in range(int(config.get("compiles", 1)) - 1):
        for name in names:
            firsts[name].append(time_call(prepare(name))[0])
    for name in names:
        stats = summarize(times[name])
        records[name].update(stats)
        records[name]["first_steps_s"] = firsts[name]
        records[name]["first_step_s"] = statistics.median(firsts[name])
        records[name]["compiles_s"] = [max(f - stats["median_s"], 0.0) for f in firsts[name]]
        records[name]["compile_s"] = statistics.median(records[name]["compiles_s"])
        records[name]["loss_first"] = losses[name][0]
        records[name]["loss_last"] = losses[name][-1]
        records[name]["finite"] = all(math.isfinite(v) for v in losses[name])
    return records
