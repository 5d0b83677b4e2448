"""Each algorithm against the independent NumPy reference (tests/reference.py),
on the current backend, to 1e-5."""

import keras
import numpy as np
import pytest
from conftest import init_params, make_data, softmax_regression, train_on_domains, train_steps, weights

import reference as ref
from kdg.algorithms import ERM, GGA, GGAL, CorGrad, Fish

TOL = dict(rtol=1e-5, atol=1e-5)


train = train_steps  # per-domain data: x (D, B, ...), y (D, B)


@pytest.mark.parametrize("steps", [1, 3])
def test_erm_matches_reference(data, params, steps):
    x, y = data
    model = softmax_regression(ERM(), params, keras.optimizers.SGD(0.1))
    logs = train(model, x, y, steps)
    expected = params
    for _ in range(steps):
        expected, loss = ref.erm_step(expected, x, y, lr=0.1)
    np.testing.assert_allclose(weights(model)[0], expected[0], **TOL)
    np.testing.assert_allclose(weights(model)[1], expected[1], **TOL)
    np.testing.assert_allclose(logs["loss"], loss, rtol=1e-5)


def test_l2_weight_decay_is_added_to_the_gradient(data, params):
    x, y = data
    model = softmax_regression(ERM(), params, keras.optimizers.SGD(0.1), l2_weight_decay=0.05)
    train(model, x, y, 2)
    expected = params
    for _ in range(2):
        expected, _ = ref.erm_step(expected, x, y, lr=0.1, l2=0.05)
    for got, want in zip(weights(model), expected):
        np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.parametrize("steps", [1, 3])
def test_fish_matches_reference_with_adam_state_kept(data, params, steps):
    x, y = data
    model = softmax_regression(Fish(meta_lr=0.5), params, keras.optimizers.Adam(0.01))
    train(model, x, y, steps)
    adam = ref.Adam(0.01)
    expected = params
    for _ in range(steps):
        expected = ref.fish_step(expected, x, y, adam.step, meta_lr=0.5)
    for got, want in zip(weights(model), expected):
        np.testing.assert_allclose(got, want, **TOL)
    # the inner optimizer took D steps per outer step, its state never reset
    assert int(model.optimizer.iterations) == steps * x.shape[0]


def test_fish_separate_inner_optimizer_and_wilds_meta_lr(data, params):
    x, y = data
    fish = Fish(meta_lr=0.5, inner_optimizer=keras.optimizers.SGD(0.2), meta_lr_per_domain=True)
    model = softmax_regression(fish, params, keras.optimizers.Adam(0.01))
    train(model, x, y, 2)
    expected = params
    for _ in range(2):
        expected = ref.fish_step(expected, x, y, lambda p, g: ref.sgd(p, g, 0.2), meta_lr=0.5 / 3)
    for got, want in zip(weights(model), expected):
        np.testing.assert_allclose(got, want, **TOL)
    assert int(model.optimizer.iterations) == 0  # the compiled optimizer is unused


def test_fish_warmup_runs_erm_first(data, params):
    x, y = data
    model = softmax_regression(Fish(meta_lr=0.5, warmup_steps=2), params, keras.optimizers.SGD(0.1))
    train(model, x, y, 3)
    expected = params
    for _ in range(2):
        expected, _ = ref.erm_step(expected, x, y, lr=0.1)
    expected = ref.fish_step(expected, x, y, lambda p, g: ref.sgd(p, g, 0.1), meta_lr=0.5)
    for got, want in zip(weights(model), expected):
        np.testing.assert_allclose(got, want, **TOL)


def corgrad_reference_steps(params, x, y, steps, lr, **kwargs):
    current = params
    for _ in range(steps):
        per_domain = [g for _, g in ref.domain_grads(current, x, y)]
        update, made, considered, ratio = ref.corgrad_update(per_domain, **kwargs)
        current = ref.sgd(current, update, lr)
    return current, made / considered, ratio, ref.cosines(per_domain)


@pytest.mark.parametrize(
    "options",
    [
        dict(n_parts=2, alpha=0.6),
        dict(n_parts=3, alpha=0.3),  # 8 rows in chunks of 3, the last smaller
        dict(n_parts=5, alpha=0.6),  # chunks of 2: only 4 chunks for n_parts=5
        dict(n_parts=1, alpha=0.6),  # layering only (Table 2 ablation)
        dict(n_parts=2, smoothing=False),
        dict(granularity="model"),
        dict(granularity="element"),
        # 80 features: kernel chunks of 160-640 elements, corrected through
        # their Gram matrices; the bias's chunks as vectors
        dict(n_parts=2, alpha=0.6, features=80),
        dict(n_parts=3, alpha=0.3, features=80),
        dict(n_parts=5, alpha=0.6, features=80),
        dict(n_parts=1, smoothing=False, features=80),
    ],
)
def test_corgrad_matches_reference(options):
    # 8 classes: chunks of several elements (in a 2-element chunk, four
    # domains' projections can cancel exactly, and the sign of a dot product
    # of rounding errors decides what follows)
    options = dict(options)
    features = options.pop("features", 5)
    x, y = make_data(num_domains=4, features=features, classes=8, seed=3)
    params = init_params(features=features, classes=8)
    model = softmax_regression(CorGrad(**options), params, keras.optimizers.SGD(0.1))
    logs = train(model, x, y, 2)
    ref_options = {k: v for k, v in options.items()}
    expected, frequency, ratio, cos = corgrad_reference_steps(params, x, y, 2, 0.1, **ref_options)
    for got, want in zip(weights(model), expected):
        np.testing.assert_allclose(got, want, **TOL)
    np.testing.assert_allclose(logs["modification_frequency"], frequency, rtol=1e-6)
    np.testing.assert_allclose(logs["modification_ratio"], ratio, rtol=1e-4)
    np.testing.assert_allclose(logs["grad_cos_min"], cos.min(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logs["grad_cos_mean"], cos.mean(), rtol=1e-5, atol=1e-6)


def test_corgrad_log_decay_schedule_and_pcgrad_projection(params):
    x, y = make_data(num_domains=2, features=40, classes=8, seed=4)
    params = init_params(features=40, classes=8)  # kernel chunks of 160 elements
    total = 10
    model = softmax_regression(
        CorGrad(n_parts=2, alpha=0.8, alpha_schedule="log_decay", total_steps=total,
                projection="pcgrad"), params, keras.optimizers.SGD(0.1))
    train(model, x, y, 3)
    current = params
    for t in range(3):
        alpha_t = 0.8 * max(1 - np.log(t + 1) / np.log(total), 0)
        per_domain = [g for _, g in ref.domain_grads(current, x, y)]
        update, *_ = ref.corgrad_update(per_domain, n_parts=2, alpha=alpha_t, projection="pcgrad")
        current = ref.sgd(current, update, 0.1)
    for got, want in zip(weights(model), current):
        np.testing.assert_allclose(got, want, **TOL)


def test_corgrad_kernels_only_leaves_other_variables_summed(data):
    """layers="kernels": a BatchNorm gamma/beta gets the plain sum of the
    per-domain gradients; the kernels are still corrected."""
    x, y = data
    inputs = keras.Input((5,))
    h = keras.layers.BatchNormalization(name="bn")(inputs)
    outputs = keras.layers.Dense(4, name="head")(h)
    model = __import__("kdg").DGModel(
        inputs, outputs, algorithm=CorGrad(n_parts=1, layers="kernels", smoothing=False),
        freeze_bn=True)
    model.compile(optimizer=keras.optimizers.SGD(1.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    start = {v.path: np.array(v) for v in model.trainable_variables}
    train_on_domains(model, x, y)
    after = {v.path: np.array(v) for v in model.trainable_variables}
    # the sum of per-domain gradients of gamma and beta, from a plain ERM-like
    # model: frozen BN in inference mode is z = gamma * x / sqrt(1 + eps) + beta
    gamma, beta = start["bn/gamma"], start["bn/beta"]
    kernel, bias = start["head/kernel"], start["head/bias"]
    scale = gamma / np.sqrt(1 + 1e-3)
    g_gamma = np.zeros_like(gamma)
    g_beta = np.zeros_like(beta)
    for d in range(3):
        z = x[d] * scale + beta
        _, (gk, gb) = ref.loss_and_grads([kernel, bias], z, y[d])
        p = ref.softmax(z @ kernel + bias)
        dlogits = p.copy(); dlogits[np.arange(len(y[d])), y[d]] -= 1; dlogits /= len(y[d])
        dz = dlogits @ kernel.T
        g_gamma += (dz * x[d] / np.sqrt(1 + 1e-3)).sum(0)
        g_beta += dz.sum(0)
    np.testing.assert_allclose(after["bn/gamma"], gamma - g_gamma, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(after["bn/beta"], beta - g_beta, rtol=1e-5, atol=1e-5)


def test_corgrad_projects_conflicts_and_smooths_an_outlier():
    """A hand computation, one chunk, two domains with opposed gradients
    plus a dominant third."""
    per_domain = [[np.array([[1.0, 0.0]])], [[np.array([[-1.0, 1.0]])]], [[np.array([[10.0, 10.0]])]]]
    per_domain = [g[0] if isinstance(g[0], list) else g for g in per_domain]
    update, made, considered, _ = ref.corgrad_update(per_domain, n_parts=1, alpha=0.5)
    # domain 0 vs 1: dot = -1 < 0 -> a = [1,0] - (-1/2)[-1,1] = [0.5, 0.5]
    # domain 1 vs 0 (projected [0.5,0.5]): dot = 0 -> kept; vs 2: dot = 0 -> kept
    # norms 0.707, 1.414, 14.14: domain 2 is the outlier, m = mean of the others
    m = (np.array([0.5, 0.5]) + np.array([-1.0, 1.0])) / 2
    expected = np.array([0.5, 0.5]) + np.array([-1.0, 1.0]) + 0.5 * np.array([10.0, 10.0]) + 0.5 * m
    np.testing.assert_allclose(update[0][0], expected)
    assert made == 1 and considered == 6


@pytest.mark.parametrize("projection", ["sequential", "pcgrad"])
def test_corgrad_with_two_domains_the_sequential_order_weights_the_second(projection):
    """docs/ALGORITHMS.md, "With two training domains": sequentially, domain
    0 is projected off domain 1 and domain 1, then orthogonal to it, is kept
    whole, so the update is g0 + (1 + |g0.g1| / |g1|^2) g1 and half the
    (domain, chunk) pairs are projected; "pcgrad" projects both. Smoothing is
    on (the default) and never fires with two domains. One chunk: the whole
    model (granularity="model"); the closed forms are written here."""
    x, y = make_data(num_domains=2, features=5, classes=4, seed=1)
    params = init_params(features=5, classes=4)
    g0, g1 = (ref.flat(g) for _, g in ref.domain_grads(params, x, y))
    dot = g0 @ g1
    assert dot < -0.05 * np.linalg.norm(g0) * np.linalg.norm(g1)  # they conflict (cos -0.1)
    if projection == "sequential":
        update, frequency = g0 + (1 - dot / (g1 @ g1)) * g1, 0.5
    else:
        update, frequency = (g0 - dot / (g1 @ g1) * g1) + (g1 - dot / (g0 @ g0) * g0), 1.0
    model = softmax_regression(CorGrad(granularity="model", projection=projection), params,
                               keras.optimizers.SGD(0.1))
    logs = train(model, x, y, 1)
    np.testing.assert_allclose(ref.flat(weights(model)), ref.flat(params) - 0.1 * update, **TOL)
    assert logs["modification_frequency"] == pytest.approx(frequency)


# Several variables of the same layout, interleaved with others: the surgery
# processes equal layouts as one stacked tensor and must give every variable
# its own chunks, norms and update. (name, shape): kernels of 160-360
# elements per chunk go through Gram matrices, the rest as vectors.
SHARED_LAYOUTS = [
    ("a/kernel", (40, 8)), ("a/bias", (8,)), ("bn/gamma", (8,)), ("b/kernel", (6, 8)),
    ("b/bias", (8,)), ("c/kernel", (40, 8)), ("conv/kernel", (3, 3, 5, 8)), ("bn2/gamma", (8,)),
    ("d/kernel", (40, 8)), ("d/bias", (8,)), ("head/kernel", (6, 8)), ("scalar/bias", ()),
]


@pytest.mark.parametrize("stack", [True, False])
@pytest.mark.parametrize("options", [
    dict(n_parts=2), dict(n_parts=3, alpha=0.3), dict(n_parts=1, smoothing=False),
    dict(granularity="model"), dict(granularity="element"), dict(n_parts=2, layers="kernels"),
])
def test_corgrad_surgery_on_repeated_layouts_matches_reference(options, stack):
    rng = np.random.default_rng(7)
    num = 3
    variables = []
    for name, shape in SHARED_LAYOUTS:
        scope, leaf = name.split("/")
        with keras.name_scope(scope):  # path "scope/leaf", as a layer's variable
            variables.append(keras.Variable(np.zeros(shape, "float32"), name=leaf))
    shift = rng.normal(size=(num, 1))  # per-domain biases make gradients conflict
    per_domain = [[(rng.normal(size=shape) + shift[d] * (1 + v % 3)).astype("float32")
                   for v, (_, shape) in enumerate(SHARED_LAYOUTS)] for d in range(num)]
    stacked = [keras.ops.convert_to_tensor(np.stack([g[v] for g in per_domain]))
               for v in range(len(SHARED_LAYOUTS))]
    algorithm = CorGrad(**options)
    if not stack:  # every variable alone, as large ones are
        algorithm.GROUP_MAX_SIZE = 0
    assert [v.path for v in variables] == [name for name, _ in SHARED_LAYOUTS]
    update, logs, _ = algorithm.surgery(stacked, variables, step=0)

    # the NumPy reference on the variables that take part; the others summed
    ref_options = {k: v for k, v in options.items() if k != "layers"}
    part = [v for v, (name, _) in enumerate(SHARED_LAYOUTS)
            if options.get("layers") != "kernels" or name.split("/")[1] in ("kernel", "bias")]
    expected, made, considered, ratio = ref.corgrad_update(
        [[g[v] for v in part] for g in per_domain], **ref_options)
    expected = dict(zip(part, expected))
    for v in range(len(SHARED_LAYOUTS)):
        want = expected.get(v, sum(g[v] for g in per_domain))
        np.testing.assert_allclose(keras.ops.convert_to_numpy(update[v]), want,
                                   rtol=1e-5, atol=1e-5, err_msg=SHARED_LAYOUTS[v][0])
    np.testing.assert_allclose(logs["modification_frequency"], made / considered, rtol=1e-6)
    if options.get("layers") != "kernels":  # the reference's ratio is over its variables only
        np.testing.assert_allclose(logs["modification_ratio"], ratio, rtol=1e-4)
    assert made > 0


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="counts the equations of a JAX trace")
def test_corgrad_traced_surgery_does_not_grow_with_chunks_or_variables_of_one_layout():
    """The issue: the surgery must not grow in Python-level work with the
    number of variables and chunks. Eight times the chunks give no larger
    program; a variable of a layout already there costs a few equations (a
    reshape in, a slice out), a fraction of what a new layout costs."""
    import jax

    from kdg.bench.run import jaxpr_counts

    layouts = [("kernel", (40, 64)), ("bias", (64,)), ("kernel", (3, 3, 8, 64)), ("gamma", (64,))]

    def variables(copies, extra=()):
        out = []
        for c in range(copies):
            for i, (leaf, shape) in enumerate(layouts + list(extra)):
                with keras.name_scope(f"layer{c}_{i}"):
                    out.append(keras.Variable(np.zeros(shape, "float32"), name=leaf))
        return out

    def equations(model_variables, n_parts):
        stacked = [jax.ShapeDtypeStruct((3,) + tuple(v.shape), "float32")
                   for v in model_variables]
        algorithm = CorGrad(n_parts=n_parts)
        jaxpr = jax.make_jaxpr(lambda s: algorithm.surgery(s, model_variables)[:2])(stacked)
        return jaxpr_counts(jaxpr.jaxpr)["equations"]

    one = variables(1)
    base = equations(one, n_parts=4)
    assert equations(one, n_parts=32) <= base
    per_variable = (equations(variables(4), n_parts=4) - base) / (3 * len(layouts))
    new_layout = equations(variables(1, [("kernel", (16, 48))]), n_parts=4) - base
    assert 0 < per_variable <= new_layout / 4


def test_ggal_without_noise_is_erm_on_the_mean_gradient(data, params):
    x, y = data
    model = softmax_regression(GGAL(gamma=0.0), params, keras.optimizers.SGD(0.1))
    logs = train(model, x, y, 2)
    expected = params
    for _ in range(2):
        per = ref.domain_grads(expected, x, y)
        cos = ref.cosines([g for _, g in per])
        expected, _ = ref.erm_step(expected, x, y, lr=0.1)
    for got, want in zip(weights(model), expected):
        np.testing.assert_allclose(got, want, **TOL)
    np.testing.assert_allclose(logs["grad_cos_mean"], cos.mean(), rtol=1e-5)


@pytest.mark.parametrize("noise", ["gaussian", "uniform"])
def test_ggal_noise_scale_is_gamma_times_one_minus_mean_cosine(noise):
    features, classes = 60, 50  # 3050 parameters: enough for the statistics
    x, y = make_data(features=features, classes=classes, seed=5)
    params = init_params(features, classes, seed=6)
    gamma, lr = 0.5, 1.0
    model = softmax_regression(GGAL(gamma=gamma, noise=noise), params, keras.optimizers.SGD(lr))
    train(model, x, y, 1)
    cos = ref.cosines([g for _, g in ref.domain_grads(params, x, y)])
    no_noise, _ = ref.erm_step(params, x, y, lr=lr)
    xi = np.concatenate([(n - w).ravel() for n, w in zip(no_noise, weights(model))])
    xi /= lr * gamma * (1 - cos.mean())
    if noise == "gaussian":
        assert abs(xi.mean()) < 0.1 and abs(xi.std() - 1) < 0.05
    else:
        assert xi.min() >= -1e-4 and xi.max() <= 1 + 1e-4
        assert abs(xi.mean() - 0.5) < 0.03 and abs(xi.std() - np.sqrt(1 / 12)) < 0.02


def test_ggal_seeded_runs_repeat_and_seeds_differ(data, params):
    x, y = data
    runs = []
    for seed in (7, 7, 8):
        model = softmax_regression(GGAL(gamma=0.1), params, keras.optimizers.SGD(0.1), seed=seed)
        train(model, x, y, 2)
        runs.append(weights(model)[0])
    np.testing.assert_array_equal(runs[0], runs[1])
    assert np.abs(runs[0] - runs[2]).max() > 1e-6


def two_layer(algorithm, seed=0, lr=0.0):
    """tanh features then a linear head, the same initial weights on every
    backend (Keras' initializers draw backend-specific numbers)."""
    rng = np.random.default_rng(seed)
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(6, activation="tanh", name="features")(inputs)
    outputs = keras.layers.Dense(4, name="head")(hidden)
    model = __import__("kdg").DGModel(inputs, outputs, algorithm=algorithm, seed=seed)
    for layer in ("features", "head"):
        model.get_layer(layer).set_weights(
            [rng.normal(scale=0.5, size=w.shape).astype("float32")
             for w in model.get_layer(layer).get_weights()]
        )
    model.compile(optimizer=keras.optimizers.SGD(lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.mark.parametrize("base", [ERM(), Fish(), CorGrad(n_parts=2)])
def test_gga_without_trials_or_outside_window_is_the_base_step(data, params, base):
    x, y = data
    plain = softmax_regression(base, params, keras.optimizers.SGD(0.1))
    no_trials = softmax_regression(GGA(base=base, start_step=0, end_step=5, trials=0, perturb="all"),
                                   params, keras.optimizers.SGD(0.1))
    later = softmax_regression(GGA(base=base, start_step=10, end_step=20, trials=5, rho=0.5, perturb="all"),
                               params, keras.optimizers.SGD(0.1))
    for model in (plain, no_trials, later):
        logs = train(model, x, y, 2)
    for a, b, c in zip(weights(plain), weights(no_trials), weights(later)):
        np.testing.assert_allclose(b, a, **TOL)
        np.testing.assert_allclose(c, a, **TOL)
    assert logs["gga_accepted"] == 0


def test_gga_search_invariants(data):
    x, y = data
    # lr = 0: the base step changes nothing, so the weights after one step are
    # theta_best, which the NumPy reference can evaluate.
    model = two_layer(GGA(start_step=0, end_step=0, trials=60, rho=0.01, loss_tolerance=0.05), lr=0.0)
    before = weights(model)
    logs = train(model, x, y, 1)
    after = weights(model)

    def evaluate(w):
        k1, b1, k2, b2 = [a.astype(np.float64) for a in w]
        losses, grads = [], []
        for d in range(x.shape[0]):
            h = np.tanh(x[d] @ k1 + b1)
            loss, (gk2, gb2) = ref.loss_and_grads([k2, b2], h, y[d])
            p = ref.softmax(h @ k2 + b2)
            dz = p.copy(); dz[np.arange(len(y[d])), y[d]] -= 1; dz /= len(y[d])
            dh = dz @ k2.T * (1 - h**2)
            grads.append([x[d].T @ dh, dh.sum(0), gk2, gb2])
            losses.append(loss)
        return ref.cosines(grads).min(), np.mean(losses)

    s0, loss0 = evaluate(before)
    s1, loss1 = evaluate(after)
    np.testing.assert_allclose(logs["gga_cos_before"], s0, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logs["gga_cos_after"], s1, rtol=1e-4, atol=1e-5)
    assert logs["gga_cos_after"] >= logs["gga_cos_before"]
    accepted = int(logs["gga_accepted"])
    assert accepted > 0, "the search should find a better-aligned point"
    assert loss1 - loss0 < accepted * 0.05 + 1e-6
    # the classifier head is never perturbed, the features are, within rho * trials
    np.testing.assert_array_equal(after[2], before[2])
    np.testing.assert_array_equal(after[3], before[3])
    assert np.abs(after[0] - before[0]).max() > 0
    assert np.abs(after[0] - before[0]).max() <= 0.01 * 60


def test_gga_metropolis_accepts_worse_points_at_high_temperature(data):
    x, y = data
    greedy = two_layer(GGA(start_step=0, end_step=0, trials=30, rho=0.01))
    hot = two_layer(GGA(start_step=0, end_step=0, trials=30, rho=0.01, temperature=1e6, cooling=1.0))
    logs_greedy = train(greedy, x, y, 1)
    logs_hot = train(hot, x, y, 1)
    # at a huge temperature every candidate within the loss tolerance is
    # accepted, so the search restarts from theta0 after each trial
    assert logs_hot["gga_accepted"] > logs_greedy["gga_accepted"]
    assert logs_hot["gga_accepted"] == 30


def test_gga_tolerance_zero_rejects_loss_increases(data):
    x, y = data
    model = two_layer(GGA(start_step=0, end_step=0, trials=30, rho=0.05, loss_tolerance=-1e9))
    before = weights(model)
    logs = train(model, x, y, 1)
    assert int(logs["gga_accepted"]) == 0
    assert logs["gga_cos_after"] == logs["gga_cos_before"]
    for a, b in zip(weights(model), before):
        np.testing.assert_array_equal(a, b)
