"""Model selection, as DomainBed defines it (``domainbed/model_selection.py``).

Vocabulary (DomainBed's):

* A *group* is one (dataset, algorithm, test_env, trial_seed). A run belongs
  to the group of **every** domain in its ``test_envs``: a run trained with
  ``test_envs=[0, 2]`` is in the groups of test env 0 and of test env 2.
* Within a group, each ``hparams_seed`` is one hyperparameter setting (one
  run, plus for leave-one-domain-out its companion runs).
* A selection method turns the runs of one setting into a (val_acc, test_acc)
  pair (:meth:`SelectionMethod.run_acc`), then picks the setting with the best
  val_acc and reports its test_acc (:meth:`SelectionMethod.sweep_acc`).
* The cell of a results table for (dataset, algorithm, test_env) is the mean
  and standard error of those test accuracies over the trial seeds.

The **test accuracy is always** ``env{t}_in_acc``, the accuracy on the *in*
split (80%) of the test domain ``t``, as in DomainBed: the *out* split (20%) of
the test domain is only ever used as the oracle's validation set.

Ties, reproduced from DomainBed:

* between checkpoints of one run (``training_domain``, and between steps for
  ``leave_one_domain_out``): the **earliest** one wins (DomainBed uses Python's
  ``max``, which keeps the first maximum; records are in file order, i.e. step
  order). ``oracle`` takes the last checkpoint (largest step; among records of
  equal step, the last in file order).
* between hyperparameter settings: the **highest** ``hparams_seed`` wins.
  DomainBed sorts the settings by ascending hparams_seed, then stably by
  ascending val_acc, and reverses the list: equal val_accs come out in
  descending hparams_seed order and the first is taken. (Not the lowest
  seed, as one might guess; kdg keeps DomainBed's behaviour.)
* duplicate runs of one setting (same dataset, algorithm, test_envs, trial
  and hparams seeds, e.g. a rerun) have their records pooled, as DomainBed
  does; kdg adds a note to the table, with a warning that names
  the hyperparameters or arguments they differ in, if any (a second recipe
  run under the same seeds). Runs are read in sorted path order.

Where kdg differs from DomainBed:

* a NaN validation accuracy counts as -inf everywhere (DomainBed does so when
  ranking hparams, but its ``max`` over checkpoints would keep a leading NaN);
* unfinished runs (no ``done`` file) are left out unless
  ``include_unfinished=True`` (DomainBed reads every record it finds); either
  way the groups they touch are marked;
* leave-one-domain-out without any two-test-domain run raises
  :class:`MissingRunsError` instead of returning an empty table;
* domains are counted from the run's ``args["domains"]``
  (:func:`~kdg.report.loading.count_envs`), and a record that lacks an
  accuracy a method needs (an empty split, e.g. ``holdout_fraction: 0``) is
  not a checkpoint of that method: its cell has no result and a note says
  which accuracies are missing.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import ClassVar, Iterable, Sequence

import numpy as np

from .loading import Run, as_float, count_envs, missing_accs

__all__ = [
    "Checkpoint", "TrialChoice", "GroupResult", "Selection", "SelectionMethod",
    "TrainingDomainValidation", "OracleSelection", "LeaveOneDomainOut",
    "SELECTION_METHODS", "MissingRunsError", "get_method", "select",
    "mean_and_stderr", "ordered_algorithms", "ordered_datasets",
]

# Display order: known names first in this order, then the others sorted.
DATASET_ORDER = ("ColoredMNIST", "RotatedMNIST", "VLCS", "PACS", "OfficeHome",
                 "TerraIncognita", "DomainNet")
ALGORITHM_ORDER = ("ERM", "Fish", "PCGrad", "CorGrad", "GGA", "GGA-L")


class MissingRunsError(ValueError):
    """The sweep lacks the runs a selection method needs."""


def _val_key(x: float) -> float:
    """Ranking key of a validation accuracy: NaN ranks below everything."""
    return -math.inf if x is None or math.isnan(x) else float(x)


@dataclass(frozen=True)
class Checkpoint:
    """What a selection method reads off one checkpoint of one setting."""

    val_acc: float
    test_acc: float
    step: int
    run: Run  # the run with test_envs == [t] whose record gives test_acc


@dataclass(frozen=True)
class TrialChoice:
    """The setting chosen in one trial of one (dataset, algorithm, test_env)."""

    trial_seed: int
    hparams_seed: int
    checkpoint: Checkpoint
    # (hparams_seed, val_acc, test_acc) of every setting that had a result,
    # ascending hparams_seed: what the choice was made among.
    candidates: tuple[tuple[int, float, float], ...]

    @property
    def val_acc(self) -> float:
        return self.checkpoint.val_acc

    @property
    def test_acc(self) -> float:
        return self.checkpoint.test_acc

    @property
    def step(self) -> int:
        return self.checkpoint.step

    @property
    def run(self) -> Run:
        return self.checkpoint.run

    @property
    def n_hparams(self) -> int:
        return len(self.candidates)


def mean_and_stderr(values: Sequence[float]) -> tuple[float | None, float | None]:
    """DomainBed's mean and standard error: ``np.std(x) / sqrt(len(x))`` with
    the *population* standard deviation (ddof=0). A single value has stderr 0.
    Empty input gives (None, None)."""
    if len(values) == 0:
        return None, None
    x = np.asarray(values, dtype=float)
    return float(np.mean(x)), float(np.std(x) / np.sqrt(len(x)))


@dataclass
class GroupResult:
    """All trials of one (dataset, algorithm, test_env)."""

    dataset: str
    algorithm: str
    test_env: int
    trials: list[TrialChoice] = field(default_factory=list)  # ascending trial_seed
    unfinished: list[Run] = field(default_factory=list)      # left out or used

    @property
    def accs(self) -> list[float]:
        return [t.test_acc for t in self.trials]

    @property
    def n_trials(self) -> int:
        return len(self.trials)

    @property
    def mean(self) -> float | None:
        return mean_and_stderr(self.accs)[0]

    @property
    def stderr(self) -> float | None:
        return mean_and_stderr(self.accs)[1]


class SelectionMethod:
    """A model-selection strategy (DomainBed's ``SelectionMethod``)."""

    key: ClassVar[str]
    name: ClassVar[str]  # DomainBed's description, used in table titles

    @classmethod
    def run_acc(cls, runs: Sequence[Run], test_env: int) -> Checkpoint | None:
        """(val_acc, test_acc) of one hyperparameter setting; ``runs`` are the
        runs of that setting in the group of ``test_env``. None if they give
        no result."""
        raise NotImplementedError

    @classmethod
    def sweep_acc(cls, runs: Sequence[Run], test_env: int, trial_seed: int) -> TrialChoice | None:
        """Pick the best setting among the runs of one group (one trial)."""
        by_hparams: dict[int, list[Run]] = defaultdict(list)
        for run in runs:
            by_hparams[run.hparams_seed].append(run)
        scored = []
        for hparams_seed in sorted(by_hparams):
            checkpoint = cls.run_acc(by_hparams[hparams_seed], test_env)
            if checkpoint is not None:
                scored.append((hparams_seed, checkpoint))
        if not scored:
            return None
        # ">=": among equal val_accs the last, i.e. the highest hparams_seed,
        # wins -- what DomainBed's sorted(...)[::-1][0] gives.
        best_seed, best = scored[0]
        for hparams_seed, checkpoint in scored[1:]:
            if _val_key(checkpoint.val_acc) >= _val_key(best.val_acc):
                best_seed, best = hparams_seed, checkpoint
        return TrialChoice(
            trial_seed=trial_seed, hparams_seed=best_seed, checkpoint=best,
            candidates=tuple((s, c.val_acc, c.test_acc) for s, c in scored))


def _single_test_env_runs(runs: Iterable[Run]) -> list[Run]:
    """DomainBed's ``get_test_records``: runs with exactly one test domain."""
    return [r for r in runs if len(r.test_envs) == 1]


def _first_max(checkpoints: Iterable[Checkpoint]) -> Checkpoint | None:
    """The first checkpoint with the largest val_acc (Python's ``max``)."""
    return max(checkpoints, key=lambda c: _val_key(c.val_acc), default=None)


class TrainingDomainValidation(SelectionMethod):
    """Training-domain validation (DomainBed's ``IIDAccuracySelectionMethod``).

    Per checkpoint: val_acc = mean over the training domains j (j != t) of
    ``env{j}_out_acc``; test_acc = ``env{t}_in_acc``. Per run: the checkpoint
    with the best val_acc (earliest on ties). Only runs with a single test
    domain are used. Needs: one run per (trial, hparams, test env).
    """

    key = "training_domain"
    name = "training-domain validation set"

    @staticmethod
    def step_acc(record: dict, test_env: int) -> tuple[float, float] | None:
        """(val_acc, test_acc) of a record; None when it lacks one of them."""
        n_envs = count_envs(record)
        keys = [f"env{j}_out_acc" for j in range(n_envs) if j != test_env]
        if any(key not in record for key in keys + [f"env{test_env}_in_acc"]):
            return None
        val = [as_float(record[key]) for key in keys]
        return float(np.mean(val)), as_float(record[f"env{test_env}_in_acc"])

    @classmethod
    def run_acc(cls, runs, test_env):
        checkpoints = []
        for run in _single_test_env_runs(runs):
            for record in run.records:
                accs = cls.step_acc(record, test_env)
                if accs is not None:
                    checkpoints.append(Checkpoint(*accs, int(record["step"]), run))
        return _first_max(checkpoints)


class OracleSelection(SelectionMethod):
    """Test-domain validation, the oracle (DomainBed's ``OracleSelectionMethod``).

    Per run: the LAST checkpoint only (no early stopping); val_acc =
    ``env{t}_out_acc``, test_acc = ``env{t}_in_acc``. Only runs with a single
    test domain are used. Needs: one run per (trial, hparams, test env).
    """

    key = "oracle"
    name = "test-domain validation set (oracle)"

    @classmethod
    def run_acc(cls, runs, test_env):
        candidates = [(int(record["step"]), order, record, run)
                      for run in _single_test_env_runs(runs)
                      for order, record in enumerate(run.records)]
        if not candidates:
            return None
        # Largest step; among equal steps the last record (a stable sort's [-1]).
        step, _, record, run = max(candidates, key=lambda c: (c[0], c[1]))
        if f"env{test_env}_out_acc" not in record or f"env{test_env}_in_acc" not in record:
            return None
        return Checkpoint(as_float(record.get(f"env{test_env}_out_acc")),
                          as_float(record.get(f"env{test_env}_in_acc")), step, run)


class LeaveOneDomainOut(SelectionMethod):
    """Leave-one-domain-out cross-validation (DomainBed's ``LeaveOneOutSelectionMethod``).

    What it needs from the sweep, for every trial, hparams setting and test
    domain t of a dataset with D domains:

    * the run with ``test_envs=[t]`` (it gives the test accuracy), and
    * for every other domain j, a run with ``test_envs=[t, j]`` (in either
      order) and the *same hparams_seed*: trained on the D-2 remaining
      domains, its accuracy on j's *in* split, ``env{j}_in_acc``, is the
      validation score of held-out domain j;
    * all these runs evaluated at the same steps.

    (DomainBed's ``sweep --single_test_envs`` does not launch the pair runs;
    its default sweep does.) At each step where all D runs have a record:
    val_acc = sum over j != t of ``env{j}_in_acc`` of the [t, j] run / (D - 1),
    test_acc = ``env{t}_in_acc`` of the [t] run. The step with the best
    val_acc (earliest on ties) is the setting's checkpoint.
    """

    key = "leave_one_domain_out"
    name = "leave-one-domain-out cross-validation"

    @classmethod
    def run_acc(cls, runs, test_env):
        by_step: dict[int, list[tuple[dict, Run]]] = defaultdict(list)
        for run in runs:
            for record in run.records:
                by_step[int(record["step"])].append((record, run))
        checkpoints = []
        for step in sorted(by_step):
            checkpoint = cls._step_acc(by_step[step], test_env, step)
            if checkpoint is not None:
                checkpoints.append(checkpoint)
        return _first_max(checkpoints)

    @staticmethod
    def _step_acc(records: list[tuple[dict, Run]], test_env: int, step: int) -> Checkpoint | None:
        test_records = [(r, run) for r, run in records if len(run.test_envs) == 1]
        if len(test_records) != 1:
            return None
        n_envs = count_envs(records[0][0])
        val_accs: list[float | None] = [None] * n_envs
        for record, run in records:
            held_out = set(run.test_envs) - {test_env}
            if len(run.test_envs) == 2 and len(held_out) == 1:
                val_env = held_out.pop()
                val_accs[val_env] = as_float(record.get(f"env{val_env}_in_acc"))
        others = [v for j, v in enumerate(val_accs) if j != test_env]
        if any(v is None for v in others):
            return None
        test_record, test_run = test_records[0]
        return Checkpoint(sum(others) / (n_envs - 1),
                          as_float(test_record.get(f"env{test_env}_in_acc")), step, test_run)


SELECTION_METHODS: dict[str, type[SelectionMethod]] = {
    m.key: m for m in (TrainingDomainValidation, OracleSelection, LeaveOneDomainOut)
}
_ALIASES = {
    "iid": "training_domain", "training_domain_validation": "training_domain",
    "iidaccuracyselectionmethod": "training_domain",
    "test_domain": "oracle", "oracleselectionmethod": "oracle",
    "loo": "leave_one_domain_out", "leave_one_out": "leave_one_domain_out",
    "leaveoneoutselectionmethod": "leave_one_domain_out",
}


def get_method(method: str | type[SelectionMethod]) -> type[SelectionMethod]:
    """A selection method by key (``training_domain``, ``oracle``,
    ``leave_one_domain_out``; hyphens accepted), alias or class."""
    if isinstance(method, type) and issubclass(method, SelectionMethod):
        return method
    key = str(method).strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in SELECTION_METHODS:
        raise ValueError(f"unknown selection method {method!r}; "
                         f"choose from {', '.join(SELECTION_METHODS)}")
    return SELECTION_METHODS[key]


def _ordered(names: Iterable[str], preferred: Sequence[str]) -> list[str]:
    names = set(names)
    known = [n for n in preferred if n in names]
    return known + sorted(names - set(known))


def ordered_datasets(names: Iterable[str]) -> list[str]:
    return _ordered(names, DATASET_ORDER)


def ordered_algorithms(names: Iterable[str]) -> list[str]:
    return _ordered(names, ALGORITHM_ORDER)


def _mode(counts: Iterable[int]) -> int | None:
    """Most common value; ties go to the largest."""
    tally = Counter(counts)
    if not tally:
        return None
    return max(tally, key=lambda n: (tally[n], n))


@dataclass
class Selection:
    """The outcome of one selection method over a set of runs."""

    method: type[SelectionMethod]
    groups: dict[tuple[str, str, int], GroupResult]
    n_envs: dict[str, int]          # dataset -> number of domains
    datasets: list[str]
    algorithms: list[str]
    runs: list[Run]                 # everything loaded, unfinished included
    include_unfinished: bool
    # (dataset, message): gaps the tables should mention (LOO runs missing,
    # trials that chose among fewer hparams settings than usual).
    notes: list[tuple[str, str]] = field(default_factory=list)

    def group(self, dataset: str, algorithm: str, test_env: int) -> GroupResult | None:
        return self.groups.get((dataset, algorithm, test_env))

    @property
    def expected_trials(self) -> int | None:
        """The most common number of trials over the (dataset, algorithm,
        test_env) cells that have any (ties: the larger). A cell with fewer is
        marked incomplete."""
        return _mode(g.n_trials for g in self.groups.values() if g.n_trials)

    @property
    def unfinished_runs(self) -> list[Run]:
        return [r for r in self.runs if not r.done]


def select(runs: Sequence[Run], method: str | type[SelectionMethod] = "training_domain",
           include_unfinished: bool = False) -> Selection:
    """Apply a selection method to every (dataset, algorithm, test_env, trial).

    Unfinished runs are left out unless ``include_unfinished``; in both cases
    the groups they belong to list them in ``GroupResult.unfinished``.
    Raises :class:`MissingRunsError` for leave-one-domain-out when no usable
    run has two test domains.
    """
    method = get_method(method)
    used = [r for r in runs if r.done or include_unfinished]
    left_out = [r for r in runs if not r.done and not include_unfinished]

    if method is LeaveOneDomainOut and not any(len(r.test_envs) == 2 for r in used):
        extra = ""
        if any(len(r.test_envs) == 2 for r in left_out):
            extra = " (unfinished ones were left out; see include_unfinished)"
        raise MissingRunsError(
            "leave_one_domain_out needs runs with two test domains; none found" + extra
            + ". For every trial, hparams setting and test domain t it needs the run with "
            "test_envs=[t] and, for each other domain j, a run with test_envs=[t, j].")

    # DomainBed's get_grouped_records: a run joins the group of each test env.
    members: dict[tuple[str, str, int], dict[int, list[Run]]] = defaultdict(lambda: defaultdict(list))
    unfinished: dict[tuple[str, str, int], list[Run]] = defaultdict(list)
    n_envs: dict[str, int] = {}
    for run in runs:
        n_envs[run.dataset] = max(n_envs.get(run.dataset, 0), run.n_envs)
        for test_env in run.test_envs:
            key = (run.dataset, run.algorithm, test_env)
            if not run.done:
                unfinished[key].append(run)
            if run.done or include_unfinished:
                members[key][run.trial_seed].append(run)

    groups: dict[tuple[str, str, int], GroupResult] = {}
    notes: list[tuple[str, str]] = []
    for key in set(members) | set(unfinished):
        dataset, algorithm, test_env = key
        group = GroupResult(dataset, algorithm, test_env, unfinished=unfinished.get(key, []))
        for trial_seed in sorted(members.get(key, {})):
            trial_runs = members[key][trial_seed]
            choice = method.sweep_acc(trial_runs, test_env, trial_seed)
            if choice is not None:
                group.trials.append(choice)
            elif method is LeaveOneDomainOut and _single_test_env_runs(trial_runs):
                notes.append((dataset, _loo_gap(dataset, algorithm, test_env, trial_seed,
                                      trial_runs, n_envs[dataset])))
        groups[key] = group

    selection = Selection(
        method=method, groups=groups, n_envs=n_envs,
        datasets=ordered_datasets(n_envs),
        algorithms=ordered_algorithms({r.algorithm for r in runs}),
        runs=list(runs), include_unfinished=include_unfinished)
    selection.notes = (sorted(notes) + _hparams_notes(selection) + _duplicate_notes(used)
                       + _missing_notes(used))
    return selection


def _missing_notes(runs: Sequence[Run]) -> list[tuple[str, str]]:
    """Accuracies absent from the runs' records (empty splits), per dataset."""
    lacking: dict[tuple[str, tuple[str, ...]], list[Run]] = defaultdict(list)
    for run in runs:
        keys = tuple(dict.fromkeys(k for r in run.records for k in missing_accs(r)))
        if keys:
            lacking[(run.dataset, keys)].append(run)
    return [(dataset, f"{dataset}: {len(group)} run(s) have no {', '.join(keys)} in their "
                      "results (an empty split: holdout_fraction 0, or a domain with too few "
                      "examples); a selection that needs them has no result there")
            for (dataset, keys), group in sorted(lacking.items())]


def _duplicate_notes(runs: Sequence[Run]) -> list[tuple[str, str]]:
    """Runs that share (dataset, algorithm, test_envs, trial, hparams): DomainBed
    pools their records into one setting, and so does kdg; say so."""
    seen: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        seen[(run.dataset, run.algorithm, run.test_envs, run.trial_seed,
              run.hparams_seed)].append(run)
    return [(key[0], f"{key[0]}/{key[1]} test_envs={list(key[2])}, trial {key[3]}, "
                     f"hparams {key[4]}: {len(dup)} runs, their records pooled: "
                     + ", ".join(str(r.path) for r in dup) + _differences(dup))
            for key, dup in seen.items() if len(dup) > 1]


def _differences(runs: Sequence[Run]) -> str:
    """What differs between runs pooled as one setting (their hparams, and
    their args but those that do not change the numbers: the output
    directory, the backend, the splits evaluated): a rerun with other
    settings under the same seeds, which pooling would mix silently."""
    def values(run: Run) -> dict:
        args = {f"args.{k}": v for k, v in run.args.items()
                if k not in ("output_dir", "backend", "eval_splits")}
        return {**args, **run.hparams}

    seen = [values(run) for run in runs]
    keys = sorted({k for v in seen for k in v}, key=str)
    # a key one run lacks (written by an older kdg) is no difference
    differ = [k for k in keys
              if len({repr(v[k]) for v in seen if k in v}) > 1]
    if not differ:
        return ""
    shown = "; ".join(f"{k}: " + " / ".join(repr(v[k]) if k in v else "-" for v in seen)
                      for k in differ[:5])
    more = f" and {len(differ) - 5} more" if len(differ) > 5 else ""
    return f" (WARNING: they differ in {shown}{more}: different settings pooled as one)"


def _loo_gap(dataset, algorithm, test_env, trial_seed, runs, n_envs) -> str:
    """Why leave-one-domain-out found nothing for one group."""
    where = f"{dataset}/{algorithm} test env {test_env}, trial {trial_seed}"
    paired = {j for r in runs if len(r.test_envs) == 2 for j in r.test_envs if j != test_env}
    missing = [j for j in range(n_envs) if j != test_env and j not in paired]
    if missing:
        return (f"{where}: no result, no run with test_envs=[{test_env}, j] "
                f"for j in {missing}")
    return f"{where}: no result, the runs have no step in common"


def _hparams_notes(selection: Selection) -> list[tuple[str, str]]:
    """Trials that chose among fewer hparams settings than most did."""
    counts = [(g, t) for g in selection.groups.values() for t in g.trials]
    usual = _mode(t.n_hparams for _, t in counts)
    return [(g.dataset, f"{g.dataset}/{g.algorithm} test env {g.test_env}, trial {t.trial_seed}: "
             f"{t.n_hparams} hparams setting(s), most trials have {usual}")
            for g, t in sorted(counts, key=lambda gt: (gt[0].dataset, gt[0].algorithm,
                                                       gt[0].test_env, gt[1].trial_seed))
            if t.n_hparams < usual]
