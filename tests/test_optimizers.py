"""kdg.optimizers.TorchAdam / TorchAdamW: PyTorch's Adam and AdamW updates,
checked against a NumPy transcription of PyTorch's rule written here and
against torch.optim itself, on every backend."""

import math
import pathlib
import types

import keras
import numpy as np
import pytest
import torch
from conftest import BACKEND, domain_batch, init_params, make_data

import kdg
from kdg import optimizers, recipes, training

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def torch_rule(params, grads_per_step, lr, beta_1=0.9, beta_2=0.999, eps=1e-8,
               amsgrad=False, l2=0.0, decoupled=0.0):
    """PyTorch's Adam/AdamW (torch/optim/adam.py, single-tensor path), in float64:
    decoupled decay, L2 into the gradient, moments, epsilon after the bias
    correction of the second moment."""
    p = [np.asarray(x, np.float64) for x in params]
    m = [np.zeros_like(x) for x in p]
    v = [np.zeros_like(x) for x in p]
    v_max = [np.zeros_like(x) for x in p]
    for t, grads in enumerate(grads_per_step, start=1):
        for k, g in enumerate(grads):
            g = np.asarray(g, np.float64) + l2 * p[k]
            p[k] = p[k] * (1 - lr * decoupled)
            m[k] = beta_1 * m[k] + (1 - beta_1) * g
            v[k] = beta_2 * v[k] + (1 - beta_2) * g * g
            v_max[k] = np.maximum(v_max[k], v[k])
            second = v_max[k] if amsgrad else v[k]
            denom = np.sqrt(second) / math.sqrt(1 - beta_2**t) + eps
            p[k] = p[k] - lr / (1 - beta_1**t) * m[k] / denom
    return p


def apply_steps(optimizer, params, grads_per_step):
    variables = [keras.Variable(p) for p in params]
    for grads in grads_per_step:
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
    return [keras.ops.convert_to_numpy(v) for v in variables]


def small_gradients(steps=4, seed=0):
    """Gradients whose magnitudes span 1e-8..1: where epsilon matters and where not."""
    rng = np.random.default_rng(seed)
    scale = np.array([1e-8, 1e-7, 1e-6, 1e-3, 1.0], np.float32)
    return [[(rng.normal(size=(3, 5)) * scale).astype("float32"),
             (rng.normal(size=(5,)) * scale).astype("float32")] for _ in range(steps)]


@pytest.mark.parametrize("amsgrad", [False, True])
def test_torch_adam_is_pytorchs_update(amsgrad):
    params = [np.full((3, 5), 0.5, np.float32), np.zeros(5, np.float32)]
    grads = small_gradients()
    if amsgrad:  # a shrinking gradient makes the running maximum differ from v
        grads = grads + [[g * 1e-3 for g in grads[-1]]] * 2
    got = apply_steps(optimizers.TorchAdam(1e-3, amsgrad=amsgrad), params, grads)
    want = torch_rule(params, grads, 1e-3, amsgrad=amsgrad)
    for g, w, p in zip(got, want, params):
        np.testing.assert_allclose(g - p, w - p, rtol=2e-3, atol=1e-9)
    # Keras' Adam with the same epsilon takes other steps: the check can tell.
    keras_adam = apply_steps(keras.optimizers.Adam(1e-3, epsilon=1e-8, amsgrad=amsgrad),
                             params, grads)
    assert not np.allclose(keras_adam[0] - params[0], want[0] - params[0], rtol=0.1, atol=0)


def test_torch_adamw_is_pytorchs_update():
    params = [np.full((3, 5), 0.5, np.float32), np.linspace(-1, 1, 5).astype("float32")]
    grads = small_gradients(seed=1)
    got = apply_steps(optimizers.TorchAdamW(1e-2, weight_decay=0.1), params, grads)
    want = torch_rule(params, grads, 1e-2, decoupled=0.1)
    for g, w, p in zip(got, want, params):
        np.testing.assert_allclose(g - p, w - p, rtol=2e-3, atol=1e-9)


def regression_model(optimizer, params, l2=0.0):
    inputs = keras.Input((params[0].shape[0],))
    outputs = keras.layers.Dense(params[0].shape[1], name="head")(inputs)
    model = kdg.DGModel(inputs, outputs, algorithm="erm", l2_weight_decay=l2, seed=0,
                        num_domains=3)
    model.get_layer("head").set_weights(params)
    model.compile(optimizer=optimizer, loss=LOSS)
    return model


def torch_optim_run(params, x, y, steps, make_optimizer):
    """ERM with torch.optim itself: logits = x W + b on all domains' examples."""
    w = torch.tensor(params[0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor(params[1], dtype=torch.float64, requires_grad=True)
    opt = make_optimizer([w, b])
    xs = torch.tensor(x.reshape(-1, x.shape[-1]), dtype=torch.float64)
    ys = torch.tensor(y.reshape(-1), dtype=torch.long)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(xs @ w + b, ys).backward()
        opt.step()
    return [w.detach().numpy(), b.detach().numpy()]


@pytest.mark.parametrize("kind", ["adam_l2", "adamw", "adam_amsgrad"])
def test_a_model_trains_as_with_torch_optim(kind):
    """fit() (JAX's stateless step, TensorFlow's traced step, torch's eager
    step) with TorchAdam(W) takes torch.optim's steps, weight decay included."""
    x, y = make_data()
    params = init_params()
    steps, lr, wd = 6, 0.05, 0.1
    if kind == "adam_l2":  # PyTorch's Adam weight_decay is DGModel's l2_weight_decay
        model = regression_model(optimizers.TorchAdam(lr), params, l2=wd)
        make = lambda p: torch.optim.Adam(p, lr=lr, weight_decay=wd)
    elif kind == "adamw":
        model = regression_model(optimizers.TorchAdamW(lr, weight_decay=wd), params)
        make = lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=wd)
    else:
        model = regression_model(optimizers.TorchAdam(lr, amsgrad=True), params)
        make = lambda p: torch.optim.Adam(p, lr=lr, amsgrad=True)
    model.fit((domain_batch(x, y) for _ in range(steps)), steps_per_epoch=steps, epochs=1, verbose=0)
    want = torch_optim_run(params, x, y, steps, make)
    got = model.get_layer("head").get_weights()
    for g, w, p in zip(got, want, params):
        np.testing.assert_allclose(g - p, w - p, rtol=1e-4, atol=1e-6)


def test_stateless_apply_is_apply():
    if BACKEND == "tensorflow":
        pytest.skip("Keras' TensorFlow optimizers have no stateless_apply")
    params = init_params()
    rng = np.random.default_rng(2)
    grads = [rng.normal(size=p.shape).astype("float32") for p in params]
    optimizer = optimizers.TorchAdam(0.01)
    variables = [keras.Variable(p) for p in params]
    optimizer.build(variables)
    new_values, opt_values = optimizer.stateless_apply(
        [v.value for v in optimizer.variables], grads, [v.value for v in variables]
    )
    want = apply_steps(optimizers.TorchAdam(0.01), params, [grads])
    for g, w in zip(new_values, want):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(g), w, rtol=1e-6)
    assert int(keras.ops.convert_to_numpy(opt_values[0])) == 1  # iterations


@pytest.mark.parametrize("cls", [optimizers.TorchAdam, optimizers.TorchAdamW])
def test_saved_model_resumes_with_the_same_optimizer(tmp_path, cls):
    x, y = make_data()
    model = regression_model(cls(0.05), init_params())
    model.fit((domain_batch(x, y) for _ in range(3)), steps_per_epoch=3, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.optimizer) is cls
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    for m in (model, loaded):
        m.fit((domain_batch(x, y) for _ in range(2)), steps_per_epoch=2, epochs=1, verbose=0)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


# -- recipes -----------------------------------------------------------------


def built_optimizer(tmp_path, **training_fields):
    recipe = recipes.validate({
        "dataset": {"name": "RotatedDigits"},
        "model": {"backbone": "small_cnn", "pretrained": False},
        "training": {"lr": 1e-3, **training_fields},
    })
    dataset = types.SimpleNamespace(num_classes=3, input_shape=(8, 8, 1))
    return training.build_model(recipe, dataset, num_domains=2).optimizer


@pytest.mark.parametrize("fields, cls, epsilon, decay", [
    ({}, keras.optimizers.Adam, 1e-7, None),
    ({"adam_convention": "torch"}, optimizers.TorchAdam, 1e-8, None),
    ({"adam_convention": "torch", "optimizer": "adamw"}, optimizers.TorchAdamW, 1e-8, 0.0),
    ({"adam_convention": "torch", "optimizer": "adamw", "weight_decay": 0.01,
      "weight_decay_mode": "decoupled"}, optimizers.TorchAdamW, 1e-8, 0.01),
    ({"optimizer": "adamw"}, keras.optimizers.AdamW, 1e-7, 0.0),
])
def test_the_recipe_chooses_the_convention(tmp_path, fields, cls, epsilon, decay):
    optimizer = built_optimizer(tmp_path, **fields)
    # (on torch, Keras' Adam is a backend subclass of keras.optimizers.Adam)
    assert isinstance(optimizer, cls)
    assert isinstance(optimizer, optimizers.TorchAdam) == (
        fields.get("adam_convention") == "torch")
    assert optimizer.epsilon == epsilon
    assert optimizer.weight_decay == decay  # AdamW's own 0.004 never adds to the recipe's


def test_a_wrong_convention_is_refused():
    with pytest.raises(recipes.RecipeError, match="adam_convention"):
        recipes.validate({"dataset": {"name": "RotatedDigits"},
                          "training": {"adam_convention": "pytorch"}})


def test_the_papers_recipes_use_pytorchs_adam():
    """A recipe that reproduces a paper (it states the published number)
    asks for PyTorch's Adam, as the paper ran."""
    folder = pathlib.Path(__file__).resolve().parents[1] / "recipes"
    papers = [p for p in sorted(folder.glob("*.yaml"))
              if "Published:" in p.read_text().splitlines()[0]]
    assert len(papers) >= 13
    for path in papers:
        config = recipes.read_yaml(path)
        assert config["training"].get("adam_convention") == "torch", path.name
