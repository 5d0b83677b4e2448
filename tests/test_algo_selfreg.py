"""SelfReg against plain PyTorch written from DomainBed's `SelfReg.update`
(float64, torch.autograd, no kdg code), its draws against a NumPy copy of
kdg's generator, GGA wrapping it, and its hyperparameter checks (training,
resuming and saving through `kdg train`: tests/test_table_every_algorithm.py)."""

import keras
import numpy as np
import pytest
import torch
from conftest import make_data, train_steps
from test_rng import fold_in as np_fold_in
from test_rng import uniform as np_uniform
from two_layer import initial, numpy, step_keys, tt, two_layer

import kdg
from kdg import rng as kdg_rng
from kdg.algorithms import GGA, SelfReg
from kdg.algorithms.base import HparamError

F = torch.nn.functional
LR = 0.1
TOL = dict(rtol=1e-4, atol=1e-5)

train = train_steps  # per-domain data: x (D, B, ...), y (D, B)


# -- the draws -----------------------------------------------------------------------


def test_draws_pair_each_example_with_examples_of_its_class_as_numpy_draws_them():
    """The class order is the stable sort of the labels; partner i is the
    order of (label, uniform number of stream i), the uniform numbers those
    of a NumPy copy of kdg's generator; lam follows Beta(alpha, alpha)."""
    y = np.array([2, 0, 1, 2, 2, 0, 3, 1, 0, 2, 2, 1, 0, 0, 2, 1], np.int32)
    n = len(y)
    key = np.array([0, 7], np.int32)
    order, first, second, lam = numpy(SelfReg().draws(
        keras.ops.convert_to_tensor(key), y))
    np.testing.assert_array_equal(order, np.argsort(y, kind="stable"))
    for i, partner in enumerate((first, second)):
        u = np_uniform(n, np_fold_in(key.astype(np.uint32), i), 0)
        np.testing.assert_array_equal(partner, np.lexsort((u, y)))
        assert sorted(partner.tolist()) == list(range(n))
        np.testing.assert_array_equal(y[partner], y[order])  # partners share the class
    assert np.any(first != order) and np.any(first != second)
    assert 0.0 < float(lam) < 1.0
    # lam ~ Beta(alpha, alpha) from the key's own stream (kdg.rng.beta,
    # whose distribution tests/test_algo_simple.py checks)
    want = kdg_rng.beta((), kdg_rng.fold_in(keras.ops.convert_to_tensor(key), 2), 2.0, 2.0)
    got = numpy(SelfReg(alpha=2.0).draws(keras.ops.convert_to_tensor(key), y))[3]
    np.testing.assert_allclose(got, numpy([want])[0], rtol=1e-6)


# -- the reference: DomainBed's SelfReg.update for this network ---------------------------


def cdpl(w, h):
    """Linear-BN-ReLU-Linear-BN-ReLU-Linear-BN, BatchNorm in training mode."""
    for i in range(3):
        kernel, bias, gamma, beta = w[4 * i:4 * i + 4]
        h = F.batch_norm(h @ kernel + bias, None, None, gamma, beta, training=True, eps=1e-5)
        if i < 2:
            h = F.relu(h)
    return h


def selfreg_reference(params, proj, x, y, draws, train_proj=False, feature_weight=0.3):
    """Weights, projection and logs after each step, SGD."""
    all_x, all_y = tt(x.reshape(-1, x.shape[-1])), torch.as_tensor(y.reshape(-1)).long()
    w = [tt(p).requires_grad_() for p in params]
    pw = [tt(p).requires_grad_() for p in proj]
    out = []
    for order, first, second, lam in draws:
        lam = float(lam)
        # cluster into same-class groups: DomainBed sorts by label
        sorted_y, indices = torch.sort(all_y, stable=True)
        np.testing.assert_array_equal(indices.numpy(), order)
        position = np.argsort(order)  # where each example sits in the sorted batch
        shuffle_1, shuffle_2 = position[first], position[second]
        feat = torch.tanh(all_x[indices] @ w[0] + w[1])
        proj_ = cdpl(pw, feat)
        output = feat @ w[2] + w[3]
        output_2, feat_2 = output[shuffle_1], proj_[shuffle_1]
        output_3 = lam * output_2 + (1 - lam) * output[shuffle_2]
        feat_3 = lam * feat_2 + (1 - lam) * proj_[shuffle_2]
        l_ind_logit, l_hdl_logit = F.mse_loss(output, output_2), F.mse_loss(output, output_3)
        l_ind_feat = feature_weight * F.mse_loss(feat, feat_2)
        l_hdl_feat = feature_weight * F.mse_loss(feat, feat_3)
        cl_loss = F.cross_entropy(output, sorted_y)
        c_scale = min(cl_loss.item(), 1.0)
        loss = cl_loss + c_scale * (lam * (l_ind_logit + l_ind_feat)
                                    + (1 - lam) * (l_hdl_logit + l_hdl_feat))
        leaves = w + pw if train_proj else w
        grads = torch.autograd.grad(loss, leaves)
        new = [(p - LR * g).detach().requires_grad_() for p, g in zip(leaves, grads)]
        w, pw = new[:4], (new[4:] if train_proj else pw)
        out.append(([p.detach().numpy() for p in w + pw],
                    {"loss": loss.item(), "nll": cl_loss.item(), "selfreg_scale": c_scale}))
    return out


def fitted():
    """Initial weights whose classifier fits the data (cross-entropy below 1:
    the regularizer's scale is the cross-entropy itself): 100 NumPy gradient
    steps on the classifier."""
    x, y = make_data(num_domains=3, batch=8, features=5, classes=4)
    params = initial()
    f, target = np.tanh(x.reshape(-1, 5) @ params[0] + params[1]), np.eye(4)[y.reshape(-1)]
    w, b = params[2].astype(np.float64), params[3].astype(np.float64)
    for _ in range(100):
        z = np.exp(f @ w + b)
        g = (z / z.sum(1, keepdims=True) - target) / len(f)
        w, b = w - 2.0 * f.T @ g, b - 2.0 * g.sum(0)
    return params[:2] + [w.astype("float32"), b.astype("float32")]


CASES = {
    "default": (lambda: SelfReg(), initial, 3),
    "train_projection": (lambda: SelfReg(feature_weight=0.7, train_projection=True), fitted, 2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_steps_match_the_pytorch_reference(case):
    make, start, steps = CASES[case]
    x, y = make_data(num_domains=3, batch=8, features=5, classes=4)
    algorithm = make()
    model = two_layer(algorithm, start())
    proj = numpy(algorithm.projection)
    assert [p.shape for p in proj[::4]] == [(6, 12), (12, 12), (12, 6)]  # H = 2F
    keys = step_keys(model, steps)
    draws = [numpy(algorithm.draws(k, y.reshape(-1))) for k in keys]
    want = selfreg_reference(start(), proj, x, y, draws, algorithm.train_projection,
                             algorithm.feature_weight)
    for step, (w, logs) in enumerate(want):
        got_logs = train(model, x, y, 1)
        got = model.get_weights() + numpy(algorithm.projection)
        for a, b in zip(got, w):
            np.testing.assert_allclose(a, b, **TOL, err_msg=f"step {step}")
        for key, value in logs.items():
            np.testing.assert_allclose(got_logs[key], value, rtol=1e-4, err_msg=key)
    if case == "default":
        assert want[0][1]["selfreg_scale"] == 1.0
    else:
        assert want[0][1]["selfreg_scale"] < 0.9  # min(CE, 1) is CE here
    moved = max(np.abs(a - b).max() for a, b in zip(numpy(algorithm.projection), proj))
    assert (moved > 1e-4) == algorithm.train_projection  # DomainBed's projection stays put
    # the projection (and its optimizer, when trained) are the algorithm's
    # variables: saved with the model and in the run's checkpoint
    own = {id(v) for v in algorithm.variables}
    assert all(id(v) in own for v in algorithm.projection)
    assert (len(own) > 12) == algorithm.train_projection
    assert min(r["loss"] - r["nll"] for _, r in want) > 1e-3  # the regularizer counts
    # prediction is the model, classify(f(x))
    w = model.get_weights()
    np.testing.assert_allclose(model.predict(x[0], verbose=0),
                               np.tanh(x[0] @ w[0] + w[1]) @ w[2] + w[3], rtol=1e-5, atol=1e-5)


# -- GGA around it, saving, hyperparameters -------------------------------------------


def test_gga_around_selfreg_searches_then_steps_inside_the_window_and_only_steps_outside():
    x, y = make_data()
    gga = lambda: GGA(base=SelfReg(), start_step=0, end_step=0, trials=8, rho=0.05)  # noqa: E731
    # with lr 0 the weights after the step are the search's theta_best
    searched, model = two_layer(gga(), lr=0.0), two_layer(gga())
    train(searched, x, y, 1)
    logs = train(model, x, y, 1)
    assert logs["gga_accepted"] > 0
    best = searched.get_weights()
    assert np.abs(best[0] - initial()[0]).max() > 0
    base_model = two_layer(SelfReg(), params=best)
    train(base_model, x, y, 1)  # step 0: the search, then SelfReg's step

    def same(a, b):
        for u, v in zip(a.get_weights() + numpy(a.algorithm.variables),
                        b.get_weights() + numpy(b.algorithm.variables)):
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)

    same(model, base_model)
    logs = train(model, x, y, 1)
    train(base_model, x, y, 1)
    same(model, base_model)  # step 1, outside the window: SelfReg's step
    assert logs["gga_accepted"] == 0


@pytest.mark.parametrize("field, value", [("feature_weight", -0.1), ("alpha", 0.0),
                                          ("train_projection", "yes")])
def test_a_bad_hyperparameter_is_refused_by_name(field, value):
    with pytest.raises(HparamError, match=f"SelfReg {field} must be") as error:
        SelfReg(**{field: value})
    assert error.value.hparam == field
