"""The feature extractors `kdg.models.build` puts under its classifier.

Each builder returns a functional ``keras.Model`` named ``"backbone"`` from
images ``(B, H, W, C)`` (channels last) to features: a feature map
``(B, h, w, F)`` that `build` pools, or a vector ``(B, F)``.

- ``resnet18`` / ``resnet50``: keras-hub's ``ResNetBackbone`` (ResNet v1).
  With ``pretrained=True`` the ImageNet weights of keras-hub's presets
  ``resnet_18_imagenet`` / ``resnet_50_imagenet`` (found as described in
  `kdg.models.presets`); with ``pretrained=False`` the same architecture,
  randomly initialised, built without the network. Options
  ``mixstyle_layers`` (e.g. ``(1, 2, 3)``), ``mixstyle_p``, ``mixstyle_alpha``:
  a `kdg.layers.MixStyle` after those ResNet stages (`insert_mixstyle`).
- ``mnist_cnn``: DomainBed's ``MNIST_CNN`` (RotatedMNIST, ColoredMNIST).
- ``mlp``: DomainBed's ``MLP`` featurizer.
- ``small_cnn``: a tiny convolutional net for quick runs on small images.
- any other keras-hub preset (a built-in name such as
  ``"efficientnet_b0_ra_imagenet"``, a ``kaggle://`` or ``hf://`` handle, a
  name found under ``KDG_PRESETS``) or a local preset folder.

Inputs. The ResNets (and keras-hub's image backbones in general) take float
images normalised as their preprocessor would: for keras-hub's ResNet
presets, ImageNet normalisation ``(x / 255 - mean) / std`` with
``mean = (0.485, 0.456, 0.406)`` and ``std = (0.229, 0.224, 0.225)``, which
is what `kdg.data`'s pipelines produce (``policy.normalize=True``). The models
contain no preprocessing layer. ``mnist_cnn``, ``mlp`` and ``small_cnn``
take images scaled to [0, 1], as DomainBed's MNIST datasets give them.

Pretrained weights. keras-hub's ``resnet_18_imagenet`` / ``resnet_50_imagenet``
were converted from timm's ``resnet18.a1_in1k`` / ``resnet50.a1_in1k``
("ResNet strikes back" training), not from the torchvision
``IMAGENET1K_V1`` weights DomainBed loads: same architecture, different
ImageNet pretraining, so published numbers need not be matched exactly.
"""

from __future__ import annotations

import difflib

import keras

from kdg.models import presets

# -- ResNet ------------------------------------------------------------------
# The architecture arguments of keras-hub's resnet_18_imagenet and
# resnet_50_imagenet presets (ResNet v1, torchvision's layout). They give
# exactly the parameter counts in keras-hub's resnet_presets.py metadata
# (11,186,112 and 23,561,152, BatchNorm moving statistics included) and the
# torchvision ResNet-18 / ResNet-50 counts without `fc` (11,176,512 and
# 23,508,032 trainable weights).
RESNET_ARCHITECTURES = {
    "resnet18": dict(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=[2, 2, 2, 2],
        stackwise_num_strides=[1, 2, 2, 2],
        block_type="basic_block",
        use_pre_activation=False,
    ),
    "resnet50": dict(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=[3, 4, 6, 3],
        stackwise_num_strides=[1, 2, 2, 2],
        block_type="bottleneck_block",
        use_pre_activation=False,
    ),
}
RESNET_PRESETS = {"resnet18": "resnet_18_imagenet", "resnet50": "resnet_50_imagenet"}

BACKBONES = {
    "resnet18": "ResNet-18 (keras-hub ResNetBackbone), 512 features; pretrained: "
                "preset resnet_18_imagenet",
    "resnet50": "ResNet-50 (keras-hub ResNetBackbone), 2048 features; pretrained: "
                "preset resnet_50_imagenet",
    "mnist_cnn": "DomainBed's MNIST_CNN: 4 convolutions with GroupNorm, 128 features; "
                 "random init",
    "mlp": "DomainBed's MLP: Flatten, mlp_depth Dense layers of mlp_width units "
           "(default 3 x 256), 256 features; random init",
    "small_cnn": "a tiny CNN for quick runs on small images (2 x convolution, "
                 "GroupNorm, max pooling; flattened: 1024 features at 16x16); random init",
}

# The options each built-in backbone takes, with their defaults.
MIXSTYLE_OPTIONS = {"mixstyle_layers": (), "mixstyle_p": 0.5, "mixstyle_alpha": 0.1}
OPTIONS = {
    "resnet18": dict(MIXSTYLE_OPTIONS),
    "resnet50": dict(MIXSTYLE_OPTIONS),
    "mnist_cnn": {},
    "mlp": {"mlp_width": 256, "mlp_depth": 3, "mlp_dropout": 0.0},
    "small_cnn": {"cnn_filters": (32, 64)},
}

# The built-in backbones without pretrained weights.
UNTRAINED = ("mnist_cnn", "mlp", "small_cnn")

# The feature widths, for `features_dim` without building anything.
FEATURE_DIMS = {"resnet18": 512, "resnet50": 2048, "mnist_cnn": 128}


def _options(name, given):
    allowed = OPTIONS.get(name, {})
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        known = ", ".join(allowed) if allowed else "none"
        raise TypeError(
            f"Backbone {name!r} does not take the option(s) {', '.join(unknown)}; "
            f"its options are: {known}."
        )
    return {**allowed, **given}


def _check_architecture(name, backbone):
    """A preset found for resnet18/resnet50 must be that network."""
    expected = RESNET_ARCHITECTURES[name]
    config = backbone.get_config()
    for key in ("stackwise_num_blocks", "block_type", "stackwise_num_filters",
                "use_pre_activation"):
        if key in config and list(_as_list(config[key])) != list(_as_list(expected[key])):
            raise ValueError(
                f"The preset loaded for backbone {name!r} is not a {name}: its "
                f"{key} is {config[key]!r}, expected {expected[key]!r}. Check "
                f"preset_dir / {presets.PRESETS_ENV}/{RESNET_PRESETS[name]}."
            )


def _as_list(value):
    return value if isinstance(value, (list, tuple)) else [value]


def resnet(name, input_shape, *, pretrained=True, preset_dir=None, mixstyle_layers=(),
           mixstyle_p=0.5, mixstyle_alpha=0.1):
    """keras-hub's ResNet ``name``; with ``mixstyle_layers`` (stages 1 to 4,
    torchvision's ``layer1``..``layer4``), a `kdg.layers.MixStyle(p=mixstyle_p,
    alpha=mixstyle_alpha)` after each of those stages (see `insert_mixstyle`)."""
    backbone = _resnet(name, input_shape, pretrained=pretrained, preset_dir=preset_dir)
    if mixstyle_layers:
        backbone = insert_mixstyle(backbone, name, mixstyle_layers, p=mixstyle_p,
                                   alpha=mixstyle_alpha)
    return backbone


def insert_mixstyle(backbone, name, stages, *, p=0.5, alpha=0.1):
    """The ResNet ``backbone`` with a `kdg.layers.MixStyle` after each ResNet
    stage in ``stages`` (1-based, as torchvision's ``layer1``..``layer4``;
    the MixStyle code used with DomainBed puts it after stages 1, 2 and 3).
    The layers (and pretrained weights) are shared with ``backbone``, not
    copied; the result is a functional ``keras.Model`` named "backbone"."""
    from kdg.layers import MixStyle

    blocks = RESNET_ARCHITECTURES[name]["stackwise_num_blocks"]
    stages = [stages] if isinstance(stages, int) else list(stages)
    bad = [s for s in stages if isinstance(s, bool) or s not in range(1, len(blocks) + 1)]
    if bad or len(set(stages)) != len(stages):
        raise ValueError(
            f"mixstyle_layers must list distinct ResNet stages among 1..{len(blocks)} "
            f"(after layer1, layer2, ...; the MixStyle code uses [1, 2, 3]); given {stages!r}."
        )
    after = {f"stack{s - 1}_block{blocks[s - 1] - 1}_out": s for s in stages}

    def call(layer, *args, **kwargs):
        out = layer(*args, **kwargs)
        if layer.name in after:
            out = MixStyle(p=p, alpha=alpha, name=f"mixstyle{after[layer.name]}")(out)
        return out

    model = keras.models.clone_model(backbone, clone_function=lambda layer: layer,
                                     call_function=call)
    return keras.Model(model.input, model.output, name="backbone")


def _resnet(name, input_shape, *, pretrained=True, preset_dir=None):
    try:
        import keras_hub
    except ModuleNotFoundError as error:
        if error.name != "keras_hub":
            raise
        from kdg.tf_data import INSTALL, TensorFlowMissing

        raise TensorFlowMissing(
            f"the {name} backbone comes from keras-hub, which is not installed (it requires "
            f"tensorflow-text, hence TensorFlow, on Linux). Install it with: {INSTALL}"
        ) from None

    input_shape = tuple(input_shape)
    if not pretrained:
        return keras_hub.models.ResNetBackbone(
            **RESNET_ARCHITECTURES[name], image_shape=input_shape, name="backbone"
        )
    if input_shape[-1] != 3:
        raise ValueError(
            f"The pretrained {name} takes RGB images (3 channels); input_shape "
            f"{input_shape} has {input_shape[-1]}. Use pretrained=False, or give "
            "the images 3 channels."
        )
    backbone = presets.load(
        RESNET_PRESETS[name],
        cls=keras_hub.models.ResNetBackbone,
        preset_dir=preset_dir,
        what=f"ImageNet weights for backbone {name!r}",
        image_shape=input_shape,
        name="backbone",
    )
    _check_architecture(name, backbone)
    return backbone


# -- DomainBed's small networks ---------------------------------------------
def mnist_cnn(input_shape):
    """DomainBed's ``MNIST_CNN`` (``domainbed/networks.py``) up to, not
    including, its average pooling (`build` pools): output (B, h, w, 128),
    h = w = 14 for 28 x 28 inputs.

    PyTorch's convolutions all use ``padding=1``; for the stride-1 ones that
    is Keras' "same", for the stride-2 one it is ZeroPadding2D(1) and a
    "valid" convolution (Keras' "same" would pad only bottom/right). Each
    convolution is followed by ReLU, then GroupNorm(8 groups, eps 1e-5)."""
    inputs = keras.Input(tuple(input_shape), name="images")
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.GroupNormalization(8, epsilon=1e-5, name="norm1")(x)
    x = keras.layers.ZeroPadding2D(1, name="conv2_pad")(x)
    x = keras.layers.Conv2D(128, 3, strides=2, padding="valid", activation="relu",
                            name="conv2")(x)
    x = keras.layers.GroupNormalization(8, epsilon=1e-5, name="norm2")(x)
    x = keras.layers.Conv2D(128, 3, padding="same", activation="relu", name="conv3")(x)
    x = keras.layers.GroupNormalization(8, epsilon=1e-5, name="norm3")(x)
    x = keras.layers.Conv2D(128, 3, padding="same", activation="relu", name="conv4")(x)
    x = keras.layers.GroupNormalization(8, epsilon=1e-5, name="norm4")(x)
    return keras.Model(inputs, x, name="backbone")


def mlp(input_shape, *, mlp_width=256, mlp_depth=3, mlp_dropout=0.0):
    """DomainBed's ``MLP`` used as a featurizer (``MLP(n_inputs, mlp_width,
    hparams)``): Dense(width) -> Dropout -> ReLU, (depth - 2) times
    Dense(width) -> Dropout -> ReLU, then Dense(width) with no activation.
    Inputs of any shape are flattened first."""
    if int(mlp_depth) < 2:
        raise ValueError(
            f"mlp_depth must be at least 2 (input and output layers); got {mlp_depth}.")
    inputs = keras.Input(tuple(input_shape), name="inputs")
    x = keras.layers.Flatten(name="flatten")(inputs)
    for i in range(int(mlp_depth) - 1):
        x = keras.layers.Dense(int(mlp_width), name=f"dense{i + 1}")(x)
        x = keras.layers.Dropout(float(mlp_dropout), name=f"dropout{i + 1}")(x)
        x = keras.layers.ReLU(name=f"relu{i + 1}")(x)
    x = keras.layers.Dense(int(mlp_width), name=f"dense{int(mlp_depth)}")(x)
    return keras.Model(inputs, x, name="backbone")


def small_cnn(input_shape, *, cnn_filters=(32, 64)):
    """A tiny, fast CNN for small images (the quickstart's 16 x 16 digits):
    per entry of ``cnn_filters``, a 3x3 ReLU convolution, GroupNorm (8
    groups, so filters must be multiples of 8) and 2x2 max pooling; then the
    maps are flattened (not averaged: on 4 x 4 maps the positions matter),
    giving (H / 2^n) * (W / 2^n) * cnn_filters[-1] features, 1,024 for
    16 x 16 inputs and the default filters."""
    if any(int(f) % 8 for f in cnn_filters):
        raise ValueError(f"small_cnn's cnn_filters must be multiples of 8; got {cnn_filters}.")
    inputs = keras.Input(tuple(input_shape), name="images")
    x = inputs
    for i, filters in enumerate(cnn_filters):
        x = keras.layers.Conv2D(int(filters), 3, padding="same", activation="relu",
                                name=f"conv{i + 1}")(x)
        x = keras.layers.GroupNormalization(8, epsilon=1e-5, name=f"norm{i + 1}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, x, name="backbone")


def widen_input(source, target):
    """``target`` (the same network as ``source`` for one more input
    channel: C + 1 instead of C) with ``source``'s weights; the weights
    whose input-channel axis grew (the first convolution's kernel, (kh, kw,
    C + 1, F)) take, for input channel i, ``source``'s channel i mod C, as
    DomainBed's ResNet does for inputs of other than 3 channels (ARM's
    context channel)."""
    values = []
    for old, new in zip(source.weights, target.weights):
        value = keras.ops.convert_to_numpy(old)
        if tuple(old.shape) != tuple(new.shape):
            grown = [a for a, (m, n) in enumerate(zip(old.shape, new.shape)) if m != n]
            if len(old.shape) != len(new.shape) or len(grown) != 1:
                raise ValueError(
                    f"widen_input: {old.path} has shape {tuple(old.shape)} in the source "
                    f"and {tuple(new.shape)} in the target; only the input-channel axis "
                    "may differ.")
            axis = grown[0]
            value = value.take([i % old.shape[axis] for i in range(new.shape[axis])], axis=axis)
        values.append(value)
    if len(source.weights) != len(target.weights):
        raise ValueError("widen_input: the source and target networks differ.")
    target.set_weights(values)
    return target


# -- dispatch ----------------------------------------------------------------
def is_preset(name, preset_dir=None) -> bool:
    """True when ``name`` is a keras-hub preset kdg can try: a built-in
    preset name, a hub handle, a folder, or a name found locally."""
    if presets.has_scheme(name) or presets.looks_like_path(name) or preset_dir is not None:
        return True
    if presets.find_local(name)[0] is not None:
        return True
    return name in presets.hub_presets()


def unknown_backbone(name) -> ValueError:
    candidates = list(BACKBONES)
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
    hub = difflib.get_close_matches(name, list(presets.hub_presets()), n=3, cutoff=0.6)
    hint = ""
    if close or hub:
        hint = " Did you mean " + " or ".join(repr(c) for c in close + hub) + "?"
    return ValueError(
        f"Unknown backbone {name!r}.{hint} Known backbones: {', '.join(BACKBONES)}; "
        "or a keras-hub preset: a built-in preset name (keras_hub.models.Backbone"
        ".presets), a kaggle:// or hf:// handle, a folder made by "
        f"save_to_preset, or a preset folder name under ${presets.PRESETS_ENV}."
    )


def build_backbone(name, input_shape, *, pretrained=True, preset_dir=None, **options):
    """The feature extractor ``name`` for inputs of ``input_shape`` (no batch
    axis): a ``keras.Model`` named "backbone". ``options`` are the backbone's
    own (see `OPTIONS`); ``pretrained`` only matters for backbones that have
    pretrained weights (the ResNets and keras-hub presets)."""
    if not isinstance(name, str):
        raise TypeError(f"backbone must be a string; got {type(name).__name__}.")
    key = name.strip().lower()
    if key in BACKBONES:
        options = _options(key, options)
        if key in RESNET_ARCHITECTURES:
            return resnet(key, input_shape, pretrained=pretrained, preset_dir=preset_dir,
                          **options)
        if preset_dir is not None:
            raise TypeError(f"Backbone {key!r} has no presets; preset_dir is not used by it.")
        return {"mnist_cnn": mnist_cnn, "mlp": mlp, "small_cnn": small_cnn}[key](
            input_shape, **options
        )
    if not is_preset(name, preset_dir):
        raise unknown_backbone(name)
    if options:
        raise TypeError(
            f"Options {', '.join(sorted(options))} were given for the keras-hub preset "
            f"{name!r}; presets take none."
        )
    return presets.load(
        name,
        preset_dir=preset_dir,
        load_weights=bool(pretrained),
        what=f"backbone {name!r}",
        name="backbone",
    )
