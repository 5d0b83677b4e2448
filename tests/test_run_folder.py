"""A run and its folder, through `kdg train` and `kdg eval` in real
subprocesses on the session's backend: checks made before anything is
written, output_dir problems, a full disk (a real file-size limit), a
truncated checkpoint, a finished run started with another recipe, two runs
on one folder, and `kdg eval RUN_DIR` without --dataset."""

import fcntl
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import BACKEND

RECIPE = """
dataset: {name: RotatedDigits, test_domains: TEST}
model: {backbone: small_cnn, pretrained: false}
algorithm: ALGORITHM
training: {steps: STEPS, batch_size: 8, lr: 0.001, eval_every: EVAL, checkpoint_every: EVAL, eval_batch_size: 512}
"""


def env():
    return dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3")


LIMITED = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv.pop(1))
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
runpy.run_module("kdg.cli", run_name="__main__")
"""


def kdg(*args, limit=None):
    """`kdg ...`; `limit`: the largest file (bytes) the process may write
    (RLIMIT_FSIZE, SIGXFSZ ignored: a write past it fails with EFBIG, as on a full disk)."""
    start = [sys.executable, "-m", "kdg.cli"] if limit is None else [
        sys.executable, "-c", LIMITED, str(limit)]
    return subprocess.run([*start, *map(str, args)], env=env(), text=True,
                          capture_output=True, timeout=600)


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def cli(*args):
    """`kdg ...` in this process (for the commands that stop before training):
    the exit code, stdout and stderr; an exception other than the exit is a
    traceback the user would have seen."""
    from click.testing import CliRunner

    from kdg.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        stderr += "Traceback\n" + "".join(traceback.format_exception(result.exception))
    return Result(result.exit_code, result.stdout, stderr)


def write_recipe(path, out, steps=4, eval_every=2, test="[3, 4, 5]", algorithm="{name: erm}"):
    text = (RECIPE.replace("STEPS", str(steps)).replace("EVAL", str(eval_every))
            .replace("TEST", test).replace("ALGORITHM", algorithm))
    path.write_text(text + f"output_dir: {out}\n")
    return path


def snapshot(folder):
    """Every file under `folder` with its bytes."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def assert_clean_failure(result, *needles):
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr[-3000:])


def steps_of(run):
    return [json.loads(line)["step"] for line in (run / "results.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 4-step ERM run on RotatedDigits (16 x 16 images)."""
    base = tmp_path_factory.mktemp("finished")
    path = write_recipe(base / "run.yaml", base / "run")
    result = kdg("train", path, "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    return path, base / "run"


def copy_of(run, tmp_path, name="copy"):
    """A copy of the run in tmp_path, with its recipe pointing at it."""
    target = tmp_path / name
    shutil.copytree(run, target)
    recipe = write_recipe(tmp_path / f"{name}.yaml", target)
    return recipe, target


# -- checks made before anything is written --------------------------------------------


@pytest.mark.parametrize("algorithm, name", [
    ("{name: corgrad}", "CorGrad"),
    ("{name: ggal}", "GGAL"),
    ("{name: gga, base: {name: erm}, start_step: 0, end_step: 2, trials: 2}", "GGA"),
])
def test_an_algorithm_of_domain_pairs_on_one_training_domain_is_refused_before_writing(
        tmp_path, algorithm, name):
    out = tmp_path / "run"
    path = write_recipe(tmp_path / "r.yaml", out, test="[1, 2, 3, 4, 5]", algorithm=algorithm)
    result = cli("train", path)
    assert_clean_failure(result, f"{name} compares the gradients of pairs of training domains",
                         "dataset.test_domains", "Use fewer test domains")
    assert not out.exists()


def test_gga_is_checked_through_its_base(tmp_path):
    """GGA's base is an algorithm of its own: the check walks into it."""
    from kdg import recipes

    recipe = recipes.validate({"dataset": {"name": "RotatedDigits"},
                               "algorithm": {"name": "gga", "base": {"name": "corgrad"}}})
    with pytest.raises(recipes.RecipeError, match="GGA compares"):
        recipes.check_run(recipe, ["a", "b"], [0])
    recipes.check_run(recipe, ["a", "b", "c"], [0])  # two training domains: fine
    from kdg.algorithms import GGA

    names = [cls.__name__ for cls in recipes._algorithm_classes(recipe.algorithm.model_dump())]
    assert names == ["GGA", "CorGrad"] and GGA.needs_domain_pairs


def test_gga_with_nothing_to_perturb_is_refused_before_writing(tmp_path):
    """What only the built model tells (GGA's perturb matches no variable)
    is found before the folder is made, as a recipe error."""
    out = tmp_path / "run"
    algorithm = "{name: gga, base: {name: erm}, perturb: 'no_such_layer', trials: 2}"
    path = write_recipe(tmp_path / "r.yaml", out, algorithm=algorithm)
    result = cli("train", path)
    assert_clean_failure(result, "invalid recipe", "perturb='no_such_layer' matches none",
                         "perturb='all'")
    assert not out.exists()


@pytest.mark.skipif(BACKEND == "jax", reason="JAX can train on several devices")
def test_devices_on_a_backend_without_distribution_are_refused_before_writing(tmp_path):
    out = tmp_path / "run"
    path = write_recipe(tmp_path / "r.yaml", out)
    result = cli("train", path, "--set", "training.devices=2")
    assert_clean_failure(result, "training.devices: 2", "needs the JAX", f"uses {BACKEND}",
                         "backend: jax")
    assert not out.exists()


@pytest.mark.skipif(BACKEND != "jax", reason="the device count is checked where JAX runs")
def test_more_devices_than_jax_has_are_refused_before_writing(tmp_path):
    out = tmp_path / "run"
    path = write_recipe(tmp_path / "r.yaml", out)
    result = cli("train", path, "--set", "training.devices=64")
    assert_clean_failure(result, "training.devices: devices=64", "xla_force_host_platform")
    assert not out.exists()


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_output_dir_that_is_a_file_or_under_one(tmp_path, where):
    blocker = tmp_path / "taken"
    blocker.write_text("a file\n")
    out = blocker if where == "file" else blocker / "run"
    path = write_recipe(tmp_path / "r.yaml", out)
    result = cli("train", path)
    assert_clean_failure(result, f"output_dir {out}", "is a file, not a folder",
                         "Choose another output_dir")
    assert blocker.read_text() == "a file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml", "taken"]


# -- a finished run -------------------------------------------------------------------------


def test_a_finished_run_with_another_recipe_is_refused(finished):
    from kdg import recipes, training

    path, run = finished
    before = snapshot(run)
    result = cli("train", path, "--quiet", "--set", "training.steps=6")
    assert_clean_failure(result, "holds a finished run of a different recipe",
                         "training.steps: 4 in the run, 6 now", "choose another output_dir",
                         f"or delete {run}")
    assert snapshot(run) == before
    other = "tensorflow" if BACKEND != "tensorflow" else "jax"
    for overrides, backend, field in [
            (["algorithm.name=fish"], BACKEND, "algorithm.name: 'erm' in the run, 'fish' now"),
            ([], other, f"backend: '{BACKEND}' in the run, '{other}' now")]:
        recipe = recipes.load_recipe(path, overrides, backend=backend)
        with pytest.raises(training.RunError, match="finished run of a different recipe") as error:
            training.run(recipe)
        assert field in str(error.value)
        assert snapshot(run) == before
    again = cli("train", path)
    assert again.returncode == 0 and "nothing to do" in " ".join(again.stdout.split())
    assert snapshot(run) == before
    # the splits evaluated do not make another run: its records say which they hold
    fewer = cli("train", path, "--set", "training.eval_splits=selection")
    assert fewer.returncode == 0 and "nothing to do" in " ".join(fewer.stdout.split())
    assert snapshot(run) == before


# -- a full disk and a truncated checkpoint --------------------------------------------------


def test_a_full_disk_at_the_final_model_loses_nothing(finished, tmp_path):
    """The run's last checkpoint fits under the file-size limit, the model
    file does not: one message, the checkpoint and results intact, no
    temporary file left; the same command without the limit then finishes."""
    path, target = copy_of(finished[1], tmp_path)
    for name in ("done", "model.keras"):
        (target / name).unlink()
    checkpoint = (target / "checkpoint.npz").stat().st_size
    limit = checkpoint + 4096
    assert (finished[1] / "model.keras").stat().st_size > limit  # what makes this test a test
    before = snapshot(target)
    result = kdg("train", path, "--quiet", limit=limit)
    assert_clean_failure(result, f"could not write {target / 'model.keras'}", "ulimit -f",
                         "run the same command again: it continues from step 4",
                         "Nothing already written was lost")
    after = snapshot(target)
    after.pop("run.lock"), before.pop("run.lock")
    new = {name for name in after if name not in before}
    assert all(name.startswith("tensorboard/") for name in new), new  # no model.tmp.keras
    assert {name: after[name] for name in before} == before  # nothing lost
    resumed = kdg("train", path, "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (target / "done").exists() and steps_of(target) == [2, 4]


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
    """save_checkpoint under a real file-size limit: the write fails, the
    previous checkpoint stays byte for byte, no temporary file is left."""
    script = f"""
import json, resource, signal
from pathlib import Path
import keras, numpy as np
import kdg
from kdg import training
from kdg.run_folder import RunError, writing
inputs = keras.Input((5,))
model = kdg.DGModel(inputs, keras.layers.Dense(300)(inputs))
model.compile(optimizer="adam", loss="mse")
model.optimizer.build(model.trainable_variables)
path = Path({str(tmp_path)!r}) / "checkpoint.npz"
training.save_checkpoint(model, path, 1)
size = path.stat().st_size
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, resource.RLIM_INFINITY))
model.trainable_variables[0].assign(np.ones((5, 300), "float32"))
try:
    with writing(path, ": it continues from step 1"):
        training.save_checkpoint(model, path, 2)
    print(json.dumps({{"error": None}}))
except RunError as error:
    print(json.dumps({{"error": str(error), "size": size}}))
"""
    result = subprocess.run([sys.executable, "-c", script], env=env(), text=True,
                            capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["error"] and "could not write" in outcome["error"]
    assert "from step 1" in outcome["error"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz"]
    import numpy as np

    with np.load(tmp_path / "checkpoint.npz") as stored:
        assert int(stored["step"]) == 1
        assert not np.all(stored["v0"] == 1.0)  # the old weights, not the failed new ones


def test_a_truncated_checkpoint_is_named_and_nothing_is_deleted(finished, tmp_path):
    path, target = copy_of(finished[1], tmp_path)
    for name in ("done", "model.keras"):
        (target / name).unlink()
    data = (target / "checkpoint.npz").read_bytes()
    (target / "checkpoint.npz").write_bytes(data[: len(data) // 2])
    before = snapshot(target)
    result = cli("train", path, "--quiet")
    assert_clean_failure(result, f"{target / 'checkpoint.npz'} cannot be read",
                         "cut short", "put back an intact copy", f"rm {target / 'checkpoint.npz'}")
    after = snapshot(target)
    before.pop("run.lock"), after.pop("run.lock")
    assert after == before


# -- two runs on one folder ------------------------------------------------------------------


def test_a_second_run_on_a_locked_folder_says_who_holds_it(tmp_path):
    out = tmp_path / "run"
    path = write_recipe(tmp_path / "r.yaml", out, steps=100000, eval_every=2)
    first = subprocess.Popen([sys.executable, "-m", "kdg.cli", "train", str(path), "--quiet"],
                             env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and first.poll() is None:
            if (out / "results.jsonl").exists() and len(steps_of(out)) >= 1:
                break
            time.sleep(0.1)
        assert first.poll() is None, first.stderr.read()[-3000:]
        second = kdg("train", path, "--quiet")
        assert_clean_failure(second, f"{out} is in use by another run",
                             f"pid {first.pid} on host {socket.gethostname()}", "since",
                             "choose another output_dir")
        assert first.poll() is None  # the first one goes on
    finally:
        first.kill()  # SIGKILL: the operating system releases the lock
        first.wait()
    steps = steps_of(out)
    assert steps == sorted(set(steps)) and steps[0] == 2  # one writer, no duplicates
    with open(out / "run.lock", "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if it were still held


# -- kdg eval --------------------------------------------------------------------------------


def table_rows(stdout):
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 5 and cells[0] not in ("domain", ""):
            rows[cells[0]] = (int(cells[2]), float(cells[3]))
    return rows


def test_eval_of_a_run_reads_its_recipe(finished):
    path, run = finished
    last = json.loads((run / "results.jsonl").read_text().splitlines()[-1])
    result = cli("eval", run, "--split", "out")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = table_rows(result.stdout)
    assert list(rows) == ["0", "15", "30", "45", "60", "75"]
    for i, domain in enumerate(rows):
        assert rows[domain][1] == pytest.approx(last[f"env{i}_out_acc"], abs=1e-4)


def test_eval_of_a_run_without_validation_splits_shows_them_empty(finished, tmp_path):
    """A run trained with holdout_fraction 0 has empty out splits: `kdg eval
    --split out` lists them with no accuracy instead of failing."""
    recipe, run = copy_of(finished[1], tmp_path)
    saved = run / "recipe.yaml"
    saved.write_text(saved.read_text().replace("holdout_fraction: 0.2", "holdout_fraction: 0.0"))
    assert "holdout_fraction: 0.0" in saved.read_text()
    result = cli("eval", run, "--split", "out")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    rows = [line for line in result.stdout.splitlines() if " out " in line]
    assert len(rows) == 6 and all(" 0 " in row and row.count("-") >= 2 for row in rows), rows


def test_eval_resizes_images_to_the_model_input(finished, tmp_path):
    """RotatedDigits generated at 24 x 24 for a model that takes 16 x 16:
    resized (bilinear) to 16 x 16, the same numbers as the images made at 16
    and resized by hand; another number of channels is refused cleanly."""
    run = finished[1]
    result = cli("eval", run, "--dataset", "RotatedDigits", "--image-size", "24",
                 "--domain", "0", "--split", "in")
    assert result.returncode == 0, result.stderr[-3000:]
    accuracy = table_rows(result.stdout)["0"][1]
    import keras
    import numpy as np
    import tensorflow as tf

    import kdg.dg_model  # noqa: F401
    from kdg import data

    model = keras.models.load_model(run / "model.keras")
    ds = data.load("RotatedDigits", image_size=24)
    x, y = [], []
    for xb, yb in ds.eval_batches(ds.split(0, "in"), batch_size=512).dataset:
        x.append(tf.image.resize(xb, (16, 16)).numpy())
        y.append(yb.numpy())
    x, y = np.concatenate(x), np.concatenate(y)
    assert x.shape[1:] == (16, 16, 1)
    logits = keras.ops.convert_to_numpy(model.predict(x, verbose=0))
    assert accuracy == pytest.approx((logits.argmax(-1) == y).mean(), abs=1e-4)
    colored = cli("eval", run, "--dataset", "ColoredDigits")
    assert_clean_failure(colored, "takes images of shape (16, 16, 1)", "(16, 16, 2)",
                         "another number of channels")


def test_eval_of_a_model_file_needs_a_dataset(finished, tmp_path):
    model = tmp_path / "model.keras"
    shutil.copy(finished[1] / "model.keras", model)
    result = cli("eval", model)
    assert_clean_failure(result, "is not a run directory with a recipe.yaml", "--dataset NAME")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]
