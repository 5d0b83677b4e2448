"""Job states read from disk (done, running, failed, stopped, not started),
honest "running" detection, and the command line's --status / --dry-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import click
import pytest
from click.testing import CliRunner

from kdg.sweep import expand_jobs, format_status, load_sweep, run_sweep, status
from kdg.sweep import jobs as jobs_lib
from kdg.sweep.cli import sweep as sweep_command

from .helpers import write_sweep


def write_lock(directory, **fields):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / jobs_lib.LOCK).write_text(json.dumps(fields))


def write_results(directory, steps):
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "results.jsonl", "w") as f:
        for step in steps:
            f.write(json.dumps({"step": step, "args": {}}) + "\n")


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def sweep_states(tmp_path):
    """Six jobs in every state; yields (sweep, jobs, the live 'trainer')."""
    path = write_sweep(tmp_path, algorithms=["erm", "fish"], test_domains=[0], n_hparams=1,
                       n_trials=3)
    sweep = load_sweep(path)
    jobs = expand_jobs(sweep)
    assert len(jobs) == 6
    done, running, failed, stopped, remote, fresh = (j.directory for j in jobs)
    write_results(done, [3, 6])
    (done / "done").write_text("{}\n")
    # a live process whose command line names the job directory, as a trainer's does
    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                                str(running)])
    write_lock(running, host=jobs_lib.HOST, pid=dead_pid(), trainer_pid=trainer.pid)
    write_results(running, [3])
    failed.mkdir(parents=True)
    (failed / jobs_lib.ERROR).write_text(
        "job x failed: exited with status 1\nTraceback (most recent call last):\n"
        '  File "x.py", line 1\nValueError: boom\n')
    # killed part way: results, and the lock its dead processes left behind
    write_results(stopped, [3])
    write_lock(stopped, host=jobs_lib.HOST, pid=dead_pid(), trainer_pid=dead_pid())
    # another host's job: alive while its heartbeat is fresh
    write_lock(remote, host="another-host", pid=1, trainer_pid=1)
    # a lock whose pid was reused by an unrelated process, heartbeat long gone
    write_lock(fresh, host=jobs_lib.HOST, pid=os.getpid(), trainer_pid=os.getpid())
    old = time.time() - 3600
    os.utime(fresh / jobs_lib.LOCK, (old, old))
    try:
        yield sweep, jobs, trainer
    finally:
        trainer.kill()
        trainer.wait()


def test_status_reads_every_state(sweep_states):
    sweep, jobs, trainer = sweep_states
    rows = status(sweep)
    states = [s.state for _, s in rows]
    assert states == ["done", "running", "failed", "stopped", "running", "not started"]
    assert rows[0][1].step == 6 and rows[3][1].step == 3
    assert rows[1][1].detail == f"{jobs_lib.HOST} pid {trainer.pid}"
    assert rows[2][1].detail == "ValueError: boom"
    text = format_status(rows)
    assert "6 job(s): 1 done, 2 running, 1 failed, 1 stopped, 1 not started" in text
    assert f"failed              -/6  {jobs[2].name}  [ValueError: boom]" in text

    # the other host's job stops counting as running when its heartbeat stops
    old = time.time() - 2 * jobs_lib.HEARTBEAT_STALE_S
    os.utime(jobs[4].directory / jobs_lib.LOCK, (old, old))
    assert jobs_lib.job_status(jobs[4]).state == "not started"
    # and a trainer that dies is no longer running: its job is stopped
    trainer.kill()
    trainer.wait()
    assert jobs_lib.job_status(jobs[1]).state == "stopped"


def test_locks_keep_a_running_job_to_its_process(sweep_states):
    sweep, jobs, _ = sweep_states
    assert not jobs_lib.acquire_lock(jobs[1].directory)         # live: refused
    assert jobs_lib.acquire_lock(jobs[3].directory)             # stale: taken over
    info = jobs_lib.read_lock(jobs[3].directory)
    assert info["pid"] == os.getpid() and info["host"] == jobs_lib.HOST
    jobs_lib.release_lock(jobs[3].directory)
    assert not (jobs[3].directory / jobs_lib.LOCK).exists()
    # a sweep skips what is done and leaves what another process runs alone
    lines = []
    result = run_sweep(sweep, only=[f"hash={jobs[0].key}", f"hash={jobs[1].key}"],
                       echo=lines.append, wait=False)
    assert result.already_done == 1 and result.busy == 1 and result.outcomes == []
    assert "nothing to run" in lines[0]


def test_status_and_dry_run_on_the_command_line(sweep_states):
    sweep, jobs, _ = sweep_states
    assert isinstance(sweep_command, click.Command) and sweep_command.name == "sweep"
    runner = CliRunner()
    before = sorted(sweep.output_dir.rglob("*"))
    result = runner.invoke(sweep_command, [str(sweep.path), "--status"])
    assert result.exit_code == 0, result.output
    assert "1 done, 2 running, 1 failed, 1 stopped, 1 not started" in result.output
    only = runner.invoke(sweep_command, [str(sweep.path), "--status", "--only", "algorithm=fish"])
    assert "3 job(s): 0 done, 1 running, 0 failed, 1 stopped, 1 not started" in only.output
    dry = runner.invoke(sweep_command, [str(sweep.path), "--dry-run", "--only", "t=0"])
    assert dry.exit_code == 0, dry.output
    assert f"done        {jobs[0].name}  defaults" in dry.output
    assert "2 job(s)" in dry.output
    assert sorted(sweep.output_dir.rglob("*")) == before  # --dry-run and --status write nothing


def test_command_line_errors(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(sweep_command, [str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    path = write_sweep(tmp_path, algorithms=["fsh"])
    bad = runner.invoke(sweep_command, [str(path), "--dry-run"])
    assert bad.exit_code == 2 and "Did you mean 'fish'" in bad.output
    good = write_sweep(tmp_path, "good.yaml", n_hparams=1, n_trials=1)
    only = runner.invoke(sweep_command, [str(good), "--dry-run", "--only", "colour=red"])
    assert only.exit_code == 2 and "unknown key 'colour'" in only.output


def test_a_job_that_cannot_start_fails_alone(sweep_states):
    """A job whose saved recipe.yaml is unreadable fails with its reason in
    error.txt; the sweep goes on (here: with a job that is already done)."""
    sweep, jobs, _ = sweep_states
    stopped = jobs[3].directory
    (stopped / "recipe.yaml").write_text("dataset: [unclosed\n")
    lines = []
    result = run_sweep(sweep, only=[f"hash={jobs[3].key}", f"hash={jobs[0].key}"],
                       echo=lines.append)
    assert [o["state"] for o in result.outcomes] == ["failed"] and result.already_done == 1
    error = (stopped / jobs_lib.ERROR).read_text()
    assert "could not start" in error and "yaml" in error.lower()
    assert jobs_lib.job_status(jobs[3]).state == "failed"
    assert not (stopped / jobs_lib.LOCK).exists()
    assert any("failed  " in line for line in lines)
