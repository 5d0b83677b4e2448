"""The whole report in one call: load, select, tabulate, render, plot.

:func:`report` is what ``kdg``'s command line calls; it holds no logic of its
own beyond putting the other modules together:

    loading.load_runs -> selection.select -> tables.results_tables
    (+ tables.published_comparison) -> tables.render (+ plots.write_plots)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence, Union

from .loading import find_results_files, load_runs
from .published import backbone_of, tables_for
from .selection import get_method, select
from .tables import (FORMATS, gga_changes, gga_combined_comparison, mnist_comparisons,
                     published_comparison, render, results_tables)

PathLike = Union[str, "os.PathLike[str]"]

_MAX_LISTED = 10


def report(dirs: Union[PathLike, Iterable[PathLike]], selection: str = "training_domain",
           fmt: str = "markdown", plots_dir: PathLike | None = None, *,
           include_unfinished: bool = False,
           domain_names: Mapping[str, Sequence[str]] | None = None,
           published: bool = True) -> str:
    """Render DomainBed-style result tables for every run under ``dirs``.

    Args:
        dirs: one directory or several; every ``results.jsonl`` below them
            (recursively) is one run.
        selection: ``training_domain`` (default), ``oracle`` or
            ``leave_one_domain_out``.
        fmt: one of ``markdown``, ``latex``, ``csv``, ``text``, ``rich``
            (``rich``: a string with ANSI colours for a terminal).
        plots_dir: if given, PNG figures are written there and listed at the
            end of the report (not in csv, which stays pure CSV).
        include_unfinished: use runs with no ``done`` file (DomainBed does);
            by default they are left out. Either way their cells are marked.
        domain_names: ``{dataset: [name, ...]}`` column labels (e.g. from a
            recipe), overriding what the records or DomainBed say.
        published: append the comparison with the published numbers when
            the results cover any of their datasets.

    Raises:
        FileNotFoundError: a directory is missing, or holds no usable run.
        MissingRunsError: ``leave_one_domain_out`` without two-test-domain runs.
        ValueError: unknown selection method or format.
    """
    dirs = [dirs] if isinstance(dirs, (str, os.PathLike)) else list(dirs)
    method = get_method(selection)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    runs = load_runs(dirs)
    if not runs:
        found = len(find_results_files(dirs))
        raise FileNotFoundError(f"no usable run under {', '.join(map(str, dirs))} "
                                f"({found} results.jsonl file(s) found)")
    chosen = select(runs, method, include_unfinished=include_unfinished)
    tables = results_tables(chosen, domain_names)
    averages = tables[-1]
    changes = gga_changes(tables, published)  # kdg's own GGA+X - X
    if changes is not None:
        tables.append(changes)
    if published:
        sources = tables_for(backbone_of(r.hparams) for r in runs)
        comparison = published_comparison(averages, sources)
        combined = gga_combined_comparison(averages)
        if comparison is not None:
            tables.append(comparison)
        if combined is not None:
            tables.append(combined)
        tables += mnist_comparisons(tables)

    title = f"kdg results, model selection: {chosen.method.name}"
    text = render(tables, fmt, title=title, notes=_run_notes(chosen))
    if plots_dir is not None:
        from .plots import write_plots  # matplotlib only when plots are asked for

        paths = write_plots(chosen, plots_dir, domain_names)
        text += _plot_listing(paths, fmt)
    return text


def _run_notes(selection) -> list[str]:
    runs = selection.runs
    unfinished = selection.unfinished_runs
    how = "used" if selection.include_unfinished else "left out"
    notes = [f"{len(runs)} run(s): {len(runs) - len(unfinished)} finished, "
             f"{len(unfinished)} unfinished ({how})"]
    if selection.expected_trials:
        notes.append(f"{selection.expected_trials} trial(s) per cell is the most common count")
    for run in unfinished[:_MAX_LISTED]:
        notes.append(f"unfinished: {run.path}")
    damaged = [r for r in runs if r.bad_lines]
    for run in damaged[:_MAX_LISTED]:
        what = "truncated last line" if run.truncated and len(run.bad_lines) == 1 else \
            f"unreadable line(s) {run.bad_lines}"
        notes.append(f"{run.path}: {what} ignored")
    hidden = max(0, len(unfinished) - _MAX_LISTED) + max(0, len(damaged) - _MAX_LISTED)
    if hidden:
        notes.append(f"... and {hidden} more")
    return notes


def _plot_listing(paths: Sequence[Path], fmt: str) -> str:
    if fmt == "csv" or not paths:
        return ""
    if fmt == "markdown":
        return "\n### Plots\n\n" + "\n".join(f"![{p.stem}]({p})" for p in paths) + "\n"
    if fmt == "latex":
        return "\n" + "\n".join(f"% plot: {p}" for p in paths) + "\n"
    return "\nPlots written:\n" + "\n".join(f"  {p}" for p in paths) + "\n"
