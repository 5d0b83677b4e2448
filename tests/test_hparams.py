"""Hyperparameters: each algorithm declares every hyperparameter's type and
allowed range; its constructor and recipe validation refuse anything else
with one message naming the parameter (the field path in a recipe), the
allowed values and what was given. Every value a sweep's default search
space can sample is allowed."""

import inspect
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import BACKEND

from kdg import algorithms, recipes
from kdg.algorithms import ALGORITHMS, GGA, CorGrad, Fish, GGAL
from kdg.algorithms.base import HparamError
from kdg.recipes import RecipeError
from kdg.sweep import space

BASE = {
    "dataset": {"name": "RotatedDigits", "test_domains": [0]},
    "model": {"backbone": "small_cnn", "pretrained": False},
    "training": {"steps": 10, "batch_size": 8, "eval_every": 5},
}

NUMBER_01 = r"a number in \(0, 1\]"

# (algorithm section, the field, what the message must say is allowed,
#  True for a wrong type, False for a value outside the allowed range)
REFUSED = [
    ({"name": "fish", "meta_lr": 0}, "meta_lr", NUMBER_01, False),
    ({"name": "fish", "meta_lr": 1.5}, "meta_lr", NUMBER_01, False),
    ({"name": "fish", "meta_lr": "abc"}, "meta_lr", NUMBER_01, True),
    ({"name": "fish", "meta_lr": True}, "meta_lr", NUMBER_01, True),
    ({"name": "fish", "inner_optimizer": "adm"}, "inner_optimizer", r"an optimizer's name like 'sgd'", False),
    ({"name": "fish", "inner_optimizer": 5}, "inner_optimizer", r"an optimizer's name like 'sgd'", False),
    ({"name": "fish", "meta_lr_per_domain": 1}, "meta_lr_per_domain", "true or false", True),
    ({"name": "fish", "shuffle_domains": "sometimes"}, "shuffle_domains", "true or false", True),
    ({"name": "fish", "reset_inner_optimizer": "yes"}, "reset_inner_optimizer", "true or false", True),
    ({"name": "fish", "warmup_steps": -1}, "warmup_steps", "an integer >= 0", False),
    ({"name": "fish", "warmup_steps": 2.5}, "warmup_steps", "an integer >= 0", True),
    ({"name": "corgrad", "n_parts": 0}, "n_parts", "an integer >= 1", False),
    ({"name": "mmd", "mmd_gamma": -1}, "mmd_gamma", "a number >= 0", False),
    ({"name": "coral", "mmd_gamma": "big"}, "mmd_gamma", "a number >= 0", True),
    ({"name": "rsc", "rsc_f_drop_factor": 1.5}, "rsc_f_drop_factor", r"a number in \[0, 1\]", False),
    ({"name": "rsc", "rsc_b_drop_factor": -0.1}, "rsc_b_drop_factor", r"a number in \[0, 1\]", False),
    ({"name": "corgrad", "n_parts": "ten"}, "n_parts", "an integer >= 1", True),
    ({"name": "corgrad", "alpha": 7}, "alpha", r"a number in \[0, 1\]", False),
    ({"name": "corgrad", "alpha": -0.1}, "alpha", r"a number in \[0, 1\]", False),
    ({"name": "corgrad", "alpha": "high"}, "alpha", r"a number in \[0, 1\]", True),
    ({"name": "corgrad", "granularity": "layers"}, "granularity", "one of 'layer', 'model', 'element'", False),
    ({"name": "corgrad", "smoothing": "sometimes"}, "smoothing", "true or false", True),
    ({"name": "corgrad", "projection": "pc"}, "projection", "one of 'sequential', 'pcgrad'", False),
    ({"name": "corgrad", "layers": 3}, "layers", "one of 'all', 'kernels'", False),
    ({"name": "corgrad", "alpha_schedule": "log"}, "alpha_schedule", "one of 'constant', 'log_decay'", False),
    ({"name": "corgrad", "total_steps": 1}, "total_steps", "an integer >= 2 or None", False),
    ({"name": "corgrad", "total_steps": "many"}, "total_steps", "an integer >= 2 or None", True),
    ({"name": "corgrad", "tie_tolerance": 1.0}, "tie_tolerance", r"a number in \[0, 1\)", False),
    ({"name": "corgrad", "tie_tolerance": -1e-6}, "tie_tolerance", r"a number in \[0, 1\)", False),
    ({"name": "pcgrad", "reduction": "avg"}, "reduction", "one of 'sum', 'mean'", False),
    ({"name": "pcgrad", "tie_tolerance": "tiny"}, "tie_tolerance", r"a number in \[0, 1\)", True),
    ({"name": "gga", "base": "gga"}, "base", "an algorithm other than GGA", False),
    ({"name": "gga", "start_step": -1}, "start_step", "an integer >= 0", False),
    ({"name": "gga", "start_step": "soon"}, "start_step", "an integer >= 0", True),
    ({"name": "gga", "end_step": 99}, "end_step", r"an integer >= start_step \(100\)", False),
    ({"name": "gga", "end_step": 1e9 + 0.5}, "end_step", "an integer >= 0", True),
    ({"name": "gga", "rho": 0}, "rho", "a number > 0", False),
    ({"name": "gga", "rho": -1e-5}, "rho", "a number > 0", False),
    ({"name": "gga", "rho": "small"}, "rho", "a number > 0", True),
    ({"name": "gga", "trials": -1}, "trials", "an integer >= 0", False),
    ({"name": "gga", "trials": 2.5}, "trials", "an integer >= 0", True),
    ({"name": "gga", "loss_tolerance": float("inf")}, "loss_tolerance", "a finite number", False),
    ({"name": "gga", "loss_tolerance": "loose"}, "loss_tolerance", "a finite number", True),
    ({"name": "gga", "perturb": "conv("}, "perturb", "'features', 'all' or a regular expression", False),
    ({"name": "gga", "perturb": 5}, "perturb", "'features', 'all' or a regular expression", False),
    ({"name": "gga", "temperature": -1}, "temperature", "a number >= 0", False),
    ({"name": "gga", "temperature": float("nan")}, "temperature", "a number >= 0", False),
    ({"name": "gga", "cooling": 0}, "cooling", r"a number in \(0, 1\]", False),
    ({"name": "gga", "cooling": 1.01}, "cooling", r"a number in \(0, 1\]", False),
    ({"name": "gga", "concat_loss": "sum"}, "concat_loss", "one of 'auto', 'separate', 'mean'", False),
    ({"name": "ggal", "gamma": -1e-3}, "gamma", "a number >= 0", False),
    ({"name": "ggal", "gamma": [1e-3]}, "gamma", "a number >= 0", True),
    ({"name": "ggal", "noise": "Gaussian"}, "noise", "one of 'gaussian', 'uniform'", False),
    ({"name": "ggal", "concat_grad": None}, "concat_grad", "one of 'auto', 'separate', 'mean'", False),
    ({"name": "sam", "rho": -0.05}, "rho", "a number >= 0", False),
    ({"name": "gsam", "rho": "wide"}, "rho", "a number >= 0", True),
    ({"name": "gsam", "alpha": -1e-3}, "alpha", "a number >= 0", False),
    ({"name": "sagm", "rho": float("inf")}, "rho", "a number >= 0", False),
    ({"name": "sagm", "alpha": [0.1]}, "alpha", "a number >= 0", True),
    ({"name": "andmask", "tau": 1.5}, "tau", r"a number in \[0, 1\]", False),
    ({"name": "sandmask", "tau": -0.5}, "tau", r"a number in \[0, 1\]", False),
    ({"name": "sandmask", "k": 0}, "k", "a number > 0", False),
    ({"name": "groupdro", "eta": -0.01}, "eta", "a number >= 0", False),
    ({"name": "groupdro", "num_domains": 0}, "num_domains", "an integer >= 1 or None", False),
    ({"name": "irm", "penalty_weight": -1}, "penalty_weight", "a number >= 0", False),
    ({"name": "irm", "anneal_steps": 2.5}, "anneal_steps", "an integer >= 0", True),
    ({"name": "irm", "rescale_loss": "yes"}, "rescale_loss", "true or false", True),
    ({"name": "vrex", "penalty_weight": "big"}, "penalty_weight", "a number >= 0", True),
    ({"name": "vrex", "anneal_steps": -1}, "anneal_steps", "an integer >= 0", False),
    ({"name": "vrex", "rescale_loss": 1}, "rescale_loss", "true or false", True),
    ({"name": "sd", "sd_reg": -0.1}, "sd_reg", "a number >= 0", False),
    ({"name": "mixup", "alpha": 0}, "alpha", "a number > 0", False),
    ({"name": "mldg", "beta": -1.0}, "beta", "a number >= 0", False),
    ({"name": "mldg", "n_meta_test": 0}, "n_meta_test", "an integer >= 1", False),
    ({"name": "mtl", "mtl_ema": 1.5}, "mtl_ema", r"a number in \[0, 1\]", False),
    ({"name": "mtl", "num_domains": 2.5}, "num_domains", "an integer >= 1 or None", True),
    ({"name": "sagnet", "sag_w_adv": -0.1}, "sag_w_adv", "a number >= 0", False),
    ({"name": "arm", "train_context": "yes"}, "train_context", "true or false", True),
    ({"name": "iga", "penalty_weight": -1e3}, "penalty_weight", "a number >= 0", False),
    ({"name": "selfreg", "feature_weight": -0.3}, "feature_weight", "a number >= 0", False),
    ({"name": "selfreg", "alpha": 0}, "alpha", "a number > 0", False),
    ({"name": "selfreg", "train_projection": 1}, "train_projection", "true or false", True),
    ({"name": "fishr", "penalty_weight": -1}, "penalty_weight", "a number >= 0", False),
    ({"name": "fishr", "anneal_steps": -1}, "anneal_steps", "an integer >= 0", False),
    ({"name": "fishr", "ema": 1.0}, "ema", r"a number in \[0, 1\)", False),
    ({"name": "fishr", "num_domains": 0}, "num_domains", "an integer >= 1 or None", False),
    ({"name": "dann", "lambda_": -1.0}, "lambda_", "a number >= 0", False),
    ({"name": "cdann", "lambda_": "big"}, "lambda_", "a number >= 0", True),
    ({"name": "dann", "d_steps_per_g_step": 0}, "d_steps_per_g_step", "an integer >= 1", False),
    ({"name": "cdann", "d_steps_per_g_step": 1.5}, "d_steps_per_g_step", "an integer >= 1", True),
    ({"name": "dann", "grad_penalty": -0.1}, "grad_penalty", "a number >= 0", False),
    ({"name": "cdann", "grad_penalty": float("nan")}, "grad_penalty", "a number >= 0", False),
    ({"name": "dann", "beta1": 1.0}, "beta1", r"a number in \[0, 1\)", False),
    ({"name": "cdann", "beta1": -0.5}, "beta1", r"a number in \[0, 1\)", False),
    ({"name": "dann", "mlp_width": 0}, "mlp_width", "an integer >= 1", False),
    ({"name": "cdann", "mlp_width": 25.5}, "mlp_width", "an integer >= 1", True),
    ({"name": "dann", "mlp_depth": 1}, "mlp_depth", "an integer >= 2", False),
    ({"name": "cdann", "mlp_depth": "deep"}, "mlp_depth", "an integer >= 2", True),
    ({"name": "dann", "mlp_dropout": 1.0}, "mlp_dropout", r"a number in \[0, 1\)", False),
    ({"name": "cdann", "mlp_dropout": -0.1}, "mlp_dropout", r"a number in \[0, 1\)", False),
    ({"name": "dann", "lr_d": 0}, "lr_d", "a number > 0 or None", False),
    ({"name": "cdann", "lr_d": "fast"}, "lr_d", "a number > 0 or None", True),
    ({"name": "dann", "lr_g": -1e-3}, "lr_g", "a number > 0 or None", False),
    ({"name": "cdann", "lr_g": 0.0}, "lr_g", "a number > 0 or None", False),
    ({"name": "dann", "weight_decay_d": -1e-4}, "weight_decay_d", "a number >= 0", False),
    ({"name": "cdann", "weight_decay_d": None}, "weight_decay_d", "a number >= 0", True),
    ({"name": "dann", "weight_decay_g": -1e-4}, "weight_decay_g", "a number >= 0 or None", False),
    ({"name": "cdann", "weight_decay_g": "none"}, "weight_decay_g", "a number >= 0 or None", True),
]


def case_id(case):
    section, field, _, _ = case
    return f"{section['name']}-{field}={section[field]!r}"


def refusal(config):
    """The RecipeError message validating `config` gives."""
    with pytest.raises(RecipeError) as error:
        recipes.validate(config)
    return str(error.value)


def test_every_constructor_parameter_is_declared():
    for name, cls in ALGORITHMS.items():
        assert list(inspect.signature(cls).parameters) == list(cls.hparams), name


def test_every_declared_kind_of_hyperparameter_is_refused_somewhere():
    """The table below covers each hyperparameter of each algorithm."""
    covered = {(section["name"], field) for section, field, _, _ in REFUSED}
    declared = {(name, key) for name, cls in ALGORITHMS.items() for key in cls.hparams}
    assert covered == declared


@pytest.mark.parametrize("case", REFUSED, ids=[case_id(c) for c in REFUSED])
def test_recipe_refuses_a_bad_value_naming_the_field_and_the_range(case):
    section, field, allowed, _ = case
    message = refusal(dict(BASE, algorithm=section))
    given = repr(section[field])
    assert f"algorithm.{field}: must be " in message
    assert f"given {given}" in message
    assert len(message.splitlines()) == 2  # 'invalid recipe:' and one problem
    assert re.search(allowed, message), message


@pytest.mark.parametrize("case", REFUSED, ids=[case_id(c) for c in REFUSED])
def test_constructor_refuses_a_bad_value_naming_the_parameter(case):
    section, field, allowed, wrong_type = case
    params = {k: v for k, v in section.items() if k != "name"}
    cls = ALGORITHMS[section["name"]]
    with pytest.raises(HparamError, match=f"{cls.__name__} {field} must be .*{allowed}.*; given ") as error:
        cls(**params)
    assert error.value.hparam == field
    assert isinstance(error.value, ValueError)
    assert isinstance(error.value, TypeError) == wrong_type


# Values at the edge of their range, each allowed (the refused side of most
# of these edges is in REFUSED): a check written with > for >= fails here.
ALLOWED = [
    ("fish", "meta_lr", 1.0), ("fish", "meta_lr", 1e-12), ("fish", "warmup_steps", 0),
    ("fish", "inner_optimizer", "sgd"), ("fish", "inner_optimizer", None),
    ("fish", "shuffle_domains", True), ("fish", "meta_lr_per_domain", np.bool_(True)),
    ("corgrad", "n_parts", 1), ("corgrad", "n_parts", 100.0), ("corgrad", "alpha", 0.0),
    ("corgrad", "alpha", 1), ("corgrad", "alpha", np.float32(0.5)),
    ("corgrad", "tie_tolerance", 0.0), ("corgrad", "tie_tolerance", 0.999),
    ("corgrad", "total_steps", 2), ("corgrad", "total_steps", None),
    ("gga", "start_step", 0), ("gga", "end_step", 100), ("gga", "rho", 1e-300),
    ("gga", "trials", 0), ("gga", "loss_tolerance", -1e9), ("gga", "temperature", 0.0),
    ("gga", "cooling", 1.0), ("gga", "cooling", 1e-9), ("gga", "perturb", "dense.*kernel"),
    ("gga", "base", "corgrad"),
    ("ggal", "gamma", 0.0), ("ggal", "noise", "uniform"),
]


@pytest.mark.parametrize("name, field, value", ALLOWED, ids=[f"{a}-{b}={c!r}" for a, b, c in ALLOWED])
def test_values_at_the_edge_of_their_range_are_allowed(name, field, value):
    recipe = recipes.validate(dict(BASE, algorithm={"name": name, field: value}))
    algorithm = recipes.build_algorithm(recipe.algorithm.model_dump())
    kept = getattr(algorithm, field)
    if field == "base":
        assert kept.name == value
    elif field == "inner_optimizer":
        assert (kept is None) == (value is None)
    else:
        assert kept == value
    assert type(algorithm).from_config(algorithm.get_config()) == algorithm


def test_every_problem_is_listed_in_one_error_with_its_path():
    message = refusal(dict(BASE, algorithm={
        "name": "gga", "rho": -1, "trials": "many",
        "base": {"name": "corgrad", "alpha": 7, "n_parts": 0, "projection": "pcgrd"},
    }))
    assert message.splitlines() == [
        "invalid recipe:",
        "  - algorithm.base.alpha: must be a number in [0, 1]; given 7.",
        "  - algorithm.base.n_parts: must be an integer >= 1; given 0.",
        "  - algorithm.base.projection: must be one of 'sequential', 'pcgrad'; given 'pcgrd'. "
        "Did you mean 'pcgrad'?",
        "  - algorithm.rho: must be a number > 0; given -1.",
        "  - algorithm.trials: must be an integer >= 0; given 'many'.",
    ]


def test_a_wrapped_algorithm_is_refused_from_python_too():
    with pytest.raises(HparamError, match=r"CorGrad alpha must be a number in \[0, 1\]; given 7"):
        GGA(base=CorGrad(alpha=7))
    with pytest.raises(HparamError, match=r"GGA base must be an algorithm other than GGA.*given 'gga'"):
        GGA(base=GGA())
    with pytest.raises(HparamError, match=r"GGA base must be .*Unknown algorithm 'fsh'.*given 'fsh'"):
        GGA(base="fsh")


def test_log_decay_takes_total_steps_from_the_recipe_and_needs_it_in_python():
    recipe = recipes.validate(dict(BASE, algorithm={"name": "corgrad", "alpha_schedule": "log_decay"}))
    assert recipes.build_algorithm(recipe.algorithm.model_dump(), recipe.training.steps).total_steps == 10
    with pytest.raises(HparamError, match=r"CorGrad total_steps must be an integer >= 2 .*log_decay.*given None"):
        CorGrad(alpha_schedule="log_decay")
    # a run too short for the schedule names the field the user set
    message = refusal(dict(BASE, algorithm={"name": "corgrad", "alpha_schedule": "log_decay"},
                           training={"steps": 1}))
    assert "training.steps (CorGrad's total_steps with alpha_schedule log_decay)" in message
    assert "algorithm.total_steps" not in message


def test_erm_takes_no_parameters_and_says_so():
    assert recipes.algorithm_parameters("erm") == []
    message = refusal(dict(BASE, algorithm={"name": "erm", "lr_scale": 2}))
    assert "algorithm.lr_scale: not a parameter of erm; erm takes no parameters." in message
    assert "args" not in message and "kwargs" not in message


GGAL_RECIPE = """
dataset: {name: RotatedDigits, test_domains: [0]}
model: {backbone: small_cnn, pretrained: false}
algorithm: {name: ggal, gamma: 0.01, noise: uniform}
training: {steps: 2, batch_size: 4, eval_every: 2, eval_batch_size: 64}
"""


def test_switching_algorithm_by_name_says_to_replace_the_section(tmp_path):
    path = tmp_path / "ggal.yaml"
    path.write_text(GGAL_RECIPE)
    with pytest.raises(RecipeError) as error:
        recipes.load_recipe(path, ["algorithm.name=erm"])
    assert str(error.value).splitlines()[1:] == [
        f"  - algorithm.{key}: {key} is a parameter of ggal, not of erm: to switch algorithm, "
        f"replace the whole section: --set 'algorithm={{name: erm}}' (in a recipe file, "
        f"remove {key}); erm takes no parameters."
        for key in ("gamma", "noise")
    ]
    # what the message says to do works
    recipe = recipes.load_recipe(path, ["algorithm={name: erm}"])
    assert recipe.algorithm.model_dump() == {"name": "erm"}
    assert recipes.build_algorithm(recipe.algorithm.model_dump()) == algorithms.ERM()
    recipe = recipes.load_recipe(path, ["algorithm={name: fish, meta_lr: 0.1}"])
    assert recipes.build_algorithm(recipe.algorithm.model_dump()) == Fish(meta_lr=0.1)


def test_switching_the_wrapped_algorithm_names_the_base_section(tmp_path):
    path = tmp_path / "gga.yaml"
    path.write_text(GGAL_RECIPE.replace("{name: ggal, gamma: 0.01, noise: uniform}",
                                        "{name: gga, base: {name: corgrad, n_parts: 5}, trials: 3}"))
    with pytest.raises(RecipeError, match=(
            r"algorithm\.base\.n_parts: n_parts is a parameter of corgrad, not of fish: to switch "
            r"algorithm, replace the whole section: --set 'algorithm\.base=\{name: fish\}'")):
        recipes.load_recipe(path, ["algorithm.base.name=fish"])
    recipe = recipes.load_recipe(path, ["algorithm.base={name: fish}"])
    built = recipes.build_algorithm(recipe.algorithm.model_dump())
    assert built == GGA(base=Fish(), trials=3)


def test_a_choice_misspelt_gets_the_closest_option():
    message = refusal(dict(BASE, algorithm={"name": "gga", "base": {"name": "ggal", "noise": "Gaussian"},
                                            "concat_loss": "seperate"}))
    assert message.splitlines()[1:] == [
        "  - algorithm.base.noise: must be one of 'gaussian', 'uniform'; given 'Gaussian'. "
        "Did you mean 'gaussian'?",
        "  - algorithm.concat_loss: must be one of 'auto', 'separate', 'mean'; given 'seperate'. "
        "Did you mean 'separate'?",
    ]


def test_a_typo_still_gets_the_closest_parameter():
    message = refusal(dict(BASE, algorithm={"name": "ggal", "gama": 0.1}))
    assert "algorithm.gama: not a parameter of ggal; its parameters: gamma, noise, concat_grad. " \
           "Did you mean 'gamma'?" in message


# -- sweeps --------------------------------------------------------------------------


def edges(distribution):
    """Every value a distribution can sample at the edges of its range."""
    if distribution.kind in ("fixed", "choice"):
        return list(distribution.values)
    ends = [distribution.low, distribution.high]
    if distribution.kind == "log_uniform":
        ends = [distribution.base ** e for e in ends]
    return [int(v) for v in ends] if distribution.integer else ends


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_value_a_default_search_space_samples_is_allowed(name):
    training_fields = tuple(recipes.TrainingConfig.model_fields)
    search = space.space_for(name)
    checked = 0
    for key, distribution in search.items():
        for value in edges(distribution):
            config = space.apply(
                {**BASE, "algorithm": {"name": name}, "training": dict(BASE["training"])},
                {key: value}, training_fields)
            recipe = recipes.validate(config)
            recipes.build_algorithm(recipe.algorithm.model_dump(), recipe.training.steps)
            checked += 1
    assert checked >= len(search) * 2
    # the sampler itself stays inside: a few real draws
    for h in range(1, 6):
        config = space.apply({**BASE, "algorithm": {"name": name}, "training": dict(BASE["training"])},
                             space.sample(search, 0, h, name, "RotatedDigits"), training_fields)
        recipes.validate(config)


# -- the command line ------------------------------------------------------------------


def kdg(*args):
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "kdg.cli", *args], env=env, text=True,
                          capture_output=True, timeout=600)


@pytest.mark.parametrize("algorithm, overrides, expected", [
    ("{name: fish, meta_lr: abc, warmup_steps: -3}", [],
     ["algorithm.meta_lr: must be a number in (0, 1]; given 'abc'.",
      "algorithm.warmup_steps: must be an integer >= 0; given -3."]),
    ("{name: gga, base: {name: corgrad, alpha: 7}, trials: -1}", [],
     ["algorithm.base.alpha: must be a number in [0, 1]; given 7.",
      "algorithm.trials: must be an integer >= 0; given -1."]),
    ("{name: ggal, gamma: 0.01}", ["--set", "algorithm.name=erm"],
     ["algorithm.gamma: gamma is a parameter of ggal, not of erm: to switch algorithm, replace "
      "the whole section: --set 'algorithm={name: erm}'"]),
], ids=["fish", "gga-corgrad", "ggal-to-erm"])
def test_kdg_train_refuses_bad_hyperparameters_and_writes_nothing(tmp_path, algorithm, overrides, expected):
    path = tmp_path / "recipe.yaml"
    path.write_text(GGAL_RECIPE.replace("{name: ggal, gamma: 0.01, noise: uniform}", algorithm)
                    + f"output_dir: {tmp_path / 'run'}\n")
    result = kdg("train", str(path), "--quiet", *overrides)
    assert result.returncode == 2, result.stderr[-2000:]
    for line in expected:
        assert line in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]
