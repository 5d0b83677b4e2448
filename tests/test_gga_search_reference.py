"""GGA's whole annealing search against an exact NumPy reference.

The reference below is written from the spec (GGA, steps 1-3): per trial,
U(-rho, rho) noise from kdg's counter-based generator (reproduced in NumPy in
tests/test_rng.py) is added to the current point; a candidate is accepted
when L - L_best < tol and s > s_best (or, with a temperature, when a
Metropolis draw says so); after an acceptance the search restarts from
theta0, after a rejection the next noise adds on top (a random walk). The
model is softmax regression (closed-form gradients, tests/reference.py), all
of whose variables are perturbed (`perturb="all"`).

Every comparison the search makes is checked to be decided by a margin far
above float32 rounding, so that kdg (float32) and the reference (float64)
must take the same decisions; kdg's accepted count, `gga_cos_before` /
`gga_cos_after` and the weights after each step are then held against it.
"""

import keras
import numpy as np
import pytest
from conftest import init_params, make_data, softmax_regression, train_on_domains, weights
from test_rng import fold_in, uniform

import reference as ref
from kdg.algorithms import GGA

SEED = 3
LR = 0.1


def key_of_step(seed, step):
    """The model's key at training step `step` (0-based): its
    keras.random.SeedGenerator(seed) state [seed, step], as uint32."""
    return np.array([seed, step], np.int64).astype(np.uint32)


def fold(key, data):
    """fold_in for any int data (kdg casts it to int32: -1 is 0xFFFFFFFF)."""
    with np.errstate(over="ignore"):
        return fold_in(key, np.uint32(np.int64(data) & 0xFFFFFFFF))


def evaluate(params, x, y):
    """(s, L): the smallest pairwise cosine of the per-domain gradients and
    the mean of the per-domain losses (= the loss on the concatenated batch
    when every domain has B examples)."""
    per_domain = ref.domain_grads([p.astype(np.float64) for p in params], x, y)
    return ref.cosines([g for _, g in per_domain]).min(), np.mean([l for l, _ in per_domain])


def perturb(current, key, rho):
    """current + U(-rho, rho) noise, in float32 as kdg computes it: one
    stretch of the trial key's uniform stream per variable, in order."""
    sizes = [c.size for c in current]
    noise = np.split(uniform(sum(sizes), key, 0), np.cumsum(sizes)[:-1])
    return [c + np.float32(rho) * (np.float32(2.0) * n.reshape(c.shape) - np.float32(1.0))
            for c, n in zip(current, noise)]


def gga_search(params, x, y, key, rho, trials, tol, temperature=0.0, cooling=0.99):
    """The search of one annealing step, every variable perturbed.

    Returns (theta_best, s0, s_best, accepted, margin), margin being the
    smallest distance of any compared quantity from its threshold."""
    theta0 = [p.astype(np.float32) for p in params]
    s0, loss0 = evaluate(theta0, x, y)
    current, best, s_best, loss_best, accepted = theta0, theta0, s0, loss0, 0
    margin = np.inf
    for trial in range(trials):
        trial_key = fold(key, trial)
        candidate = perturb(current, trial_key, rho)
        s, loss = evaluate(candidate, x, y)
        better = s > s_best
        margin = min(margin, abs(s - s_best), abs(loss - loss_best - tol))
        if temperature > 0 and not better:
            t = temperature * cooling**trial
            u = uniform(1, fold(trial_key, -1), 0)[0]
            p = np.exp((s - s_best) / t)
            better = u < p
            margin = min(margin, abs(u - p))
        if loss - loss_best < tol and better:
            best, s_best, loss_best = candidate, s, loss
            current = theta0  # the search restarts from theta0
            accepted += 1
        else:
            current = candidate  # a random walk: the next noise adds on top
    return best, s0, s_best, accepted, margin


def reference_run(params, x, y, steps, window, seed=SEED, **search):
    """Steps of GGA(ERM) with SGD(LR): in the window [0, window - 1] the
    search then an ERM step from theta_best; outside, the ERM step alone."""
    current = [p.astype(np.float64) for p in params]
    logs, margin = [], np.inf
    for step in range(steps):
        if step < window:
            best, s0, s_best, accepted, m = gga_search(
                [p.astype(np.float32) for p in current], x, y, key_of_step(seed, step), **search)
            current = [b.astype(np.float64) for b in best]
            logs.append((s0, s_best, accepted))
            margin = min(margin, m)
        current, _ = ref.erm_step(current, x, y, lr=LR)
    return current, logs, margin


def kdg_run(params, x, y, steps, window, rho, trials, tol, **kwargs):
    gga = GGA(start_step=0, end_step=window - 1, rho=rho, trials=trials, loss_tolerance=tol,
              perturb="all", **kwargs)
    model = softmax_regression(gga, params, keras.optimizers.SGD(LR), seed=SEED)
    logs = [train_on_domains(model, x, y, return_dict=True) for _ in range(steps)]
    return model, logs


CASES = {
    # greedy: acceptances (restarts from theta0) and rejections (random walk)
    "greedy": dict(rho=0.05, trials=40, tol=0.1),
    # a tolerance that rejects candidates on their loss: L_best, not L(theta0),
    # is what they are measured against
    "tight_tolerance": dict(rho=0.05, trials=40, tol=0.02),
    # Metropolis at a temperature where a worse candidate's acceptance is a draw
    "metropolis": dict(rho=0.05, trials=40, tol=0.1, temperature=0.02, cooling=0.9),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_gga_search_matches_numpy_reference(case):
    search = CASES[case]
    x, y = make_data(num_domains=3, batch=8, features=5, classes=4, seed=11)
    params = init_params(features=5, classes=4, seed=12)
    steps, window = 3, 2  # two annealing steps, then a plain ERM step
    expected, expected_logs, margin = reference_run(params, x, y, steps, window, **search)
    # the reference's decisions are not rounding-close: kdg must take the same ones
    assert margin > 1e-4, f"a decision is too close to call ({margin:.2g}): change the case"
    assert any(0 < a < search["trials"] for _, _, a in expected_logs), expected_logs

    model, logs = kdg_run(params, x, y, steps, window, **search)
    for step, (got, (s0, s_best, accepted)) in enumerate(zip(logs, expected_logs)):
        assert int(got["gga_accepted"]) == accepted, f"step {step}"
        np.testing.assert_allclose(got["gga_cos_before"], s0, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got["gga_cos_after"], s_best, rtol=1e-5, atol=1e-5)
    assert int(logs[-1]["gga_accepted"]) == 0  # outside the window: no search
    for got, want in zip(weights(model), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_gga_rejects_a_trial_that_ties():
    """rho far below the weights' float32 spacing: every candidate is theta0
    itself, bit for bit, so every trial scores the same s. A tie is not an
    improvement (s > s_best): theta0 is kept and at most one trial is
    accepted (the loop's evaluation may round once above the one made before
    the loop; every later trial then ties with it exactly). Accepting ties
    would accept all of them."""
    x, y = make_data(num_domains=3, batch=8, features=5, classes=4, seed=11)
    params = init_params(features=5, classes=4, seed=12)
    rho, trials = 1e-12, 12
    # the reference's candidates are theta0, bit for bit
    for trial in range(trials):
        for candidate, p in zip(perturb(params, fold(key_of_step(SEED, 0), trial), rho), params):
            np.testing.assert_array_equal(candidate, p)
    model, logs = kdg_run(params, x, y, 1, 1, rho=rho, trials=trials, tol=0.1)
    assert int(logs[0]["gga_accepted"]) <= 1
    np.testing.assert_allclose(logs[0]["gga_cos_after"], logs[0]["gga_cos_before"], rtol=1e-6)
    expected, _ = ref.erm_step([p.astype(np.float64) for p in params], x, y, lr=LR)
    for got, want in zip(weights(model), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
