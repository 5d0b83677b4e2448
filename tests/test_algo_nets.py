"""MTL, SagNet and ARM against plain PyTorch written from DomainBed's rules
(docs/ALGORITHMS.md; float64, torch.autograd, no kdg code), GGA wrapping
each, and their hyperparameter checks."""

import keras
import numpy as np
import pytest
import torch
from conftest import make_data, train_steps
from two_layer import initial, numpy, step_keys, tt, two_layer

import kdg
import reference as ref
from kdg.algorithms import GGA, MTL, SagNet
from kdg.algorithms.base import HparamError

F = torch.nn.functional
LR = 0.1
TOL = dict(rtol=1e-4, atol=1e-5)


train = train_steps  # per-domain data: x (D, B, ...), y (D, B)


def labels(a):
    return torch.as_tensor(np.asarray(a), dtype=torch.long)


def features(w, x):
    return torch.tanh(x @ w[0] + w[1])


# -- MTL ------------------------------------------------------------------------------


def mtl_reference(params, w2, x, y, noises, ema):
    """DomainBed's MTL.update, SGD: weights, W2, embeddings and loss per step."""
    w = [tt(p).requires_grad_() for p in list(params) + [w2]]
    emb = torch.zeros(len(x), 6, dtype=torch.float64)
    out = []
    for noise in noises:
        loss = 0.0
        for d in range(len(x)):
            f = features(w, tt(x[d]))
            emb[d] = ema * f.mean(0).detach() + (1 - ema) * emb[d]
            # the embedding is overwritten with N(0, 1) noise: the classifier reads [f, noise]
            logits = torch.cat([f, tt(noise[d])], 1) @ torch.cat([w[2], w[4]], 0) + w[3]
            loss = loss + F.cross_entropy(logits, labels(y[d]))  # a sum over domains
        grads = torch.autograd.grad(loss, w)
        w = [(p - LR * g).detach().requires_grad_() for p, g in zip(w, grads)]
        out.append(([p.detach().numpy() for p in w], emb.clone().numpy(), loss.item()))
    return out


def test_mtl_three_steps_match_the_pytorch_reference():
    x, y = make_data(num_domains=3, batch=8, features=5, classes=4)
    model = two_layer(MTL(mtl_ema=0.9))
    w2 = numpy([model.algorithm.w2])[0]
    keys = step_keys(model, 3)
    noises = [numpy([MTL.noise(k, (3, 8, 6))])[0] for k in keys]
    want = mtl_reference(initial(), w2, x, y, noises, 0.9)
    for step, (w, emb, loss) in enumerate(want):
        logs = train(model, x, y, 1)
        got = model.get_weights() + numpy([model.algorithm.w2])
        for a, b in zip(got, w):
            np.testing.assert_allclose(a, b, **TOL, err_msg=f"step {step}")
        np.testing.assert_allclose(numpy([model.algorithm.embeddings])[0], emb, **TOL)
        np.testing.assert_allclose(logs["loss"], loss, rtol=1e-4)
    assert np.abs(noises[0] - noises[1]).max() > 0.1  # fresh noise every step
    assert abs(float(np.std(np.concatenate([n.ravel() for n in noises]))) - 1) < 0.15
    # prediction is the plain network (the embedding term at the noise's mean, 0)
    probe = x[0]
    plain = np.tanh(probe @ model.get_weights()[0] + model.get_weights()[1])
    plain = plain @ model.get_weights()[2] + model.get_weights()[3]
    np.testing.assert_allclose(model.predict(probe, verbose=0), plain, rtol=1e-5, atol=1e-5)


def test_mtl_needs_a_linear_classifier():
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(6, activation="tanh")(inputs)
    outputs = keras.layers.Dense(4, activation="softmax", name="head")(hidden)
    model = kdg.DGModel(inputs, outputs, algorithm=MTL(), num_domains=3)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x, y = make_data()
    with pytest.raises(ValueError, match="needs a linear classifier"):
        train(model, x, y, 1)


# -- SagNet ---------------------------------------------------------------------------


def randomize(z, what, alpha, perm):
    mean, var = z.mean(-1, keepdim=True), z.var(-1, keepdim=True)  # unbiased, per example
    z = (z - mean) / (var + 1e-5).sqrt()
    alpha = tt(alpha)[:, None]
    if what == "style":
        mean = alpha * mean + (1 - alpha) * mean[perm]
        var = alpha * var + (1 - alpha) * var[perm]
    else:
        z = z[perm].detach()
    return z * (var + 1e-5).sqrt() + mean


def sagnet_reference(params, style, x, y, draws, w_adv, lr):
    """DomainBed's SagNet.update with three Adams (Keras' epsilon)."""
    x, y = tt(x.reshape(-1, x.shape[-1])), labels(y.reshape(-1))
    w, s = [np.float64(p) for p in params], [np.float64(p) for p in style]
    adam_f, adam_c, adam_s = ref.Adam(lr), ref.Adam(lr), ref.Adam(lr)
    leaves = lambda a: [tt(p).requires_grad_() for p in a]
    out = []
    for (a_c, p_c), (a_s, p_s), (a_adv, p_adv) in draws:
        t = leaves(w)
        loss_c = F.cross_entropy(randomize(features(t, x), "style", a_c, p_c) @ t[2] + t[3], y)
        g = [v.numpy() for v in torch.autograd.grad(loss_c, t)]
        w = adam_f.step(w[:2], g[:2]) + adam_c.step(w[2:], g[2:])
        t, u = leaves(w), leaves(s)
        loss_s = F.cross_entropy(randomize(features(t, x), "content", a_s, p_s) @ u[0] + u[1], y)
        s = adam_s.step(s, [v.numpy() for v in torch.autograd.grad(loss_s, u)])
        t, u = leaves(w), leaves(s)
        logits = randomize(features(t, x), "content", a_adv, p_adv) @ u[0] + u[1]
        loss_adv = -F.log_softmax(logits, dim=1).mean(1).mean() * w_adv
        g = [v.numpy() for v in torch.autograd.grad(loss_adv, t[:2])]
        w = adam_f.step(w[:2], g) + w[2:]
        out.append((w + s, {"loss_c": loss_c.item(), "loss_s": loss_s.item(),
                            "loss_adv": loss_adv.item()}))
    return out


def test_sagnet_three_steps_match_the_pytorch_reference():
    x, y = make_data(num_domains=3, batch=8, features=5, classes=4)
    model = two_layer(SagNet(sag_w_adv=0.5), optimizer=keras.optimizers.Adam(0.01))
    style = numpy(model.algorithm.style.trainable_variables)
    keys = step_keys(model, 3)
    draws = [[tuple(numpy(d)) for d in SagNet.draws(k, 24)] for k in keys]
    want = sagnet_reference(initial(), style, x, y, draws, 0.5, 0.01)
    for step, (w, losses) in enumerate(want):
        logs = train(model, x, y, 1)
        got = model.get_weights() + numpy(model.algorithm.style.trainable_variables)
        for a, b in zip(got, w):
            np.testing.assert_allclose(a, b, **TOL, err_msg=f"step {step}")
        for key, value in losses.items():
            np.testing.assert_allclose(logs[key], value, rtol=1e-4, atol=1e-6, err_msg=key)
    # three optimizers: f's stepped twice a step, c's and s's once
    assert int(model.optimizer.iterations) == 6
    assert int(model.algorithm.optimizer_c.iterations) == 3
    assert sorted(draws[0][0][1].tolist()) == list(range(24))
    # prediction is the content network on the features, c(f(x))
    w = model.get_weights()
    np.testing.assert_allclose(model.predict(x[0], verbose=0),
                               np.tanh(x[0] @ w[0] + w[1]) @ w[2] + w[3], rtol=1e-5, atol=1e-5)


# -- GGA around each, hyperparameters --------------------------------------------------

BASES = [MTL(mtl_ema=0.5), SagNet(sag_w_adv=0.5)]


@pytest.mark.parametrize("base", BASES, ids=lambda b: b.name)
def test_gga_around_each_searches_then_steps_inside_the_window_and_only_steps_outside(base):
    x, y = make_data()
    config = kdg.algorithms.serialize(base)
    make = lambda: kdg.algorithms.deserialize(config)
    gga = lambda: GGA(base=make(), start_step=0, end_step=0, trials=8, rho=0.05)
    # with lr 0 the weights after the step are the search's theta_best
    searched, model = two_layer(gga(), lr=0.0), two_layer(gga())
    train(searched, x, y, 1)
    logs = train(model, x, y, 1)
    assert logs["gga_accepted"] > 0
    best = searched.get_weights()
    assert np.abs(best[0] - initial()[0]).max() > 0
    base_model = two_layer(make(), params=best)
    train(base_model, x, y, 1)  # step 0: the search, then the base's step

    def same(a, b):
        for u, v in zip(a.get_weights() + numpy(a.algorithm.variables),
                        b.get_weights() + numpy(b.algorithm.variables)):
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)

    same(model, base_model)
    logs = train(model, x, y, 1)
    train(base_model, x, y, 1)
    same(model, base_model)  # step 1, outside the window: the base's step
    assert logs["gga_accepted"] == 0


@pytest.mark.parametrize("base", BASES, ids=lambda b: b.name)
def test_save_load_and_checkpoint_keep_the_algorithm_and_its_state(base, tmp_path):
    """model.save / load_model and the run's checkpoint carry the own
    networks, their optimizers and state: the next step is the same."""
    from kdg import training

    x, y = make_data()
    model = two_layer(kdg.algorithms.deserialize(kdg.algorithms.serialize(base)),
                      optimizer=keras.optimizers.Adam(0.01))
    train(model, x, y, 2)
    model.save(tmp_path / "m.keras")
    training.save_checkpoint(model, tmp_path / "checkpoint.npz", 2)
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.algorithm == model.algorithm
    resumed = two_layer(kdg.algorithms.deserialize(kdg.algorithms.serialize(base)),
                        params=initial(seed=5), optimizer=keras.optimizers.Adam(0.01))
    train(resumed, x, y, 1)  # builds its optimizers; the checkpoint restores everything
    training.load_checkpoint(resumed, tmp_path / "checkpoint.npz")
    train(model, x, y, 1)
    want = model.get_weights() + numpy(model.algorithm.variables)
    assert len(model.algorithm.variables) > 2
    for other in (loaded, resumed):
        train(other, x, y, 1)
        got = other.get_weights() + numpy(other.algorithm.variables)
        assert len(got) == len(want)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cls, field, value", [(MTL, "mtl_ema", 1.5), (SagNet, "sag_w_adv", -1.0)])
def test_a_bad_hyperparameter_is_refused_by_name(cls, field, value):
    with pytest.raises(HparamError, match=f"{cls.__name__} {field} must be") as error:
        cls(**{field: value})
    assert error.value.hparam == field


def test_docs_give_each_signature_with_its_defaults():
    import ast
    import inspect
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "ALGORITHMS.md").read_text()
    for cls in {type(b) for b in BASES}:
        heading = re.search(rf"^## {re.escape(cls.title)}: `({cls.__name__}\(.*\))`$", text, re.M)
        assert heading, cls.title
        call = ast.parse(heading.group(1), mode="eval").body
        documented = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        assert documented == {p.name: p.default for p in inspect.signature(cls).parameters.values()}
        assert cls.name in kdg.algorithms.ALGORITHMS and cls.__name__ in kdg.algorithms.__all__
