"""CORAL, MMD and RSC against plain PyTorch written from DomainBed's rules
(tanh features, a linear classifier, SGD), GGA wrapping each, and their
hyperparameter checks."""

import keras
import numpy as np
import pytest
import torch
from conftest import make_data, train_steps

import kdg
from kdg.algorithms import CORAL, GGA, MMD, RSC
from kdg.algorithms.base import HparamError

LR = 0.1
TOL = dict(rtol=1e-4, atol=1e-5)  # float32 against float64; the kernel has exp(-1000 d)
F = torch.nn.functional


train = train_steps  # per-domain data: x (D, B, ...), y (D, B)


def initial(seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(5, 6), (6,), (6, 4), (4,)]
    return [rng.normal(scale=0.5, size=s).astype("float32") for s in shapes]


def two_layer(algorithm, params, lr=LR, seed=0):
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(6, activation="tanh", name="features")(inputs)
    outputs = keras.layers.Dense(4, name="head")(hidden)
    model = kdg.DGModel(inputs, outputs, algorithm=algorithm, seed=seed)
    model.set_weights(params)
    model.compile(optimizer=keras.optimizers.SGD(lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


# -- the references: DomainBed's update() written for this network, in float64 ------

def gaussian_kernel(a, b):
    dist = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1).clamp_min(1e-30)
    return sum(torch.exp(-g * dist) for g in [0.001, 0.01, 0.1, 1, 10, 100, 1000])


def mmd(a, b):
    return gaussian_kernel(a, a).mean() + gaussian_kernel(b, b).mean() - 2 * gaussian_kernel(a, b).mean()


def coral(a, b):
    ca, cb = a - a.mean(0, keepdim=True), b - b.mean(0, keepdim=True)
    cov_a, cov_b = ca.t() @ ca / (len(a) - 1), cb.t() @ cb / (len(b) - 1)
    return (a.mean(0) - b.mean(0)).pow(2).mean() + (cov_a - cov_b).pow(2).mean()


def penalty_step(w, x, y, gamma, kernel):
    features = [torch.tanh(torch.tensor(x[d], dtype=torch.float64) @ w[0] + w[1])
                for d in range(len(x))]
    objective = sum(F.cross_entropy(f @ w[2] + w[3], torch.tensor(y[d]).long())
                    for d, f in enumerate(features)) / len(x)
    pairs = [(i, j) for i in range(len(x)) for j in range(i + 1, len(x))]
    penalty = sum(kernel(features[i], features[j]) for i, j in pairs) / len(pairs)
    return objective + gamma * penalty, {"loss": objective.item(), "penalty": penalty.item()}


def rsc_step(w, x, y, f_drop, b_drop):
    all_x = torch.tensor(x.reshape(-1, x.shape[-1]), dtype=torch.float64)
    all_y = torch.tensor(y.reshape(-1)).long()
    all_o = F.one_hot(all_y, 4).double()
    all_f = torch.tanh(all_x @ w[0] + w[1])
    all_p = all_f @ w[2] + w[3]
    all_g = torch.autograd.grad((all_p * all_o).sum(), all_f)[0]
    percentiles = torch.tensor(np.percentile(all_g.numpy(), (1 - f_drop) * 100, axis=1))
    mask_f = all_g.lt(percentiles[:, None]).double()
    all_p_muted = (all_f * mask_f) @ w[2] + w[3]
    changes = ((F.softmax(all_p, 1) * all_o).sum(1)
               - (F.softmax(all_p_muted, 1) * all_o).sum(1))
    mask_b = changes.lt(np.percentile(changes.detach().numpy(), (1 - b_drop) * 100)).double()
    mask = torch.logical_or(mask_f, mask_b.view(-1, 1)).double()
    loss = F.cross_entropy((all_f * mask) @ w[2] + w[3], all_y)
    return loss, {"loss": loss.item()}


def reference(name, params, x, y, steps, **hp):
    """Weights and logs after each of `steps` SGD steps."""
    w = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in params]
    out = []
    for _ in range(steps):
        if name == "rsc":
            loss, logs = rsc_step(w, x, y, hp.get("f", 1 / 3), hp.get("b", 1 / 3))
        else:
            loss, logs = penalty_step(w, x, y, hp.get("gamma", 1.0), mmd if name == "mmd" else coral)
        grads = torch.autograd.grad(loss, w)
        w = [(p - LR * g).detach().requires_grad_(True) for p, g in zip(w, grads)]
        out.append(([p.detach().numpy() for p in w], logs))
    return out


CASES = [
    ("mmd", lambda: MMD(), {}),
    ("mmd", lambda: MMD(mmd_gamma=3.0), {"gamma": 3.0}),
    ("coral", lambda: CORAL(), {}),
    ("coral", lambda: CORAL(mmd_gamma=0.5), {"gamma": 0.5}),
    ("rsc", lambda: RSC(), {}),
    ("rsc", lambda: RSC(rsc_f_drop_factor=0.5, rsc_b_drop_factor=0.2), {"f": 0.5, "b": 0.2}),
]


@pytest.mark.parametrize("name, make, hp", CASES)
def test_three_steps_match_the_pytorch_reference(name, make, hp):
    x, y = make_data(num_domains=3, batch=8, features=5, classes=4)
    params = initial()
    model = two_layer(make(), params)
    want = reference(name, params, x, y, 3, **hp)
    for step, (w, logs) in enumerate(want):
        got = train(model, x, y, 1)
        for a, b in zip(model.get_weights(), w):
            np.testing.assert_allclose(a, b, **TOL, err_msg=f"step {step}")
        for key, value in logs.items():
            np.testing.assert_allclose(got[key], value, rtol=1e-4, err_msg=key)
    # the rule matters: plain ERM from the same weights ends elsewhere
    erm = two_layer("erm", params)
    train(erm, x, y, 3)
    assert max(np.abs(a - b).max() for a, b in zip(erm.get_weights(), model.get_weights())) > 1e-4


@pytest.mark.parametrize("name, make, hp", CASES[::2])
def test_gga_wrapping_each(name, make, hp):
    """Window [1, 1]: step 0 is the base's step; step 1 is the search (a
    model with lr 0 shows where it ends), then the base's step from there."""
    x, y = make_data()
    params = initial()
    window = dict(start_step=1, end_step=1, trials=30, rho=0.05, perturb="all")
    plain, gga = two_layer(make(), params), two_layer(GGA(base=make(), **window), params)
    train(plain, x, y, 1)
    logs = train(gga, x, y, 1)
    for a, b in zip(gga.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert logs["gga_accepted"] == 0
    searched = two_layer(GGA(base=make(), **window), params, lr=0.0)
    train(searched, x, y, 1)  # lr 0: nothing changes
    searched.set_weights(gga.get_weights())
    logs = train(searched, x, y, 1)  # the search from where gga is, with its key
    assert logs["gga_accepted"] > 0 and logs["gga_cos_after"] > logs["gga_cos_before"]
    plain.set_weights(searched.get_weights())  # theta_best
    train(plain, x, y, 1)
    train(gga, x, y, 1)
    for a, b in zip(gga.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_hparams_are_checked():
    with pytest.raises(HparamError, match="mmd_gamma"):
        MMD(mmd_gamma=-1)
    with pytest.raises(HparamError, match="mmd_gamma"):
        CORAL(mmd_gamma=float("nan"))
    with pytest.raises(HparamError, match="rsc_b_drop_factor"):
        RSC(rsc_b_drop_factor=1.5)
    assert RSC().get_config() == {"rsc_f_drop_factor": 1 / 3, "rsc_b_drop_factor": 1 / 3}
    assert kdg.algorithms.get("coral") == CORAL()
