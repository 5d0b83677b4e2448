"""`kdg` end to end, in real subprocesses, on the session's backend."""

import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import BACKEND

from kdg.algorithms import GGA, Fish

RECIPE = """
dataset: {name: RotatedDigits, test_domains: [3, 4, 5]}
model: {backbone: small_cnn, pretrained: false}
algorithm: {name: gga, base: {name: fish}, start_step: 2, end_step: 4, trials: 3, rho: 0.001}
training: {steps: STEPS, batch_size: 8, lr: 0.001, eval_every: EVAL, checkpoint_every: CKPT, eval_batch_size: 256}
"""


def kdg(*args, **kwargs):
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "kdg.cli", *args], env=env, text=True,
                          capture_output=True, timeout=600, **kwargs)


def recipe(tmp_path, steps=8, eval_every=4, checkpoint_every=4, name="run"):
    text = RECIPE.replace("STEPS", str(steps)).replace("EVAL", str(eval_every))
    path = tmp_path / f"{name}.yaml"
    path.write_text(text.replace("CKPT", str(checkpoint_every)) + f"output_dir: {tmp_path / name}\n")
    return path


def records(run):
    out = []
    for line in (run / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.append({k: v for k, v in r.items() if k not in ("step_time", "mem_gb")})
    return out


def test_train_writes_a_complete_run_and_eval_reads_it(tmp_path):
    path = recipe(tmp_path)
    result = kdg("train", str(path), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    assert "algorithm:" in result.stdout  # the resolved recipe is printed
    for name in ("recipe.yaml", "results.jsonl", "checkpoint.npz", "model.keras", "done"):
        assert (run / name).exists(), name
    assert list((run / "tensorboard").iterdir())
    lines = records(run)
    assert [r["step"] for r in lines] == [4, 8]
    last = lines[-1]
    for i in range(6):
        assert 0 <= last[f"env{i}_in_acc"] <= 1 and 0 <= last[f"env{i}_out_acc"] <= 1
    for key in ("loss", "gga_cos_before", "gga_cos_after", "gga_accepted"):
        assert key in last
    assert last["args"]["test_envs"] == [3, 4, 5] and last["args"]["algorithm"] == "gga"
    assert last["mem_device"] == "host"  # kdg.memory: no accelerator on this machine
    # every hyperparameter, the algorithm's defaults included (the signature's)
    defaults = lambda cls: {k: p.default for k, p in inspect.signature(cls).parameters.items()}
    assert last["hparams"] == {
        "lr": 0.001, "batch_size": 8, "weight_decay": 0.0, "dropout": 0.0,
        **defaults(GGA), "start_step": 2, "end_step": 4, "trials": 3, "rho": 0.001,
        "base": {"name": "fish", "config": defaults(Fish)},
    }
    again = kdg("train", str(path))
    assert again.returncode == 0 and "nothing to do" in again.stdout
    evaluated = kdg("eval", str(run), "--dataset", "RotatedDigits", "--domain", "75", "--split", "in")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    row = next(line for line in evaluated.stdout.splitlines() if line.strip().startswith("│ 75"))
    accuracy = float(row.split("│")[4])
    assert accuracy == pytest.approx(last["env5_in_acc"], abs=1e-4)


def test_a_killed_run_resumes_to_the_same_results(tmp_path):
    steps = 40
    reference = recipe(tmp_path, steps, 10, 5, name="uninterrupted")
    assert kdg("train", str(reference), "--quiet").returncode == 0

    path = recipe(tmp_path, steps, 10, 5, name="killed")
    run = tmp_path / "killed"
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen([sys.executable, "-m", "kdg.cli", "train", str(path), "--quiet"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        results = run / "results.jsonl"
        if results.exists() and results.read_text().count("\n") >= 1:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "done").exists(), "the run finished before it could be killed"
    killed_at = len(records(run))

    resumed = kdg("train", str(path), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert killed_at < steps // 10
    a, b = records(tmp_path / "uninterrupted"), records(run)
    assert [r["step"] for r in b] == [10, 20, 30, 40]
    for ra, rb in zip(a, b):
        for key, value in ra.items():
            if key == "args":
                continue
            if isinstance(value, float):
                assert rb[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
            else:
                assert rb[key] == value, key
    with np.load(tmp_path / "uninterrupted" / "checkpoint.npz") as x, np.load(run / "checkpoint.npz") as y:
        assert x.files == y.files
        for key in x.files:
            if key != "extra":  # holds the interval's step times
                np.testing.assert_allclose(x[key], y[key], rtol=1e-5, atol=1e-6)


def test_bad_recipe_fails_cleanly_and_writes_nothing(tmp_path):
    path = recipe(tmp_path)
    result = kdg("train", str(path), "--set", "algorithm.base.meta_rl=0.1")
    assert result.returncode == 2
    assert "algorithm.base.meta_rl: not a parameter of fish" in result.stderr
    assert "Did you mean 'meta_lr'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["data"], ["data", "download"],
                                     ["data", "check"], ["report"]])
def test_help_shows_examples(command):
    result = kdg(*command, "--help")
    assert result.returncode == 0
    assert "Example" in result.stdout


def test_data_check_reports_counts_and_corrupt_images(tmp_path):
    from test_recipes import fake_layout

    root = fake_layout(tmp_path, "VLCS")
    bad = tmp_path / "VLCS" / "SUN09" / "class_002" / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    result = kdg("data", "check", "VLCS", "--root", str(root))
    assert result.returncode == 1
    assert "broken.jpg" in result.stdout
    assert "Caltech101" in result.stdout and "VOC2007" in result.stdout
    bad.unlink()
    assert kdg("data", "check", "VLCS", "--root", str(root)).returncode == 0
    missing = kdg("data", "check", "VLCS", "--root", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "does not exist" in missing.stdout
    assert "kdg data download VLCS --root" in missing.stdout
