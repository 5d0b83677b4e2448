"""DGModel: the three ways in, data sources, save/load, BatchNorm, errors."""

import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import (BACKEND, domain_batch, init_params, make_data, softmax_regression,
                      train_on_domains, weights)

import kdg
import reference as ref
from kdg.algorithms import GGA, CorGrad, ERM, Fish

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def compile(model, lr=0.1, **kwargs):
    model.compile(optimizer=keras.optimizers.SGD(lr), loss=LOSS, metrics=["accuracy"], **kwargs)
    return model


class Net(kdg.DGModel):
    def __init__(self, classes=4, **kwargs):
        super().__init__(**kwargs)
        self.head = keras.layers.Dense(classes)

    def call(self, inputs, training=False):
        return self.head(inputs)


def expected_erm(params, x, y, steps, lr=0.1):
    for _ in range(steps):
        params, _ = ref.erm_step(params, x, y, lr=lr)
    return params


def test_subclassed_model_trains_like_the_reference(data, params):
    x, y = data
    model = compile(Net(algorithm="erm"))
    model(x[0])  # build
    model.head.set_weights(params)
    for _ in range(2):
        train_on_domains(model, x, y)
    for got, want in zip(weights(model), expected_erm(params, x, y, 2)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_wrapping_a_built_model_shares_its_weights(data, params):
    x, y = data
    inputs = keras.Input((5,))
    existing = keras.Model(inputs, keras.layers.Dense(4)(inputs))
    existing.layers[-1].set_weights(params)
    model = compile(kdg.wrap(existing, algorithm=Fish(meta_lr=1.0)))
    for _ in range(2):
        train_on_domains(model, x, y)
    expected = params
    for _ in range(2):
        expected = ref.fish_step(expected, x, y, lambda p, g: ref.sgd(p, g, 0.1), meta_lr=1.0)
    for got, want in zip(existing.layers[-1].get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_wrapping_a_keras_hub_classifier():
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 64], stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2], block_type="basic_block",
        use_pre_activation=False, image_shape=(16, 16, 3),
    )
    classifier = keras_hub.models.ImageClassifier(backbone=backbone, num_classes=3, preprocessor=None)
    before = [np.array(w) for w in classifier.get_weights()]
    model = kdg.wrap(classifier, algorithm=CorGrad(n_parts=2), freeze_bn=True, num_domains=2)
    compile(model, lr=0.01)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(2, 4, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 3, size=(2, 4)).astype("int32")
    logs = model.fit(tf.data.Dataset.from_tensors(domain_batch(x, y)).repeat(2), verbose=0).history
    assert np.isfinite(logs["loss"][-1]) and "modification_ratio" in logs
    after = classifier.get_weights()
    assert any(np.abs(a - b).max() > 0 for a, b in zip(after, before))
    assert model.predict(x[0], verbose=0).shape == (4, 3)


def test_fit_accepts_tf_data_pydataset_and_generators(data, params):
    per_domain = data
    x, y = domain_batch(*per_domain)

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            return x, y

    def generator():
        while True:
            yield x, y

    sources = [
        dict(x=tf.data.Dataset.from_tensors((x, y)).repeat(2)),
        dict(x=Batches()),
        dict(x=generator(), steps_per_epoch=2),
    ]
    expected = expected_erm(params, *per_domain, 2)
    for kwargs in sources:
        model = softmax_regression(ERM(), params, num_domains=3)
        model.fit(verbose=0, **kwargs)
        for got, want in zip(weights(model), expected):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_metrics_and_evaluate_predict_take_ordinary_batches(data, params):
    x, y = data
    model = compile(Net(num_domains=3), lr=0.5)
    model(x[0])
    model.head.set_weights(params)
    history = model.fit(tf.data.Dataset.from_tensors(domain_batch(x, y)).repeat(30),
                        verbose=0).history
    assert set(history) >= {"loss", "accuracy"}
    flat_x, flat_y = x.reshape(-1, 5), y.reshape(-1)
    results = model.evaluate(flat_x, flat_y, verbose=0, return_dict=True)
    logits = model.predict(flat_x, verbose=0)
    assert logits.shape == (flat_x.shape[0], 4)
    np.testing.assert_allclose(results["accuracy"], np.mean(logits.argmax(-1) == flat_y), atol=1e-6)


@pytest.mark.parametrize(
    "algorithm",
    [Fish(meta_lr=0.3, inner_optimizer=keras.optimizers.Adam(0.01)),
     GGA(base=CorGrad(n_parts=3, alpha=0.4), start_step=1, end_step=3, rho=1e-4, trials=2,
         perturb="all")],  # softmax regression is only a head
)
def test_save_and_load_round_trip(tmp_path, data, params, algorithm):
    x, y = data
    model = softmax_regression(algorithm, params, keras.optimizers.Adam(0.01), l2_weight_decay=1e-3,
                               freeze_bn=True, seed=11)
    train_on_domains(model, x, y)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.algorithm) is type(algorithm)
    assert loaded.algorithm.get_config() == model.algorithm.get_config()
    assert (loaded.l2_weight_decay, loaded.freeze_bn, loaded.seed) == (1e-3, True, 11)
    for a, b in zip(weights(loaded), weights(model)):
        np.testing.assert_array_equal(a, b)
    # training goes on exactly as it would have without the round trip
    for m in (model, loaded):
        train_on_domains(m, x, y)
    for a, b in zip(weights(loaded), weights(model)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_save_and_load_subclassed_and_wrapped(tmp_path, data):
    x, y = data
    keras.saving.register_keras_serializable("tests")(Net)
    for model in (compile(Net(algorithm=Fish())), compile(kdg.wrap(
            keras.Sequential([keras.Input((5,)), keras.layers.Dense(4)]), algorithm="corgrad"))):
        train_on_domains(model, x, y)
        model.save(tmp_path / "m.keras")
        loaded = keras.models.load_model(tmp_path / "m.keras")
        assert loaded.algorithm == model.algorithm
        np.testing.assert_allclose(loaded.predict(x[0], verbose=0), model.predict(x[0], verbose=0), rtol=1e-6)


def batchnorm_dropout_model(algorithm, freeze_bn):
    inputs = keras.Input((5,))
    h = keras.layers.Dense(8, name="dense")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Dropout(0.3, seed=1)(h)
    outputs = keras.layers.Dense(4, name="head")(h)
    return compile(kdg.DGModel(inputs, outputs, algorithm=algorithm, freeze_bn=freeze_bn, seed=0,
                               num_domains=3), lr=0.05)


@pytest.mark.parametrize("algorithm", ["erm", "fish", "corgrad", "ggal"])
def test_batchnorm_and_dropout_train(data, algorithm):
    x, y = data
    model = batchnorm_dropout_model(algorithm, freeze_bn=False)
    bn = model.get_layer("bn")
    mean_before = np.array(bn.moving_mean)
    history = model.fit(tf.data.Dataset.from_tensors(domain_batch(x, y)).repeat(5),
                        verbose=0).history
    assert np.isfinite(history["loss"]).all()
    assert np.abs(np.array(bn.moving_mean) - mean_before).max() > 1e-4  # statistics updated


def test_frozen_batchnorm_keeps_statistics_and_trains_gamma_beta(data):
    x, y = data
    model = batchnorm_dropout_model("corgrad", freeze_bn=True)
    bn = model.get_layer("bn")
    stats = [np.array(bn.moving_mean), np.array(bn.moving_variance)]
    affine = [np.array(bn.gamma), np.array(bn.beta)]
    model.fit(tf.data.Dataset.from_tensors(domain_batch(x, y)).repeat(3), verbose=0)
    np.testing.assert_array_equal(np.array(bn.moving_mean), stats[0])
    np.testing.assert_array_equal(np.array(bn.moving_variance), stats[1])
    assert np.abs(np.array(bn.gamma) - affine[0]).max() > 0
    assert np.abs(np.array(bn.beta) - affine[1]).max() > 0
    # in inference mode the batch does not matter: one example alone gives
    # the same output as inside a batch
    assert not model._dg_batch_dependent()


def test_bad_batches_get_clear_errors(params):
    x, y = domain_batch(*make_data())  # (24, 5), (24,)
    model = softmax_regression(CorGrad(), params, num_domains=3)
    # a stacked (D, B, ...) batch, as kdg 0.1 took them
    with pytest.raises(ValueError, match=r"expected x of shape \(N, \.\.\.\) and y of shape "
                                         r"\(N,\); got x of shape \(3, 8, 5\) and y of shape "
                                         r"\(3, 8\).*interleave_domains"):
        model.train_on_batch(x.reshape(3, 8, 5), y.reshape(3, 8))
    with pytest.raises(ValueError, match=r"labels must be integers.*float32"):
        softmax_regression(ERM(), params, num_domains=3).train_on_batch(x, y.astype("float32"))
    with pytest.raises(ValueError, match=r"CorGrad compares the gradients of pairs.*num_domains=1"):
        softmax_regression(CorGrad(), params, num_domains=1).train_on_batch(x, y)
    with pytest.raises(ValueError, match=r"x of shape \(N, \.\.\.\) and y of shape \(N,\).*"
                                         r"\(24, 5\) and y of shape \(21,\)"):
        softmax_regression(ERM(), params, num_domains=3).train_on_batch(x, y[:21])


def test_erm_accepts_a_single_domain(params):
    x, y = make_data(num_domains=1)
    model = softmax_regression(ERM(), params)
    train_on_domains(model, x, y)
    for got, want in zip(weights(model), expected_erm(params, x, y, 1)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("algorithm", [Fish(warmup_steps=1), CorGrad(n_parts=2),
                                       GGA(start_step=0, end_step=1, trials=3, perturb="all")])
def test_train_step_compiles_with_xla(data, params, algorithm):
    """jit_compile=True: one XLA program per step on JAX and TensorFlow
    ("auto" leaves TensorFlow on CPU without XLA, as Keras does)."""
    if BACKEND == "torch":
        pytest.skip("jit_compile=True means torch.compile on PyTorch, which kdg does not use")
    x, y = data
    model = softmax_regression(algorithm, params)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS, jit_compile=True)
    reference = softmax_regression(algorithm, params)
    reference.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS, jit_compile=False)
    for m in (model, reference):
        for _ in range(3):
            train_on_domains(m, x, y)
    assert model.jit_compile and not reference.jit_compile
    for a, b in zip(weights(model), weights(reference)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


class CountingERM(ERM):
    """ERM that counts how often its step is traced (run, on PyTorch)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def step(self, ctx, x, y):
        self.calls += 1
        return super().step(ctx, x, y)


@pytest.mark.parametrize("optimizer", [keras.optimizers.SGD, keras.optimizers.Adam])
def test_the_first_step_is_traced_once(data, params, optimizer):
    """The optimizer is built before the step is first traced. On
    TensorFlow a trace that creates the optimizer's variables made
    tf.function trace the whole step again: twice the compile time."""
    x, y = data
    algorithm = CountingERM()
    model = softmax_regression(algorithm, params, optimizer=optimizer(0.1))
    train_on_domains(model, x, y)
    assert algorithm.calls == 1
    train_on_domains(model, x, y)  # run again on PyTorch (eager), not traced again elsewhere
    assert algorithm.calls == (2 if BACKEND == "torch" else 1)


class CountingNet(Net):
    """Counts the Python calls of its forward pass (traces, when compiled)."""

    def __init__(self, counter, **kwargs):
        super().__init__(**kwargs)
        self.counter = counter

    def call(self, inputs, training=False):
        self.counter.calls += 1
        return super().call(inputs, training=training)


def test_the_per_domain_passes_are_traced_once_on_tensorflow(data):
    """On TensorFlow the per-domain pass is traced once and called D times
    (CorGrad's first ResNet-18 step: 6.6 -> 5.6-6.2 s). JAX unrolls the
    passes, and PyTorch runs them eagerly: D calls."""
    x, y = data
    counts = {}
    for name, algorithm in (("erm", ERM()), ("corgrad", CorGrad())):
        counter = types.SimpleNamespace(calls=0)
        model = compile(CountingNet(counter, algorithm=algorithm))
        model(x[0])  # build
        counter.calls = 0
        train_on_domains(model, x, y)
        counts[name] = counter.calls
    assert counts["erm"] >= 1
    passes = 1 if BACKEND == "tensorflow" else len(y)
    assert counts["corgrad"] - counts["erm"] == passes - 1
