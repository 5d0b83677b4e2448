"""An algorithm that owns a trainable network, its own optimizer and
non-trainable state (what SagNet, ARM, MTL and GroupDRO need): carried by
JAX's stateless step, saved by model.save and by the run's checkpoint,
restored, and the steps after a reload identical to uninterrupted ones."""

import keras
import numpy as np
from conftest import make_data, train_steps
from keras import ops

import kdg
from kdg import training
from kdg.algorithms import ERM
from kdg.algorithms.base import Algorithm, flatten_domains, number

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


train = train_steps  # per-domain data: x (D, B, ...), y (D, B)


class AuxHead(Algorithm):
    """ERM on the model, and an auxiliary head on the (fixed) features,
    trained by its own Adam; `ema` is a moving average of its loss."""

    name = "auxhead"
    hparams = {"lr": number(0, low_open=True)}

    def __init__(self, lr=0.1):
        self.check_hparams(locals())
        self.lr = float(lr)

    def build(self, model):
        dim = model.dg_split.featurizer.output.shape[-1]
        classes = model.outputs[0].shape[-1]
        self.head = keras.layers.Dense(classes, name="aux_head")
        self.head.build((None, dim))
        self.optimizer = keras.optimizers.Adam(self.lr)
        self.optimizer.build(self.head.trainable_variables)
        self.ema = keras.Variable(0.0, trainable=False, name="aux_ema")

    @property
    def variables(self):
        return list(self.head.variables) + list(self.optimizer.variables) + [self.ema]

    def step(self, ctx, x, y):
        features, _ = ctx.features(flatten_domains(x))
        labels = flatten_domains(y)

        def aux_loss(own):
            logits = self.head.stateless_call(own, [], features)[0]
            return ops.mean(LOSS(labels, logits)), None

        own = [v.value for v in self.head.trainable_variables]
        (loss, _), grads = ctx.value_and_grad(aux_loss)(own)
        self.optimizer.apply(grads, self.head.trainable_variables)
        ctx.assign([self.ema], [0.5 * self.ema.value + 0.5 * loss])
        logs, y_pred = ERM().step(ctx, x, y)
        return {**logs, "aux_loss": loss}, y_pred

    def get_config(self):
        return {"lr": self.lr}


def make(seed=0):
    rng = np.random.default_rng(seed)
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(6, activation="tanh", name="hidden")(inputs)
    outputs = keras.layers.Dense(4, name="head")(hidden)
    model = kdg.DGModel(inputs, outputs, algorithm=AuxHead(), seed=0)
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                       for w in model.get_weights()])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    return model


def numpy(variables):
    return [ops.convert_to_numpy(v) for v in variables]


def own_head(model, rng_seed=1):
    """Fixed initial weights for the algorithm's head (built on first use)."""
    model.algorithm.head.set_weights(
        [np.random.default_rng(rng_seed).normal(scale=0.5, size=w.shape).astype("float32")
         for w in model.algorithm.head.get_weights()])


def test_owned_network_optimizer_and_state_train_save_and_resume(tmp_path, monkeypatch):
    monkeypatch.setitem(kdg.algorithms.ALGORITHMS, AuxHead.name, AuxHead)  # for load_model
    x, y = make_data()
    model = make()
    train(model, x, y, 1)  # builds the algorithm
    own_head(model)
    first = numpy(model.algorithm.variables)

    # its head is trained by its own optimizer, its ema follows the logged loss
    logs = [train(model, x, y, 1) for _ in range(2)]
    ema = 0.5 * (0.5 * float(first[-1]) + 0.5 * logs[0]["aux_loss"]) + 0.5 * logs[1]["aux_loss"]
    np.testing.assert_allclose(float(ops.convert_to_numpy(model.algorithm.ema)), ema, rtol=1e-5)
    assert int(ops.convert_to_numpy(model.algorithm.optimizer.iterations)) == 3
    assert np.abs(numpy(model.algorithm.head.trainable_variables)[0] - first[0]).max() > 1e-3
    # counted with the model's state, not its weights
    assert len(model.weights) == 4
    assert all(any(v is w for w in model.non_trainable_variables)
               for v in model.algorithm.variables)

    model.save(tmp_path / "m.keras")
    training.save_checkpoint(model, tmp_path / "checkpoint.npz", 3)
    want_after = numpy(model.algorithm.variables)
    train(model, x, y, 2)
    want = numpy(model.variables) + numpy(model.algorithm.variables)

    loaded = keras.models.load_model(tmp_path / "m.keras")
    for a, b in zip(numpy(loaded.algorithm.variables), want_after):
        np.testing.assert_array_equal(a, b)
    resumed = make(seed=7)  # other weights: the checkpoint restores them all
    train(resumed, x, y, 1)
    training.load_checkpoint(resumed, tmp_path / "checkpoint.npz")
    for other in (loaded, resumed):
        train(other, x, y, 2)
        got = numpy(other.variables) + numpy(other.algorithm.variables)
        assert len(got) == len(want)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
