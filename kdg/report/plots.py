"""Figures: accuracy per domain over steps, and gradient diagnostics over steps.

Everything draws on :class:`matplotlib.figure.Figure` objects saved straight
to PNG with the Agg renderer; ``pyplot`` and the global backend are never
touched, so importing this module changes nothing for the caller.

* :func:`plot_accuracy`: one line per domain and split (``in`` solid, ``out``
  dashed; the test domain drawn thicker), mean over the given runs with a
  ± stderr band when there are several, the selected checkpoints as crosses.
* :func:`plot_diagnostics`: one panel per diagnostic family present in the
  records (see :data:`DIAGNOSTIC_PANELS`), one colour per algorithm; a
  diagnostic absent (or all NaN/null) in every run is skipped, and a figure
  with nothing to draw is not written.
* :func:`write_plots`: both, for the runs a model selection chose.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from .loading import Run, as_float
from .loading import domain_names as _domain_names
from .selection import Selection

# (panel title, record keys drawn in it), in the order of the papers' figures.
DIAGNOSTIC_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Cosine between domain gradients", ("grad_cos_min", "grad_cos_mean")),
    ("CorGrad gradient surgery", ("modification_ratio", "modification_frequency")),
    ("GGA: min pairwise cosine before / after annealing", ("gga_cos_before", "gga_cos_after")),
    ("GGA: accepted perturbations", ("gga_accepted",)),
    ("AND-mask / SAND-mask: the mask's mean (fraction of the update kept)", ("mask_fraction",)),
    ("Fishr: gradient-variance penalty", ("fishr_penalty",)),
    ("DANN / CDANN: the domain discriminator", ("disc_acc", "disc_loss")),
)
_LINESTYLES = ("-", "--", ":", "-.")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"


def mean_series(runs: Sequence[Run], key: str, scale: float = 1.0):
    """(steps, mean, stderr) of ``key`` over ``runs``, per step, ignoring
    NaN/absent values; steps where no run has a value are dropped. stderr is
    the population std / sqrt(n), 0 where one run contributes."""
    values: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        for record in run.records:
            value = as_float(record.get(key))
            if not math.isnan(value):
                values[int(record["step"])].append(scale * value)
    steps = np.array(sorted(values), dtype=float)
    means = np.array([np.mean(values[s]) for s in sorted(values)])
    errs = np.array([np.std(values[s]) / np.sqrt(len(values[s])) for s in sorted(values)])
    return steps, means, errs


def _marker(steps) -> str | None:
    """Dots on short series, so that a one-evaluation run still shows."""
    return "o" if len(steps) <= 20 else None


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
    return path


def plot_accuracy(runs: Sequence[Run], path, title: str | None = None,
                  names: Sequence[str] | None = None,
                  selected: Sequence[tuple[int, float]] = ()) -> Path:
    """Accuracy (%) of every domain over steps, mean over ``runs`` (which
    should share dataset and test domains: one run, or one per trial).
    ``selected`` are (step, test accuracy as a fraction) points to mark."""
    if not runs:
        raise ValueError("plot_accuracy needs at least one run")
    n_envs = max(r.n_envs for r in runs)
    test_envs = set(runs[0].test_envs)
    names = list(names) if names else [f"env{i}" for i in range(n_envs)]
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.add_subplot()
    for env in range(n_envs):
        is_test = env in test_envs
        for split, style in (("in", "-"), ("out", "--")):
            steps, mean, err = mean_series(runs, f"env{env}_{split}_acc", scale=100.0)
            if not len(steps):
                continue
            label = f"{names[env]} {split}" + (" (test)" if is_test else "")
            (line,) = ax.plot(steps, mean, style, color=f"C{env % 10}",
                              linewidth=2.4 if is_test else 1.3, label=label,
                              marker=_marker(steps), markersize=3)
            if len(runs) > 1:
                ax.fill_between(steps, mean - err, mean + err, color=line.get_color(),
                                alpha=0.12, linewidth=0)
    if selected:
        ax.scatter([s for s, _ in selected], [100 * a for _, a in selected], marker="x",
                   color="black", zorder=5, label="selected checkpoint")
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    suffix = f" (mean over {len(runs)} runs)" if len(runs) > 1 else ""
    ax.set_title((title or f"{runs[0].dataset} / {runs[0].algorithm}") + suffix)
    ax.legend(fontsize="small", ncol=2, loc="best")
    return _save(fig, path)


def plot_run_accuracy(run: Run, path, names: Sequence[str] | None = None) -> Path:
    """Accuracy of every domain over the steps of one run."""
    names = names or _domain_names(run.dataset, run.n_envs, [run])
    title = (f"{run.dataset} / {run.algorithm}, test envs {list(run.test_envs)}, "
             f"hparams {run.hparams_seed}, trial {run.trial_seed}")
    return plot_accuracy([run], path, title=title, names=names)


def plot_diagnostics(runs_by_algorithm: Mapping[str, Sequence[Run]], path,
                     title: str = "Gradient diagnostics") -> Path | None:
    """Diagnostics over steps, one colour per algorithm (mean over its runs).
    Returns None, writing nothing, when no run has any diagnostic."""
    panels = []
    for panel_title, keys in DIAGNOSTIC_PANELS:
        lines = []
        for a, (algorithm, runs) in enumerate(runs_by_algorithm.items()):
            for k, key in enumerate(keys):
                steps, mean, err = mean_series(runs, key)
                if len(steps):
                    lines.append((f"{algorithm} {key}", f"C{a % 10}",
                                  _LINESTYLES[k % len(_LINESTYLES)], steps, mean, err,
                                  len(runs) > 1))
        if lines:
            panels.append((panel_title, lines))
    if not panels:
        return None
    fig = Figure(figsize=(8, 3.2 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False, sharex=True)[:, 0]
    for ax, (panel_title, lines) in zip(axes, panels):
        for label, color, style, steps, mean, err, band in lines:
            ax.plot(steps, mean, style, color=color, label=label, linewidth=1.4,
                    marker=_marker(steps), markersize=3)
            if band:
                ax.fill_between(steps, mean - err, mean + err, color=color, alpha=0.12,
                                linewidth=0)
        ax.set_title(panel_title, fontsize="medium")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    axes[-1].set_xlabel("step")
    fig.suptitle(title)
    return _save(fig, path)


def write_plots(selection: Selection, out_dir,
                domain_names: Mapping[str, Sequence[str]] | None = None) -> list[Path]:
    """Write, under ``out_dir``, for the runs the selection chose:

    * ``accuracy_{dataset}_{algorithm}_env{t}.png``: accuracy per domain over
      steps for test domain t, mean over trials, selected checkpoints marked;
    * ``diagnostics_{dataset}.png``: gradient diagnostics per algorithm (mean
      over the chosen runs of every test domain and trial), when any exist.

    Returns the paths written.
    """
    out_dir = Path(out_dir)
    written: list[Path] = []
    for dataset in selection.datasets:
        names = _domain_names(dataset, selection.n_envs[dataset], selection.runs, domain_names)
        chosen: dict[str, list[Run]] = {}
        for algorithm in selection.algorithms:
            for env in range(selection.n_envs[dataset]):
                group = selection.group(dataset, algorithm, env)
                if group is None or not group.trials:
                    continue
                runs = [t.run for t in group.trials]
                chosen.setdefault(algorithm, []).extend(runs)
                path = out_dir / f"accuracy_{_slug(dataset)}_{_slug(algorithm)}_env{env}.png"
                title = (f"{dataset} / {algorithm}, test domain {names[env]} "
                         f"({selection.method.key})")
                written.append(plot_accuracy(runs, path, title=title, names=names,
                                             selected=[(t.step, t.test_acc) for t in group.trials]))
        diagnostics = plot_diagnostics(chosen, out_dir / f"diagnostics_{_slug(dataset)}.png",
                                       title=f"{dataset}: gradient diagnostics (selected runs)")
        if diagnostics is not None:
            written.append(diagnostics)
    return written
