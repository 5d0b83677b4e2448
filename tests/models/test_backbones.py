"""kdg.models.build: each built-in backbone's graph, shapes and parameter
counts (checked against the torchvision / DomainBed networks), and errors."""

import functools

import keras
import numpy as np
import pytest

import kdg
import kdg.models
from kdg.models import backbones


def count(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


@functools.lru_cache(maxsize=None)
def built(name, num_classes, input_shape):
    """One model per configuration for the whole module (the ResNets take a
    few seconds to build)."""
    return kdg.models.build(name, num_classes, input_shape, pretrained=False)


SMALL = {
    "resnet18": (32, 32, 3),
    "resnet50": (32, 32, 3),
    "mnist_cnn": (28, 28, 2),
    "mlp": (12,),
    "small_cnn": (16, 16, 1),
}


def test_every_builtin_is_tested():
    assert set(SMALL) == set(kdg.models.BACKBONES) == set(kdg.models.OPTIONS)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_builds_offline_and_gives_logits(name):
    model = built(name, 7, SMALL[name])
    assert isinstance(model, kdg.DGModel)
    assert model.freeze_bn is True
    x = np.random.default_rng(0).normal(size=(3,) + SMALL[name]).astype("float32")
    logits = keras.ops.convert_to_numpy(model(x, training=False))
    assert logits.shape == (3, 7)
    assert np.all(np.isfinite(logits))
    # graph: inputs -> backbone -> [pool] -> dropout -> classifier
    names = [layer.name for layer in model.layers]
    assert names[0] == "inputs" and names[1] == "backbone"
    assert names[-2:] == ["dropout", "classifier"]
    # the classifier is the last layer with trainable weights and owns the
    # last trainable variables (what GGA's perturb="features" leaves alone)
    with_weights = [layer for layer in model.layers if layer.trainable_weights]
    assert with_weights[-1].name == "classifier"
    assert [v.path for v in model.trainable_variables[-2:]] == [
        "classifier/kernel", "classifier/bias"]
    assert not any(v.path.startswith("classifier/")
                   for v in model.trainable_variables[:-2])
    assert model.get_layer("classifier").activation is keras.activations.linear
    assert kdg.models.features_dim(model) == kdg.models.features_dim(name, SMALL[name])


def test_resnet18_has_torchvision_parameter_count():
    # torchvision resnet18: 11,689,512 parameters, of which fc = 512 * 1000 +
    # 1000 = 513,000, so conv + BN (gamma, beta) = 11,176,512. By hand:
    #   conv1 7*7*3*64 = 9,408; bn1 2*64 = 128
    #   layer1: 2 blocks x (2 x 3*3*64*64 + 2 x 2*64)       =    148,480
    #   layer2: 3*3*64*128 + 3*3*128*128 + 2 x 2*128
    #           + downsample 64*128 + 2*128
    #           + block 2: 2 x 3*3*128*128 + 2 x 2*128       =    525,568
    #   layer3: same with 128 -> 256                         =  2,099,712
    #   layer4: same with 256 -> 512                         =  8,393,728
    #   total 9,408 + 128 + 148,480 + 525,568 + 2,099,712 + 8,393,728 = 11,176,512
    # BN moving mean and variance (buffers in PyTorch, non-trainable weights
    # in Keras): 2 x (64 + 4*64 + 5*128 + 5*256 + 5*512) = 2 x 4,800 = 9,600,
    # which with the above gives keras-hub's preset metadata, 11,186,112.
    model = built("resnet18", 7, SMALL["resnet18"])
    backbone = model.get_layer("backbone")
    assert count(backbone.trainable_weights) == 11_176_512
    assert count(backbone.non_trainable_weights) == 9_600
    assert count(model.trainable_weights) == 11_176_512 + 512 * 7 + 7
    assert backbone.count_params() == 11_186_112


def test_resnet50_has_torchvision_parameter_count():
    # torchvision resnet50: 25,557,032 parameters, fc = 2048 * 1000 + 1000 =
    # 2,049,000, so 23,508,032 without it; 26,560 BN channels give 53,120
    # moving statistics; keras-hub's preset metadata: 23,561,152 in all.
    backbone = built("resnet50", 7, SMALL["resnet50"]).get_layer("backbone")
    assert count(backbone.trainable_weights) == 23_508_032
    assert count(backbone.non_trainable_weights) == 53_120
    assert backbone.count_params() == 23_561_152


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_architecture_is_keras_hub_resnet_v1(name):
    backbone = built(name, 7, SMALL[name]).get_layer("backbone")
    config = backbone.get_config()
    expected = backbones.RESNET_ARCHITECTURES[name]
    for key, value in expected.items():
        assert config[key] == value, key
    assert config["use_pre_activation"] is False
    assert sum(isinstance(l, keras.layers.BatchNormalization)
               for l in backbone.layers) == {"resnet18": 20, "resnet50": 53}[name]


def test_mnist_cnn_matches_domainbed():
    # DomainBed MNIST_CNN, input (C, 28, 28):
    #   conv1 C*9*64 + 64; GroupNorm(8, 64): 2*64
    #   conv2 64*9*128 + 128 = 73,856; GroupNorm: 256
    #   conv3 128*9*128 + 128 = 147,584; GroupNorm: 256
    #   conv4 147,584; GroupNorm: 256
    # C = 1 (RotatedMNIST): 640 + 128 + 73,856 + 256 + 2 * (147,584 + 256) = 370,560
    # C = 2 (ColoredMNIST): 1,216 + ... = 371,136
    for channels, expected in [(1, 370_560), (2, 371_136)]:
        model = built("mnist_cnn", 10, (28, 28, channels))
        backbone = model.get_layer("backbone")
        assert count(backbone.weights) == expected
        assert count(backbone.trainable_weights) == expected
        # 28 -> 28 (conv1) -> 14 (stride 2, padding 1) -> 14 -> 14, 128 maps
        assert tuple(backbone.output.shape) == (None, 14, 14, 128)
        features = kdg.models.features_model(model)
        assert tuple(features.output.shape) == (None, 128)
        assert count(model.trainable_weights) == expected + 128 * 10 + 10


def test_mnist_cnn_computes_what_domainbeds_does():
    """Same weights, same input: the Keras network's features equal those of
    DomainBed's PyTorch MNIST_CNN (padding and GroupNorm included)."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class MNIST_CNN(nn.Module):  # domainbed/networks.py
        def __init__(self, channels):
            super().__init__()
            self.conv1 = nn.Conv2d(channels, 64, 3, 1, padding=1)
            self.conv2 = nn.Conv2d(64, 128, 3, stride=2, padding=1)
            self.conv3 = nn.Conv2d(128, 128, 3, 1, padding=1)
            self.conv4 = nn.Conv2d(128, 128, 3, 1, padding=1)
            self.bn0 = nn.GroupNorm(8, 64)
            self.bn1 = nn.GroupNorm(8, 128)
            self.bn2 = nn.GroupNorm(8, 128)
            self.bn3 = nn.GroupNorm(8, 128)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))

        def forward(self, x):
            x = self.bn0(torch.relu(self.conv1(x)))
            x = self.bn1(torch.relu(self.conv2(x)))
            x = self.bn2(torch.relu(self.conv3(x)))
            x = self.bn3(torch.relu(self.conv4(x)))
            return self.avgpool(x).view(len(x), -1)

    torch.manual_seed(0)
    reference = MNIST_CNN(2).double()
    with torch.no_grad():
        for gn in (reference.bn0, reference.bn1, reference.bn2, reference.bn3):
            gn.weight.uniform_(0.5, 1.5)
            gn.bias.uniform_(-0.5, 0.5)
    assert sum(p.numel() for p in reference.parameters()) == 371_136

    model = built("mnist_cnn", 10, (28, 28, 2))
    backbone = model.get_layer("backbone")
    for i, (conv, gn) in enumerate(zip(
            (reference.conv1, reference.conv2, reference.conv3, reference.conv4),
            (reference.bn0, reference.bn1, reference.bn2, reference.bn3))):
        backbone.get_layer(f"conv{i + 1}").set_weights([
            conv.weight.detach().numpy().transpose(2, 3, 1, 0), conv.bias.detach().numpy()])
        backbone.get_layer(f"norm{i + 1}").set_weights([
            gn.weight.detach().numpy(), gn.bias.detach().numpy()])

    x = np.random.default_rng(0).uniform(size=(4, 28, 28, 2))
    expected = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy()
    got = keras.ops.convert_to_numpy(
        kdg.models.features_model(model)(x.astype("float32"), training=False))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_mlp_matches_domainbed():
    # DomainBed MLP(n_inputs=12, n_outputs=256, mlp_width=256, mlp_depth=3):
    #   input 12*256 + 256 = 3,328; one hidden 256*256 + 256 = 65,792;
    #   output 65,792: 134,912 features parameters.
    model = built("mlp", 7, (12,))
    assert count(model.get_layer("backbone").weights) == 134_912
    assert kdg.models.features_dim(model) == 256
    narrow = kdg.models.build("mlp", 3, (4, 5), mlp_width=16, mlp_depth=2, mlp_dropout=0.1)
    # Flatten 20 -> 16 -> 16: 20*16 + 16 + 16*16 + 16 = 608
    assert count(narrow.get_layer("backbone").weights) == 608
    assert kdg.models.features_dim("mlp", mlp_width=16) == 16


def test_dropout_rate_and_options():
    model = kdg.models.build("small_cnn", 10, (16, 16, 1), dropout=0.25, seed=3,
                             algorithm="fish", l2_weight_decay=1e-4, freeze_bn=False,
                             cnn_filters=(32, 64))
    assert model.get_layer("dropout").rate == 0.25
    assert type(model.algorithm).__name__ == "Fish"
    assert model.l2_weight_decay == 1e-4 and model.freeze_bn is False and model.seed == 3
    # 16 x 16 -> 8 x 8 -> 4 x 4 maps of 64 filters, flattened
    assert kdg.models.features_dim(model) == 4 * 4 * 64
    with pytest.raises(ValueError, match="multiples of 8"):
        kdg.models.build("small_cnn", 4, (16, 16, 3), cnn_filters=(8, 12))


def test_small_cnn_is_small():
    # conv1 1*9*32 + 32 = 320, GroupNorm 64; conv2 32*9*64 + 64 = 18,496,
    # GroupNorm 128: 19,008 parameters, and 4 * 4 * 64 = 1,024 features
    model = built("small_cnn", 10, (16, 16, 1))
    assert count(model.get_layer("backbone").weights) == 19_008
    assert kdg.models.features_dim(model) == 1_024
    assert count(model.trainable_weights) == 19_008 + 1_024 * 10 + 10


def test_unknown_backbone_suggests_the_closest():
    with pytest.raises(ValueError, match=r"Unknown backbone 'resnet_18'.*'resnet18'") as info:
        kdg.models.build("resnet_18", 3, (32, 32, 3))
    for name in kdg.models.BACKBONES:
        assert name in str(info.value)
    with pytest.raises(ValueError, match=r"Did you mean 'mnist_cnn'"):
        kdg.models.build("mnist-cnn", 3, (28, 28, 1))


def test_bad_arguments():
    with pytest.raises(TypeError, match="mlp_width"):
        kdg.models.build("mnist_cnn", 3, (28, 28, 1), mlp_width=3)
    with pytest.raises(ValueError, match="num_classes"):
        kdg.models.build("mlp", 0, (3,))
    with pytest.raises(ValueError, match="dropout"):
        kdg.models.build("mlp", 2, (3,), dropout=1.0)
    with pytest.raises(ValueError, match="3 channels"):
        kdg.models.build("resnet18", 2, (28, 28, 1), pretrained=True)
