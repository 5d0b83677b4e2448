"""Pretrained backbones from local keras-hub presets, offline, and the error
when a preset is nowhere to be found. conftest.py sets KDG_OFFLINE=1, so no
test here touches the network."""

import os

import keras
import keras_hub
import numpy as np
import pytest

import kdg.models
from kdg.models import presets


def tiny_resnet(**kwargs):
    # keras-hub requires the first stack to have 64 filters
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 8], stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2], block_type="basic_block", **kwargs)


def values(variables):
    return [keras.ops.convert_to_numpy(v) for v in variables]


def assert_same_weights(model, saved):
    backbone = model.get_layer("backbone")
    assert [v.path for v in backbone.weights] == [v.path for v in saved.weights]
    for got, want in zip(values(backbone.weights), values(saved.weights)):
        np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    """A tiny ResNet with non-trivial BN statistics, saved as a preset."""
    backbone = tiny_resnet()
    rng = np.random.default_rng(0)
    for v in backbone.non_trainable_weights:
        v.assign(rng.uniform(0.5, 1.5, size=v.shape).astype("float32"))
    root = tmp_path_factory.mktemp("presets")
    backbone.save_to_preset(str(root / "tiny_resnet"))
    return backbone, root


def test_build_from_a_preset_folder(saved_tiny):
    backbone, root = saved_tiny
    model = kdg.models.build(str(root / "tiny_resnet"), 5, (16, 16, 3))
    assert_same_weights(model, backbone)
    assert model.name == "kdg_tiny_resnet"
    x = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype("float32")
    assert tuple(model(x).shape) == (2, 5)
    assert kdg.models.features_dim(model) == 8


def test_build_from_kdg_presets(saved_tiny, monkeypatch, tmp_path):
    backbone, root = saved_tiny
    # several folders, the preset in the second
    monkeypatch.setenv("KDG_PRESETS", os.pathsep.join([str(tmp_path), str(root)]))
    model = kdg.models.build("tiny_resnet", 5, (16, 16, 3))
    assert_same_weights(model, backbone)


def test_build_with_preset_dir(saved_tiny):
    backbone, root = saved_tiny
    for preset_dir in (root, root / "tiny_resnet"):  # the folder holding it, or itself
        model = kdg.models.build("tiny_resnet", 5, (16, 16, 3), preset_dir=preset_dir)
        assert_same_weights(model, backbone)


def test_pretrained_false_preset_uses_the_config_only(saved_tiny):
    backbone, root = saved_tiny
    model = kdg.models.build(str(root / "tiny_resnet"), 5, (16, 16, 3), pretrained=False)
    stats = values(model.get_layer("backbone").non_trainable_weights)
    assert all(np.all(s == 0) or np.all(s == 1) for s in stats)  # fresh BN statistics
    assert model.get_layer("backbone").count_params() == backbone.count_params()


def test_resnet18_loads_its_preset_from_kdg_presets(monkeypatch, tmp_path):
    """The production path: "resnet18" with pretrained=True looks for
    resnet_18_imagenet under KDG_PRESETS (here a randomly initialised
    ResNet-18 saved as that preset)."""
    source = kdg.models.build_backbone("resnet18", (32, 32, 3), pretrained=False)
    source.save_to_preset(str(tmp_path / "resnet_18_imagenet"))
    monkeypatch.setenv("KDG_PRESETS", str(tmp_path))
    model = kdg.models.build("resnet18", 4, (32, 32, 3))
    assert_same_weights(model, source)
    assert model.get_layer("backbone").count_params() == 11_186_112


def test_resnet_preset_of_the_wrong_architecture_is_refused(saved_tiny, tmp_path):
    backbone, _ = saved_tiny
    backbone.save_to_preset(str(tmp_path / "resnet_18_imagenet"))
    with pytest.raises(ValueError, match="is not a resnet18"):
        kdg.models.build("resnet18", 4, (32, 32, 3), preset_dir=tmp_path)


def test_kagglehub_cache_is_used_offline(saved_tiny):
    """A built-in preset downloaded before (complete in kagglehub's cache,
    here the empty KAGGLEHUB_CACHE of conftest.py) loads with KDG_OFFLINE=1."""
    cache = pytest.importorskip("kagglehub.cache")
    parse_model_handle = pytest.importorskip("kagglehub.handle").parse_model_handle
    Cache, get_cached_path = cache.Cache, cache.get_cached_path

    backbone, _ = saved_tiny
    name = "resnet_vd_18_imagenet"  # any built-in preset name
    handle = keras_hub.models.Backbone.presets[name]["kaggle_handle"]
    parsed = parse_model_handle(handle[len("kaggle://"):])
    folder = get_cached_path(parsed)
    assert folder.startswith(os.environ["KAGGLEHUB_CACHE"])
    backbone.save_to_preset(folder)
    with pytest.raises(presets.PresetNotFoundError, match="no complete download"):
        kdg.models.build(name, 3, (16, 16, 3))  # files there, not marked complete
    for f in ("config.json", "model.weights.h5", "metadata.json"):
        Cache().mark_as_complete(parsed, f)
    model = kdg.models.build(name, 3, (16, 16, 3))
    assert_same_weights(model, backbone)


def test_missing_preset_offline_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("KDG_PRESETS", str(tmp_path))
    with pytest.raises(presets.PresetNotFoundError) as info:
        kdg.models.build("resnet50", 7, (224, 224, 3))
    message = str(info.value)
    for text in ("'resnet_50_imagenet'", "'resnet50'", str(tmp_path / "resnet_50_imagenet"),
                 "kagglehub cache", "KDG_OFFLINE=1", "save_to_preset", "KDG_PRESETS=",
                 "pretrained=False", "preset_dir="):
        assert text in message, text
    assert isinstance(info.value, FileNotFoundError)


def test_missing_preset_dir_is_one_clear_error(tmp_path):
    with pytest.raises(presets.PresetNotFoundError, match="preset_dir: no config.json"):
        kdg.models.build("resnet18", 7, (32, 32, 3), preset_dir=tmp_path)
    with pytest.raises(presets.PresetNotFoundError, match="not a keras-hub preset"):
        kdg.models.build(str(tmp_path), 7, (32, 32, 3))
    with pytest.raises(presets.PresetNotFoundError, match="does not exist"):
        kdg.models.build(str(tmp_path / "nowhere"), 7, (32, 32, 3))


def test_hub_failure_is_one_clear_error(monkeypatch):
    """Online, a failed download (here simulated: the real one would need the
    network) becomes the same error, with the hub's error chained."""
    monkeypatch.delenv("KDG_OFFLINE")
    calls = []

    def no_network(preset, **kwargs):
        calls.append(preset)
        raise ConnectionError("Failed to resolve 'api.kaggle.com'")

    monkeypatch.setattr(keras_hub.models.ResNetBackbone, "from_preset", no_network)
    with pytest.raises(presets.PresetNotFoundError) as info:
        kdg.models.build("resnet18", 7, (32, 32, 3))
    assert calls == ["resnet_18_imagenet"]
    assert "ConnectionError: Failed to resolve 'api.kaggle.com'" in str(info.value)
    assert "save_to_preset" in str(info.value)
    assert isinstance(info.value.__cause__, ConnectionError)


def test_offline_flag_values(monkeypatch):
    for value, expected in [("1", True), ("true", True), ("ON", True), ("0", False),
                            ("", False)]:
        monkeypatch.setenv("KDG_OFFLINE", value)
        assert presets.is_offline() is expected
