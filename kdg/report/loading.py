"""Read training runs back from disk.

A training run writes one directory holding

* ``results.jsonl``: one JSON object per evaluation (a *record*). Each record
  carries ``step``, ``epoch``, the accuracies ``env{i}_in_acc`` /
  ``env{i}_out_acc`` of every domain ``i`` (test domains included; with
  ``eval_splits: selection`` not the in split of a training domain), optional
  diagnostics (``grad_cos_min``, ``modification_ratio``, ...), and the run's
  identity: ``args`` (``dataset``, ``algorithm``, ``test_envs``,
  ``hparams_seed``, ``trial_seed``, ``seed``, ``output_dir``) and ``hparams``.
  Accuracies are fractions in [0, 1], as in DomainBed.
* ``done``: an empty file written when the run finished. A run without it was
  killed or is still going: it is *unfinished*.

:func:`load_runs` walks one or more directories recursively, reads every
``results.jsonl`` and returns one :class:`Run` per file. A killed run may leave
a truncated last line; it is dropped with a :class:`ResultsWarning`, as is any
other line that is not valid JSON (with a different message, since only the
last line can be cut short by a kill).
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

from kdg import run_folder

PathLike = Union[str, "os.PathLike[str]"]

RESULTS_FILE = run_folder.RESULTS

# Column labels DomainBed uses for its datasets (``ENVIRONMENTS`` in
# domainbed/datasets.py), in domain-index order.
KNOWN_DOMAIN_NAMES: dict[str, tuple[str, ...]] = {
    "ColoredMNIST": ("+90%", "+80%", "-90%"),
    "RotatedMNIST": ("0", "15", "30", "45", "60", "75"),
    "VLCS": ("C", "L", "S", "V"),
    "PACS": ("A", "C", "P", "S"),
    "OfficeHome": ("A", "C", "P", "R"),
    "TerraIncognita": ("L100", "L38", "L43", "L46"),
    "DomainNet": ("clip", "info", "paint", "quick", "real", "sketch"),
}

_ENV_ACC = re.compile(r"env(\d+)_(?:in|out)_acc")

# Keys under which a record (top level or ``args``) may name its domains.
_DOMAIN_NAME_KEYS = ("domain_names", "env_names", "domains", "environments")


class ResultsWarning(UserWarning):
    """Something in a results file was skipped (truncated or corrupt line...)."""


@dataclass
class Run:
    """One training run: the records of one ``results.jsonl``, in file order.

    ``truncated`` is true when the last line could not be parsed (a killed run);
    ``bad_lines`` lists the 1-based numbers of every line that was dropped.
    """

    path: Path
    records: list[dict[str, Any]]
    done: bool
    truncated: bool = False
    bad_lines: list[int] = field(default_factory=list)

    @property
    def args(self) -> dict[str, Any]:
        return self.records[0]["args"]

    @property
    def hparams(self) -> dict[str, Any]:
        return self.records[0].get("hparams") or {}

    @property
    def dataset(self) -> str:
        return str(self.args["dataset"])

    @property
    def algorithm(self) -> str:
        """The run's algorithm; an algorithm that wraps another (GGA's
        ``base`` in its hparams) other than ERM is ``"gga+coral"``, so that
        GGA around each algorithm is a row of its own."""
        name = str(self.args["algorithm"])
        base = self.hparams.get("base")
        base = base.get("name") if isinstance(base, dict) else base
        if isinstance(base, str) and base.lower() != "erm":
            return f"{name}+{base.lower()}"
        return name

    @property
    def test_envs(self) -> tuple[int, ...]:
        return tuple(int(e) for e in self.args["test_envs"])

    @property
    def hparams_seed(self) -> int:
        return int(self.args["hparams_seed"])

    @property
    def trial_seed(self) -> int:
        return int(self.args["trial_seed"])

    @property
    def n_envs(self) -> int:
        """Number of domains of the dataset (:func:`count_envs`)."""
        return count_envs(self.records[0])

    @property
    def steps(self) -> list[int]:
        return [int(r["step"]) for r in self.records]

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one record key; absent or null values become NaN."""
        return self.steps, [as_float(r.get(key)) for r in self.records]

    def __repr__(self) -> str:  # short: runs appear in warnings and notes
        state = "done" if self.done else "unfinished"
        return (f"Run({self.dataset}, {self.algorithm}, test_envs={list(self.test_envs)}, "
                f"hparams_seed={self.hparams_seed}, trial_seed={self.trial_seed}, {state}, "
                f"{len(self.records)} records, {self.path})")


def count_envs(record: Mapping[str, Any]) -> int:
    """Number of domains of a record's run: the length of ``args["domains"]``
    (kdg's records carry it), else one more than the largest ``i`` of an
    ``env{i}_in_acc`` or ``env{i}_out_acc`` key. A domain whose accuracy is
    missing (an empty split) is still counted; DomainBed stops at the first
    missing ``env{i}_out_acc``, which would drop the domains after it."""
    domains = (record.get("args") or {}).get("domains")
    if isinstance(domains, (list, tuple)) and domains:
        return len(domains)
    found = [int(match.group(1)) for key in record
             if (match := _ENV_ACC.fullmatch(str(key)))]
    return max(found) + 1 if found else 0


def missing_accs(record: Mapping[str, Any]) -> list[str]:
    """The ``env{i}_in_acc`` / ``env{i}_out_acc`` keys a record lacks, for
    each of its :func:`count_envs` domains (an empty split leaves them out).
    A run with ``eval_splits: selection`` does not evaluate the in split of
    its training domains: those keys are not missing."""
    args = record.get("args") or {}
    skipped = set()
    if args.get("eval_splits") == "selection":
        tested = {int(e) for e in args.get("test_envs", ())}
        skipped = {f"env{i}_in_acc" for i in range(count_envs(record)) if i not in tested}
    return [key for i in range(count_envs(record)) for key in (f"env{i}_in_acc", f"env{i}_out_acc")
            if key not in record and key not in skipped]


def as_float(value: Any) -> float:
    """A record value as a float; ``None``, absent and non-numbers become NaN."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _as_dirs(dirs: Union[PathLike, Iterable[PathLike]]) -> list[Path]:
    if isinstance(dirs, (str, os.PathLike)):
        return [Path(dirs)]
    return [Path(d) for d in dirs]


def find_results_files(dirs: Union[PathLike, Iterable[PathLike]]) -> list[Path]:
    """Every ``results.jsonl`` under the given directories (recursive), sorted,
    without duplicates. A directory that does not exist raises FileNotFoundError."""
    found: set[Path] = set()
    for root in _as_dirs(dirs):
        if not root.exists():
            raise FileNotFoundError(f"no such directory: {root}")
        if root.is_file():
            found.add(root.resolve())
            continue
        for dirpath, _dirnames, filenames in os.walk(root):
            if RESULTS_FILE in filenames:
                found.add((Path(dirpath) / RESULTS_FILE).resolve())
    return sorted(found)


def read_run(results_path: PathLike) -> Run | None:
    """Parse one ``results.jsonl``. Returns None (with a warning) when no
    line of it is a usable record."""
    results_path = Path(results_path)
    # the one reader of results.jsonl, with its bad-line policy (run_folder's docstring)
    read = run_folder.read_results(results_path)
    for lineno in read.bad_lines:
        if read.truncated and lineno == read.bad_lines[-1]:
            warnings.warn(
                f"{results_path}: last line {lineno} is truncated (was the run killed?); "
                "it is ignored", ResultsWarning, stacklevel=3)
        else:
            warnings.warn(f"{results_path}: line {lineno} is not valid JSON (or has no "
                          "integer step); it is ignored", ResultsWarning, stacklevel=3)
    bad, truncated = list(read.bad_lines), read.truncated
    records: list[dict[str, Any]] = []
    for lineno, record in zip(read.lines, read.records):
        if "args" not in record:
            bad.append(lineno)
            warnings.warn(f"{results_path}: line {lineno} lacks ['args']; it is ignored",
                          ResultsWarning, stacklevel=3)
            continue
        records.append(record)
    bad.sort()
    if not records:
        warnings.warn(f"{results_path}: no usable record; the run is ignored",
                      ResultsWarning, stacklevel=3)
        return None
    first = records[0]["args"]
    identity = ("dataset", "algorithm", "test_envs", "hparams_seed", "trial_seed")
    lacking = [k for k in identity if not isinstance(first, dict) or k not in first]
    if lacking:
        warnings.warn(f"{results_path}: args lack {lacking}; the run is ignored",
                      ResultsWarning, stacklevel=3)
        return None
    for record in records[1:]:
        if any(record["args"].get(k) != first.get(k) for k in identity):
            warnings.warn(f"{results_path}: records disagree on the run's args; "
                          "the first record's are used", ResultsWarning, stacklevel=3)
            break
    done = run_folder.is_done(results_path.parent)
    return Run(path=results_path.parent, records=records, done=done,
               truncated=truncated, bad_lines=bad)


def load_runs(dirs: Union[PathLike, Iterable[PathLike]]) -> list[Run]:
    """Load every run under ``dirs`` (one directory or several; searched
    recursively), in sorted path order. Unfinished runs are included (their
    ``done`` is False); model selection decides what to do with them."""
    runs = []
    for path in find_results_files(dirs):
        run = read_run(path)
        if run is not None:
            runs.append(run)
    return runs


def domain_names(dataset: str, n_envs: int, runs: Sequence[Run] = (),
                 overrides: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """Column labels for the domains of ``dataset``, first found of:

    1. ``overrides[dataset]`` (e.g. names a recipe gives),
    2. a list stored in a record of the dataset, at the top level or in
       ``args``, under ``domain_names``, ``env_names``, ``domains`` or
       ``environments``,
    3. DomainBed's labels for its datasets (:data:`KNOWN_DOMAIN_NAMES`),
    4. ``env0``, ``env1``, ...

    A list whose length is not ``n_envs`` is not used.
    """
    def fits(names: Any) -> bool:
        return (isinstance(names, (list, tuple)) and len(names) == n_envs
                and all(isinstance(n, (str, int)) for n in names))

    if overrides and fits(overrides.get(dataset)):
        return [str(n) for n in overrides[dataset]]
    for run in runs:
        if run.dataset != dataset:
            continue
        record = run.records[0]
        for where in (record, record.get("args") or {}):
            for key in _DOMAIN_NAME_KEYS:
                if fits(where.get(key)):
                    return [str(n) for n in where[key]]
    if fits(KNOWN_DOMAIN_NAMES.get(dataset)):
        return list(KNOWN_DOMAIN_NAMES[dataset])
    return [f"env{i}" for i in range(n_envs)]
