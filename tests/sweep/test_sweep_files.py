"""The sweep files the project ships (`sweeps/*.yaml`) expand into jobs that
all pass what `kdg train` checks before writing anything, and each job's
algorithm builds: an error in a shipped sweep surfaces here, not hours into a
user's run."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import one_session

from kdg import recipes, sweep
from kdg.sweep import jobs as jobs_lib

# Expanding a sweep does not depend on the backend: one session checks it.
pytestmark = one_session("expanding a sweep")

SWEEPS_DIR = Path(__file__).resolve().parents[2] / "sweeps"
SWEEPS = sorted(SWEEPS_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_every_job_of_a_shipped_sweep_can_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative output folders land here
    spec = sweep.load_sweep(path, backend="jax")
    jobs = sweep.expand_jobs(spec)
    assert jobs
    assert jobs_lib.check_jobs(jobs) == {}
    built = set()
    for job in jobs:
        section = job.recipe["algorithm"]
        key = repr(section)
        if key not in built:
            recipes.build_algorithm(section, job.recipe["training"]["steps"])
            built.add(key)


def test_the_mnist_protocol_runs_every_algorithm_mnist_cnn_can_train():
    from kdg.algorithms import ALGORITHMS

    spec = sweep.load_sweep(SWEEPS_DIR / "domainbed_mnist.yaml", backend="jax")
    jobs = sweep.expand_jobs(spec)
    names = {job.algorithm for job in jobs}
    assert names == set(ALGORITHMS) - {"mixstyle"}  # MixStyle needs a ResNet's stages
    assert len(jobs) == len(names) * (3 + 6) * 20 * 3
    arm = jobs_lib.filter_jobs(jobs, ["algorithm=arm"])
    assert arm and all(job.recipe["model"]["arm_context"] for job in arm)
    for name in ("dann", "cdann"):  # DomainBed's small-image ranges, both of them
        sampled = [job.recipe["algorithm"] for job in jobs_lib.filter_jobs(jobs, [f"algorithm={name}"])
                   if job.hparams_seed > 0]
        assert sampled and all(10 ** -4.5 <= a[lr] <= 10 ** -2.5
                               for a in sampled for lr in ("lr_d", "lr_g"))
        assert all(a.get("weight_decay_g") is None for a in sampled)
    # evaluated on what selection reads only: the same tables at half the evaluation
    assert {job.recipe["training"]["eval_splits"] for job in jobs} == {"selection"}


def test_the_digits_sweep_searches_with_10_gga_trials():
    spec = sweep.load_sweep(SWEEPS_DIR / "digits.yaml", backend="jax")
    gga = [job for job in sweep.expand_jobs(spec) if job.recipe["algorithm"]["name"] == "gga"]
    assert len(gga) == 16 * 6 * 2 * 2
    assert {job.recipe["algorithm"]["trials"] for job in gga} == {10}
