"""Launchers: run a sweep's jobs, each `kdg train` in its own process.

* `local`: N jobs at a time on this machine (:func:`run_local`);
* `ray`: one Ray task per job (:func:`run_ray`), on an existing cluster or
  a small local instance started for the sweep; one GPU per task when the
  cluster has GPUs.

Both go through :class:`JobProcess`: take the job's lock, write its
recipe.yaml, start `python -m kdg.sweep.child <job>/recipe.yaml` (that is,
`kdg train <job>/recipe.yaml --quiet`, see :mod:`kdg.sweep.child`) with its
output in stdout.txt / stderr.txt, heartbeat the lock while it runs, then
keep error.txt on failure (removed on success) and release the lock.

A job that had trained part way resumes (`kdg train` continues from its
checkpoint) on the backend it started with, as recorded in its recipe.yaml:
only then does it end with the results of a run that was never interrupted.
On a cluster, every node must see the sweep's output directory at the same
path (a shared file system) and have kdg installed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Callable, Mapping, Sequence

import yaml

from kdg import run_folder
from kdg.run_folder import atomic_write
from kdg.sweep import jobs as jobs_lib
from kdg.sweep.child import PARENT_VARIABLE
from kdg.sweep.jobs import Job

Echo = Callable[[str], None]
ERROR_TAIL_BYTES = 200_000


def _atomic_write(path: Path, text: str) -> None:
    atomic_write(path, text.encode())


def prepare_recipe(directory: Path, recipe: dict) -> tuple[str, bool]:
    """Write the job's recipe.yaml; returns (backend, resumed). A job that
    has trained part way keeps its recipe.yaml (and so its backend); only its
    output_dir follows the directory, should the sweep have moved."""
    path = directory / run_folder.RECIPE
    started = jobs_lib.has_progress(directory)
    if started and path.exists():
        existing = yaml.safe_load(path.read_text()) or {}
        if existing.get("output_dir") != str(directory):
            existing["output_dir"] = str(directory)
            _atomic_write(path, yaml.safe_dump(existing, sort_keys=False))
        return existing.get("backend") or recipe["backend"], True
    _atomic_write(path, yaml.safe_dump(recipe, sort_keys=False))
    return recipe["backend"], started


class JobProcess:
    """One attempt at one job, in a child process."""

    def __init__(self, directory: Path, recipe: dict, env: Mapping[str, str] | None = None,
                 name: str | None = None):
        self.directory = Path(directory)
        self.recipe = recipe
        self.env = dict(env or {})
        self.name = name or str(directory)
        self.proc: subprocess.Popen | None = None
        self.began = 0.0
        self.beat = 0.0
        self.backend = recipe.get("backend")
        self.resumed = False
        self._files = []
        self._early: dict | None = None

    def start(self) -> bool:
        """Start the job; False (nothing started) when another live process
        holds its lock."""
        if not jobs_lib.acquire_lock(self.directory):
            return False
        self.began = self.beat = time.time()
        try:
            self.backend, self.resumed = prepare_recipe(self.directory, self.recipe)
            env = {**os.environ, **self.env, "KERAS_BACKEND": self.backend,
                   PARENT_VARIABLE: str(os.getpid())}
            env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            out = open(self.directory / jobs_lib.STDOUT, "w")
            err = open(self.directory / jobs_lib.STDERR, "w")
            self._files = [out, err]
            command = [sys.executable, "-m", "kdg.sweep.child",
                       str(self.directory / run_folder.RECIPE)]
            # its own session: a Ctrl-C in the terminal reaches the launcher,
            # which stops the jobs itself
            self.proc = subprocess.Popen(command, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, env=env,
                                         start_new_session=True)
            jobs_lib.update_lock(self.directory, trainer_pid=self.proc.pid,
                                 backend=self.backend, command=command)
        except Exception:
            # the job could not even start (an unreadable recipe.yaml, a full
            # disk...): that is this job's failure, not the sweep's
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._close()
            self._early = self._fail(f"could not start:\n{traceback.format_exc()}")
        except BaseException:
            self._close()
            jobs_lib.release_lock(self.directory)
            raise
        return True

    def poll(self) -> dict | None:
        """None while it runs (the lock's heartbeat is kept), then the outcome."""
        if self._early is not None:
            return self._early
        now = time.time()
        if now - self.beat >= jobs_lib.HEARTBEAT_S:
            self.beat = now
            try:
                os.utime(self.directory / jobs_lib.LOCK)
            except OSError:
                pass
        returncode = self.proc.poll()
        if returncode is None:
            return None
        return self._finish(returncode)

    def wait(self, interval: float = 0.5) -> dict:
        while (outcome := self.poll()) is None:
            time.sleep(interval)
        return outcome

    def stop(self, grace: float = 10.0) -> dict:
        """Stop a running job (SIGTERM, then SIGKILL): it is `stopped`, not
        failed, and resumes next time."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close()
        jobs_lib.release_lock(self.directory)
        return self._outcome("stopped", self.proc.returncode if self.proc else None)

    def _close(self) -> None:
        for f in self._files:
            f.close()
        self._files = []

    def _outcome(self, state: str, returncode: int | None, error: str = "") -> dict:
        return {"name": self.name, "directory": str(self.directory), "state": state,
                "returncode": returncode, "seconds": time.time() - self.began,
                "backend": self.backend, "resumed": self.resumed, "error": error,
                "requested_backend": self.recipe.get("backend")}

    def _fail(self, why: str, stderr: str = "") -> dict:
        """Write error.txt, release the lock: the outcome of a failed attempt."""
        try:
            command = " ".join(self.proc.args) if self.proc is not None else ""
            _atomic_write(self.directory / jobs_lib.ERROR,
                          f"job {self.name} failed: {why}\n"
                          f"host {jobs_lib.HOST}, backend {self.backend}, "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S')}, after "
                          f"{time.time() - self.began:.1f} s\ncommand: {command}\n{stderr}")
            return self._outcome("failed", self.proc.returncode if self.proc else None,
                                 jobs_lib.error_summary(self.directory))
        finally:
            jobs_lib.release_lock(self.directory)

    def _finish(self, returncode: int) -> dict:
        self._close()
        if returncode == 0 and run_folder.is_done(self.directory):
            try:
                (self.directory / jobs_lib.ERROR).unlink(missing_ok=True)
                return self._outcome("done", returncode)
            finally:
                jobs_lib.release_lock(self.directory)
        if returncode < 0:
            try:
                why = f"killed by signal {signal.Signals(-returncode).name}"
            except ValueError:
                why = f"killed by signal {-returncode}"
            if returncode == -signal.SIGKILL:
                why += " (out of memory? killed by hand?)"
        elif returncode == 0:
            why = "exited with status 0 but wrote no `done` file"
        else:
            why = f"exited with status {returncode}"
        try:
            data = (self.directory / jobs_lib.STDERR).read_bytes()
        except OSError:
            data = b""
        cut = len(data) > ERROR_TAIL_BYTES
        stderr = data[-ERROR_TAIL_BYTES:].decode(errors="replace")
        return self._fail(why, f"--- stderr{' (last 200 kB)' if cut else ''} ---\n{stderr}")


def _describe(outcome: dict) -> str:
    state = outcome["state"]
    text = f"{state:<7} {outcome['name']}  ({outcome['seconds']:.1f} s"
    if outcome.get("resumed"):
        text += ", resumed"
        if outcome.get("backend") != outcome.get("requested_backend"):
            text += f" on {outcome.get('backend')}, the backend it started with"
    text += ")"
    if state == "failed":
        text += f"\n        {outcome['error']}\n        see {outcome['directory']}/error.txt"
    return text


def _parallel_env(env: Mapping[str, str], parallel: int) -> dict:
    """Several jobs on one machine: each takes GPU memory as it needs it
    (instead of all of it), and OpenMP (PyTorch's CPU threads) gets its share
    of the cores: N spinning thread pools on the same cores slow every job
    down (a small PyTorch job takes 1.5x as long). Variables already set win."""
    env = dict(env)
    if parallel > 1:
        threads = str(max(1, (os.cpu_count() or 1) // parallel))
        for key, value in (("XLA_PYTHON_CLIENT_PREALLOCATE", "false"),
                           ("TF_FORCE_GPU_ALLOW_GROWTH", "true"),
                           ("OMP_NUM_THREADS", threads)):
            if key not in os.environ:
                env.setdefault(key, value)
    return env


class _Stop(BaseException):
    pass


def run_local(jobs: Sequence[Job], parallel: int = 1, env: Mapping[str, str] | None = None,
              echo: Echo = print) -> list[dict]:
    """Run the jobs here, `parallel` at a time. A failed job does not stop the
    others. Ctrl-C or SIGTERM stops the running jobs (they resume next time)
    and re-raises."""
    parallel = max(1, int(parallel))
    env = _parallel_env(env or {}, parallel)
    pending = deque(jobs)
    running: list[JobProcess] = []
    outcomes: list[dict] = []
    total = len(pending)
    previous = None
    if threading.current_thread() is threading.main_thread():
        def on_term(signum, frame):
            raise _Stop()
        previous = signal.signal(signal.SIGTERM, on_term)
    try:
        while pending or running:
            while pending and len(running) < parallel:
                job = pending.popleft()
                process = JobProcess(job.directory, job.recipe, env, job.name)
                if process.start():
                    running.append(process)
                else:
                    outcomes.append({"name": job.name, "directory": str(job.directory),
                                     "state": "busy", "returncode": None, "seconds": 0.0,
                                     "error": "another process runs it"})
                    echo(f"skip    {job.name}: another process runs it")
            time.sleep(0.2)
            for process in list(running):
                outcome = process.poll()
                if outcome is not None:
                    running.remove(process)
                    outcomes.append(outcome)
                    echo(f"[{len(outcomes)}/{total}] {_describe(outcome)}")
    except (KeyboardInterrupt, _Stop):
        echo(f"stopping {len(running)} running job(s); they resume next time")
        for process in running:
            process.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
            previous = None
        raise KeyboardInterrupt from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return outcomes


# -- Ray ---------------------------------------------------------------------------------


def ray_job(directory: str, recipe: dict, env: dict, name: str) -> dict:
    """The body of a Ray task: one job, in a child process of the Ray worker
    (it dies with the worker when the task is cancelled)."""
    process = JobProcess(Path(directory), recipe, env, name)
    if not process.start():
        return {"name": name, "directory": directory, "state": "busy", "returncode": None,
                "seconds": 0.0, "error": "another process runs it"}
    try:
        return process.wait()
    except BaseException:
        process.stop(grace=2.0)
        raise


def run_ray(jobs: Sequence[Job], parallel: int | None = None, env: Mapping[str, str] | None = None,
            echo: Echo = print, address: str | None = None,
            num_cpus: int | None = None) -> list[dict]:
    """Run the jobs as Ray tasks. Uses the Ray instance this process is
    already connected to; else connects to `address`; else starts a local
    instance with `num_cpus` CPUs (default: `parallel`, else min(4, CPUs))
    and shuts it down at the end. Each task asks for 1 CPU, and 1 GPU when
    the cluster has any. At most `parallel` tasks are in flight (default:
    all; Ray queues what the cluster cannot run yet)."""
    import ray

    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            cpus = num_cpus or parallel or min(4, os.cpu_count() or 1)
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
            started = True
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        task = ray.remote(ray_job).options(num_cpus=1, num_gpus=1 if gpus else 0,
                                           max_retries=0)
        echo(f"ray: {ray.cluster_resources().get('CPU', 0):g} CPUs, {gpus:g} GPUs; "
             f"{'1 GPU per job' if gpus else 'no GPU'}")
        env = dict(env or {})
        pending = deque(jobs)
        in_flight: dict = {}
        outcomes: list[dict] = []
        limit = parallel or len(pending) or 1
        try:
            while pending or in_flight:
                while pending and len(in_flight) < limit:
                    job = pending.popleft()
                    ref = task.remote(str(job.directory), job.recipe, env, job.name)
                    in_flight[ref] = job
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in ready:
                    job = in_flight.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except Exception as error:  # the task itself died (worker lost...)
                        outcome = {"name": job.name, "directory": str(job.directory),
                                   "state": "failed", "returncode": None, "seconds": 0.0,
                                   "error": f"Ray task failed: {error}"}
                        error_path = job.directory / jobs_lib.ERROR
                        job.directory.mkdir(parents=True, exist_ok=True)
                        _atomic_write(error_path, f"job {job.name} failed: the Ray task "
                                                  f"failed\n{error}\n")
                    outcomes.append(outcome)
                    echo(f"[{len(outcomes)}/{len(jobs)}] " + _describe(outcome)
                         if outcome["state"] != "busy"
                         else f"skip    {job.name}: another process runs it")
        except KeyboardInterrupt:
            echo(f"stopping {len(in_flight)} Ray task(s); they resume next time")
            for ref in in_flight:
                ray.cancel(ref, force=True)
            raise
    finally:
        if started:
            ray.shutdown()
    return outcomes
