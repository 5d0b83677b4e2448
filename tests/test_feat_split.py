"""The featurizer / classifier split (kdg.split) and the step context's
stateless `features`, `classify`, `forward`, `compiled_loss` and
`value_and_grad`, for each way in: kdg's own backbones, functional models,
subclasses and kdg.wrap."""

import keras
import numpy as np
import pytest
from conftest import make_data, train_steps

import kdg
import kdg.models
from kdg import rng as kdg_rng
from kdg.algorithms import ERM
from kdg.algorithms.base import Algorithm, StepContext, flatten_domains

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


train = train_steps  # per-domain data: x (D, B, ...), y (D, B)


def set_fixed_weights(model, seed=0):
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                       for w in model.get_weights()])


def functional(softmax=False):
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(6, activation="tanh", name="hidden")(inputs)
    outputs = keras.layers.Dense(4, name="head")(hidden)
    if softmax:  # the classifier part is then the head and the softmax
        outputs = keras.layers.Softmax()(outputs)
    return inputs, outputs


class Net(kdg.DGModel):
    """DomainBed's layout: network = classifier(featurizer(x))."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.featurizer = keras.Sequential([keras.layers.Dense(6, activation="tanh")])
        self.classifier = keras.layers.Dense(4)

    def call(self, x, training=None):
        return self.classifier(self.featurizer(x, training=training))


def make(way, algorithm=None):
    algorithm = algorithm or ERM()
    if way == "build":
        model = kdg.models.build("mlp", 4, (5,), dropout=0.0, algorithm=algorithm,
                                 mlp_width=6, mlp_depth=3, mlp_dropout=0.0, seed=0)
    elif way == "functional":
        model = kdg.DGModel(*functional(), algorithm=algorithm, seed=0)
    elif way == "functional_softmax":
        model = kdg.DGModel(*functional(softmax=True), algorithm=algorithm, seed=0)
    elif way == "subclass":
        model = Net(algorithm=algorithm, seed=0)
        model(np.zeros((1, 5), "float32"))
    elif way == "wrap":
        inner = keras.Model(*functional())
        model = kdg.wrap(inner, algorithm=algorithm, classifier="hidden", seed=0)
    set_fixed_weights(model)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    return model


WAYS = ["build", "functional", "functional_softmax", "subclass", "wrap"]


@pytest.mark.parametrize("way", WAYS)
def test_classify_of_features_is_the_models_output(way):
    model = make(way)
    x, _ = make_data(num_domains=1, batch=6)
    x = x[0]
    ctx = StepContext(model, kdg_rng.key_from_seed_generator(model.dg_seed_generator))
    features, state = ctx.features(x)
    want_dim = 5 if way == "wrap" else 6  # wrap names "hidden": its input is x
    assert tuple(features.shape) == (6, want_dim)
    out = keras.ops.convert_to_numpy(ctx.classify(features))
    np.testing.assert_allclose(out, keras.ops.convert_to_numpy(model(x)), rtol=1e-5, atol=1e-6)
    y_pred, _ = ctx.forward(x)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(y_pred), out, rtol=1e-5, atol=1e-6)
    # the split's parts share the model's variables (nothing copied)
    ids = {id(v) for v in model.trainable_variables}
    assert {id(v) for v in model.dg_split.featurizer.trainable_variables} <= ids
    assert {id(v) for v in model.dg_split.classifier.trainable_variables} <= ids
    assert len(model.weights) == len(make(way).weights)  # no variables added


def test_explicit_params_are_used():
    model = make("functional")
    x, _ = make_data(num_domains=1, batch=6)
    ctx = StepContext(model, kdg_rng.key_from_seed_generator(model.dg_seed_generator))
    params = [p * 0 for p in ctx.params()]
    features, _ = ctx.features(x[0], params=params)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(features), 0.0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ctx.classify(features, params)), 0.0)


class SplitERM(Algorithm):
    """ERM written with features, classify, compiled_loss and value_and_grad:
    must take exactly ERM's step."""

    name = "split_erm"

    def step(self, ctx, x, y):
        x, y = flatten_domains(x), flatten_domains(y)

        def objective(params, state):
            features, state = ctx.features(x, params, state)
            y_pred = ctx.classify(features, params, state)
            return ctx.compiled_loss(y, y_pred, params, state), (y_pred, state)

        (loss, (y_pred, state)), grads = ctx.value_and_grad(objective)(ctx.params(), ctx.state())
        ctx.set_state(state)
        ctx.apply(grads)
        return {"loss": loss}, y_pred


@pytest.mark.parametrize("way", WAYS)
def test_an_objective_written_with_the_split_trains_as_erm(way):
    x, y = make_data()
    plain, split = make(way), make(way, SplitERM())
    a, b = train(plain, x, y, 2), train(split, x, y, 2)
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5)
    for u, v in zip(plain.get_weights(), split.get_weights()):
        np.testing.assert_allclose(v, u, rtol=1e-5, atol=1e-6)
    assert np.abs(plain.get_weights()[0] - make(way).get_weights()[0]).max() > 1e-4


def test_no_split_is_a_clear_error():
    class Bare(kdg.DGModel):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(3)

        def call(self, x, training=None):
            return self.dense(x)

    model = Bare()
    model(np.zeros((1, 5), "float32"))
    with pytest.raises(ValueError, match="featurizer.*classifier"):
        model.dg_split
    named = kdg.DGModel(*functional(), classifier="nope")
    with pytest.raises(ValueError, match="classifier='nope' names no layer.*hidden, head"):
        named.dg_split
    with pytest.raises(TypeError, match="classifier names the classifier layer"):
        kdg.DGModel(*functional(), classifier=3)


def test_the_named_classifier_survives_save_and_load(tmp_path):
    model = kdg.DGModel(*functional(), classifier="hidden")
    model.compile(optimizer="sgd", loss=LOSS)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.dg_classifier == "hidden"
    assert tuple(loaded.dg_split.featurizer.output.shape) == (None, 5)
