"""The Ray launcher on a real local Ray instance, and a job that fails: its
error (traceback and stderr) stays beside it and the other jobs go on."""

from __future__ import annotations

import json

import pytest

from kdg.report import ResultsWarning, load_runs, select
from kdg.sweep import expand_jobs, format_status, load_sweep, run_sweep, status
from kdg.sweep import jobs as jobs_lib

from .helpers import BASE, BACKEND, write_sweep

ray = pytest.importorskip("ray")

# GGA around a Fish whose inner optimizer Keras builds from its config but
# cannot apply (a string clipnorm): kdg hands the config to Keras as it is,
# so the job validates and crashes at its first step with a traceback.
BROKEN_GGA = {"name": "gga", "start_step": 1, "end_step": 2, "trials": 1, "base": {
    "name": "fish", "inner_optimizer": {"class_name": "SGD", "config": {"learning_rate": 0.1,
                                                                        "clipnorm": "a"}}}}


@pytest.fixture
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_ray_runs_the_jobs_and_a_failed_job_keeps_its_error(tmp_path, local_ray):
    path = write_sweep(tmp_path, algorithms=["erm", BROKEN_GGA], n_hparams=1, n_trials=1,
                       base=dict(BASE, training=dict(BASE["training"], eval_every=2)))
    sweep = load_sweep(path)
    jobs = expand_jobs(sweep, ["test_envs=0"])
    assert [j.algorithm for j in jobs] == ["erm", "gga"]
    lines = []
    result = run_sweep(sweep, launcher="ray", only=["test_envs=0"], echo=lines.append)
    text = "\n".join(lines)
    assert "ray: 2 CPUs, 0 GPUs; no GPU" in text
    assert not result.ok
    assert result.count("done") == 1 and result.count("failed") == 1, text
    erm, gga = jobs

    # the good job finished, through Ray, on the session's backend
    assert (erm.directory / "done").exists()
    records = [json.loads(l) for l in (erm.directory / "results.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert records[0]["args"]["backend"] == BACKEND
    with pytest.warns(ResultsWarning, match="no usable record"):  # the failed run's empty file
        runs = load_runs(sweep.output_dir)
    chosen = select(runs, "oracle").group("ColoredDigits", "erm", 0)
    assert chosen.mean == pytest.approx(records[-1]["env0_in_acc"], abs=1e-12)

    # the failed one: traceback and stderr in error.txt, a summary in the status
    error = (gga.directory / jobs_lib.ERROR).read_text()
    assert "exited with status 1" in error and "Traceback (most recent call last)" in error
    assert "not supported between instances of 'str' and 'int'" in error
    assert error.split("--- stderr ---\n", 1)[1] == (gga.directory / "stderr.txt").read_text()
    rows = status(sweep, ["test_envs=0"])
    assert [s.state for _, s in rows] == ["done", "failed"]
    assert rows[1][1].detail.startswith("TypeError: '>' not supported between instances")
    assert "1 done, 0 running, 1 failed" in format_status(rows)
    assert f"failed  {gga.name}" in text and "see " in text
    assert not list(sweep.output_dir.rglob(jobs_lib.LOCK))
