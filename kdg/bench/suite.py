"""The benchmark's parent process: one subprocess per (scenario, runner).

A *scenario* is a model at a size and the algorithms to time on it; a
*runner* is a Keras backend ("jax", "tensorflow", "torch"), TensorFlow with
XLA ("tensorflow-xla") or the plain PyTorch reference ("reference"). Keras
fixes its backend at import, so each runner is its own process
(`kdg.bench.run` or `kdg.bench.reference`); they run one after the other,
never side by side, so that each has the machine to itself. The parent
imports no framework: it writes each worker's configuration as JSON, waits,
and collects the JSON the worker writes.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kdg.bench import measure

#: The bench's own settings of the algorithms that need any, by registry name
#: (`kdg.algorithms.ALGORITHMS`): the one place they are written. An algorithm
#: not listed here is timed as its class builds it with its defaults, under its
#: `title`, so that an algorithm added to the registry is benched (and given
#: its PyTorch reference's ratio, or "no reference") without a change here.
#:
#: - label: the row's name (default: the class's `title`);
#: - in_window: a GGA-type wrapper, timed inside its annealing window (every
#:   step searches, `gga_trials` trials; its base is its default, ERM);
#: - unit: an extra timed just before it, its unit of cost (`EXTRAS`);
#: - reference: hyperparameters given to its PyTorch reference only;
#: - erm_target: the target for its step, as a ratio to ERM's on the same backend.
SETTINGS = {
    "fish": {"erm_target": 1.15},
    "corgrad": {"erm_target": 1.2,
                "reference": {"tie_tol": 0.0}},  # the reference's literal loop
    "ggal": {"erm_target": 1.2},
    "gga": {"label": "GGA (in window)", "in_window": True, "unit": "gga_eval"},
    # algorithms that train a network with their own layers: the model option
    # that adds them (`kdg.models.build`), and the models that take it
    "mixstyle": {"model_options": {"mixstyle_layers": (1, 2, 3)},
                 "models": ("resnet18", "resnet50")},
    "arm": {"model_options": {"arm_context": True}},
}
#: What the bench times beside the registry's algorithms: "gga_eval", one GGA
#: evaluation alone (the D per-domain passes, the floor of Fish's and
#: CorGrad's step), timed with "gga" anyway and selectable on its own.
EXTRAS = {"gga_eval": {"label": "one GGA evaluation"}}
#: the annealing window that holds every benchmarked step (`in_window`)
ALWAYS = 2 ** 30
#: GGA's rho inside the window (the authors' value for PACS and most datasets)
IN_WINDOW_RHO = 1e-5


def registry():
    """{name: title} of every algorithm of kdg's registry, in its order.
    Imports `kdg.algorithms` (and so Keras) on first use: the parent process
    needs the names only, never a computation."""
    from kdg.algorithms import ALGORITHMS as REGISTRY

    return {name: cls.title or name for name, cls in REGISTRY.items()}


def default_algorithms(model=None):
    """What `kdg bench` times by default: every registry algorithm that can
    train `model` (MixStyle needs a ResNet's stages)."""
    return tuple(n for n in registry() if runs_on(n, model))


def runs_on(name, model):
    """Whether algorithm `name` can train the bench's `model` (None: any)."""
    models = SETTINGS.get(name, {}).get("models")
    return model is None or models is None or model in models


def model_options(name):
    """The `kdg.models.build` options algorithm `name` needs."""
    return dict(SETTINGS.get(name, {}).get("model_options", {}))


def selectable():
    """The names `--algorithm` accepts: the registry's and `EXTRAS`."""
    return tuple(registry()) + tuple(EXTRAS)


def label(name, titles=None):
    """The row name of `name` in the tables."""
    own = SETTINGS.get(name, EXTRAS.get(name, {})).get("label")
    return own or (titles if titles is not None else registry()).get(name, name)


def hparams(name, config, reference=False):
    """The constructor arguments the bench gives algorithm `name` under a
    scenario's `config` (`reference`: those of its PyTorch reference, which
    also takes the scenario's lr)."""
    settings = SETTINGS.get(name, {})
    out = {}
    if settings.get("in_window"):
        out.update(start_step=0, end_step=ALWAYS, trials=int(config["gga_trials"]),
                   rho=IN_WINDOW_RHO)
    if reference:
        out.update(settings.get("reference", {}), lr=float(config["lr"]))
    return out


from kdg.recipes import BACKENDS  # noqa: E402  (kdg.bench.BACKENDS, for its users)
RUNNERS = {
    "jax": ("kdg.bench.run", {"KERAS_BACKEND": "jax"}, {}),
    "tensorflow": ("kdg.bench.run", {"KERAS_BACKEND": "tensorflow"}, {}),
    "tensorflow-xla": ("kdg.bench.run", {"KERAS_BACKEND": "tensorflow"},
                       {"jit_compile": True}),
    "torch": ("kdg.bench.run", {"KERAS_BACKEND": "torch"}, {}),
    "reference": ("kdg.bench.reference", {}, {}),
}
DEFAULT_RUNNERS = ("jax", "tensorflow", "torch", "reference")

#: input shape (size, channels) and classes of each model, by default
MODELS = {
    "mnist_cnn": {"image_size": 28, "channels": 1, "num_classes": 10},
    "resnet18": {"image_size": 32, "channels": 3, "num_classes": 7},
    "resnet50": {"image_size": 32, "channels": 3, "num_classes": 7},
    # DomainBed's MLP on 8x8 inputs: the cheapest model to compile (the tests' smoke run)
    "mlp": {"image_size": 8, "channels": 1, "num_classes": 3},
}


def timed(algorithms):
    """What is timed for `algorithms`: an algorithm with a `unit` (GGA: one
    GGA evaluation) comes with it, timed just before it."""
    names = list(algorithms)
    for name in list(names):
        unit = SETTINGS.get(name, {}).get("unit")
        if unit and unit not in names:
            names.insert(names.index(name), unit)
    return names


def scenario(model="mnist_cnn", *, image_size=None, domains=3, batch=32,
             algorithms=None, repeats=10, warmup=2, gga_trials=8, gga_repeats=3,
             gga_warmup=1, compiles=1, seed=0, lr=5e-5, quick=False):
    """One scenario's configuration (what every worker of it receives).

    `algorithms`: registry names (or `EXTRAS`), default every registry
    algorithm; the config carries their labels, so that a report renders
    without the registry. `quick` is the CI smoke test's: tiny images and
    batches, few repeats, two GGA trials."""
    if model not in MODELS:
        raise ValueError(f"kdg bench knows the models {', '.join(MODELS)}; got {model!r}.")
    from kdg.algorithm_names import normalize

    titles = registry()
    algorithms = [n if n in EXTRAS else normalize(n)
                  for n in algorithms or default_algorithms(model)]
    unknown = [n for n in algorithms if n not in titles and n not in EXTRAS]
    if unknown:
        raise ValueError(f"Unknown algorithm(s) {', '.join(unknown)}; kdg bench times the "
                         f"registry's: {', '.join(list(titles) + list(EXTRAS))}.")
    cannot = [n for n in algorithms if not runs_on(n, model)]
    if cannot:
        raise ValueError(f"{', '.join(cannot)} cannot train the bench's {model}; it needs "
                         f"one of {', '.join(SETTINGS[cannot[0]]['models'])}.")
    labels = {n: label(n, titles) for n in timed(algorithms)}
    config = dict(MODELS[model], model=model, domains=int(domains), batch=int(batch),
                  algorithms=algorithms, labels=labels, repeats=int(repeats), warmup=int(warmup),
                  gga_trials=int(gga_trials), gga_repeats=int(gga_repeats),
                  gga_warmup=int(gga_warmup), compiles=int(compiles), seed=int(seed),
                  lr=float(lr))
    if quick:
        config.update(image_size={"mnist_cnn": 12, "mlp": 8}.get(model, 32), batch=4, repeats=3,
                      warmup=1, gga_trials=2, gga_repeats=2, gga_warmup=1, compiles=1,
                      framework_warmup=False, structure=False)
    if image_size is not None:
        config["image_size"] = int(image_size)
    if config["compiles"] < 1:
        raise ValueError(f"compiles must be at least 1; got {compiles}.")
    if config["domains"] < 2:
        raise ValueError("kdg bench needs at least 2 domains (the algorithms compare them).")
    return config


def _cores(threads, slot=0):
    """`threads` of the cores this process may use (None: all), the
    `slot`-th such group (wrapping around) when runners run side by side."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    if threads is None or allowed is None:
        return None
    if threads < 1:
        raise ValueError(f"threads must be at least 1; got {threads}.")
    threads = min(threads, len(allowed))
    start = slot * threads
    return [allowed[(start + i) % len(allowed)] for i in range(threads)]


class _Worker:
    """One runner's process for one scenario; its output goes to files (no
    pipe to fill up while other workers are being waited for)."""

    def __init__(self, runner, config, threads=None, slot=0):
        module, env_extra, config_extra = RUNNERS[runner]
        self.runner = runner
        config = dict(config, runner=runner, **config_extra)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **env_extra)
        cores = _cores(threads, slot)
        if cores is not None:
            # Every framework sizes its thread pools by the cores it may run on.
            env["OMP_NUM_THREADS"] = str(len(cores))
            config["threads"] = len(cores)
        self._tmp = tempfile.TemporaryDirectory(prefix="kdg-bench-")
        folder = Path(self._tmp.name)
        (folder / "config.json").write_text(json.dumps(config))
        self._out, self._log = folder / "out.json", folder / "log.txt"
        self.end = None
        self._start = time.perf_counter()
        with open(self._log, "w") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", module, str(folder / "config.json"), str(self._out)],
                env=env, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=None if cores is None else (lambda: os.sched_setaffinity(0, cores)))

    def poll(self):
        """True once the process has ended (noting when)."""
        if self.end is None and self._proc.poll() is not None:
            self.end = time.perf_counter()
        return self.end is not None

    def result(self, timeout):
        """Wait for the worker; its record, or {"error": ...}."""
        try:
            try:
                self._proc.wait(timeout=max(timeout - (time.perf_counter() - self._start), 1))
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
                return {"runner": self.runner, "error": f"timed out after {timeout} s"}
            self.poll()
            if self._proc.returncode != 0 or not self._out.exists():
                tail = self._log.read_text(errors="replace")[-4000:]
                return {"runner": self.runner,
                        "error": f"exit {self._proc.returncode}:\n{tail}"}
            result = json.loads(self._out.read_text())
            result["wall_s"] = self.end - self._start
            return result
        finally:
            self._tmp.cleanup()


def run_suite(scenarios, runners=DEFAULT_RUNNERS, *, threads=None, parallel=False,
              timeout=3600, command=None, log=print):
    """Run every scenario on every runner, one process at a time; returns
    the results (JSON-friendly): the machine, the command, and per scenario
    its configuration and each runner's record (or its error).

    `threads` restricts every runner to that many cores (None: all), the
    same for all runners. `parallel` starts a scenario's runners side by
    side instead of one after the other: faster, but the runners then share
    the machine, so their times are not benchmarks (the smoke test's mode).
    """
    unknown = sorted(set(runners) - set(RUNNERS))
    if unknown:
        raise ValueError(f"Unknown runner(s) {', '.join(unknown)}; "
                         f"known: {', '.join(RUNNERS)}.")
    results = {
        "kdg_bench": 1,
        "command": command or " ".join(shlex.quote(a) for a in sys.argv),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": measure.machine(),
        "load_before": os.getloadavg()[0],
        "threads": len(_cores(threads)) if threads else None,
        "parallel": bool(parallel),
        "scenarios": [],
    }
    start = time.perf_counter()
    for config in scenarios:
        entry = {"config": config, "runs": {}}
        results["scenarios"].append(entry)
        label = (f"{config['model']} {config['image_size']}x{config['image_size']}, "
                 f"D={config['domains']} B={config['batch']}")
        if parallel:
            log(f"{label}: {', '.join(runners)} side by side ...")
            workers = [_Worker(runner, config, threads, slot)
                       for slot, runner in enumerate(runners)]
            deadline = time.perf_counter() + timeout
            while not all([w.poll() for w in workers]) and time.perf_counter() < deadline:
                time.sleep(0.1)
        else:
            workers = runners
        for worker in workers:
            if not parallel:
                log(f"{label}: {worker} ...")
                worker = _Worker(worker, config, threads)
            run = worker.result(timeout)
            if "error" in run:
                log(f"  {worker.runner} failed: {run['error'].splitlines()[0]}")
            entry["runs"][worker.runner] = run
    results["wall_s"] = time.perf_counter() - start
    results["load_after"] = os.getloadavg()[0]
    return results


def failures(results):
    """(scenario model, runner, error) of every worker that failed."""
    return [
        (entry["config"]["model"], runner, run["error"])
        for entry in results["scenarios"]
        for runner, run in entry["runs"].items()
        if "error" in run
    ]
