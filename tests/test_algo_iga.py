"""IGA against a reference written in plain PyTorch (float64, torch.autograd
with create_graph, as DomainBed's `IGA.update` is written; no kdg code), on
the current backend; and IGA wrapped by GGA."""

import keras
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import softmax_regression, train_steps, weights

import kdg
import reference as ref
from kdg.algorithms import GGA, IGA
from kdg.algorithms.base import HparamError

TOL = dict(rtol=2e-5, atol=2e-6)


def tt(a):
    return torch.tensor(np.asarray(a, dtype=np.float64))


def linear(params, x):
    return x @ params[0] + params[1]


def two_layer_net(params, x):
    return torch.tanh(x @ params[0] + params[1]) @ params[2] + params[3]


def iga_reference(net, params, x, y, penalty_weight):
    """DomainBed's IGA.update: per-domain gradients with create_graph, the mean
    gradient by its own (detached) backward pass, the penalty summed over
    domains and parameters; returns (mean loss, penalty, the objective's
    gradient) as NumPy."""
    leaves = [tt(p).requires_grad_() for p in params]
    total_loss, grads = 0, []
    for d in range(len(y)):
        env_loss = F.cross_entropy(net(leaves, tt(x[d])), torch.as_tensor(y[d], dtype=torch.long))
        total_loss += env_loss
        grads.append(torch.autograd.grad(env_loss, leaves, create_graph=True))
    mean_loss = total_loss / len(y)
    mean_grad = torch.autograd.grad(mean_loss, leaves, retain_graph=True)
    penalty = 0
    for grad in grads:
        for g, mean_g in zip(grad, mean_grad):
            penalty += (g - mean_g).pow(2).sum()
    objective = mean_loss + penalty_weight * penalty
    step = torch.autograd.grad(objective, leaves)
    return float(mean_loss.detach()), float(penalty.detach()), [g.numpy() for g in step]


def assert_weights(model, expected):
    for got, want in zip(weights(model), expected):
        np.testing.assert_allclose(got, want, **TOL)


def two_layer(algorithm, values=None, lr=0.1, optimizer=None):
    rng = np.random.default_rng(0)
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(6, activation="tanh", name="features")(inputs)
    outputs = keras.layers.Dense(4, name="head")(hidden)
    model = kdg.DGModel(inputs, outputs, algorithm=algorithm, seed=0)
    model.set_weights(values or [rng.normal(scale=0.5, size=w.shape).astype("float32")
                                 for w in model.get_weights()])
    model.compile(optimizer=optimizer or keras.optimizers.SGD(lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_iga_one_step_and_three_steps_match_reference(data):
    """Second order through a tanh hidden layer, with Adam: the first step from
    fixed weights (and its logs), then the weights after three steps at
    DomainBed's default penalty weight (1000) and at a small one (0.1)."""
    x, y = data
    model = two_layer(IGA(), optimizer=keras.optimizers.Adam(0.01))
    expected = weights(model)
    logs = train_steps(model, x, y, 1)
    adam = ref.Adam(0.01)
    loss, penalty, grads = iga_reference(two_layer_net, expected, x, y, 1000.0)
    assert penalty > 1e-4  # the domains' gradients differ: the penalty matters
    expected = adam.step(expected, grads)
    assert_weights(model, expected)
    np.testing.assert_allclose(logs["loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(logs["penalty"], penalty, rtol=1e-4)
    train_steps(model, x, y, 2)
    for _ in range(2):
        expected = adam.step(expected, iga_reference(two_layer_net, expected, x, y, 1000.0)[2])
    assert_weights(model, expected)


def test_iga_step_of_softmax_regression_matches_reference(data, params):
    """A plain SGD step, where the gradient is the objective's (no optimizer
    state to hide a wrong penalty weight in)."""
    x, y = data
    model = softmax_regression(IGA(penalty_weight=10.0), params)
    train_steps(model, x, y, 1)
    assert_weights(model, ref.sgd(params, iga_reference(linear, params, x, y, 10.0)[2], 0.1))


def test_gga_wraps_iga_searching_inside_the_window_and_only_stepping_outside(data):
    x, y = data
    gga = lambda: GGA(base=IGA(penalty_weight=10.0), start_step=0, end_step=0, trials=3, rho=0.05)
    # with lr 0 the weights after the step are the search's theta_best
    searched, model = two_layer(gga(), lr=0.0), two_layer(gga())
    train_steps(searched, x, y, 1)
    logs = train_steps(model, x, y, 1)
    assert logs["gga_accepted"] > 0
    best = weights(searched)
    assert np.abs(best[0] - two_layer(IGA()).get_weights()[0]).max() > 0
    base_model = two_layer(IGA(penalty_weight=10.0), values=best)
    train_steps(base_model, x, y, 1)
    assert_weights(model, weights(base_model))  # step 0: the search, then IGA's step
    logs = train_steps(model, x, y, 1)
    train_steps(base_model, x, y, 1)
    assert_weights(model, weights(base_model))  # step 1, outside the window: IGA's step
    assert logs["gga_accepted"] == 0


def test_iga_hyperparameters():
    assert IGA().penalty_weight == 1000.0  # DomainBed's default
    assert IGA.search_space == {"penalty_weight": {"log_uniform": [1, 5]}}
    assert kdg.algorithms.deserialize(kdg.algorithms.serialize(IGA(5.0))) == IGA(5.0)
    with pytest.raises(HparamError, match="IGA penalty_weight must be a number >= 0"):
        IGA(penalty_weight=-1.0)


def test_docs_give_the_signature_with_its_defaults():
    import ast
    import inspect
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "ALGORITHMS.md").read_text()
    heading = re.search(r"^## IGA: `(IGA\(.*\))`$", text, re.M)
    assert heading
    call = ast.parse(heading.group(1), mode="eval").body
    documented = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    assert documented == {p.name: p.default for p in inspect.signature(IGA).parameters.values()}
