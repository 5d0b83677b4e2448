"""The issue's acceptance test: a small sweep with the local launcher, killed
part way, run again to completion, and the report's numbers checked against
a hand computation from the results.jsonl files, for each selection method.

ColoredDigits (3 domains), ERM and GGA-L, 2 hyperparameter samples, 2 trials,
every test domain: 24 jobs of 6 steps; then leave_one_out adds the pairs
[t, j] for ERM's trial 0 (6 more jobs) for leave-one-domain-out selection.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import one_session

from kdg.report import load_runs, report, select
from kdg.sweep import expand_jobs, load_sweep, run_sweep, status
from kdg.sweep import jobs as jobs_lib

from .helpers import env, run_sweep_cli, sweep_command, write_sweep

SWEEP = dict(algorithms=["erm", "ggal"], n_hparams=2, n_trials=2, seed=0)
N_ENVS = 3
# Jobs at a time. A job is mostly imports (Keras, TensorFlow: 5-10 s of CPU);
# one more job than the 2 cores of the CI machine keeps them busy.
PARALLEL = 3


# -- the hand computation, from the results.jsonl files alone ----------------------------


def read_results(root: Path) -> list[dict]:
    runs = []
    for path in sorted(root.rglob("results.jsonl")):
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        args = records[0]["args"]
        runs.append({"algorithm": args["algorithm"], "test_envs": tuple(args["test_envs"]),
                     "h": args["hparams_seed"], "t": args["trial_seed"], "records": records,
                     "done": (path.parent / "done").exists()})
    return runs


def setting_score(runs, algorithm, test_env, h, t, method):
    """(validation accuracy, test accuracy) of one hyperparameter setting."""
    def find(envs):
        found = [r for r in runs if (r["algorithm"], r["test_envs"], r["h"], r["t"]) ==
                 (algorithm, envs, h, t)]
        assert len(found) <= 1
        return found[0] if found else None

    single = find((test_env,))
    if single is None:
        return None
    if method == "training_domain":
        best = None
        for record in single["records"]:  # the first best checkpoint
            val = np.mean([record[f"env{j}_out_acc"] for j in range(N_ENVS) if j != test_env])
            if best is None or val > best[0]:
                best = (val, record[f"env{test_env}_in_acc"])
        return best
    if method == "oracle":
        last = single["records"][-1]
        return last[f"env{test_env}_out_acc"], last[f"env{test_env}_in_acc"]
    # leave-one-domain-out: the [t, j] runs' accuracy on the held-out j, per step
    pairs = {j: find(tuple(sorted((test_env, j)))) for j in range(N_ENVS) if j != test_env}
    if any(run is None for run in pairs.values()):
        return None
    best = None
    for record in single["records"]:
        step = record["step"]
        held_out = []
        for j, run in pairs.items():
            at_step = [r for r in run["records"] if r["step"] == step]
            held_out.append(at_step[0][f"env{j}_in_acc"] if at_step else None)
        if None in held_out:
            continue
        val = sum(held_out) / (N_ENVS - 1)
        if best is None or val > best[0]:
            best = (val, record[f"env{test_env}_in_acc"])
    return best


def expected_cells(runs, method):
    """(algorithm, test_env) -> (mean, stderr, trials) as DomainBed computes them:
    per trial the setting with the best validation accuracy (ties: the higher
    hparams seed), mean and population std / sqrt(n) over the trials."""
    cells = {}
    for algorithm in sorted({r["algorithm"] for r in runs}):
        for test_env in range(N_ENVS):
            accs = []
            for t in sorted({r["t"] for r in runs}):
                scored = [(score[0], h, score[1]) for h in sorted({r["h"] for r in runs})
                          if (score := setting_score(runs, algorithm, test_env, h, t, method))]
                if scored:
                    accs.append(max(scored)[2])
            if accs:
                cells[algorithm, test_env] = (float(np.mean(accs)),
                                              float(np.std(accs) / math.sqrt(len(accs))), len(accs))
    return cells


def check_report(out: Path, method: str, algorithms, test_envs=range(N_ENVS)) -> None:
    runs = read_results(out)
    expected = expected_cells(runs, method)
    selection = select(load_runs(out), method)
    table = list(csv.DictReader(io.StringIO(report(out, selection=method, fmt="csv"))))
    domains = ["+90%", "+80%", "-90%"]
    for algorithm in algorithms:
        for test_env in test_envs:
            mean, stderr, trials = expected[algorithm, test_env]
            group = selection.group("ColoredDigits", algorithm, test_env)
            assert group.n_trials == trials
            assert group.mean == pytest.approx(mean, abs=1e-12), (method, algorithm, test_env)
            assert group.stderr == pytest.approx(stderr, abs=1e-12), (method, algorithm, test_env)
            cell = [row for row in table if row["kind"] == "dataset" and
                    row["algorithm"] == algorithm and row["column"] == domains[test_env]]
            assert len(cell) == 1, (method, algorithm, test_env, table[:3])
            assert float(cell[0]["mean"]) == pytest.approx(100 * mean, abs=1e-4)
            assert float(cell[0]["stderr"]) == pytest.approx(100 * stderr, abs=1e-4)


# -- the test ------------------------------------------------------------------------------


def wait_for(predicate, timeout, interval=0.5):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


@pytest.mark.slow
@one_session("the sweep's launching, killing, resuming and report (each backend's own "
             "kill and resume: tests/test_cli.py)")
def test_a_killed_sweep_resumes_to_a_report_that_matches_a_hand_computation(tmp_path):
    path = write_sweep(tmp_path, **SWEEP)
    sweep = load_sweep(path)
    jobs = expand_jobs(sweep)
    assert len(jobs) == 2 * 3 * 2 * 2
    # the last job failed once before (its error stays until it succeeds)
    last = jobs[-1].directory
    last.mkdir(parents=True)
    (last / jobs_lib.ERROR).write_text("job failed: exited with status 1\nRuntimeError: earlier\n")

    # start the sweep, let a few jobs finish, then SIGKILL the sweep process
    process = subprocess.Popen(sweep_command(path, "--jobs", str(PARALLEL)), env=env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    seen_running = set()
    try:
        def time_to_kill():
            states = [(job, jobs_lib.job_status(job)) for job in jobs]
            seen_running.update(job.name for job, s in states if s.state == "running")
            done = sum(s.state == "done" for _, s in states)
            part_way = any(s.state == "running" and s.step == 3 for _, s in states)
            return (done >= 2 and part_way) or done >= 4 or process.poll() is not None
        assert wait_for(time_to_kill, timeout=400, interval=0.2)
        assert process.poll() is None, process.stdout.read()
        process.kill()
        process.wait()
        # the jobs it ran die with it, and nothing is reported running after that
        assert wait_for(lambda: not any(s.state == "running" for _, s in status(sweep)),
                        timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.stdout.close()
    assert seen_running, "the status never showed a running job"
    states = {j.name: s.state for j, s in status(sweep)}
    assert 2 <= list(states.values()).count("done") < len(jobs)
    assert states[jobs[-1].name] == "failed"
    assert set(states.values()) <= {"done", "stopped", "not started", "failed"}
    stopped = [name for name, state in states.items() if state == "stopped"]  # killed part way

    # run it again: it finishes what is left, resuming the stopped jobs
    again = run_sweep_cli(path, "--jobs", str(PARALLEL))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"{len(jobs)}/{len(jobs)} done, 0 failed" in again.stdout
    for name in stopped:  # they continued from their checkpoint
        assert re.search(rf"done +{re.escape(name)}  \([\d.]+ s, resumed\)", again.stdout)
    assert all(s.state == "done" for _, s in status(sweep))
    assert not list(sweep.output_dir.rglob(jobs_lib.ERROR))   # cleared on success
    assert not list(sweep.output_dir.rglob(jobs_lib.LOCK))
    for job in jobs:
        records = [json.loads(l) for l in (job.directory / "results.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [3, 6]
        assert records[0]["args"]["hparams_seed"] == job.hparams_seed
        assert records[0]["args"]["trial_seed"] == job.trial_seed
        assert records[0]["args"]["backend"] == job.recipe["backend"]
    nothing = run_sweep(sweep, echo=None)
    assert nothing.outcomes == [] and nothing.already_done == len(jobs)

    for method in ("training_domain", "oracle"):
        check_report(sweep.output_dir, method, ["erm", "ggal"])

    # leave-one-domain-out needs the pairs [t, j]; leave_one_out adds them. To
    # keep the test short, run those of ERM's test domain 0 in trial 0 only.
    loo_path = write_sweep(tmp_path, "loo.yaml", leave_one_out=True, **SWEEP)
    erm0 = expand_jobs(load_sweep(loo_path), ["algorithm=erm", "t=0"])
    assert sorted(j.test_envs for j in erm0) == sorted([(0,), (1,), (2,), (0, 1), (0, 2), (1, 2)] * 2)
    lines = []
    loo = run_sweep(loo_path, jobs=PARALLEL, only=["algorithm=erm", "t=0", "test_envs=0",
                                            "test_envs=0,1", "test_envs=0,2"], echo=lines.append)
    assert loo.ok, "\n".join(lines)
    assert len(loo.jobs) == 6 and loo.already_done == 2 and loo.count("done") == 4
    check_report(sweep.output_dir, "leave_one_domain_out", ["erm"], test_envs=[0])
    selection = select(load_runs(sweep.output_dir), "leave_one_domain_out")
    assert selection.group("ColoredDigits", "erm", 0).n_trials == 1
    assert selection.group("ColoredDigits", "erm", 1).n_trials == 0
    assert selection.group("ColoredDigits", "ggal", 0).n_trials == 0
