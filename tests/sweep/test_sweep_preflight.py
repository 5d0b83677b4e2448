"""`kdg sweep` finds the jobs that cannot run before running any (and with
--dry-run), and two `kdg sweep` processes sharing one sweep both exit 0
once every job ended done."""

from __future__ import annotations

import json
import re
import subprocess
import time

from conftest import one_session

from .helpers import env, run_sweep_cli, sweep_command, write_sweep


@one_session("the sweep's pre-flight checks")
def test_dry_run_names_the_jobs_that_cannot_run(tmp_path):
    # ColoredDigits has 3 domains: test domains [0, 1] leave one to train on
    path = write_sweep(tmp_path, algorithms=["erm", "corgrad", "ggal"],
                       test_domains=[0, [0, 1]], n_hparams=1, n_trials=1)
    dry = run_sweep_cli(path, "--dry-run")
    assert dry.returncode != 0 and "Traceback" not in dry.stderr, dry.stderr[-3000:]
    lines = dry.stdout.splitlines()
    invalid = [line.split()[1] for line in lines if line.startswith("invalid")]
    assert [name.rsplit("/", 1)[0] for name in invalid] == [
        "ColoredDigits/corgrad/test0_1", "ColoredDigits/ggal/test0_1"]
    assert "CorGrad compares the gradients of pairs of training domains" in dry.stdout
    assert "GGAL compares the gradients" in dry.stdout
    assert "2 job(s) cannot run" in dry.stderr and "--only" in dry.stderr
    assert sum(line.startswith("not started") for line in lines) == 4
    assert not (tmp_path / "out").exists()

    run = run_sweep_cli(path)
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert "invalid sweep: 2 job(s) cannot run" in run.stderr
    assert "ColoredDigits/corgrad/test0_1/" in run.stderr
    assert not (tmp_path / "out").exists()  # no job was started

    fine = run_sweep_cli(path, "--dry-run", "--only", "test_envs=0")
    assert fine.returncode == 0 and "invalid" not in fine.stdout, fine.stderr[-3000:]


def test_devices_on_a_backend_without_distribution_is_found_by_dry_run(tmp_path):
    base = {"dataset": {"name": "ColoredDigits", "test_domains": [0]},
            "model": {"backbone": "small_cnn", "pretrained": False},
            "training": {"steps": 2, "devices": 2}}
    path = write_sweep(tmp_path, base=base, n_hparams=1, n_trials=1, backend="torch",
                       test_domains=[0])
    dry = run_sweep_cli(path, "--dry-run")
    assert dry.returncode != 0 and "Traceback" not in dry.stderr
    assert "training.devices: 2 trains on several devices, which needs the JAX" in dry.stdout
    assert "this run uses torch" in dry.stdout
    assert not (tmp_path / "out").exists()


@one_session("the sweep's job locks")
def test_two_sweeps_sharing_the_jobs_both_exit_0(tmp_path):
    path = write_sweep(tmp_path, n_hparams=1, n_trials=2, test_domains=[0])
    start = lambda: subprocess.Popen(sweep_command(path), env=env(), text=True,  # noqa: E731
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = start()
    deadline = time.time() + 300
    # the second starts once the first runs a job: it finds that job busy
    while not list((tmp_path / "out").rglob("running.json")) and time.time() < deadline:
        assert first.poll() is None, first.communicate()
        time.sleep(0.05)
    second = start()
    outputs = [p.communicate(timeout=600) for p in (first, second)]
    for proc, (out, err) in zip((first, second), outputs):
        assert proc.returncode == 0, out + err[-3000:]
        assert "2/2 done" in out
    # the two shared the jobs: one of them found a job the other ran, which ended done
    # (which one, and how many, depends on how the two processes interleave)
    assert re.search(r"[12] run by another process \([12] of them done\)",
                     outputs[0][0] + outputs[1][0]), outputs
    runs = sorted((tmp_path / "out").rglob("results.jsonl"))
    assert len(runs) == 2
    for results in runs:
        steps = [json.loads(line)["step"] for line in results.read_text().splitlines()]
        assert steps == [3, 6]  # trained once, nothing duplicated
        assert (results.parent / "done").exists()


def test_a_jax_job_on_several_devices_passes_the_dry_run_whatever_the_sweep_runs_on(tmp_path):
    """The devices a job uses are counted in the process that trains it, not
    in the sweep's own (which may run another backend, or fewer devices)."""
    base = {"dataset": {"name": "ColoredDigits", "test_domains": [0]},
            "model": {"backbone": "small_cnn", "pretrained": False},
            "training": {"steps": 2, "devices": 64, "batch_size": 64}}
    path = write_sweep(tmp_path, base=base, n_hparams=1, n_trials=1, backend="jax",
                       test_domains=[0])
    dry = run_sweep_cli(path, "--dry-run")
    assert dry.returncode == 0, dry.stdout[-2000:] + dry.stderr[-3000:]
    assert "invalid" not in dry.stdout and "not started" in dry.stdout
    assert not (tmp_path / "out").exists()
