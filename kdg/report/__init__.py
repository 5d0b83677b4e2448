"""kdg.report: DomainBed's model selection and result tables.

Typical use::

    from kdg.report import report
    print(report(["runs/"], selection="training_domain", fmt="markdown"))

or step by step::

    runs = load_runs("runs/")                   # loading.py
    chosen = select(runs, "oracle")             # selection.py
    tables = results_tables(chosen)             # tables.py
    print(render(tables, "text"))
    write_plots(chosen, "plots/")               # plots.py (matplotlib)

Modules: ``loading`` (results.jsonl -> runs), ``selection`` (DomainBed's
three selection methods), ``tables`` (tables and their formats),
``published`` (the papers' numbers, as data), ``plots`` (figures),
``compose`` (:func:`report`). This package needs no Keras backend.
"""

from .compose import report
from .loading import KNOWN_DOMAIN_NAMES, ResultsWarning, Run, domain_names, load_runs
from .published import PUBLISHED, RESNET18_CORGRAD, RESNET50_GGA, PublishedTable
from .selection import (SELECTION_METHODS, GroupResult, LeaveOneDomainOut, MissingRunsError,
                        OracleSelection, Selection, SelectionMethod, TrainingDomainValidation,
                        TrialChoice, get_method, mean_and_stderr, select)
from .tables import (FORMATS, Cell, Table, averages_table, dataset_table, published_comparison,
                     render, results_tables, to_csv, to_latex, to_markdown, to_rich, to_text)

_PLOTS = ("plot_accuracy", "plot_run_accuracy", "plot_diagnostics", "write_plots")


def __getattr__(name):
    # The plotting functions import matplotlib; load it only when asked for.
    if name in _PLOTS:
        from . import plots
        return getattr(plots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "report", "load_runs", "Run", "ResultsWarning", "domain_names", "KNOWN_DOMAIN_NAMES",
    "select", "get_method", "mean_and_stderr", "Selection", "GroupResult", "TrialChoice",
    "SelectionMethod", "TrainingDomainValidation", "OracleSelection", "LeaveOneDomainOut",
    "SELECTION_METHODS", "MissingRunsError",
    "Cell", "Table", "FORMATS", "dataset_table", "averages_table", "published_comparison",
    "results_tables", "render", "to_markdown", "to_latex", "to_csv", "to_text", "to_rich",
    "PUBLISHED", "PublishedTable", "RESNET50_GGA", "RESNET18_CORGRAD", *_PLOTS,
]
