"""Fishr against plain PyTorch float64 written from DomainBed's rule, with the
per-example gradients taken by autograd one example at a time (as BackPACK
gives them), never by the closed form; GGA wrapping it; its checks."""

import keras
import numpy as np
import pytest
import torch
from conftest import make_data, train_steps
from two_layer import initial

import kdg
from kdg.algorithms import GGA, Fishr
from kdg.algorithms.base import HparamError
from kdg.algorithms.fishr import gradient_variance
from kdg.optimizers import TorchAdam

F = torch.nn.functional
LR = 0.01
TOL = dict(rtol=2e-4, atol=2e-6)  # float32 against float64


def two_layer(algorithm, params, optimizer=None):
    """tanh features (6) and a linear classifier (4 classes), DomainBed's split."""
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(6, activation="tanh", name="features")(inputs)
    outputs = keras.layers.Dense(4, name="head")(hidden)
    model = kdg.DGModel(inputs, outputs, algorithm=algorithm, seed=0)
    model.set_weights(params)
    model.compile(optimizer=optimizer or TorchAdam(LR),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


# -- the reference: DomainBed's Fishr.update for this network, in float64 ------------


def per_example_grads(logits, labels, head):
    """(N, P): each example's gradient of its own cross-entropy w.r.t. the
    classifier's weights, one autograd call per example (kept differentiable)."""
    rows = []
    for n in range(len(labels)):
        loss = F.cross_entropy(logits[n:n + 1], labels[n:n + 1], reduction="sum")
        grads = torch.autograd.grad(loss, head, create_graph=True)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


class Reference:
    """Weights, Adam, and each domain's moving average of the gradient variance."""

    def __init__(self, params, lam, anneal, ema):
        self.w = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in params]
        self.lam, self.anneal, self.ema = lam, anneal, ema
        self.adam = torch.optim.Adam(self.w, lr=LR)
        self.ma = None  # (D, P), detached
        self.step = 0

    def update(self, x, y):
        num, batch = y.shape
        w = self.w
        all_x = torch.tensor(x.reshape(num * batch, -1), dtype=torch.float64)
        all_y = torch.tensor(y.reshape(-1)).long()
        features = torch.tanh(all_x @ w[0] + w[1])
        logits = features @ w[2] + w[3]
        grads = per_example_grads(logits, all_y, [w[2], w[3]])
        variances = []
        for d in range(num):
            g = grads[d * batch:(d + 1) * batch]
            variances.append((g - g.mean(0, keepdim=True)).pow(2).mean(0))
        variances = torch.stack(variances)
        previous = torch.zeros_like(variances) if self.ma is None else self.ma
        averaged = self.ema * previous + (1 - self.ema) * variances
        self.ma = averaged.detach()
        corrected = averaged / (1 - self.ema)
        penalty = sum((corrected[d] - corrected.mean(0)).pow(2).mean() for d in range(num)) / num
        nll = F.cross_entropy(logits, all_y)
        weight = self.lam if self.step >= self.anneal else 0.0
        if self.step == self.anneal != 0:
            self.adam = torch.optim.Adam(self.w, lr=LR)  # "Reset Adam"
        self.adam.zero_grad()
        (nll + weight * penalty).backward()
        self.adam.step()
        self.step += 1
        return {"loss": (nll + weight * penalty).item(), "nll": nll.item(),
                "fishr_penalty": penalty.item()}

    def weights(self):
        return [p.detach().numpy() for p in self.w]

    def state(self):
        """The moving averages as kdg stores them: (D, F, K) and (D, K)."""
        ma = self.ma.numpy()
        return [ma[:, :24].reshape(-1, 6, 4), ma[:, 24:]]


def check(model, ref, logs, want, step):
    for a, b in zip(model.get_weights(), ref.weights()):
        np.testing.assert_allclose(a, b, **TOL, err_msg=f"weights, step {step}")
    for a, b in zip(model.algorithm.variables, ref.state()):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), b, **TOL,
                                   err_msg=f"moving average, step {step}")
    for key, value in want.items():
        np.testing.assert_allclose(logs[key], value, rtol=2e-4, atol=1e-7, err_msg=key)


# -- the closed form -----------------------------------------------------------------


def test_closed_form_variance_matches_per_example_autograd():
    rng = np.random.default_rng(3)
    num, batch, feat, classes = 2, 7, 5, 3
    f = rng.normal(size=(num, batch, feat))
    w, b = rng.normal(size=(feat, classes)), rng.normal(size=(classes,))
    y = rng.integers(0, classes, size=(num, batch))
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    want_w, want_b = [], []
    for d in range(num):
        logits = torch.tensor(f[d]) @ tw + tb
        g = per_example_grads(logits, torch.tensor(y[d]).long(), [tw, tb]).detach()
        v = (g - g.mean(0)).pow(2).mean(0).numpy()
        want_w.append(v[:feat * classes].reshape(feat, classes))
        want_b.append(v[feat * classes:])
    z = f @ w + b
    p = np.exp(z - z.max(-1, keepdims=True))
    e = p / p.sum(-1, keepdims=True) - np.eye(classes)[y]
    var_w, var_b = gradient_variance(keras.ops.convert_to_tensor(f.astype("float32")),
                                     keras.ops.convert_to_tensor(e.astype("float32")))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(var_w), np.stack(want_w),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(var_b), np.stack(want_b),
                               rtol=1e-4, atol=1e-6)


# -- the step ------------------------------------------------------------------------


def test_one_step_with_the_penalty_on_matches_the_reference():
    x, y = make_data(num_domains=3, batch=8, features=5, classes=4)
    params = initial()
    model = two_layer(Fishr(penalty_weight=50.0, anneal_steps=0, ema=0.9), params)
    ref = Reference(params, lam=50.0, anneal=0, ema=0.9)
    want = ref.update(x, y)
    logs = train_steps(model, x, y, 1)
    check(model, ref, logs, want, 0)
    assert want["fishr_penalty"] > 1e-4  # the penalty is not trivially 0 here


def test_three_steps_warm_up_reset_and_moving_average_match_the_reference():
    """anneal_steps=1: step 0 without the penalty, step 1 resets Adam and turns
    it on, step 2 keeps it; the moving average runs all along."""
    x, y = make_data(num_domains=3, batch=8, features=5, classes=4)
    params = initial()
    model = two_layer(Fishr(penalty_weight=100.0, anneal_steps=1, ema=0.8), params)
    ref = Reference(params, lam=100.0, anneal=1, ema=0.8)
    for step in range(3):
        want = ref.update(x, y)
        logs = train_steps(model, x, y, 1)
        check(model, ref, logs, want, step)
    # the penalty matters: ERM from the same weights ends elsewhere
    erm = two_layer("erm", params)
    train_steps(erm, x, y, 3)
    assert max(np.abs(a - b).max() for a, b in zip(erm.get_weights(), model.get_weights())) > 1e-4


def test_gga_wrapping_fishr():
    """Window [1, 1]: step 0 is Fishr's step; step 1 is the search (a model with
    lr 0 shows where it ends), then Fishr's step from there."""
    x, y = make_data()
    params = initial()
    make = lambda: Fishr(penalty_weight=10.0, anneal_steps=0)
    window = dict(start_step=1, end_step=1, trials=20, rho=0.05, perturb="all")
    sgd = lambda lr=0.1: keras.optimizers.SGD(lr)
    plain = two_layer(make(), params, sgd())
    gga = two_layer(GGA(base=make(), **window), params, sgd())
    train_steps(plain, x, y, 1)
    logs = train_steps(gga, x, y, 1)
    for a, b in zip(gga.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert logs["gga_accepted"] == 0
    searched = two_layer(GGA(base=make(), **window), params, sgd(0.0))
    train_steps(searched, x, y, 1)  # lr 0: the weights stay; the moving average as gga's
    searched.set_weights(gga.get_weights())
    logs = train_steps(searched, x, y, 1)  # the search from where gga is, with its key
    assert logs["gga_accepted"] > 0 and logs["gga_cos_after"] > logs["gga_cos_before"]
    plain.set_weights(searched.get_weights())  # theta_best
    train_steps(plain, x, y, 1)
    train_steps(gga, x, y, 1)
    for a, b in zip(gga.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(gga.algorithm.base.variables, plain.algorithm.variables):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b),
                                   rtol=1e-5, atol=1e-7)


# -- checks --------------------------------------------------------------------------


def test_hparams_and_config():
    assert Fishr().get_config() == {"penalty_weight": 1000.0, "anneal_steps": 1500,
                                    "ema": 0.95, "num_domains": None}
    assert kdg.algorithms.get("fishr") == Fishr()
    with pytest.raises(HparamError, match="ema"):
        Fishr(ema=1.0)
    with pytest.raises(HparamError, match="penalty_weight"):
        Fishr(penalty_weight=-1.0)
    with pytest.raises(HparamError, match="anneal_steps"):
        Fishr(anneal_steps=2.5)
    # docs/ALGORITHMS.md documents the constructor's signature
    import ast
    import inspect
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "ALGORITHMS.md").read_text()
    heading = re.search(r"^## Fishr: `(Fishr\(.*\))`$", text, re.M)
    documented = {k.arg: ast.literal_eval(k.value)
                  for k in ast.parse(heading.group(1), mode="eval").body.keywords}
    assert documented == {p.name: p.default for p in inspect.signature(Fishr).parameters.values()}


def test_refuses_a_classifier_without_closed_form():
    x, y = make_data()
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(6, activation="tanh")(inputs)
    outputs = keras.layers.Dense(4, activation="softmax", name="head")(hidden)
    model = kdg.DGModel(inputs, outputs, algorithm=Fishr(), seed=0)
    model.compile(optimizer="sgd",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match="Fishr computes the per-example gradients.*one Dense layer without activation"):
        train_steps(model, x, y, 1)


@pytest.mark.skipif(keras.backend.backend() != "torch",
                    reason="checks the plain PyTorch reference: once, in the torch session")
def test_the_bench_reference_trains_as_kdg_does():
    """`kdg bench`'s PyTorch Fishr (per-example backward passes, DomainBed's
    code) and kdg's closed form give the same weights over three steps with the
    warm-up and the reset inside them."""
    from kdg.bench import torch_reference as bench_ref

    x, y = make_data(num_domains=3, batch=8, features=5, classes=4)
    params = initial()
    hp = dict(penalty_weight=100.0, anneal_steps=1, ema=0.8)
    model = two_layer(Fishr(**hp), params)
    torch.manual_seed(0)
    net = bench_ref.Classifier(torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh()),
                               torch.nn.Linear(6, 4)).double()
    bench_ref.set_weights_from_numpy(net, [bench_ref.keras_to_torch_layout(p) for p in params])
    algo = bench_ref.make_algorithm("fishr", net, dict(hp, lr=LR))
    for step in range(3):
        want = algo.update(x.astype("float64"), y)
        logs = train_steps(model, x, y, 1)
        np.testing.assert_allclose(logs["fishr_penalty"], want["fishr_penalty"], rtol=2e-4)
        got = [bench_ref.keras_to_torch_layout(w) for w in model.get_weights()]
        for a, b in zip(got, bench_ref.get_weights_numpy(net)):
            np.testing.assert_allclose(a, b, **TOL, err_msg=f"step {step}")
