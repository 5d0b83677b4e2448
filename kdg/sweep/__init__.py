"""kdg.sweep: DomainBed-style sweeps of `kdg train` jobs.

A sweep file names a base recipe and what varies (datasets, algorithms, test
domains, hyperparameter samples, trials, the search space); see
:mod:`kdg.sweep.spec` for its format, :mod:`kdg.sweep.space` for the search
spaces and their seeded sampling, :mod:`kdg.sweep.jobs` for the jobs, their
directories and states, :mod:`kdg.sweep.launchers` for the local and Ray
launchers, and :mod:`kdg.sweep.cli` for `kdg sweep`.

::

    from kdg.sweep import load_sweep, expand_jobs, run_sweep, status

    sweep = load_sweep("sweeps/digits.yaml")
    jobs = expand_jobs(sweep)                       # resolved recipes, stable directories
    result = run_sweep(sweep, launcher="local", jobs=2, only=["algorithm=fish"])
    for job, state in status(sweep):
        print(state.state, job.name)

Then `kdg report <output_dir>` (or :func:`kdg.report.report`) reads the runs.

Model selection. Training-domain validation and the oracle need one run per
(test domain, hyperparameter sample, trial): the default sweep. Leave-one-
domain-out selection also needs, for every test domain t and every other
domain j, a run with test domains [t, j] (its accuracy on j is the held-out
score); `leave_one_out: true` in the sweep file adds those jobs (D(D-1)/2
pairs per sample and trial for D domains, in the same directory tree; the
single-domain jobs keep their directories, so it can be switched on later).

Resuming. Running a sweep again skips finished jobs (a `done` file), resumes
stopped and failed ones (`kdg train` continues from the checkpoint), and
leaves alone jobs that another live process is running. A job's state is
read from its directory (:func:`kdg.sweep.jobs.job_status`): done, running,
failed (its error.txt keeps the exit status and stderr, traceback included,
until the job succeeds), stopped (trained part way, then killed) or not
started.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

from kdg.sweep import jobs as jobs_lib
from kdg.sweep.jobs import STATES, Job, JobStatus, filter_jobs, job_status
from kdg.sweep.jobs import expand_jobs as _expand_all
from kdg.sweep.spec import Sweep, SweepError, SweepSpec, load_sweep

LAUNCHERS = ("local", "ray")


def _as_sweep(sweep, backend: str | None = None) -> Sweep:
    if isinstance(sweep, Sweep):
        if backend is not None and backend != sweep.backend:
            return load_sweep(sweep.path, backend=backend) if sweep.path else Sweep(
                sweep.spec, sweep.base, sweep.output_dir, backend, sweep.path)
        return sweep
    return load_sweep(sweep, backend=backend)


def expand_jobs(sweep: Sweep | str | os.PathLike, only: Iterable[str] = ()) -> list[Job]:
    """The sweep's jobs (all, or those matching the `--only KEY=VALUE` filters)."""
    return filter_jobs(_expand_all(_as_sweep(sweep)), only)


@dataclass
class SweepResult:
    """What one `run_sweep` did."""

    jobs: list[Job]                                  # the selected jobs
    outcomes: list[dict] = field(default_factory=list)  # one per job attempted
    already_done: int = 0
    busy: int = 0                                    # running in another process
    done_elsewhere: int = 0                          # of those, how many ended done

    def count(self, state: str) -> int:
        return sum(o["state"] == state for o in self.outcomes)

    @property
    def ok(self) -> bool:
        """Every selected job is done."""
        return self.done == len(self.jobs)

    @property
    def done(self) -> int:
        """Selected jobs that are done, by this process or another."""
        return self.already_done + self.count("done") + self.done_elsewhere


def run_sweep(sweep: Sweep | str | os.PathLike, launcher: str = "local", jobs: int | None = None,
              only: Iterable[str] = (), backend: str | None = None,
              ray_address: str | None = None, env: Mapping[str, str] | None = None,
              echo: Callable[[str], None] | None = print,
              wait: bool = True, poll_s: float = 1.0) -> SweepResult:
    """Run every selected job that is not done: finished jobs are skipped,
    stopped and failed ones resume (through `kdg train`'s resume), jobs that
    another live process runs are left alone, and (with `wait`) waited for
    at the end, so that two sweeps sharing the jobs both end with every
    job's outcome.
    Jobs that cannot run (`jobs.check_jobs`) stop the sweep before any
    starts (SweepError).

    Args:
        launcher: ``local`` (``jobs`` at a time, default 1) or ``ray`` (at
            most ``jobs`` tasks in flight, default all; see
            :func:`kdg.sweep.launchers.run_ray` for the cluster).
        only: ``KEY=VALUE`` filters (:func:`kdg.sweep.jobs.filter_jobs`).
        backend: Keras backend of new jobs (default: the sweep file's, the
            base recipe's, else $KERAS_BACKEND); a job that trained part way
            resumes on the backend it started with.
        env: extra environment variables for the jobs.
    """
    from kdg.sweep import launchers

    if launcher not in LAUNCHERS:
        raise SweepError(f"launcher: {launcher!r} is not one of {', '.join(LAUNCHERS)}")
    echo = echo or (lambda text: None)
    sweep = _as_sweep(sweep, backend)
    selected = expand_jobs(sweep, only)
    result = SweepResult(selected)
    todo, elsewhere = [], []
    counts: Counter = Counter()
    for job in selected:
        state = job_status(job).state
        counts[state] += 1
        if state == "done":
            result.already_done += 1
            jobs_lib.clear_stale_lock(job.directory)
        elif state == "running":
            result.busy += 1
            elsewhere.append(job)
        else:
            todo.append(job)
    problems = jobs_lib.check_jobs(todo)
    if problems:
        raise SweepError(jobs_lib.format_problems(problems))
    echo(f"sweep {sweep.name}: {len(selected)} job(s) in {sweep.output_dir}: "
         + ", ".join(f"{counts[s]} {s}" for s in STATES if counts[s])
         + (f"; running {len(todo)} with the {launcher} launcher" if todo else "; nothing to run"))
    if todo:
        env = _job_env(sweep, env)
        if launcher == "local":
            result.outcomes = launchers.run_local(todo, jobs or 1, env, echo)
        else:
            result.outcomes = launchers.run_ray(todo, jobs, env, echo, address=ray_address)
        result.busy += result.count("busy")
        busy = {o["directory"] for o in result.outcomes if o["state"] == "busy"}
        elsewhere += [job for job in todo if str(job.directory) in busy]
    if wait:
        _wait_elsewhere(result, elsewhere, echo, poll_s)
    return result


def _wait_elsewhere(result: SweepResult, elsewhere: list[Job], echo, poll_s: float) -> None:
    """Wait for the jobs that another process runs; count those that end done."""
    running = [job for job in elsewhere if job_status(job).state == "running"]
    if running:
        echo(f"waiting for {len(running)} job(s) that another process runs")
    while any(job_status(job).state == "running" for job in running):
        time.sleep(poll_s)
    result.done_elsewhere = sum(job_status(job).state == "done" for job in elsewhere)


def _job_env(sweep: Sweep, env: Mapping[str, str] | None) -> dict:
    """The jobs' extra environment. JAX jobs share a persistent compilation
    cache in <output_dir>/.cache/jax (the jobs of a sweep compile the same
    programs; JAX keys its cache on the program, the devices and its
    version), unless JAX_COMPILATION_CACHE_DIR is set already."""
    env = dict(env or {})
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in env:
        env["JAX_COMPILATION_CACHE_DIR"] = str(sweep.output_dir / ".cache" / "jax")
        for key in ("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"):
            if key not in os.environ:
                env.setdefault(key, "0")
    return env


def status(sweep: Sweep | str | os.PathLike, only: Iterable[str] = ()) -> list[tuple[Job, JobStatus]]:
    """Every selected job with its state (done, running, failed, stopped,
    not started), read from its directory."""
    return [(job, job_status(job)) for job in expand_jobs(sweep, only)]


def format_status(rows: Sequence[tuple[Job, JobStatus]], root: os.PathLike | str | None = None) -> str:
    """A plain-text table of `status()` and a line of counts."""
    lines = [f"{'state':<11} {'step':>11}  job"]
    for job, state in rows:
        step = f"{state.step if state.step is not None else '-'}/{job.steps}"
        line = f"{state.state:<11} {step:>11}  {job.name}"
        if state.detail:
            line += f"  [{state.detail[:160]}]"
        lines.append(line)
    counts = Counter(state.state for _, state in rows)
    lines.append(f"{len(rows)} job(s): " + ", ".join(f"{counts[s]} {s}" for s in STATES))
    if root is not None:
        lines.append(f"in {root}")
    return "\n".join(lines)


__all__ = [
    "LAUNCHERS", "STATES", "Job", "JobStatus", "Sweep", "SweepError", "SweepResult",
    "SweepSpec", "expand_jobs", "filter_jobs", "format_status", "job_status", "load_sweep",
    "run_sweep", "status",
]
