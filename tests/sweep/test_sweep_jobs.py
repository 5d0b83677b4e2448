"""Job expansion: determinism, sample 0, per-hyperparameter seeding, every job
validates, test domains, --only, leave-one-out pairs, sweep-file errors."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from kdg import recipes
from kdg.sweep import SweepError, expand_jobs, load_sweep
from kdg.sweep import space as space_lib
from kdg.sweep.jobs import recipe_hash

from .helpers import BACKEND, BASE, write_sweep

ALL = ["erm", "fish", "corgrad", "gga", "ggal"]


def jobs_of(tmp_path, name="sweep.yaml", only=(), **fields):
    return expand_jobs(load_sweep(write_sweep(tmp_path, name, **fields)), only)


def test_the_same_file_gives_the_same_jobs_and_directories(tmp_path, monkeypatch):
    path = write_sweep(tmp_path, algorithms=ALL, n_hparams=3, n_trials=2)
    first = expand_jobs(load_sweep(path))
    monkeypatch.chdir(tmp_path)  # another working directory, another process would do the same
    second = expand_jobs(load_sweep(path))
    assert [j.directory for j in first] == [j.directory for j in second]
    assert [j.recipe for j in first] == [j.recipe for j in second]
    assert len(first) == len(ALL) * 3 * 3 * 2
    assert len({j.directory for j in first}) == len(first)
    pattern = re.compile(r"ColoredDigits/(erm|fish|corgrad|gga|ggal)/test\d/h\d_t\d_[0-9a-f]{8}")
    for job in first:
        assert pattern.fullmatch(job.name), job.name
        assert job.directory == tmp_path / "out" / job.name
        assert job.key == recipe_hash(job.recipe)


def test_the_directory_ignores_location_backend_and_splits_evaluated_only(tmp_path):
    path = write_sweep(tmp_path, n_hparams=2, n_trials=1)
    jax = expand_jobs(load_sweep(path, backend="jax"))
    torch = expand_jobs(load_sweep(path, backend="torch", output_dir=tmp_path / "elsewhere"))
    assert [j.key for j in jax] == [j.key for j in torch]
    assert {j.recipe["backend"] for j in torch} == {"torch"}
    assert all(str(j.directory).startswith(str(tmp_path / "elsewhere")) for j in torch)
    # a field written at its default value (as a later kdg's schema would add it) is the same job
    explicit = dict(BASE, model=dict(BASE["model"], freeze_bn=True),
                    training=dict(BASE["training"], checkpoint_every=None, optimizer="adam"))
    same = expand_jobs(load_sweep(write_sweep(tmp_path, "a.yaml", n_hparams=2, n_trials=1,
                                              base=explicit)))
    assert [j.directory for j in same] == [j.directory for j in jax]
    longer = expand_jobs(load_sweep(write_sweep(tmp_path, "b.yaml", n_hparams=2, n_trials=1,
                                                overrides={"training.steps": 7})))
    assert not {j.key for j in longer} & {j.key for j in jax}
    lean = expand_jobs(load_sweep(write_sweep(tmp_path, "c.yaml", n_hparams=2, n_trials=1,
                                              overrides={"training.eval_splits": "selection"})))
    assert [j.directory for j in lean] == [j.directory for j in jax]  # same runs, fewer splits


def test_sample_zero_is_the_base_recipe_and_the_others_are_drawn_from_the_space(tmp_path):
    base = dict(BASE, algorithm={"name": "fish", "meta_lr": 0.3})
    jobs = jobs_of(tmp_path, base=base, algorithms=["fish", "gga", "corgrad", "ggal"],
                   n_hparams=6, n_trials=1, test_domains=[0])
    for job in jobs:
        training, model, algorithm = (job.recipe[k] for k in ("training", "model", "algorithm"))
        if job.hparams_seed == 0:
            assert job.hparams == {}
            assert (training["lr"], training["batch_size"], training["weight_decay"],
                    model["dropout"]) == (1e-3, 8, 0.0, 0.0)
            expected = {"name": "fish", "meta_lr": 0.3} if job.algorithm == "fish" else {
                "name": job.algorithm}
            assert algorithm == expected
            continue
        assert 1e-5 <= training["lr"] <= 10 ** -3.5
        assert 8 <= training["batch_size"] <= int(2 ** 5.5) and isinstance(training["batch_size"], int)
        assert 1e-6 <= training["weight_decay"] <= 1e-2
        assert model["dropout"] in (0.0, 0.1, 0.5)
        if job.algorithm == "fish":
            assert algorithm["meta_lr"] in (0.05, 0.1, 0.5)
        if job.algorithm == "corgrad":
            assert algorithm["n_parts"] in (5, 10, 20, 50, 100) and 0.5 <= algorithm["alpha"] <= 1
        if job.algorithm == "gga":
            assert 1e-6 <= algorithm["rho"] <= 1e-4
            assert (algorithm["start_step"], algorithm["end_step"]) in {
                (100, 200), (0, 100), (200, 300), (100, 300)}
        if job.algorithm == "ggal":
            assert 1e-4 <= algorithm["gamma"] <= 1e-2
    # the draws differ between samples
    fish = [j for j in jobs if j.algorithm == "fish" and j.hparams_seed > 0]
    assert len({j.recipe["training"]["lr"] for j in fish}) == len(fish)


def test_adding_or_removing_a_hyperparameter_keeps_the_other_values(tmp_path):
    common = dict(algorithms=["fish", "ggal"], n_hparams=8, n_trials=1, test_domains=[0])
    before = jobs_of(tmp_path, "a.yaml", **common)
    added = jobs_of(tmp_path, "b.yaml", search_space={
        "common": {"training.eval_batch_size": {"choice": [256, 1024]}},
        "fish": {"warmup_steps": {"choice": [0, 2]}}}, **common)
    removed = jobs_of(tmp_path, "c.yaml", search_space={"common": {"weight_decay": None}}, **common)
    for old, new, less in zip(before, added, removed):
        assert set(new.hparams) - set(old.hparams) == (
            {"training.eval_batch_size", "warmup_steps"} if old.algorithm == "fish" and
            old.hparams_seed else {"training.eval_batch_size"} if old.hparams_seed else set())
        assert {k: new.hparams[k] for k in old.hparams} == old.hparams
        assert {k: v for k, v in old.hparams.items() if k != "weight_decay"} == less.hparams
        if new.hparams_seed:
            assert new.recipe["training"]["eval_batch_size"] in (256, 1024)
            assert new.key != old.key


def test_seeds_follow_the_protocol(tmp_path):
    jobs = jobs_of(tmp_path, algorithms=["erm", "fish"], n_hparams=2, n_trials=3, seed=5)
    seeds = set()
    for job in jobs:
        training = job.recipe["training"]
        assert training["trial_seed"] == job.trial_seed
        assert training["hparams_seed"] == job.hparams_seed
        assert training["seed"] == space_lib.seed_hash(5, job.dataset, job.algorithm,
                                                       list(job.test_envs), job.hparams_seed,
                                                       job.trial_seed)
        seeds.add(training["seed"])
    assert len(seeds) == len(jobs)
    # the same hyperparameters in every trial
    for job in jobs:
        same = [j for j in jobs if (j.algorithm, j.test_envs, j.hparams_seed) ==
                (job.algorithm, job.test_envs, job.hparams_seed)]
        assert all(j.hparams == job.hparams for j in same)


def test_every_job_validates_as_a_recipe(tmp_path):
    jobs = jobs_of(tmp_path, algorithms=ALL + [{"name": "gga", "base": {"name": "fish"}}],
                   n_hparams=5, n_trials=2, leave_one_out=True)
    assert len(jobs) == 6 * 5 * 2 * 6
    for job in jobs:
        recipe = recipes.validate(job.recipe)
        assert recipe.to_dict() == job.recipe
        assert recipe.output_dir == str(job.directory)
        assert recipe.backend == BACKEND
        assert recipe.dataset.test_domains == list(job.test_envs)
    wrapped = [j for j in jobs if j.recipe["algorithm"].get("base") == {"name": "fish"}]
    assert len(wrapped) == 5 * 2 * 6


def test_test_domains_default_to_each_domain_in_turn(tmp_path):
    jobs = jobs_of(tmp_path, n_hparams=1, n_trials=1)
    assert [j.test_envs for j in jobs] == [(0,), (1,), (2,)]
    rotated = jobs_of(tmp_path, "r.yaml", datasets=["RotatedDigits", "ColoredDigits"],
                      n_hparams=1, n_trials=1)
    assert [(j.dataset, j.test_envs) for j in rotated] == (
        [("RotatedDigits", (i,)) for i in range(6)] + [("ColoredDigits", (i,)) for i in range(3)])
    named = jobs_of(tmp_path, "n.yaml", test_domains=["m90", "+80%", [0, "p80"]],
                    n_hparams=1, n_trials=1)
    assert [j.test_envs for j in named] == [(2,), (1,), (0, 1)]


def test_leave_one_out_adds_every_pair(tmp_path):
    jobs = jobs_of(tmp_path, leave_one_out=True, n_hparams=2, n_trials=2)
    envs = sorted({j.test_envs for j in jobs})
    assert envs == [(0,), (0, 1), (0, 2), (1,), (1, 2), (2,)]
    assert len(jobs) == 6 * 2 * 2
    plain = jobs_of(tmp_path, "p.yaml", n_hparams=2, n_trials=2)
    # the single-domain jobs are the same jobs with or without leave_one_out
    assert {j.directory for j in plain} <= {j.directory for j in jobs}
    only_zero = jobs_of(tmp_path, "z.yaml", leave_one_out=True, test_domains=[0], n_hparams=1,
                        n_trials=1)
    assert [j.test_envs for j in only_zero] == [(0,), (0, 1), (0, 2)]


def test_only_filters(tmp_path):
    path = write_sweep(tmp_path, algorithms=["erm", "fish", "ggal"], n_hparams=2, n_trials=2,
                       leave_one_out=True)
    sweep = load_sweep(path)
    every = expand_jobs(sweep)
    fish0 = expand_jobs(sweep, ["algorithm=fish", "test_envs=0"])
    assert fish0 and all(j.algorithm == "fish" and j.test_envs == (0,) for j in fish0)
    assert len(fish0) == 4
    either = expand_jobs(sweep, ["algorithm=fish", "algorithm=GGA-L", "h=1", "t=0"])
    assert {j.algorithm for j in either} == {"fish", "ggal"}
    assert all(j.hparams_seed == 1 and j.trial_seed == 0 for j in either)
    assert len(either) == 2 * 6
    pair = expand_jobs(sweep, ["test_envs=1,0"])
    assert {j.test_envs for j in pair} == {(0, 1)}
    by_value = expand_jobs(sweep, ["training.lr=0.001"])
    assert by_value == [j for j in every if j.hparams_seed == 0]
    by_hash = expand_jobs(sweep, [f"hash={every[5].key}"])
    assert by_hash == [every[5]]
    with pytest.raises(SweepError, match="unknown key 'colour'"):
        expand_jobs(sweep, ["colour=red"])
    with pytest.raises(SweepError, match="expected KEY=VALUE"):
        expand_jobs(sweep, ["fish"])
    with pytest.raises(SweepError, match="not a number"):
        expand_jobs(sweep, ["trial_seed=first"])


@pytest.mark.parametrize("fields, message", [
    ({"algorithm": ["erm"]}, r"algorithm: unknown key.*Did you mean 'algorithms'"),
    ({"algorithms": ["fsh"]}, r"algorithms.0: unknown algorithm 'fsh'.*Did you mean 'fish'"),
    ({"datasets": ["ColoredDigit"]}, r"unknown dataset 'ColoredDigit'.*Did you mean 'ColoredDigits'"),
    ({"n_hparams": 0}, r"n_hparams: input should be greater than or equal to 1"),
    ({"search_space": {"fish": {"meta_lr": {"choise": [1]}}}},
     r"search_space.fish.meta_lr: give exactly one of choice, uniform, log_uniform"),
    ({"search_space": {"fishy": {}}}, r"search_space.fishy: not an algorithm.*Did you mean 'fish'"),
    ({"search_space": {"common": {"lr": {"uniform": [2, 1]}}}}, r"lr: uniform needs finite low <= high"),
    ({"search_space": {"common": {"lr": {"log_uniform": [-5]}}}}, r"needs \[low, high\]"),
    ({"test_domains": [7]}, r"test_domains: 7 is not a domain of ColoredDigits; domains: 0 \+90%"),
    ({"test_domains": [[0, 1, 2]]}, r"leaves no domain of ColoredDigits to train on"),
    ({"base": "missing.yaml"}, r"base: recipe 'missing.yaml' does not exist"),
    ({"search_space": {"fish": {"meta_lr": {"choice": ["high"]}}}, "algorithms": ["fish"]},
     r"job ColoredDigits/fish/test0 h1 t0 \(.*meta_lr=high.*\): invalid recipe"),
    ({"search_space": {"fish": {"meta_lrr": 0.1}}, "algorithms": ["fish"]},
     r"algorithm.meta_lrr: not a parameter of fish.*Did you mean 'meta_lr'"),
])
def test_sweep_file_errors_name_the_field(tmp_path, fields, message):
    with pytest.raises(SweepError, match=message):
        expand_jobs(load_sweep(write_sweep(tmp_path, **{"n_hparams": 2, "n_trials": 1, **fields})))


def test_distributions():
    rng_draws = [space_lib.parse_distribution("x", {"log_uniform": [3, 5.5], "base": 2,
                                                    "int": True}).sample(__import__(
        "numpy").random.RandomState(s)) for s in range(200)]
    assert min(rng_draws) >= 8 and max(rng_draws) <= 45 and all(isinstance(v, int) for v in rng_draws)
    assert space_lib.parse_distribution("x", 0.3).describe() == "0.3"
    assert space_lib.DEFAULT_SPACE["common"]["lr"].describe() == "10 ** U(-5, -3.5)"
    assert math.isclose(space_lib.DEFAULT_SPACE["common"]["lr"].high, -3.5)
    assert space_lib.target("lr", ("lr",)) == ["training", "lr"]
    assert space_lib.target("dropout", ()) == ["model", "dropout"]
    assert space_lib.target("meta_lr", ()) == ["algorithm", "meta_lr"]
    assert space_lib.target("algorithm.base.meta_lr", ()) == ["algorithm", "base", "meta_lr"]


def test_a_base_recipe_file_relative_to_the_sweep_file_and_overrides(tmp_path):
    quickstart = Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml"
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "base.yaml").write_text(quickstart.read_text())
    sweeps = tmp_path / "sweeps"
    path = write_sweep(sweeps, base="../recipes/base.yaml", n_hparams=2, n_trials=1,
                       overrides={"training.steps": 20, "dataset.holdout_fraction": 0.3},
                       datasets=["RotatedDigits", {"name": "coloreddigits", "image_size": 12}])
    jobs = expand_jobs(load_sweep(path))
    assert [(j.dataset, j.test_envs) for j in jobs if j.hparams_seed == 0] == (
        [("RotatedDigits", (i,)) for i in range(6)] + [("ColoredDigits", (i,)) for i in range(3)])
    for job in jobs:
        assert job.algorithm == "ggal" and job.recipe["training"]["steps"] == 20
        assert job.recipe["dataset"]["holdout_fraction"] == 0.3   # inherited by both datasets
        if job.hparams_seed == 0:
            assert job.recipe["algorithm"] == {"name": "ggal", "gamma": 0.001}
            assert job.recipe["training"]["lr"] == 1e-3
    assert {j.recipe["dataset"]["image_size"] for j in jobs if j.dataset == "ColoredDigits"} == {12}
    assert {j.recipe["dataset"]["image_size"] for j in jobs if j.dataset == "RotatedDigits"} == {None}
    # without output_dir, jobs go to runs/<sweep file name> under the working directory
    default = load_sweep(write_sweep(sweeps, "plain.yaml", base="../recipes/base.yaml",
                                     output_dir=None))
    assert default.output_dir == (Path.cwd() / "runs" / "plain").resolve()


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "sweeps").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_sweep_files_expand_to_valid_recipes(path, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the jobs' output_dir is taken from the working directory
    sweep = load_sweep(path)
    jobs = expand_jobs(sweep)
    spec = sweep.spec
    datasets = {j.dataset for j in jobs}
    assert len(datasets) == len(spec.datasets or [None])
    for dataset in datasets:
        domains = {j.test_envs for j in jobs if j.dataset == dataset}
        assert domains == {(i,) for i in range(len(domains))}  # each domain in turn
        assert len([j for j in jobs if j.dataset == dataset]) == (
            len(spec.algorithms) * spec.n_hparams * spec.n_trials * len(domains))
    for job in jobs:
        recipes.validate(job.recipe)
        assert Path(job.directory).is_relative_to(tmp_path)
