"""The featurizer / classifier split of a `kdg.DGModel`, as DomainBed's
networks have it (``network = Sequential(featurizer, classifier)``).

Algorithms that act on features (CORAL, MMD, RSC, ...) reach it through the
step context (`StepContext.features` and `StepContext.classify`); this module
finds it, once per model:

- a subclass that has attributes ``featurizer`` and ``classifier`` (Keras
  layers or models, DomainBed's names): ``classifier(featurizer(x))`` must be
  the model's output;
- a functional model (``kdg.DGModel(inputs, outputs)``, ``kdg.models.build``)
  or a wrapped functional one (``kdg.wrap(model)``): the classifier is the
  layer named by the model's ``classifier`` option, by default the layer that
  owns the last trainable variable (the last Dense layer; GGA's
  ``perturb="features"`` leaves the same layer out). The features are that
  layer's input; the classifier part is everything from there to the output
  (the layer itself, and any layer after it, e.g. a softmax).

Both parts are functions of the model's own layers, shared, never copied.
"""

import keras

NO_SPLIT_FIX = (
    "Give the model attributes `featurizer` and `classifier` (Keras layers, "
    "classifier(featurizer(x)) == model(x)), as DomainBed's networks have, or build "
    "it functionally (kdg.DGModel(inputs, outputs) or kdg.wrap of a functional model) "
    "and name the classifier layer: classifier='<layer name>'."
)


class Split:
    """`featurizer` (x -> features) and `classifier` (features -> the model's
    output), both Keras layers or models sharing the model's layers."""

    def __init__(self, featurizer, classifier):
        self.featurizer, self.classifier = featurizer, classifier


def _owner(layers, variable):
    """The last of `layers` whose trainable variables hold `variable`."""
    for layer in reversed(layers):
        if any(v is variable for v in layer.trainable_variables):
            return layer
    return None


def _container(model):
    """The functional model whose graph is the model's computation, or None."""
    inner = getattr(model, "model", None)  # kdg.wrap's WrappedDGModel
    if hasattr(model, "inputs") and getattr(model, "outputs", None) and not isinstance(
        inner, keras.Model
    ):
        return model
    if isinstance(inner, keras.Model) and getattr(inner, "outputs", None):
        return inner
    return None


def find(model):
    """The model's `Split`; a ValueError saying how to name it when there is
    none."""
    featurizer = getattr(model, "featurizer", None)
    classifier = getattr(model, "classifier", None)
    if isinstance(featurizer, keras.layers.Layer) and isinstance(
        classifier, keras.layers.Layer
    ):
        return Split(featurizer, classifier)
    name = getattr(model, "dg_classifier", None)
    where = f"{type(model).__name__} '{model.name}'"
    container = _container(model)
    if container is None:
        raise ValueError(
            f"{where} has no featurizer / classifier split that kdg can find: it is "
            f"not functional and has no `featurizer` and `classifier` attributes. "
            + NO_SPLIT_FIX
        )
    if len(container.outputs) != 1:
        raise ValueError(
            f"{where} has {len(container.outputs)} outputs; the featurizer / "
            f"classifier split needs one."
        )
    if name is not None:
        try:
            layer = container.get_layer(name)
        except ValueError:
            names = ", ".join(layer.name for layer in container.layers)
            raise ValueError(
                f"{where}: classifier={name!r} names no layer of the network; its "
                f"layers: {names}."
            ) from None
    else:
        variables = container.trainable_variables
        layer = _owner(container.layers, variables[-1]) if variables else None
        if layer is None or isinstance(layer, keras.Model):
            raise ValueError(
                f"{where}: kdg takes the layer that owns the last trainable variable as "
                f"the classifier, and "
                + ("the model has no trainable variable. " if layer is None else
                   f"that is the nested model '{layer.name}', whose features kdg "
                   f"cannot reach. ")
                + NO_SPLIT_FIX
            )
    try:
        features = layer.input
        classifier = keras.Model(features, container.outputs[0], name=f"{layer.name}_part")
        featurizer = keras.Model(container.input, features, name="featurizer")
    except (ValueError, AttributeError) as error:
        raise ValueError(
            f"{where}: the layer '{layer.name}' cannot split the network into "
            f"featurizer and classifier ({error}). " + NO_SPLIT_FIX
        ) from None
    return Split(featurizer, classifier)


def classifier_variables(model):
    """The trainable variables of the model's classifier part."""
    found = model.dg_split if hasattr(model, "dg_split") else find(model)
    return list(found.classifier.trainable_variables)
