"""Every algorithm of the registry trains through `kdg.training.run` (what
`kdg train` and each sweep job call) on the embedded rotated digits, resumes
after an interruption to the same results, and round-trips through
`model.save` / `keras.models.load_model`, on the session's backend.

The interruption. A run is stopped after step 2's record is in
results.jsonl and before step 2's checkpoint is written (a KeyboardInterrupt
raised by the console the run prints to, as Ctrl-C at that moment would):
the folder is then exactly what a SIGKILL at that point leaves, the state
where results.jsonl is ahead of the checkpoint, so the resumed run must
restore step 1's state (model, optimizer, the algorithm's own variables,
seeds), skip the training stream to step 1, drop step 2's record and train
step 2 again. Its step-2 record must equal the one the uninterrupted process
wrote. A SIGKILL of a real `kdg train` subprocess is tested once, in
tests/test_cli.py::test_a_killed_run_resumes_to_the_same_results: every
atomic write leaves the folder in one of the states this path builds, and
what differs between algorithms is only which variables the checkpoint must
carry, which this test checks for each.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
from rich.console import Console

import kdg.dg_model  # noqa: F401  (registers kdg's classes for load_model)
from kdg import recipes, training
from kdg.algorithms import ALGORITHMS

# Hyperparameters that make the algorithm do its work in two steps (GGA's
# search runs in both); the others train with their defaults.
SETTINGS = {
    "gga": {"start_step": 0, "end_step": 2, "trials": 2, "rho": 0.01},
    "selfreg": {"train_projection": True},  # the projection's own optimizer resumes too
    # the penalty on and the optimizer reset at the second step, the one resumed
    "fishr": {"anneal_steps": 1, "penalty_weight": 10.0},
}
# model options an algorithm's network needs (ARM's context network on the input)
MODEL = {"arm": {"arm_context": True}}
# Algorithms that cannot train this model, with the reason: a new algorithm in
# the registry is tested here, or named here.
EXCEPTIONS: dict[str, str] = {
    "mixstyle": "its layers go after a ResNet's stages (model.mixstyle_layers), and a ResNet "
                "costs a minute a build here; tests/test_algo_more.py trains, saves and "
                "loads a MixStyle network on every backend",
}


class Interrupted(KeyboardInterrupt):
    pass


class StopAt(Console):
    """A console that interrupts the run when it prints `line` (the run
    prints "step k: ..." right after step k's record is written)."""

    def __init__(self, line: str):
        super().__init__(quiet=True)
        self.line = line

    def print(self, *objects, **kwargs):
        if objects and str(objects[0]).startswith(self.line):
            raise Interrupted(self.line)


@pytest.fixture(scope="module")
def dataset():
    return recipes.check_dataset(recipes.resolve(recipe_for("erm", "unused"), keras.backend.backend()))


def recipe_for(name: str, output_dir) -> dict:
    return {
        # four training domains (MLDG's default meta-test needs three), no
        # validation splits: six evaluations a record
        "dataset": {"name": "RotatedDigits", "test_domains": [4, 5], "image_size": 8,
                    "holdout_fraction": 0.0},
        "model": {"backbone": "small_cnn", "pretrained": False, "dropout": 0.0,
                  **MODEL.get(name, {})},
        "algorithm": {"name": name, **SETTINGS.get(name, {})},
        "training": {"steps": 2, "batch_size": 4, "lr": 1e-3, "eval_every": 1,
                     "eval_batch_size": 1024, "seed": 1},
        "output_dir": str(output_dir),
        "backend": keras.backend.backend(),
    }


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_algorithm_is_tested_or_named_as_an_exception():
    assert set(EXCEPTIONS) <= set(ALGORITHMS)
    assert set(SETTINGS) <= set(ALGORITHMS) and set(MODEL) <= set(ALGORITHMS)


# The compiled backends build and compile the model twice per algorithm (the
# run, then the resume: 5-30 s each), more than CI's time allows for all of
# them. There the algorithms whose own state must survive the checkpoint and
# JAX's stateless step are run (and GGA, ERM as the plain case); every
# algorithm's step is checked on every backend by its reference tests, and
# PyTorch (eager, no compile) runs them all here. All of them passed on all
# three backends when they were added (2026-12-06).
OWN_STATE = ("erm", "fish", "gga", "groupdro", "irm", "vrex", "mldg", "mtl", "sagnet", "arm",
             "selfreg", "fishr",
             "dann", "cdann")


def cases():
    names = sorted(set(ALGORITHMS) - set(EXCEPTIONS))
    if keras.backend.backend() == "torch" or os.environ.get("KDG_EVERY_ALGORITHM"):
        return names
    return [n for n in names if n in OWN_STATE]


@pytest.mark.slow
@pytest.mark.parametrize("name", cases())
def test_trains_resumes_and_round_trips(name, dataset, tmp_path):
    out = tmp_path / name
    recipe = recipes.resolve(recipe_for(name, out), keras.backend.backend())
    with pytest.raises(Interrupted):
        training.run(recipe, dataset=dataset, console=StopAt("step 2:"))
    assert not (out / "done").exists()
    uninterrupted = lines(out / "results.jsonl")
    assert [r["step"] for r in uninterrupted] == [1, 2]
    with np.load(out / "checkpoint.npz") as stored:
        assert int(stored["step"]) == 1

    final = training.run(recipe, dataset=dataset)
    resumed = lines(out / "results.jsonl")
    assert [r["step"] for r in resumed] == [1, 2] and (out / "done").exists()
    assert resumed[0] == uninterrupted[0]  # step 1's record is kept as written
    for key, value in uninterrupted[1].items():
        if key in ("step_time", "mem_gb"):
            continue
        if isinstance(value, float):
            assert resumed[1][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
        else:
            assert resumed[1][key] == value, key
    assert final["loss"] == resumed[1]["loss"] and np.isfinite(final["loss"])
    assert resumed[1]["args"]["algorithm"] == name

    # model.keras holds every variable of the final checkpoint: the network,
    # the optimizer and the algorithm's own state
    loaded = keras.models.load_model(out / "model.keras")
    assert type(loaded.algorithm) is ALGORITHMS[name]
    config = loaded.algorithm.get_config()
    for key, value in recipe.algorithm.model_dump().items():
        if key not in ("name", "base"):
            assert config[key] == value, key
    state = training.state_variables(loaded)
    with np.load(out / "checkpoint.npz") as stored:
        assert int(stored["step"]) == 2
        assert len(stored.files) - 2 == len(state)
        for i, variable in enumerate(state):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), stored[f"v{i}"],
                                          err_msg=variable.path)
