"""The contract between kdg and Keras (and JAX): the model's own loss tracker,
BatchNorm frozen as DomainBed freezes it, the tested version ranges, and the
list of Keras and JAX internals that kdg still uses, kept true here."""

import ast
import importlib.metadata
import inspect
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import domain_batch, softmax_regression, train_on_domains
from packaging.requirements import Requirement

import kdg
import reference as ref
from kdg.algorithms import ERM

REPO = Path(__file__).resolve().parents[1]
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


# -- the loss tracker ------------------------------------------------------------------

def test_the_loss_in_the_logs_is_the_models_own_tracker(data, params):
    x, y = data
    model = softmax_regression(ERM(), params, num_domains=3)  # SGD(0.1)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS, metrics=["accuracy"])
    assert model.metrics[0] is model.dg_loss_tracker
    assert [m.name for m in model.metrics].count("loss") == 1

    losses, p = [], params
    for _ in range(2):
        p, loss = ref.erm_step(p, x, y, lr=0.1)
        losses.append(loss)
    history = model.fit(tf.data.Dataset.from_tensors(domain_batch(x, y)).repeat(2),
                        verbose=0).history
    # two steps of D*B examples each: the mean of the two steps' losses
    np.testing.assert_allclose(history["loss"], [np.mean(losses)], rtol=1e-5)
    assert float(model.dg_loss_tracker.count) == 2 * y.size

    model.reset_metrics()
    assert float(model.dg_loss_tracker.count) == 0

    # evaluate: ordinary batches of 10, 10 and 4 examples, each batch's mean
    # loss weighted by its size: the mean over all examples
    flat_x, flat_y = x.reshape(-1, x.shape[-1]), y.reshape(-1)
    want, _ = ref.loss_and_grads(p, flat_x, flat_y)
    got = model.evaluate(flat_x, flat_y, batch_size=10, verbose=0, return_dict=True)
    np.testing.assert_allclose(got["loss"], want, rtol=1e-5)
    listed = model.evaluate(flat_x, flat_y, batch_size=10, verbose=0)
    assert len(listed) == 2  # [loss, accuracy]: one loss
    np.testing.assert_allclose(listed[0], want, rtol=1e-5)

    logs = train_on_domains(softmax_regression(ERM(), params), x, y, return_dict=True)
    np.testing.assert_allclose(logs["loss"], losses[0], rtol=1e-5)


# -- BatchNorm frozen: inference mode, gamma and beta trained -----------------------------

def _frozen_bn_reference(weights, x, y, lr, eps, steps):
    """SGD on softmax(BN_inference(x W1 + b1) W2 + b2) with BatchNorm's moving
    statistics fixed, gamma and beta trained; closed-form gradients."""
    w1, b1, gamma, beta, mean, var, w2, b2 = [np.array(w, "float64") for w in weights]
    x, y = x.reshape(-1, x.shape[-1]).astype("float64"), y.reshape(-1)
    scale = np.sqrt(var + eps)
    for _ in range(steps):
        normed = (x @ w1 + b1 - mean) / scale
        a = normed * gamma + beta
        p = ref.softmax(a @ w2 + b2)
        dz = p.copy()
        dz[np.arange(len(y)), y] -= 1.0
        dz /= len(y)
        da = dz @ w2.T
        dh = da * gamma / scale
        grads = [x.T @ dh, dh.sum(0), (da * normed).sum(0), da.sum(0), a.T @ dz, dz.sum(0)]
        w1, b1, gamma, beta, w2, b2 = [v - lr * g for v, g in
                                       zip((w1, b1, gamma, beta, w2, b2), grads)]
    return [w1, b1, gamma, beta, mean, var, w2, b2]


def test_frozen_batchnorm_trains_like_inference_mode_batchnorm_with_gamma_and_beta():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 6, 4)).astype("float32")
    y = rng.integers(0, 3, size=(2, 6)).astype("int32")
    inputs = keras.Input((4,))
    h = keras.layers.Dense(5, name="dense")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    outputs = keras.layers.Dense(3, name="head")(h)
    model = kdg.DGModel(inputs, outputs, algorithm="erm", freeze_bn=True, seed=0)
    weights = [rng.normal(scale=0.5, size=(4, 5)), rng.normal(scale=0.1, size=5),
               rng.uniform(0.5, 1.5, size=5), rng.normal(scale=0.1, size=5),
               rng.normal(size=5), rng.uniform(0.5, 2.0, size=5),
               rng.normal(scale=0.5, size=(5, 3)), rng.normal(scale=0.1, size=3)]
    model.set_weights([w.astype("float32") for w in weights])
    model.compile(optimizer=keras.optimizers.SGD(0.2), loss=LOSS)
    for _ in range(3):
        train_on_domains(model, x, y)
    bn = model.get_layer("bn")
    want = _frozen_bn_reference(weights, x, y, lr=0.2, eps=bn.epsilon, steps=3)
    got = (model.get_layer("dense").get_weights() + bn.get_weights()
           + model.get_layer("head").get_weights())
    for name, g, w in zip(["W1", "b1", "gamma", "beta", "moving_mean", "moving_variance",
                           "W2", "b2"], got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=name)


def test_batchnorm_call_takes_what_the_frozen_call_passes():
    # kdg's frozen call forwards (inputs, training=False, mask) to the layer's
    # own call: a new argument here would be dropped silently.
    params = list(inspect.signature(keras.layers.BatchNormalization.call).parameters)
    assert params == ["self", "inputs", "training", "mask"]


# -- versions ----------------------------------------------------------------------------

def test_installed_keras_and_jax_are_inside_the_tested_bounds():
    tomllib = pytest.importorskip("tomllib", reason="reads pyproject.toml with Python >= 3.11")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {Requirement(r).name: Requirement(r) for r in
                project["dependencies"] + project["optional-dependencies"]["jax"]}
    checked = []
    for name in ("keras", "jax"):
        requirement = declared[name]
        assert any(s.operator == "<" for s in requirement.specifier), \
            f"{requirement}: no upper bound at the next untested minor version"
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # jax is an extra
        assert requirement.specifier.contains(installed, prereleases=True), (
            f"{name} {installed} is installed, outside the tested {requirement}: run the "
            "suite on it and move the bound in pyproject.toml, or install a tested one")
        checked.append(name)
    assert "keras" in checked


# -- Keras and JAX internals used by kdg ---------------------------------------------------

#: every place kdg/ uses a Keras or JAX internal, with why it is still there.
#: The scan below finds: imports of private modules (keras.src, jax.extend, ...),
#: `obj._name` (and getattr(obj, "_name")) for a name kdg does not define
#: itself, `super()._name` (a private method kdg overrides), and a Layer
#: method replaced on an instance. Remove an entry when its use goes.
TOUCHPOINTS = {
    ("kdg/dg_model.py", "keras.src.models.functional"):
        "Functional and functional_from_config: FunctionalDGModel is a functional model",
    ("kdg/dg_model.py", "._flatten_layers"):
        "every nested layer (BatchNorm inside keras-hub blocks); Keras has no public walk",
    ("kdg/dg_model.py", "layer.call ="):
        "freeze_bn: BatchNorm's call with training=False (see _freeze_batchnorm)",
    ("kdg/algorithms/base.py", "._losses_override"):
        "stateless_call's layer losses handed to stateless_compute_loss, as Keras' JAX trainer does",
    ("kdg/backend/jax_conv.py", "jax.extend"): "jaxpr rewriting: XLA:CPU's fast convolution layout",
    ("kdg/backend/jax_conv.py", "jax.extend.core"): "the same",
}

PRIVATE_MODULES = ("keras.src", "jax.extend", "jax._src", "jax.interpreters",
                   "tensorflow.python", "tf.__internal__")


def _dotted(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id] + parts[::-1]) if isinstance(node, ast.Name) else None


def _private(name):
    return isinstance(name, str) and name.startswith("_") and not name.startswith("__")


def _own_names(trees):
    """Names kdg defines: functions, classes, module names, attributes set on
    self or cls (also with object.__setattr__)."""
    own = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                  and _dotted(node.value) in ("self", "cls")):
                own.add(node.attr)
            elif (isinstance(node, ast.Call) and _dotted(node.func) == "object.__setattr__"
                  and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)):
                own.add(node.args[1].value)
    return own


def keras_and_jax_touchpoints(root=REPO / "kdg"):
    trees = {path.relative_to(root.parent).as_posix(): ast.parse(path.read_text())
             for path in sorted(root.rglob("*.py"))}
    own = _own_names(trees)
    layer_methods = {name for name, _ in inspect.getmembers(keras.layers.Layer, callable)}
    found = set()
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                           else [node.module or ""])
                found |= {(path, m) for m in modules if m.startswith(PRIVATE_MODULES)}
            elif (isinstance(node, ast.Call) and _dotted(node.func) in ("getattr", "hasattr")
                  and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)
                  and _private(node.args[1].value) and node.args[1].value not in own):
                found.add((path, "." + node.args[1].value))
            elif isinstance(node, ast.Attribute):
                name = _dotted(node)
                via_super = isinstance(node.value, ast.Call) and _dotted(node.value.func) == "super"
                if name and name.startswith(PRIVATE_MODULES):
                    found.add((path, name))
                elif _private(node.attr) and (via_super or node.attr not in own):
                    found.add((path, ("super()." if via_super else ".") + node.attr))
                elif (isinstance(node.ctx, ast.Store) and node.attr in layer_methods
                      and _dotted(node.value) not in ("self", "cls")):
                    found.add((path, ast.unparse(node) + " ="))
    return found


def test_the_list_of_keras_and_jax_internals_used_is_complete_and_true():
    found = keras_and_jax_touchpoints()
    new = sorted(found - set(TOUCHPOINTS))
    gone = sorted(set(TOUCHPOINTS) - found)
    assert not new, f"new uses of Keras/JAX internals, add them to TOUCHPOINTS with why: {new}"
    assert not gone, f"no longer used, remove them from TOUCHPOINTS: {gone}"


def test_the_scan_finds_each_kind_of_touchpoint(tmp_path):
    package = tmp_path / "kdg"
    package.mkdir()
    (package / "m.py").write_text(
        "from keras.src.layers import Layer\n"
        "import jax.extend.core\n"
        "class Mine(Layer):\n"
        "    def __init__(self):\n"
        "        self._own = 1\n"
        "    def _symbolic_build(self):\n"
        "        return super()._symbolic_build(), self._own, self._tracker\n"
        "def patch(layer, model):\n"
        "    layer.call = len\n"
        "    return getattr(model, '_loss_tracker', None), layer.trainable\n")
    found = {what for _, what in keras_and_jax_touchpoints(package)}
    assert found == {"keras.src.layers", "jax.extend.core", "super()._symbolic_build",
                     "._tracker", "._loss_tracker", "layer.call ="}
