"""A sweep's jobs, their directories and their state on disk.

Each job is one resolved recipe (a dict that `kdg.recipes.validate`
accepts) for one (dataset, algorithm, test domains, hyperparameter sample h,
trial t):

* `training.hparams_seed = h`; the hyperparameters of sample h
  (:mod:`kdg.sweep.space`; sample 0 is the base recipe's values);
* `training.trial_seed = t` (the in/out split of every domain);
* `training.seed = seed_hash(sweep seed, dataset, algorithm, test_envs, h, t)`
  (initialisation, dropout, the batch stream), as DomainBed's sweep;
* `dataset.test_domains` as domain indices;
* the sweep's `overrides_when` that match its dataset and algorithm, before
  sample h's values.

Its directory is `<output_dir>/<dataset>/<algorithm>/test<envs>/h<h>_t<t>_<hash>`,
`<hash>` the first 8 hex digits of the SHA-1 of the resolved recipe without
`output_dir`, `backend` and `dataset.root` (where things are and which
backend runs them do not make another experiment) and without the fields
left at their default (a field added to the recipe schema later does not
rename the jobs of a sweep under way). The same sweep file
always gives the same jobs and directories; a change to anything that
matters gives new directories, never a mix.

A job directory holds what `kdg train` writes (recipe.yaml, results.jsonl,
checkpoint.npz, model.keras, done) and, from the sweep:

* `running.json`: the lock of a running job: host, the launcher's pid, the
  trainer's pid; the launcher touches it every few seconds (heartbeat);
* `stdout.txt`, `stderr.txt`: the last attempt's output;
* `error.txt`: why the last attempt failed (exit status and its stderr,
  traceback included); removed when the job later succeeds.

:func:`job_status` reads the state: `done` (a `done` file), `running` (a lock
whose trainer process is alive on this host, checked by pid and command
line, or, from another host, a heartbeat younger than a minute), `failed`
(`error.txt`), `stopped` (trained part way, then killed: the next sweep
resumes it) or `not started`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from kdg import recipes, run_folder
from kdg.sweep import space as space_lib
from kdg.algorithm_names import normalize as normalize_name
from kdg.sweep.spec import Sweep, SweepError

LOCK = "running.json"
ERROR = "error.txt"
STDOUT = "stdout.txt"
STDERR = "stderr.txt"
HEARTBEAT_S = 5.0          # the launcher touches the lock this often
HEARTBEAT_STALE_S = 60.0   # a lock untouched for this long belongs to nobody

_EXCEPTION_LINE = re.compile(r"[A-Za-z_][\w.]*(Error|Exception|error|Interrupt|Exit)(:|$)")

STATES = ("done", "running", "failed", "stopped", "not started")
HOST = socket.gethostname()

# Dataset fields a dataset other than the base's inherits from the base.
_INHERITED_DATASET_FIELDS = ("root", "holdout_fraction", "augment")
# Fields left out of a job's hash: what a run's identity leaves out, and where
# the job runs (a sweep's jobs may move between machines and backends).
_NOT_HASHED = recipes.NOT_IDENTITY + (("backend",), ("dataset", "root"))


@dataclass(frozen=True)
class Job:
    dataset: str
    algorithm: str
    test_envs: tuple[int, ...]
    hparams_seed: int
    trial_seed: int
    hparams: dict = field(hash=False, compare=False)   # sample h's values (empty for h = 0)
    recipe: dict = field(hash=False, compare=False)    # resolved; output_dir = directory
    key: str = ""                                      # short hash of the resolved recipe
    directory: Path = Path()

    @property
    def test_label(self) -> str:
        return "test" + "_".join(str(e) for e in self.test_envs)

    @property
    def name(self) -> str:
        return (f"{self.dataset}/{self.algorithm}/{self.test_label}/"
                f"h{self.hparams_seed}_t{self.trial_seed}_{self.key}")

    @property
    def steps(self) -> int:
        return int(self.recipe["training"]["steps"])


# -- expansion ----------------------------------------------------------------------


def _domains(section: dict) -> tuple[list[str], list[str]]:
    """(domains, short names) of a dataset section, without loading images."""
    from kdg import data

    info = data.get_info(section["name"])
    if info.kind == "custom":
        try:
            dataset = data.load("custom", section.get("root"), path=section.get("path"))
        except (data.DataError, ValueError, TypeError) as error:
            raise SweepError(f"invalid sweep:\n  - dataset custom: {error}") from None
        return list(dataset.domains), list(dataset.short_domains)
    return list(info.domains), list(info.short_domains)


def _domain_index(domain: Any, domains: list[str], short: list[str], dataset: str) -> int:
    if isinstance(domain, int) and not isinstance(domain, bool):
        if 0 <= domain < len(domains):
            return domain
    else:
        wanted = str(domain).lower()
        for names in (domains, short):
            lowered = [n.lower() for n in names]
            if wanted in lowered:
                return lowered.index(wanted)
    raise SweepError(
        f"invalid sweep:\n  - test_domains: {domain!r} is not a domain of {dataset}; domains: "
        + ", ".join(f"{i} {d} ({s})" for i, (d, s) in enumerate(zip(domains, short))) + ".")


def test_env_sets(spec_domains, leave_one_out: bool, domains: list[str], short: list[str],
                  dataset: str) -> list[tuple[int, ...]]:
    """The test-domain sets of one dataset: each domain in turn by default;
    with leave_one_out, also every pair [t, j] of a single test domain t."""
    if spec_domains is None:
        sets = [(i,) for i in range(len(domains))]
    else:
        sets = []
        for item in spec_domains:
            items = item if isinstance(item, list) else [item]
            sets.append(tuple(sorted({_domain_index(d, domains, short, dataset) for d in items})))
    for envs in sets:
        if len(envs) >= len(domains):
            raise SweepError(f"invalid sweep:\n  - test_domains: {list(envs)} leaves no domain of "
                             f"{dataset} to train on.")
    if leave_one_out:
        if len(domains) < 3:
            raise SweepError(f"invalid sweep:\n  - leave_one_out: {dataset} has {len(domains)} "
                             "domains; pairs of test domains need at least 3.")
        singles = [envs[0] for envs in sets if len(envs) == 1]
        sets += [tuple(sorted((t, j))) for t in singles for j in range(len(domains)) if j != t]
    return list(dict.fromkeys(sets))


def _dataset_sections(sweep: Sweep) -> list[dict]:
    from kdg import data

    base = dict(sweep.base.get("dataset") or {})
    entries = sweep.spec.datasets or [base]
    sections = []
    for entry in entries:
        entry = {"name": entry} if isinstance(entry, str) else dict(entry)
        name = data.get_info(str(entry["name"])).name
        base_name = base.get("name")
        same = base_name is not None and data.get_info(str(base_name)).name == name
        section = dict(base) if same else {k: base[k] for k in _INHERITED_DATASET_FIELDS if k in base}
        section.update(entry)
        section["name"] = name
        if section.get("root") is not None:
            section["root"] = str(Path(os.path.expanduser(str(section["root"]))).resolve())
        sections.append(section)
    return sections


def _algorithm_sections(sweep: Sweep) -> list[dict]:
    base = dict(sweep.base.get("algorithm") or {"name": "erm"})
    entries = sweep.spec.algorithms or [base]
    sections = []
    for entry in entries:
        entry = {"name": entry} if isinstance(entry, str) else dict(entry)
        name = normalize_name(entry["name"])
        section = dict(base) if normalize_name(base.get("name")) == name else {}
        section.update(entry)
        section["name"] = name
        sections.append(section)
    return sections


def recipe_hash(recipe: dict) -> str:
    """8 hex digits identifying a resolved recipe (location and backend aside).

    Fields at their schema default are left out, so that a field a later kdg
    adds (with a default) does not rename every job of a sweep under way."""
    minimal = recipes.Recipe.model_validate(recipe).model_dump(mode="json", exclude_defaults=True)
    text = json.dumps(recipes.without(minimal, _NOT_HASHED), sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def expand_jobs(sweep: Sweep) -> list[Job]:
    """Every job of the sweep, in a fixed order (dataset, algorithm, test
    domains, hyperparameter sample, trial). Every job's recipe validates;
    the first that does not raises SweepError naming it."""
    spec = sweep.spec
    training_fields = tuple(recipes.TrainingConfig.model_fields)
    jobs = []
    for dataset in _dataset_sections(sweep):
        domains, short = _domains(dataset)
        env_sets = test_env_sets(spec.test_domains, spec.leave_one_out, domains, short,
                                 dataset["name"])
        for algorithm in _algorithm_sections(sweep):
            name = algorithm["name"]
            overrides = {normalize_name(k): v for k, v in spec.search_space.items()}
            search = space_lib.space_for(name, overrides, spec.default_space)
            for envs in env_sets:
                for h in range(spec.n_hparams):
                    values = space_lib.sample(search, spec.seed, h, name, dataset["name"])
                    for t in range(spec.n_trials):
                        jobs.append(_job(sweep, dataset, algorithm, envs, h, t, values,
                                         training_fields))
    return jobs


def _job(sweep, dataset, algorithm, envs, h, t, values, training_fields) -> Job:
    config = copy.deepcopy(sweep.base)
    config["dataset"] = dict(copy.deepcopy(dataset), test_domains=list(envs))
    config["algorithm"] = copy.deepcopy(algorithm)
    for rule in sweep.spec.overrides_when:
        if rule.matches(dataset["name"], algorithm):
            for key, value in rule.set.items():
                recipes.set_dotted(config, str(key).split("."), copy.deepcopy(value))
    space_lib.apply(config, values, training_fields)
    training = config.setdefault("training", {})
    if not isinstance(training, dict):
        training = config["training"] = {}
    training.update(
        trial_seed=t, hparams_seed=h,
        seed=space_lib.seed_hash(sweep.spec.seed, dataset["name"], algorithm["name"],
                                 list(envs), h, t))
    config["backend"] = sweep.backend
    config["output_dir"] = None
    label = (f"{dataset['name']}/{algorithm['name']}/test{'_'.join(map(str, envs))} "
             f"h{h} t{t}")
    try:
        resolved = recipes.validate(config).to_dict()
    except recipes.RecipeError as error:
        shown = ", ".join(f"{k}={v}" for k, v in values.items())
        raise SweepError(f"job {label} ({shown or 'the defaults'}): {error}") from None
    key = recipe_hash(resolved)
    directory = (sweep.output_dir / dataset["name"] / algorithm["name"]
                 / f"test{'_'.join(map(str, envs))}" / f"h{h}_t{t}_{key}")
    resolved["output_dir"] = str(directory)
    return Job(dataset["name"], algorithm["name"], tuple(envs), h, t, values, resolved, key,
               directory)


def check_jobs(jobs: Sequence[Job]) -> dict[Job, str]:
    """Why each job that cannot run would fail as it starts, by job: what
    `kdg train` checks before it writes anything (`recipes.check_run`: pairs
    of training domains, devices on the backend) and an output folder that
    cannot be made. Loads no images; the devices a job would use are
    counted where it trains, not here."""
    from kdg.run_folder import RunError, check_output_dir

    domains: dict = {}
    problems = {}
    for job in jobs:
        section = job.recipe["dataset"]
        where = (section["name"], section.get("root"), section.get("path"))
        if where not in domains:
            domains[where] = _domains(section)[0]
        try:
            recipes.check_run(recipes.validate(job.recipe), domains[where], job.test_envs,
                              count_devices=False)
            check_output_dir(job.directory)
        except (recipes.RecipeError, RunError) as error:
            problems[job] = str(error).replace(recipes.INVALID, "").replace(
                "\n  - ", "; ")
    return problems


def format_problems(problems: dict[Job, str]) -> str:
    """The SweepError text for jobs that cannot run."""
    shown = list(problems.items())[:10]
    more = len(problems) - len(shown)
    return (f"invalid sweep: {len(problems)} job(s) cannot run:\n"
            + "".join(f"  - {job.name}: {why}\n" for job, why in shown)
            + (f"  - ... and {more} more (kdg sweep --dry-run lists them)\n" if more else "")
            + "Change the sweep file (its test_domains, algorithms or base recipe), or leave "
              "these jobs out with --only.")


# -- --only filters -----------------------------------------------------------------

_FILTER_KEYS = {
    "dataset": "dataset", "algorithm": "algorithm", "test_envs": "test_envs",
    "test_env": "test_envs", "test_domains": "test_envs", "hparams_seed": "hparams_seed",
    "h": "hparams_seed", "trial_seed": "trial_seed", "t": "trial_seed", "trial": "trial_seed",
    "hash": "key", "key": "key",
}


def _parse_envs(text: str) -> tuple[int, ...]:
    parts = [p for p in text.strip("[]() ").replace(" ", "").split(",") if p]
    return tuple(sorted({int(p) for p in parts}))


def _matches(job: Job, key: str, value: str) -> bool:
    if "." in key:
        node: Any = job.recipe
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        wanted = yaml.safe_load(value)
        return node == wanted or str(node) == value
    field_name = _FILTER_KEYS[key]
    if field_name == "dataset":
        return job.dataset.lower() == value.lower()
    if field_name == "algorithm":
        return job.algorithm == normalize_name(value)
    if field_name == "test_envs":
        return job.test_envs == _parse_envs(value)
    if field_name == "key":
        return job.key.startswith(value)
    return getattr(job, field_name) == int(value)


def filter_jobs(jobs: Sequence[Job], only: Iterable[str] = ()) -> list[Job]:
    """Jobs matching every `--only KEY=VALUE` (one value of each key: the same
    key given twice matches either). Keys: dataset, algorithm, test_envs
    (`0`, or `0,1` for a pair), hparams_seed (h), trial_seed (t), hash, or any
    dotted recipe key (`training.lr=0.001`)."""
    wanted: dict[str, list[str]] = {}
    for text in only:
        if "=" not in text:
            raise SweepError(f"--only {text!r}: expected KEY=VALUE, e.g. --only algorithm=fish")
        key, value = (s.strip() for s in text.split("=", 1))
        if key not in _FILTER_KEYS and "." not in key:
            raise SweepError(f"--only {text!r}: unknown key {key!r}; use "
                             f"{', '.join(sorted(set(_FILTER_KEYS)))} or a dotted recipe key.")
        try:
            if key in _FILTER_KEYS and _FILTER_KEYS[key] in ("hparams_seed", "trial_seed"):
                int(value)
            if key in _FILTER_KEYS and _FILTER_KEYS[key] == "test_envs":
                _parse_envs(value)
        except ValueError:
            raise SweepError(f"--only {text!r}: {value!r} is not a number "
                             "(test_envs: 0 or 0,1).") from None
        wanted.setdefault(key, []).append(value)
    return [job for job in jobs
            if all(any(_matches(job, key, v) for v in values) for key, values in wanted.items())]


# -- locks --------------------------------------------------------------------------


def read_lock(directory: Path) -> dict | None:
    try:
        info = json.loads((directory / LOCK).read_text())
        info["mtime"] = (directory / LOCK).stat().st_mtime
        return info
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return None


def pid_alive(pid: int | None, needle: str | None = None) -> bool:
    """Is process `pid` alive (not a zombie) and, when `needle` is given and
    /proc can tell, does its command line contain it (guards against a
    reused pid)?"""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    proc = Path(f"/proc/{int(pid)}")
    if proc.exists():
        try:
            status = (proc / "status").read_text()
            if "\nState:\tZ" in status:
                return False
            if needle is not None:
                return needle in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace")
        except OSError:
            return False
    return True


def lock_alive(info: dict | None, directory: Path) -> bool:
    """Whether a lock belongs to a job that is really running."""
    if not info:
        return False
    fresh = time.time() - info.get("mtime", 0) < HEARTBEAT_STALE_S
    if info.get("host") != HOST:
        return fresh
    if pid_alive(info.get("trainer_pid"), str(directory)):
        return True
    return fresh and pid_alive(info.get("pid"))


def acquire_lock(directory: Path) -> bool:
    """Take a job's lock; False when a live process holds it. A stale lock
    (its processes are gone) is taken over."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if lock_alive(read_lock(directory), directory):
                return False
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({"host": HOST, "pid": os.getpid(), "trainer_pid": None,
                       "started": time.time()}, f)
        return True
    return False


def clear_stale_lock(directory: Path) -> None:
    """Remove a lock that no live process holds (e.g. a job that finished
    just as its launcher was killed)."""
    if (directory / LOCK).exists() and not lock_alive(read_lock(directory), directory):
        try:
            (directory / LOCK).unlink()
        except FileNotFoundError:
            pass


def update_lock(directory: Path, **fields) -> None:
    info = read_lock(directory) or {}
    info.pop("mtime", None)
    info.update(fields)
    run_folder.atomic_write(directory / LOCK, json.dumps(info).encode())


def release_lock(directory: Path) -> None:
    info = read_lock(directory)
    if info and info.get("host") == HOST and info.get("pid") == os.getpid():
        try:
            (directory / LOCK).unlink()
        except FileNotFoundError:
            pass


# -- state ----------------------------------------------------------------------------


@dataclass
class JobStatus:
    state: str                 # one of STATES
    step: int | None = None    # last evaluated step
    detail: str = ""           # the error's last line, or where it runs


def last_step(directory: Path) -> int | None:
    """The job's last evaluated step (bad lines skipped as everywhere: run_folder)."""
    try:
        return run_folder.read_results(directory / run_folder.RESULTS).last_step
    except OSError:
        return None


def has_progress(directory: Path) -> bool:
    """Has the job trained at all (an evaluation or a checkpoint)?"""
    return last_step(directory) is not None or (directory / run_folder.CHECKPOINT).exists()


def error_summary(directory: Path) -> str:
    """The most telling line of error.txt: kdg's `error:` line, else the
    exception line of a traceback, else the first line."""
    try:
        lines = [l.rstrip() for l in (directory / ERROR).read_text().splitlines() if l.strip()]
    except OSError:
        return ""
    for line in reversed(lines):
        if line.startswith("error:"):
            return line
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line):
            return line
    return lines[0] if lines else ""


def job_status(job: Job | Path) -> JobStatus:
    directory = job.directory if isinstance(job, Job) else Path(job)
    step = last_step(directory)
    if run_folder.is_done(directory):
        return JobStatus("done", step)
    info = read_lock(directory)
    if lock_alive(info, directory):
        return JobStatus("running", step, f"{info.get('host')} pid {info.get('trainer_pid')}")
    if (directory / ERROR).exists():
        return JobStatus("failed", step, error_summary(directory))
    if has_progress(directory):
        return JobStatus("stopped", step)
    return JobStatus("not started", step)
