"""Data-parallel training on several devices (JAX), through Keras' own
`keras.distribution.DataParallel`: every algorithm gives the same weights on
4 virtual CPU devices as on one, for the same global batch.

The 4-device run is this file run as a script in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=4 (the flag must be set
before JAX starts); the one-device run is the same function in this process.
D = 3 domains on 4 devices: the training batch's 24 examples are laid out
domain-minor (kdg.layout), so each device's 6 hold 2 of every domain.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

if __name__ != "__main__":
    from conftest import BACKEND

    pytestmark = pytest.mark.skipif(BACKEND != "jax",
                                    reason="multi-device training is JAX-only")

DEVICES = 4
ALGORITHMS = ("erm", "fish", "corgrad", "ggal", "gga", "gga_fish")


def make_algorithm(name):
    from kdg.algorithms import ERM, GGA, GGAL, CorGrad, Fish

    return {
        "erm": lambda: ERM(),
        "fish": lambda: Fish(meta_lr=0.5),
        "corgrad": lambda: CorGrad(n_parts=3),
        "ggal": lambda: GGAL(gamma=0.05),
        "gga": lambda: GGA(start_step=1, end_step=3, trials=4, rho=0.01),
        "gga_fish": lambda: GGA(base=Fish(), start_step=0, end_step=2, trials=3, rho=0.01),
    }[name]()


def data():
    """Per-domain data: x (3, 8, 6, 6, 2), y (3, 8)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 8, 6, 6, 2)) + rng.normal(scale=2.0, size=(3, 1, 1, 1, 2))
    y = rng.integers(0, 4, size=(3, 8))
    return x.astype("float32"), y.astype("int32")


def train(name, devices):
    """Train `name` a few steps (train_on_batch, then fit) from fixed weights;
    return the weights, the last logs, evaluate/predict results and what
    was sharded how."""
    import keras

    import kdg
    import kdg.distribution

    distribution = kdg.distribution.configure(devices)
    layouts = []
    if distribution is not None:
        assert type(distribution) is keras.distribution.DataParallel  # Keras' own
        get_layout = distribution.get_data_layout

        def logged(shape):
            layout = get_layout(shape)
            layouts.append([list(shape), list(layout.axes)])
            return layout

        distribution.get_data_layout = logged
    try:
        rng = np.random.default_rng(1)
        inputs = keras.Input((6, 6, 2))
        # no bias: before a training-mode BatchNorm its gradient is rounding noise
        h = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
        h = keras.layers.BatchNormalization(name="bn")(h)  # in training mode
        h = keras.layers.ReLU()(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
        h = keras.layers.Dense(5, activation="tanh", name="features")(h)
        outputs = keras.layers.Dense(4, name="head")(h)
        model = kdg.DGModel(inputs, outputs, algorithm=make_algorithm(name), seed=3,
                            num_domains=3)
        model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                           if w.ndim > 1 else w for w in model.get_weights()])
        model.compile(optimizer=keras.optimizers.Adam(0.01),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        x, y = data()
        train_x, train_y = kdg.layout.interleave_domains((x, y))
        logs = {}
        for _ in range(3):
            logs = model.train_on_batch(train_x, train_y, return_dict=True)
        flat_x = x.reshape((-1,) + x.shape[2:])
        # validation inside fit: ordinary batches while fitting
        history = model.fit(((train_x, train_y) for _ in range(2)), steps_per_epoch=2,
                            epochs=1, shuffle=False,
                            validation_data=(flat_x, y.reshape(-1)), verbose=0)
        evaluated = model.evaluate(flat_x, y.reshape(-1), batch_size=12, verbose=0,
                                   return_dict=True)
        predicted = model.predict(flat_x, batch_size=12, verbose=0)
        shardings = sorted({len(v.value.sharding.device_set) for v in model.variables})
        return {
            "weights": [w.tolist() for w in model.get_weights()],
            "logs": {k: float(v) for k, v in logs.items()},
            "fit_loss": float(history.history["loss"][-1]),
            "evaluate": {k: float(v) for k, v in evaluated.items()},
            "predict": predicted.tolist(),
            "layouts": layouts,
            "variable_devices": shardings,
        }
    finally:
        keras.distribution.set_distribution(None)


@pytest.fixture(scope="module")
def on_four_devices():
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES}")
    proc = subprocess.run([sys.executable, str(Path(__file__)), *ALGORITHMS], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ALGORITHMS)
def test_same_weights_on_four_devices_as_on_one(on_four_devices, name):
    there = on_four_devices[name]
    here = train(name, None)
    assert there["variable_devices"] == [DEVICES]
    for a, b in zip(here["weights"], there["weights"]):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-5, atol=1e-5,
                                   err_msg=f"{name}: 4 devices vs 1")
    for key, value in here["logs"].items():
        np.testing.assert_allclose(there["logs"][key], value, rtol=1e-5, atol=1e-5,
                                   err_msg=f"{name}: {key}")
    np.testing.assert_allclose(there["fit_loss"], here["fit_loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(there["evaluate"]["loss"], here["evaluate"]["loss"],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(there["predict"]), np.array(here["predict"]),
                               rtol=1e-5, atol=1e-5)
    if name in ("gga", "gga_fish"):
        # the search accepted points, so the comparison covers the acceptance
        assert there["logs"]["gga_accepted"] > 0


def test_training_batches_are_sharded_along_the_examples(on_four_devices):
    import kdg.layout

    layouts = on_four_devices["erm"]["layouts"]
    training = [axes for shape, axes in layouts if shape[0] == 24]  # 3 domains x 8
    evaluation = [axes for shape, axes in layouts if shape[0] == 12]
    assert training and evaluation
    # Keras' DataParallel: every batch along its first axis, as for any model
    assert all(axes[0] == "batch" and set(axes[1:]) <= {None}
               for axes in training + evaluation)
    # ... which, in kdg's layout, gives each device 2 examples of every domain
    domain_of = kdg.layout.interleave_domains(np.repeat(np.arange(3)[:, None], 8, axis=1))
    for part in np.split(domain_of, DEVICES):
        assert sorted(part.tolist()) == [0, 0, 1, 1, 2, 2]


def test_configure_rules():
    import keras

    import kdg.distribution

    assert kdg.distribution.configure(None) is None
    assert kdg.distribution.configure(1) is None
    assert keras.distribution.distribution() is None
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count"):
        kdg.distribution.configure(len(keras.distribution.list_devices()) + 1)
    with pytest.raises(ValueError, match="Unknown device"):
        kdg.distribution.configure(["cpu:0", "tpu:9"])


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    print(json.dumps({name: train(name, DEVICES) for name in sys.argv[1:]}))
