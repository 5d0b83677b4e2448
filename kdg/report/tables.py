"""Results tables, DomainBed style, and their renderings.

Three kinds of :class:`Table` are built from a :class:`~kdg.report.selection.Selection`:

* one per dataset (:func:`dataset_table`): a row per algorithm, a column per
  test domain, each cell ``mean ± stderr`` over trials (accuracy in %), and
  ``Avg``, the mean of the row's cells -- only when every test domain has a
  result, otherwise ``X`` (DomainBed's rule);
* the averages table (:func:`averages_table`): a row per algorithm, a column
  per dataset. As in DomainBed, each trial's results are first averaged over
  the test domains, then mean ± stderr is taken over trials; ``Avg`` is the
  mean over datasets, ``X`` unless every dataset has a result;
* the comparison with published numbers (:func:`published_comparison`,
  :func:`gga_combined_comparison`, :func:`mnist_comparisons`);
* GGA's change on kdg's own runs of any other dataset (:func:`gga_changes`).

Incomplete results are shown, never averaged silently. Markers:

* ``(k/n)``: the cell has k trials where most cells have n;
* ``‡``: unfinished runs belong to this cell (left out, or used with
  ``include_unfinished``);
* ``†``: an average built from incomplete parts (a marked cell, or a trial
  that lacks some test domains);
* ``X``: no result; an average is X as soon as one of its parts is.

The best value of each column (compared at the displayed precision, so equal
values are all marked) is bold in markdown and LaTeX and starred (``*``) in
plain text. Incomplete cells can be best too: their markers say how far to
trust them.

Renderings: :func:`to_markdown`, :func:`to_latex`, :func:`to_csv` (one tidy
CSV for all tables), :func:`to_text` (plain, fixed width) and
:func:`to_rich` (a ``rich.table.Table`` for terminals); :func:`render`
assembles a whole document in one of the formats of :data:`FORMATS`.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from .loading import domain_names as _domain_names
from .published import DATASETS as PUBLISHED_DATASETS
from .published import GGA_COMBINED, CombinedTable, PublishedTable, canonical_dataset, domainbed_mnist
from .selection import Selection, mean_and_stderr

FORMATS = ("markdown", "latex", "csv", "text", "rich")

FEW_TRIALS, PARTIAL, UNFINISHED = "few_trials", "partial", "unfinished"


@dataclass(frozen=True)
class Cell:
    """One table entry (accuracies in %)."""

    mean: float | None = None
    stderr: float | None = None          # None: not shown (averages, published values)
    n_trials: int | None = None
    expected_trials: int | None = None
    unfinished: bool = False             # marker ‡
    partial: bool = False                # marker †
    best: bool = False
    signed: bool = False                 # show a sign (differences)
    missing: str = "X"                   # text when there is no value

    @property
    def few_trials(self) -> bool:
        return (self.n_trials is not None and self.expected_trials is not None
                and self.n_trials < self.expected_trials)

    @property
    def flags(self) -> list[str]:
        return [name for name, on in ((FEW_TRIALS, self.few_trials), (PARTIAL, self.partial),
                                      (UNFINISHED, self.unfinished)) if on]

    @property
    def incomplete(self) -> bool:
        return self.mean is None or bool(self.flags)

    @property
    def rounded(self) -> float | None:
        """The value as displayed (one decimal), used to find the best."""
        return None if self.mean is None else float(f"{self.mean:.1f}")

    def value_text(self, pm: str = "±") -> str:
        if self.mean is None:
            return self.missing
        if self.signed:
            return f"{self.mean:+.1f}"
        if self.stderr is None:
            return f"{self.mean:.1f}"
        return f"{self.mean:.1f} {pm} {self.stderr:.1f}"

    def marks(self, dagger: str = "†", ddagger: str = "‡") -> str:
        text = f" ({self.n_trials}/{self.expected_trials})" if self.few_trials else ""
        return text + (dagger if self.partial else "") + (ddagger if self.unfinished else "")


@dataclass
class Row:
    keys: tuple[str, ...]   # one label per key column
    cells: list[Cell]


@dataclass
class Table:
    title: str
    kind: str                          # "dataset" | "averages" | "published" | "gga_changes"
    key_columns: list[str]
    columns: list[str]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dataset: str | None = None
    selection: str | None = None       # selection method key
    incomplete: bool = False
    unfinished_used: bool = False      # how to explain ‡

    @property
    def display_title(self) -> str:
        return self.title + (" (INCOMPLETE)" if self.incomplete else "")

    def cell(self, row_key: str, column: str) -> Cell:
        """The cell of the first row whose first key is ``row_key``."""
        j = self.columns.index(column)
        for row in self.rows:
            if row.keys[0] == row_key:
                return row.cells[j]
        raise KeyError(row_key)

    def legend(self, best: str) -> list[str]:
        """Explanations of the markers that appear in the table."""
        cells = [c for row in self.rows for c in row.cells]
        lines = []
        if any(c.best for c in cells):
            lines.append(f"{best}: best in its column")
        if any(c.few_trials for c in cells):
            lines.append("(k/n): only k trials; most cells have n")
        if any(c.partial for c in cells):
            lines.append("†: average over incomplete results (a marked cell, "
                         "or a trial lacking some test domain)")
        if any(c.unfinished for c in cells):
            how = "were used" if self.unfinished_used else "were left out"
            lines.append(f"‡: unfinished runs (no `done` file) {how} here")
        if any(c.mean is None and c.missing == "X" for c in cells):
            lines.append("X: no result; an average is X when one of its parts is")
        return lines


def mark_best(table: Table) -> None:
    """Set ``best`` on the top value of each column (ties at one decimal: all)."""
    for j in range(len(table.columns)):
        values = [row.cells[j].rounded for row in table.rows]
        present = [v for v in values if v is not None]
        if not present:
            continue
        top = max(present)
        for row, value in zip(table.rows, values):
            if value == top:
                row.cells[j] = replace(row.cells[j], best=True)


# ----------------------------------------------------------------- builders

def _method_title(selection: Selection) -> str:
    return selection.method.name


def dataset_table(selection: Selection, dataset: str,
                  domain_names: dict[str, Sequence[str]] | None = None) -> Table:
    """Per-dataset table: algorithms x test domains, plus Avg."""
    n_envs = selection.n_envs[dataset]
    names = _domain_names(dataset, n_envs, selection.runs, domain_names)
    expected = selection.expected_trials
    table = Table(title=f"{dataset}, model selection: {_method_title(selection)}",
                  kind="dataset", key_columns=["Algorithm"], columns=names + ["Avg"],
                  dataset=dataset, selection=selection.method.key,
                  unfinished_used=selection.include_unfinished)
    algorithms = [a for a in selection.algorithms
                  if any(r.dataset == dataset and r.algorithm == a for r in selection.runs)]
    for algorithm in algorithms:
        cells = []
        for env in range(n_envs):
            group = selection.group(dataset, algorithm, env)
            unfinished = bool(group and group.unfinished)
            if unfinished:
                how = "used" if selection.include_unfinished else "left out"
                table.notes.append(f"{algorithm}, {names[env]}: {len(group.unfinished)} "
                                   f"unfinished run(s) {how}")
            if group is None or not group.trials:
                cells.append(Cell(unfinished=unfinished))
                continue
            cells.append(Cell(100 * group.mean, 100 * group.stderr, group.n_trials,
                              expected, unfinished=unfinished))
        missing = [names[e] for e, c in enumerate(cells) if c.mean is None]
        if missing:
            table.notes.append(f"{algorithm}: no result for {', '.join(missing)}"
                               " (Avg not computed)")
        cells.append(_average(cells))
        table.rows.append(Row((algorithm,), cells))
    table.notes += [msg for ds, msg in selection.notes if ds == dataset]
    table.incomplete = bool(table.notes) or any(c.incomplete for r in table.rows for c in r.cells)
    mark_best(table)
    return table


def _average(cells: Sequence[Cell]) -> Cell:
    """DomainBed's Avg column: mean of the cells' means, X if one is missing."""
    if not cells or any(c.mean is None for c in cells):
        return Cell()
    return Cell(float(np.mean([c.mean for c in cells])),
                partial=any(c.flags for c in cells))


def averages_table(selection: Selection) -> Table:
    """Algorithms x datasets: per trial the mean over test domains, then
    mean ± stderr over trials (DomainBed's "Averages" table); Avg over datasets."""
    expected = selection.expected_trials
    table = Table(title=f"Averages, model selection: {_method_title(selection)}",
                  kind="averages", key_columns=["Algorithm"],
                  columns=list(selection.datasets) + ["Avg"],
                  selection=selection.method.key, unfinished_used=selection.include_unfinished)
    for algorithm in selection.algorithms:
        cells = []
        for dataset in selection.datasets:
            n_envs = selection.n_envs[dataset]
            per_trial: dict[int, list[float]] = {}
            unfinished = False
            few = False
            for env in range(n_envs):
                group = selection.group(dataset, algorithm, env)
                if group is None:
                    continue
                unfinished |= bool(group.unfinished)
                few |= bool(expected and 0 < group.n_trials < expected)
                for trial in group.trials:
                    per_trial.setdefault(trial.trial_seed, []).append(trial.test_acc)
            if not per_trial:
                cells.append(Cell(unfinished=unfinished))
                continue
            trial_means = [float(np.mean(per_trial[t])) for t in sorted(per_trial)]
            lacking = {t: n_envs - len(v) for t, v in per_trial.items() if len(v) < n_envs}
            if lacking:
                table.notes.append(
                    f"{algorithm}, {dataset}: trial(s) {sorted(lacking)} lack results on some "
                    "test domains; their average covers fewer domains")
            mean, stderr = mean_and_stderr(trial_means)
            cells.append(Cell(100 * mean, 100 * stderr, len(trial_means), expected,
                              unfinished=unfinished, partial=bool(lacking) or few))
        cells.append(_average(cells))
        table.rows.append(Row((algorithm,), cells))
    table.incomplete = bool(table.notes) or any(c.incomplete for r in table.rows for c in r.cells)
    mark_best(table)
    return table


def published_comparison(averages: Table, published: Sequence[PublishedTable]) -> Table | None:
    """kdg's per-dataset averages side by side with the published numbers.

    Rows: (algorithm, dataset) for the datasets both cover, then one average
    row per algorithm. The average row is "Avg" (published: the printed
    average) when kdg covers all five published datasets; otherwise it is the
    mean over the datasets kdg covers, for kdg and the published numbers alike,
    and its label names them. Returns None when no dataset is shared.
    """
    covered = [d for d in averages.columns[:-1] if canonical_dataset(d) in PUBLISHED_DATASETS]
    if not covered or not published:
        return None
    columns = ["kdg"]
    for source in published:
        columns += [f"{source.label} published", f"Δ {source.label}"]
    table = Table(title="kdg vs published (test-domain accuracy %, "
                        "training-domain validation in the papers)",
                  kind="published", key_columns=["Algorithm", "Dataset"], columns=columns,
                  selection=averages.selection, unfinished_used=averages.unfinished_used)
    table.notes = [f"{s.label}: {s.title}" for s in published]
    if averages.selection != "training_domain":
        table.notes.append(f"kdg numbers use {averages.selection} selection; the published "
                           "ones training-domain validation")
    complete = {canonical_dataset(d) for d in covered} == set(PUBLISHED_DATASETS)
    avg_label = "Avg" if complete else f"Avg ({', '.join(covered)})"
    if not complete:
        table.notes.append(f"{avg_label}: mean over the datasets kdg covers, published numbers "
                           "averaged over the same datasets")
    for row in averages.rows:
        algorithm = row.keys[0]
        kdg_cells = [replace(row.cells[averages.columns.index(d)], best=False) for d in covered]
        for dataset, kdg in zip(covered, kdg_cells):
            cells = [kdg]
            for source in published:
                cells += _published_pair(kdg.mean, source.get(algorithm, dataset))
            table.rows.append(Row((algorithm, dataset), cells))
        if any(c.mean is None for c in kdg_cells):
            kdg_avg = Cell()
        else:
            kdg_avg = Cell(float(np.mean([c.mean for c in kdg_cells])),
                           partial=any(c.flags for c in kdg_cells))
        cells = [kdg_avg]
        for source in published:
            if complete:
                value = source.get(algorithm, "Avg")
            else:
                values = [source.get(algorithm, d) for d in covered]
                value = None if None in values else float(np.mean(values))
            cells += _published_pair(kdg_avg.mean, value)
        table.rows.append(Row((algorithm, avg_label), cells))
    table.incomplete = any(c.incomplete for r in table.rows for c in r.cells[:1])
    return table


def gga_wrapped(algorithm: str) -> str:
    """The normalized name of GGA wrapping ``algorithm`` (normalized): ``ggax``,
    but plain ``gga`` for ERM, as kdg names it."""
    return "gga" if algorithm == "erm" else "gga" + algorithm


def gga_combined_comparison(averages: Table, table: CombinedTable = GGA_COMBINED) -> Table | None:
    """kdg's numbers for each algorithm X of GGA's combination table, alone
    and wrapped by GGA (rows ``x`` and ``gga+x`` of the averages table), and
    GGA's change (GGA+X minus X), beside the published ones.

    Rows: (X, dataset) for each dataset of the table, then (X, Avg), the mean
    over the table's four datasets (X when one is missing, as published).
    The notes name every missing kdg cell. None when the runs hold no X of
    the table on any of its datasets."""
    from kdg.algorithm_names import normalize

    columns = ["kdg X", "published X", "kdg GGA+X", "published GGA+X", "kdg Δ", "published Δ"]
    result = Table(title="GGA combined with other algorithms: kdg vs published (test-domain "
                         "accuracy %; Δ = GGA+X - X)",
                   kind="published", key_columns=["Algorithm", "Dataset"], columns=columns,
                   selection=averages.selection, unfinished_used=averages.unfinished_used)
    rows = {normalize(row.keys[0]): row for row in averages.rows}
    datasets = {canonical_dataset(d): d for d in averages.columns[:-1]}
    missing = []
    for title in table.algorithms:
        key = normalize(title)
        alone, wrapped = rows.get(key), rows.get(gga_wrapped(key))
        if (alone is None and wrapped is None) or not set(datasets) & set(table.datasets):
            continue

        def kdg_cell(row, dataset):
            if row is None or dataset not in datasets:
                return Cell()
            return replace(row.cells[averages.columns.index(datasets[dataset])], best=False,
                           stderr=None)

        per_dataset = []
        for dataset in table.datasets:
            x, gx = kdg_cell(alone, dataset), kdg_cell(wrapped, dataset)
            missing += [f"{label} on {dataset}" for label, c in
                        ((title, x), (f"GGA+{title}", gx)) if c.mean is None]
            per_dataset.append((x, gx))
            result.rows.append(Row((title, dataset), _combined_cells(
                x, gx, table.get_without(title, dataset), table.get_change(title, dataset))))
        averaged = [Cell() if any(c.mean is None for c in cells) else
                    Cell(float(np.mean([c.mean for c in cells])),
                         partial=any(c.flags for c in cells))
                    for cells in zip(*per_dataset)]
        result.rows.append(Row((title, "Avg"), _combined_cells(
            *averaged, table.get_without(title, "Avg"), table.get_change(title, "Avg"))))
    if not result.rows:
        return None
    result.notes = [f"published: {table.title}"]
    if averages.selection != "training_domain":
        result.notes.append(f"kdg numbers use {averages.selection} selection; the published "
                            "ones training-domain validation")
    if missing:
        result.notes.append("missing: " + ", ".join(missing))
    result.incomplete = bool(missing) or any(
        c.incomplete for r in result.rows for c in (r.cells[0], r.cells[2]))
    return result


def gga_changes(tables: Sequence[Table], published: bool = True,
                table: CombinedTable = GGA_COMBINED) -> Table | None:
    """GGA's change on kdg's own runs: for each algorithm X with both an ``x``
    and a ``gga+x`` row in a dataset table (GGA wrapping ERM is ``gga``), X,
    GGA+X and their difference, each the mean over the test domains where
    both have a result (flagged † when that is not every test domain; the
    note names the domains). The pairs that :func:`gga_combined_comparison`
    prints beside the published numbers (an algorithm of GGA's table on one
    of its datasets, when ``published``) are left to it. None when there is
    no other pair."""
    from kdg.algorithm_names import normalize

    dataset_tables = [tab for tab in tables if tab.kind == "dataset"]
    if not dataset_tables:
        return None
    result = Table(title="GGA's change per algorithm (test-domain accuracy %, mean over the "
                         "test domains both have; Δ = GGA+X - X)",
                   kind="gga_changes", key_columns=["Algorithm", "Dataset"],
                   columns=["X", "GGA+X", "Δ"], selection=dataset_tables[0].selection,
                   unfinished_used=any(tab.unfinished_used for tab in dataset_tables))
    in_combined = {normalize(title) for title in table.algorithms} if published else set()
    partial = {}
    for tab in dataset_tables:
        published_dataset = canonical_dataset(tab.dataset or "") in table.datasets
        rows = {normalize(row.keys[0]): row for row in tab.rows}
        domains = tab.columns[:-1]
        for key, alone in rows.items():
            wrapped = rows.get(gga_wrapped(key))
            if key == "gga" or wrapped is None or (published_dataset and key in in_combined):
                continue
            both = [i for i in range(len(domains))
                    if alone.cells[i].mean is not None and wrapped.cells[i].mean is not None]
            if not both:
                continue
            flagged = len(both) < len(domains) or any(
                r.cells[i].flags for r in (alone, wrapped) for i in both)
            x, gx = (float(np.mean([r.cells[i].mean for i in both])) for r in (alone, wrapped))
            result.rows.append(Row((alone.keys[0], tab.dataset), [
                Cell(x, partial=flagged), Cell(gx, partial=flagged),
                Cell(gx - x, signed=True, partial=flagged)]))
            if len(both) < len(domains):
                partial[(alone.keys[0], tab.dataset)] = [domains[i] for i in both]
    if not result.rows:
        return None
    result.notes = [f"{name} on {dataset}: test domain(s) {', '.join(map(str, used))} only"
                    for (name, dataset), used in partial.items()]
    result.incomplete = any(c.flags for r in result.rows for c in r.cells)
    return result


def _combined_cells(x: Cell, gx: Cell, without: float | None, change: float | None) -> list[Cell]:
    delta = Cell() if x.mean is None or gx.mean is None else Cell(
        gx.mean - x.mean, signed=True, partial=bool(x.flags or gx.flags))
    with_gga = None if without is None or change is None else round(without + change, 1)
    return [x, Cell(without, missing="—"), gx, Cell(with_gga, missing="—"), delta,
            Cell(change, signed=True, missing="—")]


def _published_pair(kdg: float | None, published: float | None) -> list[Cell]:
    pub = Cell(published, missing="—")
    if kdg is None or published is None:
        return [pub, Cell(missing="—")]
    return [pub, Cell(kdg - published, signed=True)]


def mnist_comparisons(tables: Sequence[Table]) -> list[Table]:
    """kdg's ColoredMNIST / RotatedMNIST tables beside DomainBed's published ones.

    For each dataset table of ``tables`` that DomainBed publishes under the
    same selection (``kdg.report.published.DOMAINBED_MNIST``): one row per
    algorithm and test environment, then its average (kdg's from the
    averages table: mean over test environments per trial, then over
    trials), with kdg's mean ± standard error, DomainBed's, the difference,
    and whether it is inside DomainBed's standard error plus kdg's own.
    """
    averages = next((t for t in tables if t.kind == "averages"), None)
    out = []
    for dataset_tab in tables:
        published = (domainbed_mnist(canonical_dataset(dataset_tab.dataset or ""),
                                     dataset_tab.selection or "")
                     if dataset_tab.kind == "dataset" else None)
        if published is None:
            continue
        table = Table(title=f"{published.dataset}: kdg vs DomainBed (test-domain accuracy %, "
                            f"selection: {published.selection})",
                      kind="published", key_columns=["Algorithm", "Environment"],
                      columns=["kdg", "DomainBed", "Δ", "inside"],
                      dataset=published.dataset, selection=published.selection,
                      unfinished_used=dataset_tab.unfinished_used)
        table.notes = ["DomainBed: domainbed/results/2020_10_06_7df6f06 (MNIST_CNN, 20 "
                       "hyperparameter samples x 3 trials); inside: |Δ| <= DomainBed's "
                       "standard error + kdg's; an average over fewer test environments "
                       "than DomainBed's is shown but not compared"]
        environments = published.environments
        for row in dataset_tab.rows:
            algorithm = row.keys[0]
            kdg_cells = [replace(c, best=False) for c in row.cells[:len(environments) - 1]]
            if averages is not None and dataset_tab.dataset in averages.columns:
                try:
                    kdg_cells.append(replace(averages.cell(algorithm, dataset_tab.dataset),
                                             best=False))
                except KeyError:
                    kdg_cells.append(Cell())
            else:
                kdg_cells.append(replace(row.cells[-1], best=False))
            lacking = any(c.mean is None for c in kdg_cells[:-1])
            for environment, kdg in zip(environments, kdg_cells):
                value = published.get(algorithm, environment)
                cells = [kdg, Cell(None if value is None else value[0],
                                   None if value is None else value[1], missing="—")]
                if kdg.mean is None or value is None or (environment == "Avg" and lacking):
                    # an average over fewer environments than DomainBed's is not compared
                    cells += [Cell(missing="—"), Cell(missing="—")]
                else:
                    difference = kdg.mean - value[0]
                    inside = abs(difference) <= value[1] + (kdg.stderr or 0.0) + 1e-9
                    cells += [Cell(difference, signed=True), Cell(missing="yes" if inside else "no")]
                table.rows.append(Row((algorithm, environment), cells))
        table.incomplete = any(r.cells[0].incomplete for r in table.rows)
        out.append(table)
    return out


def results_tables(selection: Selection,
                   domain_names: dict[str, Sequence[str]] | None = None) -> list[Table]:
    """One table per dataset, then the averages table."""
    return ([dataset_table(selection, d, domain_names) for d in selection.datasets]
            + [averages_table(selection)])


# ---------------------------------------------------------------- renderers

def _cell_text(cell: Cell, style: str) -> str:
    if style == "latex":
        value = cell.value_text(pm="$\\pm$")
        if cell.mean is None and cell.missing == "—":
            value = "--"
        marks = cell.marks(dagger="$^\\dagger$", ddagger="$^\\ddagger$")
        return (f"\\textbf{{{value}}}" if cell.best else value) + marks
    value = cell.value_text()
    if style == "markdown":
        return (f"**{value}**" if cell.best else value) + cell.marks()
    return value + ("*" if cell.best else "") + cell.marks()   # text


def to_markdown(table: Table) -> str:
    header = table.key_columns + table.columns
    lines = [f"### {table.display_title}", "",
             "| " + " | ".join(_md_escape(h) for h in header) + " |",
             "|" + "|".join([":---"] * len(table.key_columns)
                            + ["---:"] * len(table.columns)) + "|"]
    for row in table.rows:
        texts = [_md_escape(k) for k in row.keys] + [_cell_text(c, "markdown") for c in row.cells]
        lines.append("| " + " | ".join(texts) + " |")
    extra = table.legend("**bold**") + table.notes
    if extra:
        lines.append("")
        lines += [f"- {_md_escape(line)}" for line in extra]
    return "\n".join(lines) + "\n"


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    text = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    return (text.replace("±", r"$\pm$").replace("Δ", r"$\Delta$")
            .replace("†", r"$^\dagger$").replace("‡", r"$^\ddagger$").replace("—", "--"))


def to_latex(table: Table) -> str:
    """A booktabs tabular (needs ``\\usepackage{booktabs,adjustbox}``)."""
    n_keys = len(table.key_columns)
    header = [f"\\textbf{{{latex_escape(h)}}}" for h in table.key_columns + table.columns]
    lines = [f"\\subsubsection*{{{latex_escape(table.display_title)}}}",
             "\\begin{center}",
             "\\adjustbox{max width=\\textwidth}{%",
             "\\begin{tabular}{" + "l" * n_keys + "c" * len(table.columns) + "}",
             "\\toprule",
             " & ".join(header) + " \\\\",
             "\\midrule"]
    for row in table.rows:
        texts = [latex_escape(k) for k in row.keys] + [_cell_text(c, "latex") for c in row.cells]
        lines.append(" & ".join(texts) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}}", "\\end{center}"]
    extra = table.legend("bold") + table.notes
    if extra:
        lines.append("\\begin{flushleft}\\footnotesize")
        lines += [latex_escape(line).replace("`", "") + "\\\\" for line in extra]
        lines.append("\\end{flushleft}")
    return "\n".join(lines) + "\n"


CSV_FIELDS = ["table", "kind", "selection", "algorithm", "dataset", "column",
              "mean", "stderr", "n_trials", "expected_trials", "best", "flags"]


def to_csv(tables: Sequence[Table]) -> str:
    """All tables as one tidy CSV: a line per cell (mean and stderr in %,
    4 decimals; empty when absent; flags joined by ';')."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for table in tables:
        for row in table.rows:
            keys = dict(zip(table.key_columns, row.keys))
            for column, cell in zip(table.columns, row.cells):
                dataset = keys.get("Dataset", table.dataset or "")
                if table.kind == "averages":
                    dataset = column if column != "Avg" else ""
                writer.writerow({
                    "table": table.title, "kind": table.kind, "selection": table.selection or "",
                    "algorithm": keys.get("Algorithm", ""), "dataset": dataset,
                    "column": column,
                    "mean": "" if cell.mean is None else f"{cell.mean:.4f}",
                    "stderr": "" if cell.stderr is None else f"{cell.stderr:.4f}",
                    "n_trials": "" if cell.n_trials is None else cell.n_trials,
                    "expected_trials": "" if cell.expected_trials is None else cell.expected_trials,
                    "best": int(cell.best), "flags": ";".join(cell.flags),
                })
    return out.getvalue()


def to_text(table: Table) -> str:
    """Plain fixed-width text; best values carry a ``*``."""
    header = table.key_columns + table.columns
    body = [list(row.keys) + [_cell_text(c, "text") for c in row.cells] for row in table.rows]
    widths = [max(len(line[j]) for line in [header] + body) for j in range(len(header))]
    n_keys = len(table.key_columns)

    def fmt(line: Sequence[str]) -> str:
        return "  ".join(text.ljust(w) if j < n_keys else text.rjust(w)
                         for j, (text, w) in enumerate(zip(line, widths))).rstrip()

    rule = "-" * len(fmt(["-" * w for w in widths]))
    lines = [table.display_title, rule, fmt(header), rule] + [fmt(line) for line in body] + [rule]
    lines += [f"  {line}" for line in table.legend("*") + table.notes]
    return "\n".join(lines) + "\n"


def to_rich(table: Table, caption: bool = True):
    """A ``rich.table.Table`` (bold best, incomplete cells in yellow); the
    legend and notes go in its caption unless ``caption=False``."""
    from rich.table import Table as RichTable
    from rich.text import Text

    caption = ("\n".join(table.legend("bold") + table.notes) or None) if caption else None
    rich_table = RichTable(title=table.display_title, caption=caption, caption_justify="left")
    for key in table.key_columns:
        rich_table.add_column(key, justify="left")
    for column in table.columns:
        rich_table.add_column(column, justify="right")
    for row in table.rows:
        texts = []
        for cell in row.cells:
            style = ("bold " if cell.best else "") + ("yellow" if cell.flags else "")
            texts.append(Text(cell.value_text() + cell.marks(), style=style.strip() or ""))
        rich_table.add_row(*row.keys, *texts)
    return rich_table


def render(tables: Sequence[Table], fmt: str = "markdown", title: str | None = None,
           notes: Sequence[str] = (), width: int = 120) -> str:
    """A whole document: ``title`` and ``notes`` (not in csv), then every table."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt == "csv":
        return to_csv(tables)
    if fmt == "rich":
        try:
            from rich.console import Console
        except ImportError:  # rich is a dependency of kdg, but be gentle
            return render(tables, "text", title, notes)
        out = io.StringIO()
        console = Console(file=out, width=width, force_terminal=True, color_system="standard")
        if title:
            console.print(title, style="bold")
        for note in notes:
            console.print(f"  {note}", markup=False, highlight=False)
        for table in tables:
            console.print()
            console.print(to_rich(table, caption=False))
            for line in table.legend("bold") + table.notes:
                console.print(f"  {line}", markup=False, highlight=False, style="dim")
        return out.getvalue()
    parts = []
    if fmt == "markdown":
        if title:
            parts.append(f"## {title}\n")
        if notes:
            parts.append("\n".join(f"- {_md_escape(n)}" for n in notes) + "\n")
        parts += [to_markdown(t) for t in tables]
    elif fmt == "latex":
        parts.append("% kdg results; needs \\usepackage{booktabs} and \\usepackage{adjustbox}\n")
        if title:
            parts.append(f"\\subsection*{{{latex_escape(title)}}}\n")
        if notes:
            parts.append("\\begin{flushleft}\\footnotesize\n"
                         + "\n".join(latex_escape(n) + "\\\\" for n in notes)
                         + "\n\\end{flushleft}\n")
        parts += [to_latex(t) for t in tables]
    else:  # text
        if title:
            parts.append(title + "\n" + "=" * len(title) + "\n")
        if notes:
            parts.append("\n".join(f"  {n}" for n in notes) + "\n")
        parts += [to_text(t) for t in tables]
    return "\n".join(parts)
