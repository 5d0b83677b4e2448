"""GGA's combination table as a sweep: `overrides_when` (keys set on one
dataset's or algorithm's jobs) and the shipped sweeps/gga_table.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdg.algorithm_names import normalize
from kdg.report.published import GGA_COMBINED
from kdg.sweep import SweepError, expand_jobs, load_sweep
from kdg.sweep.jobs import check_jobs

from .helpers import write_sweep

REPO = Path(__file__).resolve().parents[2]


def test_overrides_when_sets_keys_on_the_matching_jobs_only(tmp_path):
    path = write_sweep(
        tmp_path, datasets=["ColoredDigits", "RotatedDigits"],
        algorithms=["erm", {"name": "gga", "base": {"name": "fish"}, "rho": 0.01}],
        test_domains=[0], n_hparams=2, n_trials=1,
        search_space={"gga": {"rho": None, "window": None, "trials": None}},
        overrides={"training.lr": 0.002},
        overrides_when=[
            {"when": {"dataset": "RotatedDigits"}, "set": {"training.lr": 0.0005}},
            {"when": {"dataset": "RotatedDigits", "algorithm": "GGA"},
             "set": {"algorithm.rho": 1.0e-6, "algorithm.base.meta_lr": 0.25}},
        ])
    jobs = expand_jobs(load_sweep(path))
    seen = set()
    for job in jobs:
        rotated, gga = job.dataset == "RotatedDigits", job.algorithm == "gga"
        if job.hparams_seed == 0:
            assert job.recipe["training"]["lr"] == (0.0005 if rotated else 0.002)
        else:  # sampled hyperparameters come after: lr is drawn from the search space
            assert job.recipe["training"]["lr"] not in (0.0005, 0.002)
        if gga:
            assert job.recipe["algorithm"]["rho"] == (1.0e-6 if rotated else 0.01)
            assert job.recipe["algorithm"]["base"].get("meta_lr") == (0.25 if rotated else None)
        seen.add((rotated, gga))
    assert seen == {(False, False), (False, True), (True, False), (True, True)}


def test_overrides_when_gga_plus_x_names_gga_wrapping_x(tmp_path):
    path = write_sweep(
        tmp_path, datasets=["RotatedDigits"],
        algorithms=["fish", {"name": "gga", "base": {"name": "fish"}}, "gga",
                    {"name": "gga", "base": {"name": "corgrad"}}],
        test_domains=[0], n_hparams=1, n_trials=1,
        overrides_when=[{"when": {"algorithm": "GGA+Fish"}, "set": {"training.lr": 0.0005}}])
    lrs = {(job.algorithm, job.recipe["algorithm"].get("base", {}).get("name")):
           job.recipe["training"]["lr"] for job in expand_jobs(load_sweep(path))}
    assert lrs[("gga", "fish")] == 0.0005
    assert 0.0005 not in [lr for key, lr in lrs.items() if key != ("gga", "fish")]
    assert len(lrs) == 4


@pytest.mark.parametrize("rule, field", [
    ({"when": {"dataset": "PACZ"}, "set": {"training.lr": 1}}, "overrides_when.0.when.dataset"),
    ({"when": {"algorithm": "corall"}, "set": {"training.lr": 1}},
     "overrides_when.0.when.algorithm"),
    ({"when": {"algorithm": "gga+corall"}, "set": {"training.lr": 1}},
     "overrides_when.0.when.algorithm"),
    ({"when": {"dataset": "PACS"}, "set": {"training lr": 1}}, "overrides_when.0.set.training lr"),
    ({"when": {"domain": "PACS"}, "set": {"training.lr": 1}}, "overrides_when.0.when.domain"),
    ({"when": {}, "set": {"training.lr": 1}}, "overrides_when.0.when"),
])
def test_a_bad_overrides_when_is_named(tmp_path, rule, field):
    with pytest.raises(SweepError) as error:
        load_sweep(write_sweep(tmp_path, overrides_when=[rule]))
    assert field in str(error.value)


def test_gga_table_has_the_published_pairs_and_the_authors_settings(monkeypatch, tmp_path):
    from kdg.algorithms import ALGORITHMS

    monkeypatch.chdir(tmp_path)
    jobs = expand_jobs(load_sweep(REPO / "sweeps" / "gga_table.yaml"))
    alone = {j.algorithm for j in jobs if j.algorithm != "gga"}
    wrapped = {j.recipe["algorithm"]["base"]["name"] for j in jobs if j.algorithm == "gga"}
    # every row of the published table kdg has, alone and under GGA, and ERM;
    # a row whose algorithm joins the registry later fails here until it is added
    published = {normalize(a) for a in GGA_COMBINED.algorithms}
    assert alone == wrapped == {a for a in published if a in ALGORITHMS} | {"erm"}
    assert {j.dataset for j in jobs} == {"PACS", "VLCS", "OfficeHome", "TerraIncognita"}
    for job in jobs:
        recipe, vlcs = job.recipe, job.dataset == "VLCS"
        assert recipe["model"]["backbone"] == "resnet50" and recipe["model"]["dropout"] == 0.5
        assert recipe["training"]["steps"] == 5000
        assert recipe["training"]["weight_decay"] == 1e-4
        assert recipe["training"]["lr"] == (1e-5 if vlcs else 3e-5)
        if job.algorithm == "gga":
            assert recipe["algorithm"]["rho"] == (1e-6 if vlcs else 1e-5)
            assert (recipe["algorithm"]["start_step"], recipe["algorithm"]["end_step"]) == (100, 200)
        else:
            assert set(recipe["algorithm"]) == {"name"}  # DomainBed's defaults
    assert check_jobs(jobs) == {}  # what --dry-run checks: every job can start
