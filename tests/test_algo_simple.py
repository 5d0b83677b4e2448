"""GroupDRO, IRM, VREx, Mixup and MLDG against references written in plain
PyTorch from the rules of docs/ALGORITHMS.md (float64, torch.autograd; no
kdg code), on the current backend; and each wrapped by GGA."""

import keras
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import softmax_regression, weights

import reference as ref
from kdg.algorithms import GGA
from kdg.algorithms.base import HparamError
from kdg.algorithms import VREx

TOL = dict(rtol=2e-5, atol=2e-6)


def train(model, x, y, steps):  # x (D, B, ...), y (D, B)
    logs = None
    for _ in range(steps):
        logs = model.train_on_batch(x, y, return_dict=True)
    return logs


# -- the reference: softmax regression (or any net(params, x)) in PyTorch ----------


def tt(a):
    return torch.tensor(np.asarray(a, dtype=np.float64))


def linear(params, x):
    return x @ params[0] + params[1]


def ce(logits, y):
    return F.cross_entropy(logits, torch.as_tensor(np.asarray(y), dtype=torch.long))


def value_and_grads(objective, params):
    """objective(list of torch leaves) -> (scalar, aux); numpy value, grads, aux."""
    leaves = [tt(p).requires_grad_() for p in params]
    value, aux = objective(leaves)
    grads = torch.autograd.grad(value, leaves)
    return float(value.detach()), [g.numpy() for g in grads], aux


def sgd(params, grads, lr):
    return [p - lr * g for p, g in zip(params, grads)]


def assert_weights(model, expected):
    for got, want in zip(weights(model), expected):
        np.testing.assert_allclose(got, want, **TOL)


# -- VREx ---------------------------------------------------------------------------


def vrex_objective(x, y, weight, net=linear):
    def objective(p):
        losses = torch.stack([ce(net(p, tt(x[d])), y[d]) for d in range(len(y))])
        return losses.mean() + weight * ((losses - losses.mean()) ** 2).mean(), losses
    return objective


def test_vrex_one_step_matches_reference(data, params):
    x, y = data
    model = softmax_regression(VREx(penalty_weight=10.0, anneal_steps=0), params)
    logs = train(model, x, y, 1)
    loss, grads, losses = value_and_grads(vrex_objective(x, y, 10.0), params)
    assert_weights(model, sgd(params, grads, 0.1))
    np.testing.assert_allclose(logs["loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(logs["nll"], float(losses.mean()), rtol=1e-5)
    np.testing.assert_allclose(logs["penalty"], float(losses.var(unbiased=False)), rtol=1e-4)


def test_vrex_anneal_switches_the_weight_and_resets_adam(data, params):
    x, y = data
    model = softmax_regression(VREx(penalty_weight=10.0, anneal_steps=2), params,
                               keras.optimizers.Adam(0.01))
    train(model, x, y, 3)
    adam, expected = ref.Adam(0.01), params
    for step in range(3):
        if step == 2:
            adam = ref.Adam(0.01)  # DomainBed's "Reset Adam" at the anneal step
        _, grads, _ = value_and_grads(vrex_objective(x, y, 1.0 if step < 2 else 10.0), expected)
        expected = adam.step(expected, grads)
    assert_weights(model, expected)
    assert int(model.optimizer.iterations) == 1
