"""Networks for domain generalization: a backbone, pooled features, dropout
and a linear classifier, as DomainBed builds them.

    import kdg.models
    model = kdg.models.build("resnet50", num_classes=7, input_shape=(224, 224, 3),
                             dropout=0.1, algorithm="fish")
    model.compile(optimizer=keras.optimizers.Adam(5e-5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

The graph: ``inputs -> backbone -> pool -> dropout -> classifier``, where
``backbone`` is a nested ``keras.Model`` (see `kdg.models.backbones`),
``pool`` a global average pooling (only when the backbone gives a feature
map, or a token sequence), ``dropout`` a ``Dropout(dropout)`` and
``classifier`` a ``Dense(num_classes)`` giving logits (no softmax). The
classifier is the last layer with trainable weights, so GGA's default
(``perturb="features"``) leaves exactly it unperturbed.

What the inputs must be (ImageNet-normalised images for the ResNets, [0, 1]
images for the small networks) is described in `kdg.models.backbones`;
pretrained weights are found as described in `kdg.models.presets` (offline:
``preset_dir=``, ``KDG_PRESETS``, ``KDG_OFFLINE=1``).

Weights are initialised by Keras' initializers; call
``keras.utils.set_random_seed`` first for reproducible initial weights.
``seed`` is the DGModel's seed (the algorithms' randomness) and the
dropout layer's.
"""

from __future__ import annotations

import keras

from kdg.dg_model import DGModel
from kdg.models import backbones, presets
from kdg.models.backbones import BACKBONES, OPTIONS, build_backbone
from kdg.models.presets import PresetNotFoundError

__all__ = [
    "BACKBONES",
    "OPTIONS",
    "PresetNotFoundError",
    "build",
    "build_backbone",
    "features_dim",
    "features_model",
]


def _pool(features):
    if not hasattr(features, "shape"):
        raise ValueError(
            "The backbone gives several outputs (a dict or list: a text or "
            "multimodal keras-hub backbone?); kdg.models.build needs one tensor of "
            "image features. Build the network yourself and use kdg.wrap(model, ...) "
            "or kdg.DGModel(inputs, outputs, ...)."
        )
    rank = len(features.shape)
    if rank == 4:
        return keras.layers.GlobalAveragePooling2D(name="pool")(features)
    if rank == 3:  # a token sequence (vision transformers): mean over tokens
        return keras.layers.GlobalAveragePooling1D(name="pool")(features)
    if rank == 2:
        return features
    raise ValueError(
        f"The backbone gives features of shape {tuple(features.shape)}; kdg.models.build "
        "handles feature maps (B, H, W, C), sequences (B, T, C) and vectors (B, C). "
        "Build the network yourself and use kdg.wrap(model, ...) or kdg.DGModel(inputs, "
        "outputs, ...)."
    )


def build(
    backbone,
    num_classes,
    input_shape,
    *,
    pretrained=True,
    dropout=0.0,
    algorithm=None,
    freeze_bn=True,
    l2_weight_decay=0.0,
    seed=None,
    preset_dir=None,
    arm_context=False,
    **backbone_options,
) -> DGModel:
    """A `kdg.DGModel`: backbone features -> global average pooling ->
    Dropout(dropout) -> Dense(num_classes) logits named "classifier".

    Args:
        backbone: a name in `BACKBONES` ("resnet18", "resnet50", "mnist_cnn",
            "mlp", "small_cnn"), a keras-hub preset name or handle, or the
            path of a folder made by ``save_to_preset``.
        num_classes: number of classes (logits).
        input_shape: shape of one input without the batch axis, channels
            last, e.g. ``(224, 224, 3)`` or ``(28, 28, 2)``.
        pretrained: load pretrained weights (ResNets, keras-hub presets);
            False builds the same architecture with random weights (no
            network needed for the built-in ResNets). Ignored by
            mnist_cnn, mlp and small_cnn, which have none.
        dropout: rate of the dropout on the pooled features.
        algorithm, freeze_bn, l2_weight_decay, seed: `kdg.DGModel`'s;
            ``freeze_bn`` defaults to True (the DomainBed protocol).
        preset_dir: where to load pretrained weights from without the
            network: a preset folder, or a folder holding ``<preset name>/``.
        arm_context: put a `kdg.layers.ARMContext` (ARM's context network)
            on the inputs; the backbone then takes C + 1 channels. A
            pretrained backbone's first convolution gets the extra channel
            as DomainBed does (input channel i takes the pretrained
            channel i mod C: `backbones.widen_input`).
        **backbone_options: the backbone's own options (`OPTIONS`), e.g.
            ``mlp_width=256, mlp_depth=3, mlp_dropout=0.0`` for "mlp".
    """
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be a positive integer; got {num_classes}.")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1); got {dropout}.")
    input_shape = tuple(int(d) if d is not None else None for d in input_shape)
    # ARM: the backbone sees the images and ARMContext's context channel
    net_shape = input_shape[:-1] + (input_shape[-1] + 1,) if arm_context else input_shape
    features_net = build_backbone(
        backbone, net_shape, pretrained=pretrained and not arm_context,
        preset_dir=preset_dir, **backbone_options,
    )
    if arm_context and pretrained and str(backbone).strip().lower() not in backbones.UNTRAINED:
        features_net = backbones.widen_input(build_backbone(
            backbone, input_shape, pretrained=True, preset_dir=preset_dir,
            **backbone_options), features_net)
    inputs = keras.Input(input_shape, name="inputs")
    images = inputs
    if arm_context:
        from kdg.layers import ARMContext

        images = ARMContext(name="arm_context")(inputs)
    features = _pool(features_net(images))
    features = keras.layers.Dropout(float(dropout), seed=seed, name="dropout")(features)
    logits = keras.layers.Dense(int(num_classes), name="classifier")(features)
    return DGModel(
        inputs,
        logits,
        algorithm=algorithm,
        freeze_bn=freeze_bn,
        l2_weight_decay=l2_weight_decay,
        seed=seed,
        name=f"kdg_{_model_name(backbone)}",
    )


def _model_name(backbone):
    name = str(backbone).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "model"


def features_model(model) -> keras.Model:
    """The featurizer of a model made by `build`: a ``keras.Model`` sharing
    its layers, from its inputs to the features the classifier sees."""
    return keras.Model(model.input, model.get_layer("classifier").input,
                       name=f"{model.name}_features")


def features_dim(backbone, input_shape=None, **backbone_options) -> int:
    """The number of features the classifier sees.

    ``backbone`` is a model made by `build` (or any model with a layer named
    "classifier"), a features network (its output's last axis), or a
    backbone name as `build` takes it (resnet18, resnet50, mnist_cnn and
    mlp answer without building anything; others are built with random
    weights, so give ``input_shape``)."""
    if isinstance(backbone, keras.Model):
        try:
            return int(backbone.get_layer("classifier").input.shape[-1])
        except ValueError:
            return int(backbone.outputs[0].shape[-1])
    key = str(backbone).strip().lower()
    if key in backbones.FEATURE_DIMS and not backbone_options:
        return backbones.FEATURE_DIMS[key]
    if key == "mlp":
        return int(backbones._options(key, backbone_options)["mlp_width"])
    if input_shape is None:
        raise ValueError(f"features_dim({backbone!r}) needs input_shape to build it.")
    net = build_backbone(backbone, input_shape, pretrained=False, **backbone_options)
    return int(net.outputs[0].shape[-1])
