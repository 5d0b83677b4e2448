"""DANN and CDANN against plain PyTorch written from DomainBed's AbstractDANN
(docs/ALGORITHMS.md; float64, torch.autograd, no kdg code): both kinds of
step from fixed weights and three steps of weights and both Adams' state,
with and without the gradient penalty; GGA wrapping each. Training,
resuming and saving: tests/test_table_every_algorithm.py; the
hyperparameters' checks: tests/test_hparams.py."""

import keras
import numpy as np
import pytest
import torch
from conftest import make_data, train_steps
from two_layer import initial, numpy, tt

import kdg
import reference as ref
from kdg import rng as kdg_rng
from kdg.algorithms import CDANN, DANN, GGA

F = torch.nn.functional
TOL = dict(rtol=1e-4, atol=1e-5)
WIDTH = 7  # the discriminator's hidden width in these tests


def disc_initial(conditional, depth=3, seed=3):
    """Discriminator kernels and biases (6 -> WIDTH ... -> 3 domains), then
    CDANN's class embeddings (4 classes x 6)."""
    rng = np.random.default_rng(seed)
    sizes = [6] + [WIDTH] * (depth - 1) + [3]
    out = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        out += [rng.normal(scale=0.6, size=(a, b)), rng.normal(scale=0.2, size=(b,))]
    if conditional:
        out.append(rng.normal(size=(4, 6)))
    return [w.astype("float32") for w in out]


def two_layer(algorithm, params=None, disc=None, optimizer=None, seed=0):
    """tanh features (6) and a linear classifier (4 classes), 3 domains; the
    algorithm built, its discriminator set to `disc`."""
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(6, activation="tanh", name="features")(inputs)
    outputs = keras.layers.Dense(4, name="head")(hidden)
    model = kdg.DGModel(inputs, outputs, algorithm=algorithm, seed=seed, num_domains=3)
    model.set_weights(params or initial())
    model.compile(optimizer=optimizer or keras.optimizers.Adam(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model._dg_build_algorithm()
    if disc is not None:
        dann = getattr(model.algorithm, "base", model.algorithm)  # GGA's base
        for v, value in zip(dann.discriminator, disc):
            v.assign(value)
    return model


# -- the reference: DomainBed's AbstractDANN.update, written out -------------------------


def dann_reference(params, disc, x, y, steps, conditional, lam, d_steps, gp, beta1,
                   lr_d, lr_g, wd_d=0.0, wd_g=0.0, keeps=None, rate=0.0):
    """Per step: (generator weights, discriminator weights, logs); and the
    two Adams (Keras' epsilon, betas (beta1, 0.9)). `keeps[step][i]`: the
    dropout mask (kept: True) after the discriminator's layer i."""
    num, batch = y.shape
    X = tt(x.reshape(-1, x.shape[-1]))
    Y = torch.as_tensor(y.reshape(-1), dtype=torch.long)
    L = torch.arange(num).repeat_interleave(batch)  # each example's domain
    w, s = [np.float64(p) for p in params], [np.float64(p) for p in disc]
    adam_d, adam_g = ref.Adam(lr_d, beta1, 0.9), ref.Adam(lr_g, beta1, 0.9)
    layers = (len(s) - conditional) // 2
    out = []
    for update_count in range(1, steps + 1):
        t = [tt(p).requires_grad_() for p in w]
        u = [tt(p).requires_grad_() for p in s]
        z = torch.tanh(X @ t[0] + t[1])
        h = z + u[-1][Y] if conditional else z
        o = h
        for i in range(layers):
            o = o @ u[2 * i] + u[2 * i + 1]
            if i < layers - 1:
                if rate:  # PyTorch's dropout with the given mask
                    o = o * torch.as_tensor(keeps[update_count - 1][i]) / (1 - rate)
                o = torch.relu(o)
        if conditional:
            counts = F.one_hot(Y).sum(dim=0)
            weights = 1.0 / (counts[Y] * counts.shape[0]).double()
            disc_loss = (weights * F.cross_entropy(o, L, reduction="none")).sum()
        else:
            disc_loss = F.cross_entropy(o, L)
        if gp:
            g_in = torch.autograd.grad(F.cross_entropy(o, L, reduction="sum"), [h],
                                       create_graph=True)[0]
            disc_loss = disc_loss + gp * (g_in ** 2).sum(dim=1).mean(dim=0)
        ce = F.cross_entropy(z @ t[2] + t[3], Y)
        gen_loss = ce - lam * disc_loss
        logs = {"loss": ce.item(), "disc_loss": disc_loss.item(), "gen_loss": gen_loss.item(),
                "disc_acc": (o.argmax(1) == L).double().mean().item()}
        if update_count % (1 + d_steps) < d_steps:
            g = [v.numpy() + wd_d * p for v, p in zip(torch.autograd.grad(disc_loss, u), s)]
            s = adam_d.step(s, g)
        else:
            g = [v.numpy() + wd_g * p for v, p in zip(torch.autograd.grad(gen_loss, t), w)]
            w = adam_g.step(w, g)
        out.append((w, s, logs))
    return out, adam_d, adam_g


def moments(optimizer):
    """An optimizer's first and second moments, in its variables' order."""
    return ([v for v in optimizer.variables if v.name.endswith("_momentum")],
            [v for v in optimizer.variables if v.name.endswith("_velocity")])


def dropout_keeps(model, steps, rate, n=24, layers=3):
    """The discriminator's dropout masks of the model's next `steps` steps:
    U[0, 1) >= rate from the step's key (kdg.rng, the same on every backend),
    one draw after each of the `layers` linear layers but the last."""
    copy = keras.random.SeedGenerator(0)
    copy.state.assign(keras.ops.convert_to_numpy(model.dg_seed_generator.state))
    keys = [kdg_rng.key_from_seed_generator(copy) for _ in range(steps)]
    return [[keras.ops.convert_to_numpy(kdg_rng.uniform((n, WIDTH), kdg_rng.fold_in(k, i)))
             >= rate for i in range(layers - 1)] for k in keys]


CASES = [  # (class, d_steps_per_g_step, grad_penalty, mlp_dropout):
    # steps G D G (d=1), D D G (d=2)
    (DANN, 1, 0.5, 0.0), (DANN, 2, 0.0, 0.5), (CDANN, 1, 0.0, 0.0), (CDANN, 2, 0.5, 0.5),
]


@pytest.mark.parametrize("cls, d_steps, gp, rate", CASES, ids=lambda c: getattr(c, "name", c))
def test_three_steps_match_the_pytorch_reference(cls, d_steps, gp, rate):
    """The first step is from fixed weights (a generator step for d=1, a
    discriminator step for d=2); weights, discriminator, logs and both Adams'
    moments after each of three steps."""
    x, y = make_data(num_domains=3, batch=8, features=5, classes=4)
    y[0, :2] = 3  # every class present (DomainBed's one_hot width is max(y) + 1)
    hp = dict(lambda_=0.7, d_steps_per_g_step=d_steps, grad_penalty=gp, beta1=0.5,
              mlp_width=WIDTH, mlp_dropout=rate, lr_d=0.03, lr_g=0.02, weight_decay_d=0.01,
              weight_decay_g=0.002)
    disc = disc_initial(cls.conditional)
    model = two_layer(cls(**hp), disc=disc)
    keeps = dropout_keeps(model, 3, rate)
    want, adam_d, adam_g = dann_reference(
        initial(), disc, x, y, 3, cls.conditional, 0.7, d_steps, gp, 0.5, 0.03, 0.02,
        0.01, 0.002, keeps, rate)
    algo = model.algorithm
    for step, (w, s, logs) in enumerate(want):
        got_logs = train_steps(model, x, y, 1)
        for a, b in zip(model.get_weights() + numpy(algo.discriminator), w + s):
            np.testing.assert_allclose(a, b, **TOL, err_msg=f"step {step}")
        for key, value in logs.items():
            np.testing.assert_allclose(got_logs[key], value, rtol=1e-4, atol=1e-6,
                                       err_msg=f"{key} at step {step}")
    # both Adams' state; the model's compiled optimizer is never stepped
    for optimizer, reference in ((algo.optimizer_d, adam_d), (algo.optimizer_g, adam_g)):
        assert int(optimizer.iterations) == reference.t
        m, v = moments(optimizer)
        for a, b in zip(numpy(m) + numpy(v), reference.m + reference.v):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    assert int(model.optimizer.iterations) == 0
    # prediction is the classifier on the features, c(f(x))
    p = model.get_weights()
    np.testing.assert_allclose(model.predict(x[0], verbose=0),
                               np.tanh(x[0] @ p[0] + p[1]) @ p[2] + p[3], rtol=1e-5, atol=1e-5)


def test_defaults_take_the_model_optimizers_learning_rate_and_weight_decay():
    """lr_d = lr_g = None: the compiled optimizer's learning rate;
    weight_decay_g = None: the model's l2_weight_decay."""
    x, y = make_data(num_domains=3, batch=8, features=5, classes=4)
    disc = disc_initial(False)
    model = two_layer(DANN(mlp_width=WIDTH), disc=disc, optimizer=keras.optimizers.Adam(0.04))
    model.l2_weight_decay = 0.3
    want, _, _ = dann_reference(initial(), disc, x, y, 2, False, 1.0, 1, 0.0, 0.5, 0.04, 0.04,
                                0.0, 0.3)
    train_steps(model, x, y, 2)
    for a, b in zip(model.get_weights() + numpy(model.algorithm.discriminator),
                    want[-1][0] + want[-1][1]):
        np.testing.assert_allclose(a, b, **TOL)


def test_the_discriminator_is_domainbeds_mlp_with_pytorchs_initialization():
    model = two_layer(CDANN(mlp_width=WIDTH, mlp_depth=4))
    shapes = [tuple(v.shape) for v in model.algorithm.discriminator]
    assert shapes == [(6, 7), (7,), (7, 7), (7,), (7, 7), (7,), (7, 3), (3,), (4, 6)]
    for v, fan_in in zip(model.algorithm.discriminator[:8], (6, 6, 7, 7, 7, 7, 7, 7)):
        value = keras.ops.convert_to_numpy(v)
        assert np.abs(value).max() <= 1 / np.sqrt(fan_in) and value.std() > 0
    assert 0.5 < keras.ops.convert_to_numpy(model.algorithm.discriminator[-1]).std() < 1.5


# -- GGA around each, the docs ----------------------------------------

BASES = [DANN(mlp_width=WIDTH), CDANN(mlp_width=WIDTH, d_steps_per_g_step=2)]


@pytest.mark.parametrize("base", BASES, ids=lambda b: b.name)
def test_gga_around_each_searches_then_steps_inside_the_window_and_only_steps_outside(base):
    x, y = make_data()
    config = kdg.algorithms.serialize(base)
    make = lambda: kdg.algorithms.deserialize(config)
    gga = lambda: GGA(base=make(), start_step=0, end_step=0, trials=8, rho=0.05)
    disc = disc_initial(base.conditional)
    # with lr 0 the weights after the step are the search's theta_best
    searched = two_layer(gga(), disc=disc, optimizer=keras.optimizers.Adam(0.0))
    model = two_layer(gga(), disc=disc)
    train_steps(searched, x, y, 1)
    logs = train_steps(model, x, y, 1)
    assert logs["gga_accepted"] > 0
    best = searched.get_weights()
    assert np.abs(best[0] - initial()[0]).max() > 0
    base_model = two_layer(make(), params=best, disc=disc)
    train_steps(base_model, x, y, 1)  # step 0: the search, then the base's step

    def same(a, b):
        for u, v in zip(a.get_weights() + numpy(a.algorithm.variables),
                        b.get_weights() + numpy(b.algorithm.variables)):
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)

    same(model, base_model)
    logs = train_steps(model, x, y, 1)
    train_steps(base_model, x, y, 1)
    same(model, base_model)  # step 1, outside the window: the base's step
    assert logs["gga_accepted"] == 0


def test_docs_give_each_signature_with_its_defaults():
    import ast
    import inspect
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "ALGORITHMS.md").read_text()
    for cls in (DANN, CDANN):
        heading = re.search(rf"^## {re.escape(cls.title)}: `({cls.__name__}\(.*\))`$", text, re.M)
        assert heading, cls.title
        call = ast.parse(heading.group(1), mode="eval").body
        documented = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        assert documented == {p.name: p.default for p in inspect.signature(cls).parameters.values()}
        assert cls.name in kdg.algorithms.ALGORITHMS and cls.__name__ in kdg.algorithms.__all__
