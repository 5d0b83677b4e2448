"""ARM (ARM-CML as DomainBed's ARM: kdg.layers.ARMContext + the arm
algorithm) against plain PyTorch written from DomainBed's rule
(docs/ALGORITHMS.md; float64, torch.autograd, PyTorch's own conv2d and
batch_norm, no kdg code); GGA around it; save/load; the model option."""

import keras
import numpy as np
import pytest
import torch
from conftest import make_data, train_steps

import kdg
from kdg.algorithms import ARM, GGA
from kdg.algorithms.base import HparamError
from kdg.layers import ARMContext

F = torch.nn.functional
LR, WD = 0.1, 0.01
TOL = dict(rtol=1e-4, atol=1e-5)
SHAPE, HIDDEN, K, CLASSES = (4, 4, 1), 3, 3, 3


train = train_steps  # per-domain data: x (D, B, ...), y (D, B)


def numpy(values):
    return [keras.ops.convert_to_numpy(v) for v in values]


def images(num_domains=3, batch=4, seed=0):
    x, y = make_data(num_domains, batch, features=16, classes=CLASSES, seed=seed)
    return x.reshape((num_domains, batch) + SHAPE), y


def arm_model(algorithm, lr=LR, trainables=None, freeze_bn=True):
    """ARMContext (hidden 3, 3x3) -> Flatten -> tanh Dense(5) -> Dense(3),
    SGD, weight decay WD; every trainable weight drawn from a fixed seed.
    freeze_bn=True as kdg.models.build: the context's BatchNorm still trains."""
    inputs = keras.Input(SHAPE)
    h = ARMContext(hidden=HIDDEN, kernel_size=K, name="arm_context")(inputs)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(5, activation="tanh", name="features")(h)
    outputs = keras.layers.Dense(CLASSES, name="head")(h)
    model = kdg.DGModel(inputs, outputs, algorithm=algorithm, seed=0, num_domains=3,
                        l2_weight_decay=WD, freeze_bn=freeze_bn)
    rng = np.random.default_rng(3)
    for v, value in zip(model.trainable_variables, trainables or [None] * 99):
        v.assign(rng.normal(scale=0.4, size=v.shape) if value is None else value)
    model.compile(optimizer=keras.optimizers.SGD(lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def tt(a):
    return torch.tensor(np.asarray(a, dtype=np.float64))


class Reference:
    """DomainBed's ARM.predict / ERM.update in PyTorch (NCHW inside the
    context net), from the Keras model's initial weights."""

    def __init__(self, weights):
        self.w = [tt(v).requires_grad_() for v in weights]
        self.stats = [torch.zeros(HIDDEN, dtype=torch.float64), torch.ones(HIDDEN, dtype=torch.float64),
                      torch.zeros(HIDDEN, dtype=torch.float64), torch.ones(HIDDEN, dtype=torch.float64)]

    def logits(self, x, training, sets=1):
        """The model on x (N, H, W, C): the context network in one pass on all
        N images, its map averaged over each of `sets` consecutive support sets."""
        c1k, c1b, g1, b1, c2k, c2b, g2, b2, c3k, c3b, fk, fb, hk, hb = self.w
        conv = lambda t, k, b: F.conv2d(t, k.permute(3, 2, 0, 1).contiguous(), b, padding=K // 2)
        bn = lambda t, i, g, b: F.batch_norm(t, self.stats[i], self.stats[i + 1], g, b,
                                            training=training, momentum=0.1, eps=1e-5)
        nchw = tt(x).permute(0, 3, 1, 2)
        c = F.relu(bn(conv(nchw, c1k, c1b), 0, g1, b1))
        c = F.relu(bn(conv(c, c2k, c2b), 2, g2, b2))
        maps = conv(c, c3k, c3b)
        context = maps.reshape(sets, -1, *maps.shape[1:]).mean(1, keepdim=True)
        context = context.expand(-1, len(x) // sets, -1, -1, -1).reshape(maps.shape)
        h = torch.cat([nchw, context], 1).permute(0, 2, 3, 1).reshape(len(x), -1)  # NHWC flatten
        return torch.tanh(h @ fk + fb) @ hk + hb

    def step(self, x, y, train_context):
        # DomainBed's ARM.update: one pass on the D*B images (BatchNorm over the whole
        # batch), each domain's B images a support set, the mean CE over the D*B examples
        flat = np.reshape(x, (-1,) + x.shape[2:])
        loss = F.cross_entropy(self.logits(flat, True, sets=len(x)),
                               torch.as_tensor(np.reshape(y, -1)).long())
        grads = torch.autograd.grad(loss, self.w)
        first = 0 if train_context else 10  # the context net is w[:10]
        self.w = [(p - LR * (g + WD * p) if i >= first else p).detach().requires_grad_()
                  for i, (p, g) in enumerate(zip(self.w, grads))]
        return loss.item()

    def numpy(self):
        return [p.detach().numpy() for p in self.w]


@pytest.mark.parametrize("train_context", [False, True])
def test_three_steps_and_prediction_match_the_pytorch_reference(train_context):
    x, y = images()
    model = arm_model(ARM(train_context=train_context))
    start = numpy(model.trainable_variables)
    layer = model.get_layer("arm_context")
    ref = Reference(start)
    for step in range(3):
        loss = ref.step(x, y, train_context)
        logs = train(model, x, y, 1)
        np.testing.assert_allclose(logs["loss"], loss, rtol=1e-5, err_msg=f"step {step}")
        for a, b in zip(numpy(model.trainable_variables), ref.numpy()):
            np.testing.assert_allclose(a, b, **TOL, err_msg=f"step {step}")
        stats = numpy([layer.norm1.moving_mean, layer.norm1.moving_variance,
                       layer.norm2.moving_mean, layer.norm2.moving_variance])
        for a, b in zip(stats, ref.stats):  # PyTorch's running statistics, once a step
            np.testing.assert_allclose(a, b.numpy(), **TOL, err_msg=f"step {step}")
    moved = [np.abs(a - b).max() for a, b in zip(numpy(model.trainable_variables), start)]
    assert (min(moved[:10]) > 0) == train_context and min(moved[10:]) > 0
    # prediction: the whole batch is the support set, BatchNorm's moving statistics
    probe = x.reshape((-1,) + SHAPE)
    want = ref.logits(probe, False).detach().numpy()
    np.testing.assert_allclose(model.predict(probe, batch_size=12, verbose=0), want, **TOL)
    halves = model.predict(probe, batch_size=6, verbose=0)  # two support sets of 6
    assert np.abs(halves - want).max() > 1e-4


def test_a_model_without_the_context_layer_is_refused_with_the_fix():
    inputs = keras.Input(SHAPE)
    outputs = keras.layers.Dense(CLASSES)(keras.layers.Flatten()(inputs))
    model = kdg.DGModel(inputs, outputs, algorithm=ARM(), num_domains=3)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x, y = images()
    with pytest.raises(ValueError, match=r"ARMContext.*arm_context=True.*arm_context: true"):
        train(model, x, y, 1)


def test_gga_around_arm_searches_then_steps_inside_the_window_and_only_steps_outside():
    x, y = images()
    gga = lambda: GGA(base=ARM(), start_step=0, end_step=0, trials=3, rho=0.05)
    searched, model = arm_model(gga(), lr=0.0), arm_model(gga())
    train(searched, x, y, 1)  # lr 0: the weights after the step are the search's best
    logs = train(model, x, y, 1)
    assert logs["gga_accepted"] > 0
    best = numpy(searched.trainable_variables)
    assert np.abs(best[-4] - numpy(model.trainable_variables)[-4]).max() > 0
    base = arm_model(ARM(), trainables=best)
    train(base, x, y, 1)  # step 0: the search, then ARM's step

    def same(a, b):
        for u, v in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)

    same(model, base)
    logs = train(model, x, y, 1)
    train(base, x, y, 1)
    same(model, base)  # step 1, outside the window: ARM's step
    assert logs["gga_accepted"] == 0


def test_save_and_load_keep_the_layer_the_algorithm_and_the_next_step(tmp_path):
    x, y = images()
    model = arm_model(ARM())
    train(model, x, y, 2)
    model.save(tmp_path / "arm.keras")
    loaded = keras.models.load_model(tmp_path / "arm.keras")
    assert loaded.algorithm == ARM() and loaded.get_layer("arm_context").hidden == HIDDEN
    probe = x[1]
    np.testing.assert_allclose(loaded.predict(probe, verbose=0), model.predict(probe, verbose=0),
                               rtol=1e-5, atol=1e-6)
    train(model, x, y, 1)
    train(loaded, x, y, 1)
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_models_build_puts_the_context_first_and_widens_a_pretrained_first_convolution():
    from kdg.models import backbones

    model = kdg.models.build("small_cnn", num_classes=CLASSES, input_shape=(8, 8, 2),
                             arm_context=True, cnn_filters=(8,))
    layer = model.get_layer("arm_context")
    assert (layer.hidden, layer.kernel_size) == (64, 5)  # DomainBed's ContextNet
    assert tuple(model.get_layer("backbone").input.shape) == (None, 8, 8, 3)
    source = backbones.small_cnn((8, 8, 2), cnn_filters=(8,))
    wide = backbones.widen_input(source, backbones.small_cnn((8, 8, 3), cnn_filters=(8,)))
    kernel, old = numpy([wide.weights[0], source.weights[0]])
    np.testing.assert_array_equal(kernel[:, :, :2], old)
    np.testing.assert_array_equal(kernel[:, :, 2], old[:, :, 0])  # channel i <- i mod C
    for a, b in zip(wide.get_weights()[1:], source.get_weights()[1:]):
        np.testing.assert_array_equal(a, b)
    assert kdg.recipes.ModelConfig(arm_context=True).arm_context


def test_a_bad_hyperparameter_is_refused_by_name_and_the_docs_give_the_signature():
    import re
    from pathlib import Path

    with pytest.raises(HparamError, match="ARM train_context must be true or false") as error:
        ARM(train_context="yes")
    assert error.value.hparam == "train_context"
    with pytest.raises(ValueError, match="odd kernel_size"):
        ARMContext(kernel_size=4)
    text = (Path(__file__).parents[1] / "docs" / "ALGORITHMS.md").read_text()
    assert re.search(r"^## ARM: `ARM\(train_context=False\)`$", text, re.M)
    assert kdg.algorithms.ALGORITHMS["arm"] is ARM and ARM.search_space == {}
