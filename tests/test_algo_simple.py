"""GroupDRO, IRM, VREx, Mixup and MLDG against references written in plain
PyTorch from the rules of docs/ALGORITHMS.md (float64, torch.autograd; no
kdg code), on the current backend; and each wrapped by GGA."""

import keras
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import softmax_regression, train_steps, weights

import kdg
import reference as ref
from kdg import rng as kdg_rng
from kdg.algorithms import GGA, IRM, MLDG, MTL, GroupDRO, Mixup, VREx
from kdg.algorithms.base import HparamError
from kdg.algorithms.irm import dummy_scale_grad

TOL = dict(rtol=2e-5, atol=2e-6)


train = train_steps  # per-domain data: x (D, B, ...), y (D, B)


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
    np.testing.assert_allclose(logs["nll"], float(losses.detach().mean()), rtol=1e-5)
    np.testing.assert_allclose(logs["penalty"], float(losses.detach().var(unbiased=False)), rtol=1e-4)


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


# -- GroupDRO -----------------------------------------------------------------------


def test_groupdro_weights_and_q_over_three_steps(data, params):
    x, y = data
    model = softmax_regression(GroupDRO(eta=0.5), params)
    q, expected = torch.ones(3, dtype=torch.float64), params
    for step in range(3):
        logs = train(model, x, y, 1)

        def objective(p):
            losses = torch.stack([ce(linear(p, tt(x[d])), y[d]) for d in range(3)])
            new_q = q * torch.exp(0.5 * losses.detach())
            new_q = new_q / new_q.sum()
            return (new_q * losses).sum(), new_q

        loss, grads, q = value_and_grads(objective, expected)
        expected = sgd(expected, grads, 0.1)
        assert_weights(model, expected)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(model.algorithm.q), q.numpy(), rtol=1e-5)
        np.testing.assert_allclose(logs["loss"], loss, rtol=1e-5)
    assert q.max() > 0.34  # the weights moved away from uniform


# -- IRM ----------------------------------------------------------------------------


def irm_objective(x, y, weight, net=linear):
    """DomainBed's IRMv1, with the penalty by double backprop of a dummy scale."""
    def penalty(logits, labels):
        scale = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
        g1 = torch.autograd.grad(ce(logits[::2] * scale, labels[::2]), [scale], create_graph=True)[0]
        g2 = torch.autograd.grad(ce(logits[1::2] * scale, labels[1::2]), [scale], create_graph=True)[0]
        return g1 * g2

    def objective(p):
        nll = penalties = 0.0
        for d in range(len(y)):
            logits = net(p, tt(x[d]))
            nll = nll + ce(logits, y[d])
            penalties = penalties + penalty(logits, y[d])
        nll, penalties = nll / len(y), penalties / len(y)
        return nll + weight * penalties, (nll, penalties)
    return objective


def test_irm_closed_form_dummy_scale_gradient_matches_autodiff():
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=2.0, size=(7, 5)).astype("float32")
    labels = rng.integers(0, 5, size=7)
    scale = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    want = torch.autograd.grad(ce(tt(logits) * scale, labels), [scale])[0]
    got = dummy_scale_grad(keras.ops.convert_to_tensor(logits), keras.ops.convert_to_tensor(labels))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), float(want), rtol=1e-5)


def test_irm_one_step_matches_reference(data, params):
    x, y = data
    model = softmax_regression(IRM(penalty_weight=10.0, anneal_steps=0), params)
    logs = train(model, x, y, 1)
    loss, grads, (nll, penalty) = value_and_grads(irm_objective(x, y, 10.0), params)
    assert_weights(model, sgd(params, grads, 0.1))
    np.testing.assert_allclose(logs["loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(logs["penalty"], float(penalty), rtol=1e-4)


def test_irm_anneal_switches_the_weight_and_resets_adam(data, params):
    x, y = data
    model = softmax_regression(IRM(penalty_weight=10.0, anneal_steps=2), params,
                               keras.optimizers.Adam(0.01))
    train(model, x, y, 3)
    adam, expected = ref.Adam(0.01), params
    for step in range(3):
        if step == 2:
            adam = ref.Adam(0.01)
        _, grads, _ = value_and_grads(irm_objective(x, y, 1.0 if step < 2 else 10.0), expected)
        expected = adam.step(expected, grads)
    assert_weights(model, expected)
    assert int(model.optimizer.iterations) == 1


def test_irm_refuses_a_loss_it_has_no_closed_form_for(data, params):
    x, y = data
    model = softmax_regression(IRM(), params)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="from_logits=True"):
        train(model, x, y, 1)


# -- Mixup --------------------------------------------------------------------------


def step_keys(model, steps):
    """The keys the model's next `steps` steps draw (from a copy of its seed
    generator's state)."""
    copy = keras.random.SeedGenerator(0)
    copy.state.assign(keras.ops.convert_to_numpy(model.dg_seed_generator.state))
    return [kdg_rng.key_from_seed_generator(copy) for _ in range(steps)]


def test_beta_draws_follow_the_beta_distribution():
    from scipy import stats

    key = keras.ops.convert_to_tensor(np.array([5, 7], dtype="int32"))
    for a, b in [(0.2, 0.2), (2.0, 5.0)]:
        draws = keras.ops.convert_to_numpy(kdg_rng.beta((4000,), key, a, b))
        assert np.isfinite(draws).all() and (draws >= 0).all() and (draws <= 1).all()
        assert stats.kstest(draws, stats.beta(a, b).cdf).pvalue > 1e-3


def test_mixup_three_steps_match_reference(data, params):
    x, y = data
    model = softmax_regression(Mixup(alpha=0.5), params)
    keys = step_keys(model, 3)
    logs = train(model, x, y, 3)
    expected, lams = params, []
    for key in keys:
        order, lam = (keras.ops.convert_to_numpy(t) for t in model.algorithm.draws(key, 3))
        lams.extend(lam)

        def objective(p):
            total = 0.0
            for i in range(3):
                a, b = order[i], order[(i + 1) % 3]
                mixed = lam[i] * tt(x[a]) + (1 - lam[i]) * tt(x[b])
                logits = linear(p, mixed)
                total = total + lam[i] * ce(logits, y[a]) + (1 - lam[i]) * ce(logits, y[b])
            return total / 3, None

        loss, grads, _ = value_and_grads(objective, expected)
        expected = sgd(expected, grads, 0.1)
    assert_weights(model, expected)
    np.testing.assert_allclose(logs["loss"], loss, rtol=1e-5)
    assert sorted(order.tolist()) == [0, 1, 2] and len(set(np.round(lams, 6))) == 9


# -- MLDG ---------------------------------------------------------------------------


def test_mldg_three_steps_match_reference(data, params):
    x, y = data
    model = softmax_regression(MLDG(beta=0.7, n_meta_test=1), params, keras.optimizers.Adam(0.01))
    keys = step_keys(model, 3)
    logs = train(model, x, y, 3)
    adam, expected = ref.Adam(0.01), params
    for key in keys:
        order = keras.ops.convert_to_numpy(model.algorithm.pairs(key, 3)[0])
        total, objective = [np.zeros_like(p) for p in expected], 0.0
        for i, j in [(order[0], order[2]), (order[1], order[2])]:  # meta-train, meta-test
            loss_i, g_i, _ = value_and_grads(lambda p: (ce(linear(p, tt(x[i])), y[i]), None), expected)
            inner = ref.Adam(0.01).step(expected, g_i)  # a fresh Adam per pair
            loss_j, g_j, _ = value_and_grads(lambda p: (ce(linear(p, tt(x[j])), y[j]), None), inner)
            total = [t + (a + 0.7 * b) / 3 for t, a, b in zip(total, g_i, g_j)]
            objective += (loss_i + 0.7 * loss_j) / 3
        expected = adam.step(expected, total)
    assert_weights(model, expected)
    np.testing.assert_allclose(logs["loss"], objective, rtol=1e-5)
    assert int(model.optimizer.iterations) == 3


def test_mldg_needs_a_meta_train_domain(data, params):
    x, y = data
    with pytest.raises(ValueError, match="n_meta_test must be less than the number of training domains"):
        train(softmax_regression(MLDG(n_meta_test=3), params), x, y, 1)


# -- GGA around each, saving, hyperparameters ------------------------------------------


BASES = [VREx(penalty_weight=10.0, anneal_steps=0), GroupDRO(eta=0.5),
         IRM(penalty_weight=10.0, anneal_steps=0), Mixup(), MLDG(n_meta_test=1)]


def two_layer(algorithm, values=None, lr=0.1):
    rng = np.random.default_rng(0)
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(6, activation="tanh", name="features")(inputs)
    outputs = keras.layers.Dense(4, name="head")(hidden)
    model = kdg.DGModel(inputs, outputs, algorithm=algorithm, seed=0)
    model.set_weights(values or [rng.normal(scale=0.5, size=w.shape).astype("float32")
                                 for w in model.get_weights()])
    model.compile(optimizer=keras.optimizers.SGD(lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.mark.parametrize("base", BASES, ids=lambda b: b.name)
def test_gga_around_each_searches_then_steps_inside_the_window_and_only_steps_outside(data, base):
    x, y = data
    config = kdg.algorithms.serialize(base)
    make = lambda: kdg.algorithms.deserialize(config)
    gga = lambda: GGA(base=make(), start_step=0, end_step=0, trials=20, rho=0.05)
    # with lr 0 the weights after the step are the search's theta_best
    searched, model = two_layer(gga(), lr=0.0), two_layer(gga())
    train(searched, x, y, 1)
    logs = train(model, x, y, 1)
    assert logs["gga_accepted"] > 0
    best = weights(searched)
    assert np.abs(best[0] - two_layer(make()).get_weights()[0]).max() > 0
    base_model = two_layer(make(), values=best)
    train(base_model, x, y, 1)
    assert_weights(model, weights(base_model))  # step 0: the search, then the base's step
    logs = train(model, x, y, 1)
    train(base_model, x, y, 1)
    assert_weights(model, weights(base_model))  # step 1, outside the window: the base's step
    assert logs["gga_accepted"] == 0


@pytest.mark.parametrize("base", [GroupDRO(eta=0.5), MLDG(n_meta_test=1)], ids=lambda b: b.name)
def test_save_and_load_keep_the_algorithm_and_its_state(data, params, base, tmp_path):
    x, y = data
    model = softmax_regression(base, params, keras.optimizers.Adam(0.01))
    train(model, x, y, 2)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.algorithm == model.algorithm
    for a, b in zip(model.algorithm.variables, loaded.algorithm.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    train(model, x, y, 1)
    train(loaded, x, y, 1)
    assert_weights(loaded, weights(model))


@pytest.mark.parametrize("cls, field, value", [
    (GroupDRO, "eta", -1.0), (IRM, "anneal_steps", 1.5), (VREx, "penalty_weight", -2.0),
    (Mixup, "alpha", 0.0), (MLDG, "n_meta_test", 0),
])
def test_a_bad_hyperparameter_is_refused_by_name(cls, field, value):
    with pytest.raises(HparamError, match=f"{cls.__name__} {field} must be") as error:
        cls(**{field: value})
    assert error.value.hparam == field


@pytest.mark.parametrize("algorithm", [GroupDRO, MTL])
def test_per_domain_state_is_sized_by_the_models_domains_or_a_matching_argument(algorithm, params):
    model = softmax_regression(algorithm(), params)
    with pytest.raises(ValueError, match="number of training domains is not known"):
        model._dg_build_algorithm()
    model = softmax_regression(algorithm(num_domains=2), params, num_domains=3)
    with pytest.raises(ValueError, match=r"num_domains=2\) does not match the model's num_domains=3"):
        model._dg_build_algorithm()
    model = softmax_regression(algorithm(), params, num_domains=3)
    model._dg_build_algorithm()
    assert model.algorithm.num_domains == 3
