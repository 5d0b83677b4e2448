"""Models from kdg.models.build train with kdg.DGModel on kdg's training batches;
with freeze_bn=True BatchNorm's moving statistics stay as loaded while gamma
and beta train."""

import keras
import keras_hub
import numpy as np
import pytest

import kdg
import kdg.models


@pytest.fixture(scope="module")
def tiny_preset(tmp_path_factory):
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 8], stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2], block_type="basic_block")
    rng = np.random.default_rng(0)
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, size=layer.moving_variance.shape))
    path = tmp_path_factory.mktemp("presets") / "tiny_resnet"
    backbone.save_to_preset(str(path))
    return str(path)


def batch(shape, num_domains=2, per_domain=4, classes=3, seed=0):
    """One training batch of `num_domains` domains (kdg.layout's order)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_domains, per_domain) + shape).astype("float32")
    y = rng.integers(0, classes, size=(num_domains, per_domain)).astype("int32")
    return kdg.layout.interleave_domains((x, y))


def bn_layers(model):
    return [l for l in model._flatten_layers(include_self=False)
            if isinstance(l, keras.layers.BatchNormalization)]


def snapshot(variables):
    return [keras.ops.convert_to_numpy(v).copy() for v in variables]


def train_one_step(model, x, y, num_domains=2):
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.num_domains = num_domains
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"])


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_freeze_bn_keeps_moving_statistics(tiny_preset, freeze_bn):
    model = kdg.models.build(tiny_preset, 3, (16, 16, 3), dropout=0.1, seed=0,
                             freeze_bn=freeze_bn)
    bns = bn_layers(model)
    assert len(bns) == 6
    stats = [v for l in bns for v in (l.moving_mean, l.moving_variance)]
    gammas = [l.gamma for l in bns]
    stats_before, gammas_before = snapshot(stats), snapshot(gammas)
    kernel_before = snapshot([model.get_layer("classifier").kernel])

    train_one_step(model, *batch((16, 16, 3)))

    stats_after = snapshot(stats)
    moved = [not np.array_equal(a, b) for a, b in zip(stats_before, stats_after)]
    if freeze_bn:
        assert not any(moved)
    else:  # the test can tell: unfrozen BatchNorm does update them
        assert all(moved)
    # gamma (and everything else) trains either way
    assert all(not np.array_equal(a, b) for a, b in zip(gammas_before, snapshot(gammas)))
    assert not np.array_equal(kernel_before[0],
                              keras.ops.convert_to_numpy(model.get_layer("classifier").kernel))


def test_mnist_cnn_trains_one_step():
    model = kdg.models.build("mnist_cnn", 2, (14, 14, 2), algorithm="fish", seed=0)
    before = snapshot(model.trainable_variables)
    train_one_step(model, *batch((14, 14, 2), num_domains=3, classes=2), num_domains=3)
    after = snapshot(model.trainable_variables)
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))


def test_saved_model_loads_back(tiny_preset, tmp_path):
    """A built model (keras-hub backbone inside) round-trips through .keras."""
    model = kdg.models.build(tiny_preset, 3, (16, 16, 3), algorithm="fish", dropout=0.1, seed=1)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, kdg.DGModel) and loaded.freeze_bn is True
    assert type(loaded.algorithm).__name__ == "Fish"
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)),
                               keras.ops.convert_to_numpy(model(x)), rtol=1e-6, atol=1e-6)
