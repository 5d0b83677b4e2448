"""kdg's engine where TensorFlow is not installed (JAX and PyTorch backends).

Runs in the nox session `tests-notf`, whose virtualenv has kdg with JAX and
PyTorch but no TensorFlow (the GPU machines this project is lent, and many
users', are like that). That session sets KDG_WITHOUT_TENSORFLOW=1: there a
TensorFlow that can be imported fails the tests instead of skipping them.
Elsewhere (TensorFlow installed) this file skips itself.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

def _tensorflow_installed():
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except ModuleNotFoundError:
        return False


if _tensorflow_installed():
    if os.environ.get("KDG_WITHOUT_TENSORFLOW") == "1":
        raise RuntimeError("KDG_WITHOUT_TENSORFLOW=1 but TensorFlow is installed here: this "
                           "session's virtualenv must not have it (nox -s tests-notf)")
    pytest.skip("TensorFlow is installed: these tests run in nox's tests-notf session",
                allow_module_level=True)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kdg  # noqa: E402
from kdg import tf_data  # noqa: E402

BACKEND = keras.backend.backend()


def test_tensorflow_is_not_installed_and_the_backend_is_not_tensorflow():
    with pytest.raises(ModuleNotFoundError):
        import tensorflow  # noqa: F401
    assert BACKEND in ("jax", "torch")
    assert "tensorflow" not in sys.modules


@pytest.mark.parametrize("name", sorted(__import__("kdg.algorithms").algorithms.ALGORITHMS))
def test_every_algorithm_trains_from_arrays(name):
    """model.fit on NumPy arrays (one training batch of D domains x B) with
    each algorithm, as kdg bench builds it (DomainBed's MLP; MixStyle, which
    needs feature maps and whose bench model is a keras-hub ResNet, on a small
    CNN with a kdg.layers.MixStyle): two steps ran, the loss is finite and
    the weights move."""
    from kdg import layout
    from kdg.bench import measure, run, suite

    if name == "mixstyle":
        inputs = keras.Input((8, 8, 3))
        from kdg.layers import MixStyle

        hidden = MixStyle(p=1.0, seed=0)(keras.layers.Conv2D(4, 3)(inputs))
        outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(hidden))
        model = kdg.DGModel(inputs, outputs, algorithm=kdg.algorithms.MixStyle(),
                            num_domains=3, seed=0)
        model.compile(optimizer="adam",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        config = {"domains": 3, "batch": 4, "image_size": 8, "channels": 3,
                  "num_classes": 3, "seed": 0}
    else:
        config = suite.scenario("mlp", quick=True, algorithms=[name])
        model = run.build_model(config, run.make_algorithm(name, config))
    x, y = measure.make_batch(config["domains"], config["batch"], config["image_size"],
                              config["channels"], config["num_classes"], config["seed"])
    x, y = layout.interleave_domains((x, y))
    before = [np.array(w) for w in model.get_weights()]
    history = model.fit(x, y, batch_size=len(x), epochs=2, verbose=0, shuffle=False)
    assert all(math.isfinite(v) for v in history.history["loss"])
    assert int(keras.ops.convert_to_numpy(model.dg_step)) == 2
    if name != "sandmask":  # its mask may zero every gradient of the first steps
        assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert isinstance(model, kdg.DGModel)


def _kdg(*args, cwd=REPO):
    env = dict(os.environ, KERAS_BACKEND=BACKEND)
    return subprocess.run([sys.executable, "-m", "kdg.cli", *args], env=env, cwd=cwd,
                          text=True, capture_output=True, timeout=600)


def test_kdg_bench_on_synthetic_data(tmp_path):
    out = tmp_path / "bench.json"
    result = _kdg("bench", "--quick", "--model", "mlp", "--backend", BACKEND,
                  "--algorithm", "erm", "--algorithm", "fish", "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    (entry,) = json.loads(out.read_text())["scenarios"]
    run = entry["runs"][BACKEND]
    assert "error" not in run and "tensorflow" not in run["versions"]
    for name in ("erm", "fish"):
        assert run["algorithms"][name]["finite"] and run["algorithms"][name]["median_s"] > 0
        assert run["algorithms"][name]["memory_device"] == "host"


def test_features_that_need_tensorflow_say_which_extra_to_install(tmp_path):
    x, y = np.zeros((4, 3), "float32"), np.zeros(4, "int32")
    with pytest.raises(tf_data.TensorFlowMissing, match=r'pip install "kdg\[tensorflow\]"'):
        next(iter(kdg.data.domain_batches([(x, y), (x, y)], batch_size=2)))
    with pytest.raises(tf_data.TensorFlowMissing, match=r"keras-hub.*kdg\[tensorflow\]"):
        kdg.models.build("resnet18", 3, (32, 32, 3), pretrained=False)
    result = _kdg("train", str(REPO / "recipes" / "quickstart.yaml"), "--quiet",
                  "--set", f"output_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert 'pip install "kdg[tensorflow]"' in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("error:") == 1
