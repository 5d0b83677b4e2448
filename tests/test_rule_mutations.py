"""Rules that an earlier suite let change unnoticed, each held exactly against
an independent reference: Fish's meta_lr and its meta-update of the
BatchNorm moving statistics, the random domain orders of Fish's
`shuffle_domains` and CorGrad's `projection="pcgrad"` with more than two
domains (reproducing kdg's counter-based draws in NumPy), GGA-L's noise
scale, and the recipe's trial_seed in the data split.
"""

import hashlib

import keras
import numpy as np
import pytest
from conftest import init_params, make_data, softmax_regression, train_on_domains, weights
from test_rng import fold_in, normal, uniform

import kdg
import reference as ref
from kdg import recipes
from kdg.algorithms import GGAL, CorGrad, Fish

TOL = dict(rtol=1e-5, atol=1e-5)
SEED = 5


def key_of_step(step, seed=SEED):
    """The model's key at training step `step` (0-based): its
    keras.random.SeedGenerator(seed) state [seed, step], as uint32."""
    return np.array([seed, step], np.uint32)


def train(model, x, y, steps):
    return [train_on_domains(model, x, y, return_dict=True) for _ in range(steps)]


# -- Fish ----------------------------------------------------------------------
@pytest.mark.parametrize("meta_lr, per_domain", [(0.1, False), (0.9, True)])
def test_fish_meta_lr_other_than_the_default(data, params, meta_lr, per_domain):
    x, y = data
    fish = Fish(meta_lr=meta_lr, meta_lr_per_domain=per_domain)
    model = softmax_regression(fish, params, keras.optimizers.SGD(0.3))
    train(model, x, y, 2)
    step = meta_lr / x.shape[0] if per_domain else meta_lr
    expected = params
    for _ in range(2):
        expected = ref.fish_step(expected, x, y, lambda p, g: ref.sgd(p, g, 0.3), meta_lr=step)
    for got, want in zip(weights(model), expected):
        np.testing.assert_allclose(got, want, **TOL)


def bn_fish_reference(start, x, y, lr, meta_lr, momentum, eps, steps):
    """Fish on BatchNorm (training mode) -> Dense, SGD inner steps: the inner
    loop updates the moving statistics with each domain's batch moments, and
    the meta-update moves every variable, moving statistics included."""
    theta = {k: v.astype(np.float64) for k, v in start.items()}
    for _ in range(steps):
        inner = dict(theta)
        for d in range(x.shape[0]):
            mean, var = x[d].mean(0), x[d].var(0)  # biased variance, as Keras
            xhat = (x[d] - mean) / np.sqrt(var + eps)
            z = inner["gamma"] * xhat + inner["beta"]
            _, (g_kernel, g_bias) = ref.loss_and_grads([inner["kernel"], inner["bias"]], z, y[d])
            p = ref.softmax(z @ inner["kernel"] + inner["bias"])
            dlogits = p.copy()
            dlogits[np.arange(len(y[d])), y[d]] -= 1.0
            dz = dlogits / len(y[d]) @ inner["kernel"].T
            grads = {"gamma": (dz * xhat).sum(0), "beta": dz.sum(0),
                     "kernel": g_kernel, "bias": g_bias}
            inner = {k: v - lr * grads[k] if k in grads else v for k, v in inner.items()}
            inner["moving_mean"] = momentum * inner["moving_mean"] + (1 - momentum) * mean
            inner["moving_variance"] = momentum * inner["moving_variance"] + (1 - momentum) * var
        theta = {k: theta[k] + meta_lr * (inner[k] - theta[k]) for k in theta}
    return theta


def test_fish_meta_update_moves_batchnorm_statistics(data):
    x, y = data
    rng = np.random.default_rng(2)
    inputs = keras.Input((5,))
    h = keras.layers.BatchNormalization(momentum=0.8, epsilon=1e-3, name="bn")(inputs)
    outputs = keras.layers.Dense(4, name="head")(h)
    model = kdg.DGModel(inputs, outputs, algorithm=Fish(meta_lr=0.3), freeze_bn=False, seed=0)
    start = {
        "gamma": rng.uniform(0.5, 1.5, 5), "beta": rng.normal(scale=0.1, size=5),
        "moving_mean": rng.normal(size=5), "moving_variance": rng.uniform(0.5, 2.0, 5),
        "kernel": rng.normal(scale=0.5, size=(5, 4)), "bias": rng.normal(scale=0.1, size=4),
    }
    start = {k: v.astype("float32") for k, v in start.items()}
    model.get_layer("bn").set_weights(
        [start[k] for k in ("gamma", "beta", "moving_mean", "moving_variance")])
    model.get_layer("head").set_weights([start["kernel"], start["bias"]])
    model.compile(optimizer=keras.optimizers.SGD(0.2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    train(model, x, y, 2)
    expected = bn_fish_reference(start, x, y, lr=0.2, meta_lr=0.3, momentum=0.8, eps=1e-3, steps=2)
    got = {v.path.split("/")[-1]: keras.ops.convert_to_numpy(v) for v in model.weights
           if v.path.split("/")[0] in ("bn", "head")}
    assert set(got) == set(expected)
    for name, want in expected.items():
        np.testing.assert_allclose(got[name], want, err_msg=name, **TOL)


def test_fish_shuffle_domains_follows_the_counter_based_draws():
    """Four domains: the inner steps' order is argsort of four uniform draws
    of the step's key; it is reproduced here and differs from the plain one."""
    x, y = make_data(num_domains=4, batch=8, features=5, classes=4, seed=6)
    params = init_params(seed=7)
    fish = Fish(meta_lr=0.5, shuffle_domains=True)
    model = softmax_regression(fish, params, keras.optimizers.SGD(0.5), seed=SEED)
    steps = 3
    train(model, x, y, steps)
    sgd = lambda p, g: ref.sgd(p, g, 0.5)
    expected, orders = params, []
    for step in range(steps):
        order = np.argsort(uniform(4, key_of_step(step), 0))
        orders.append(tuple(order))
        expected = ref.fish_step(expected, x[order], y[order], sgd, meta_lr=0.5)
    assert len(set(orders)) == steps and (0, 1, 2, 3) not in orders, orders
    for got, want in zip(weights(model), expected):
        np.testing.assert_allclose(got, want, **TOL)
    # the order is observable: the plain order gives other weights
    plain = params
    for _ in range(steps):
        plain = ref.fish_step(plain, x, y, sgd, meta_lr=0.5)
    assert max(np.abs(a - b).max() for a, b in zip(plain, expected)) > 1e-3


# -- CorGrad -------------------------------------------------------------------
def test_corgrad_pcgrad_random_order_with_four_domains():
    """projection="pcgrad": domain i meets the others in the order argsort of
    uniform draws of fold_in(key, i), projecting against their original
    gradients; with four domains the order changes the result. 40 features:
    the kernel's chunks (160 elements) go through Gram matrices, the bias's
    as vectors."""
    features = 40
    x, y = make_data(num_domains=4, batch=8, features=features, classes=8, seed=4)
    params = init_params(features=features, classes=8)
    options = dict(n_parts=2, alpha=0.6)
    model = softmax_regression(CorGrad(projection="pcgrad", **options), params,
                               keras.optimizers.SGD(0.1), seed=SEED)
    steps = 2
    logs = train(model, x, y, steps)
    current = plain = params
    for step in range(steps):
        orders = [np.argsort(uniform(4, fold_in(key_of_step(step), i), 0)) for i in range(4)]
        per_domain = [g for _, g in ref.domain_grads(current, x, y)]
        update, made, considered, _ = ref.corgrad_update(
            per_domain, projection="pcgrad", orders=orders, **options)
        current = ref.sgd(current, update, 0.1)
        plain_grads = [g for _, g in ref.domain_grads(plain, x, y)]
        plain_update, *_ = ref.corgrad_update(plain_grads, projection="pcgrad", **options)
        plain = ref.sgd(plain, plain_update, 0.1)
    assert made > 0
    np.testing.assert_allclose(logs[-1]["modification_frequency"], made / considered, rtol=1e-6)
    for got, want in zip(weights(model), current):
        np.testing.assert_allclose(got, want, **TOL)
    # the order is observable: the ascending order gives other weights
    assert max(np.abs(a - b).max() for a, b in zip(plain, current)) > 1e-3


# -- GGA-L ---------------------------------------------------------------------
@pytest.mark.parametrize("noise", ["gaussian", "uniform"])
def test_ggal_noise_is_scaled_by_the_mean_cosine_exactly(noise):
    """The same key (same seed, first step) on two batches of different
    alignment: the update is the mean gradient plus gamma (1 - cos_mean) xi,
    xi the key's own draws, element for element. Three domains, so that the
    mean and the smallest cosine differ."""
    params = init_params(seed=8)
    draw = normal if noise == "gaussian" else uniform
    size = sum(p.size for p in params)
    xi = draw(size, key_of_step(0), 0)
    xi = np.split(xi, [params[0].size])
    gamma, lr = 0.5, 1.0
    means = []
    for shift in (False, True):  # aligned domains, then shifted (conflicting) ones
        x, y = make_data(num_domains=3, seed=9, shift=shift)
        if not shift:
            y = np.tile(y[:1], (3, 1))  # the same labels on near-identical inputs
            x = x[:1] + 0.8 * x
        cos = ref.cosines([g for _, g in ref.domain_grads(params, x, y)])
        means.append(cos.mean())
        assert cos.mean() - cos.min() > 0.05, cos
        model = softmax_regression(GGAL(gamma=gamma, noise=noise), params,
                                   keras.optimizers.SGD(lr), seed=SEED)
        train(model, x, y, 1)
        _, grads = ref.loss_and_grads(params, x.reshape(-1, x.shape[-1]), y.reshape(-1))
        scale = gamma * (1 - cos.mean())
        expected = [p - lr * (g + scale * n.reshape(p.shape)) for p, g, n in zip(params, grads, xi)]
        for got, want in zip(weights(model), expected):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)
    assert means[0] - means[1] > 0.5, means


# -- the recipe's trial_seed ------------------------------------------------------
RECIPE = """
dataset: {name: RotatedDigits, test_domains: [5], holdout_fraction: 0.25}
model: {backbone: small_cnn, pretrained: false}
algorithm: {name: erm}
training: {steps: 2, batch_size: 8, trial_seed: 0}
"""


def domainbed_split(n, holdout_fraction, trial_seed, env_i):
    """DomainBed's misc.split_dataset(env, int(n * holdout), seed_hash(trial_seed,
    env_i)): keys 0..n-1 shuffled by RandomState(md5 of str((trial_seed,
    env_i)) mod 2^31); the first int(n * holdout) are "out"."""
    seed = int(hashlib.md5(str((trial_seed, env_i)).encode()).hexdigest(), 16) % 2**31
    keys = np.arange(n)
    np.random.RandomState(seed).shuffle(keys)
    cut = int(n * holdout_fraction)
    return keys[cut:], keys[:cut]


def test_recipe_trial_seed_sets_the_in_out_split(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    splits = {}
    for trial_seed in (0, 1, 1):
        recipe = recipes.load_recipe(path, [f"training.trial_seed={trial_seed}"])
        dataset = recipes.check_dataset(recipe)  # what `kdg train` trains on
        got = []
        for i in range(len(dataset.domains)):
            inside, out = dataset.split(i, "in").indices, dataset.split(i, "out").indices
            want_in, want_out = domainbed_split(len(inside) + len(out), 0.25, trial_seed, i)
            np.testing.assert_array_equal(inside, want_in)
            np.testing.assert_array_equal(out, want_out)
            got.append(np.sort(out))
        splits.setdefault(trial_seed, []).append(got)
    same = splits[1]
    for a, b in zip(same[0], same[1]):
        np.testing.assert_array_equal(a, b)
    assert all(not np.array_equal(a, b) for a, b in zip(splits[0][0], splits[1][0]))
