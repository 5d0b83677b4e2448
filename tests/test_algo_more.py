"""Issue 17's MixStyle (kdg.layers.MixStyle, the ResNet option and the
algorithm), MTL, SagNet and ARM, each against an independent NumPy
reference written here from the rule."""

import keras
import numpy as np
import pytest
from conftest import train_on_domains, train_steps

import kdg
import kdg.layers
import kdg.models
from kdg import backend
from kdg.algorithms import GGA

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


train = train_steps  # per-domain data: x (D, B, ...), y (D, B)


def np_(t):
    return keras.ops.convert_to_numpy(t)


# -- MixStyle ------------------------------------------------------------------


def mixstyle_reference(x, lam, perm, eps):
    """MixStyle on channels-last x (B, H, W, C), written from the paper."""
    mu = x.mean(axis=(1, 2), keepdims=True)
    sig = np.sqrt(x.var(axis=(1, 2), ddof=1, keepdims=True) + eps)
    lam = lam.reshape(-1, 1, 1, 1)
    mu_mix = lam * mu + (1 - lam) * mu[perm]
    sig_mix = lam * sig + (1 - lam) * sig[perm]
    return (x - mu) / sig * sig_mix + mu_mix, sig_mix / sig


def feature_map(seed=0, shape=(6, 4, 3, 5)):
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.5, 3.0, size=(shape[0], 1, 1, shape[-1]))
    shift = rng.normal(scale=2.0, size=(shape[0], 1, 1, shape[-1]))
    return (rng.normal(size=shape) * scale + shift).astype("float32")


def test_mixstyle_layer_matches_reference_with_its_own_draws():
    """Training calls mix as the reference does with the weights and
    permutation a twin layer (same seed) draws; p=0.5 mixes some calls and
    not others."""
    x = feature_map()
    layer = kdg.layers.MixStyle(p=0.5, alpha=0.3, eps=1e-6, seed=2)
    twin = kdg.layers.MixStyle(p=0.5, alpha=0.3, eps=1e-6, seed=2)
    mixed = set()
    for _ in range(6):
        out = np_(layer(x, training=True))
        mix, lam, perm = (np_(t) for t in twin.draw(x.shape[0]))
        assert sorted(perm.tolist()) == list(range(x.shape[0]))
        assert np.all((lam > 0) & (lam < 1))
        expected = mixstyle_reference(x, lam, perm, 1e-6)[0] if mix else x
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
        mixed.add(bool(mix))
    assert mixed == {True, False}


def test_mixstyle_gradient_holds_statistics_constant():
    """d(sum(w * out))/dx = w * sig_mix / sig: the statistics are detached."""
    x = feature_map(1)
    w = np.random.default_rng(2).normal(size=x.shape).astype("float32")
    layer = kdg.layers.MixStyle(p=1.0, alpha=0.3, seed=3)
    twin = kdg.layers.MixStyle(p=1.0, alpha=0.3, seed=3)

    def fn(params):
        out = layer(params[0], training=True)
        return keras.ops.sum(out * keras.ops.convert_to_tensor(w)), out

    (_, out), grads = backend.value_and_grad(fn)([keras.ops.convert_to_tensor(x)])
    _, lam, perm = (np_(t) for t in twin.draw(x.shape[0]))
    expected, ratio = mixstyle_reference(x, lam, perm, 1e-6)
    np.testing.assert_allclose(np_(out), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np_(grads[0]), w * ratio, rtol=1e-4, atol=1e-5)


def test_mixstyle_inactive_in_inference_and_serializable():
    x = feature_map(2)
    layer = kdg.layers.MixStyle(p=1.0, alpha=0.2, eps=1e-5, seed=1)
    np.testing.assert_array_equal(np_(layer(x)), x)
    np.testing.assert_array_equal(np_(layer(x, training=False)), x)
    again = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(again, kdg.layers.MixStyle)
    assert (again.p, again.alpha, again.eps, again.seed) == (1.0, 0.2, 1e-5, 1)
    with pytest.raises(ValueError, match="p must be a probability"):
        kdg.layers.MixStyle(p=1.5)


def mixstyle_net(algorithm, seed=5, lr=0.1):
    """x (3, 3, 2) -> 1x1 projection A -> MixStyle(p=1) -> ReLU -> spatial
    mean -> Dense head (W, b), fixed initial weights."""
    rng = np.random.default_rng(0)
    inputs = keras.Input((3, 3, 2))
    h = keras.layers.Dense(4, use_bias=False, name="proj")(inputs)
    h = kdg.layers.MixStyle(p=1.0, alpha=0.3, seed=seed, name="ms")(h)
    h = keras.layers.ReLU()(h)
    f = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(3, name="head")(f)
    model = kdg.DGModel(inputs, outputs, algorithm=algorithm, seed=0)
    model.set_weights([rng.normal(scale=0.7, size=w.shape).astype("float32")
                       for w in model.get_weights()])
    model.compile(optimizer=keras.optimizers.SGD(lr), loss=LOSS)
    return model


def mixstyle_net_step(weights, x, y, lam, perm, lr=0.1):
    """One SGD step of the mean cross-entropy of mixstyle_net, gradients in
    closed form (mu and sig constant)."""
    A, W, b = (w.astype(np.float64) for w in weights)
    x = x.reshape((-1,) + x.shape[2:]).astype(np.float64)
    y = y.reshape(-1)
    h = x @ A
    out, ratio = mixstyle_reference(h, lam.astype(np.float64), perm, 1e-6)
    r = np.maximum(out, 0)
    f = r.mean(axis=(1, 2))
    logits = f @ W + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    loss = -np.log(p[np.arange(len(y)), y]).mean()
    g = (p - np.eye(W.shape[1])[y]) / len(y)
    dW, db = f.T @ g, g.sum(0)
    dr = np.broadcast_to((g @ W.T)[:, None, None, :] / (h.shape[1] * h.shape[2]), h.shape)
    dh = dr * (out > 0) * ratio
    dA = np.einsum("bhwi,bhwj->ij", x, dh)
    return [A - lr * dA, W - lr * dW, b - lr * db], loss


def mixstyle_data():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 4, 3, 3, 2)) * rng.uniform(0.5, 2, size=(2, 4, 1, 1, 2))
    return x.astype("float32"), rng.integers(0, 3, size=(2, 4)).astype("int32")


def test_mixstyle_algorithm_three_steps_match_reference():
    x, y = mixstyle_data()
    model = mixstyle_net(kdg.algorithms.MixStyle())
    twin = kdg.layers.MixStyle(p=1.0, alpha=0.3, seed=5)
    expected = model.get_weights()
    for _ in range(3):
        logs = train(model, x, y, 1)
        _, lam, perm = (np_(t) for t in twin.draw(8))
        expected, loss = mixstyle_net_step(expected, x, y, lam, perm)
        np.testing.assert_allclose(logs["loss"], loss, rtol=1e-4)
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # evaluation runs the plain network: no mixing
    plain = keras.Model(model.inputs, model.outputs)
    np.testing.assert_allclose(np_(model.predict(x[0], verbose=0)),
                               np_(plain(x[0], training=False)), rtol=1e-5, atol=1e-6)


def test_gga_wraps_mixstyle():
    """Step 0 is outside GGA's window (1..1): exactly MixStyle's step; in the
    window the search runs (rho so small that no trial moves the weights),
    then MixStyle's step."""
    x, y = mixstyle_data()
    plain = mixstyle_net(kdg.algorithms.MixStyle())
    gga = mixstyle_net(GGA(base="mixstyle", start_step=1, end_step=1, trials=2, rho=1e-30))
    for step in range(2):
        logs = [train(model, x, y, 1) for model in (plain, gga)][1]
        assert np.isfinite(logs["gga_cos_before"]) == (step == 1)  # the search ran
        for a, b in zip(plain.get_weights(), gga.get_weights()):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_mixstyle_needs_mixstyle_layers_and_resnet_option():
    model = kdg.models.build("mlp", 3, (4,), algorithm="mixstyle", mlp_width=8, seed=0)
    model.compile(optimizer="sgd", loss=LOSS)
    with pytest.raises(ValueError, match="mixstyle_layers"):
        train_on_domains(model, np.zeros((2, 2, 4), "float32"), np.zeros((2, 2), "int32"))
    net = kdg.models.build("resnet18", 3, (32, 32, 3), pretrained=False,
                           mixstyle_layers=[1, 2, 3], seed=0)
    inner = net.get_layer("backbone")
    names = [layer.name for layer in inner.layers]
    for stage in (1, 2, 3):  # right after the last block of stages 1-3
        i = names.index(f"mixstyle{stage}")
        assert names[i - 1] == f"stack{stage - 1}_block1_out"
    assert "mixstyle4" not in names and len(names) == 72 + 3  # ResNet-18's 72 layers
    with pytest.raises(ValueError, match="mixstyle_layers must list"):
        kdg.models.build("resnet18", 3, (32, 32, 3), pretrained=False, mixstyle_layers=[5])


def test_a_model_with_mixstyle_is_batch_dependent():
    assert mixstyle_net(kdg.algorithms.MixStyle())._dg_batch_dependent()


def test_recipe_asks_for_mixstyle_layers():
    from pathlib import Path

    from kdg import recipes

    path = Path(__file__).resolve().parents[1] / "recipes" / "erm_pacs.yaml"
    recipe = recipes.load_recipe(path, ["algorithm={name: mixstyle}",
                                        "model.mixstyle_layers=[1, 2, 3]"])
    assert recipe.model.mixstyle_layers == [1, 2, 3]
    with pytest.raises(recipes.RecipeError, match=r"model\.mixstyle_layers: only the resnet18"):
        recipes.load_recipe(path, ["model.mixstyle_layers=[1]", "model.backbone=mlp"])
    with pytest.raises(recipes.RecipeError, match=r"model\.mixstyle_layers: distinct ResNet"):
        recipes.load_recipe(path, ["model.mixstyle_layers=[1, 5]"])


def test_mixstyle_model_round_trips_through_save(tmp_path):
    x, y = mixstyle_data()
    model = mixstyle_net(kdg.algorithms.MixStyle())
    train(model, x, y, 1)
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(again.algorithm, kdg.algorithms.MixStyle)
    layer = again.get_layer("ms")
    assert isinstance(layer, kdg.layers.MixStyle) and (layer.p, layer.alpha) == (1.0, 0.3)
    np.testing.assert_allclose(np_(again.predict(x[1], verbose=0)),
                               np_(model.predict(x[1], verbose=0)), rtol=1e-6)
