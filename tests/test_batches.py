"""kdg's training batches: ordinary (N, ...) Keras batches laid out
domain-minor (kdg.layout), the model's num_domains, and the step's
per-domain view of them."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import domain_batch, init_params, make_data, softmax_regression, weights

import kdg
import reference as ref
from kdg import recipes
from kdg.algorithms import ERM, GGAL, Fish


def explicit_layout(per_domain):
    """The layout, as the README states it: example b of domain d at b*D + d."""
    num, size = len(per_domain), len(per_domain[0])
    out = [None] * (num * size)
    for d in range(num):
        for b in range(size):
            out[b * num + d] = per_domain[d][b]
    return np.stack(out)


# -- the layout -----------------------------------------------------------------------------

def test_interleave_and_split_follow_the_layout():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 2, 4)).astype("float32")
    y = rng.integers(0, 9, size=(3, 5))
    want_x, want_y = explicit_layout(x), explicit_layout(y)
    for given in ((x, y), [(x[d], y[d]) for d in range(3)]):  # stacked, or a list of D
        got_x, got_y = kdg.data.interleave_domains(given)
        np.testing.assert_array_equal(got_x, want_x)
        np.testing.assert_array_equal(got_y, want_y)
    back_x, back_y = kdg.data.split_domains((want_x, want_y), 3)
    np.testing.assert_array_equal(back_x, x)
    np.testing.assert_array_equal(back_y, y)
    # dicts of inputs too
    got = kdg.data.interleave_domains({"a": x, "b": y})
    np.testing.assert_array_equal(got["a"], want_x)
    np.testing.assert_array_equal(got["b"], want_y)


def test_layout_errors_name_the_problem():
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match=r"same number of examples B; got sizes \[3, 4\]"):
        kdg.data.interleave_domains([x, x[:3]])
    with pytest.raises(ValueError, match="multiple of num_domains"):
        kdg.data.split_domains(np.zeros(10), 3)


def test_domain_batches_stream_from_arrays_and_datasets():
    rng = np.random.default_rng(1)
    arrays = [(rng.normal(size=(n, 3)).astype("float32"), rng.integers(0, 4, size=n))
              for n in (7, 9)]
    datasets = [tf.data.Dataset.from_tensor_slices(a) for a in arrays]
    for per_domain in (arrays, datasets):
        batches = kdg.data.domain_batches(per_domain, batch_size=3, shuffle=False)
        assert batches.num_domains == 2
        stream = iter(batches)
        for start in (0, 3):  # the first two batches of 3 per domain, in order
            x, y = next(stream)
            assert x.shape == (6, 3) and y.dtype == np.int32
            np.testing.assert_array_equal(
                x, explicit_layout([a[0][start:start + 3] for a in arrays]))
            np.testing.assert_array_equal(
                y, explicit_layout([a[1][start:start + 3] for a in arrays]))
    shuffled = next(iter(kdg.data.domain_batches(arrays, batch_size=3, seed=4)))[0]
    # every domain's rows still come from that domain
    for d, part in enumerate(kdg.data.split_domains(shuffled, 2)):
        assert all(any(np.array_equal(row, a) for a in arrays[d][0]) for row in part)
    with pytest.raises(ValueError, match="one dataset .* per training domain"):
        kdg.data.domain_batches(datasets[0])


def test_dataset_train_batches_are_laid_out_and_carry_num_domains():
    ds = kdg.data.load("RotatedDigits")
    batches = ds.train_batches([1, 2, 4], batch_size=4, seed=0)
    assert batches.num_domains == 3
    x, y = next(iter(batches))
    assert x.shape == (12,) + tuple(ds.input_shape) and y.shape == (12,)
    # rotated digits: each domain's images come from its own angle's split
    per_domain = kdg.data.split_domains(x, 3)
    for d, domain in enumerate((1, 2, 4)):
        images = np.concatenate([b[0] for b in ds.eval_batches(ds.split(domain, "in"))])
        for image in per_domain[d]:
            assert np.abs(images - image).reshape(len(images), -1).max(1).min() < 1e-6


# -- num_domains ----------------------------------------------------------------------------

def test_fit_takes_num_domains_from_kdgs_batches(data, params):
    x, y = data
    batches = kdg.data.domain_batches([(x[d], y[d]) for d in range(3)], batch_size=8,
                                      shuffle=False)
    model = softmax_regression(ERM(), params)
    assert model.num_domains is None
    model.fit(batches, steps_per_epoch=2, epochs=1, verbose=0)
    assert model.num_domains == 3
    want = params
    for _ in range(2):
        want, _ = ref.erm_step(want, x, y, lr=0.1)
    for got, w in zip(weights(model), want):
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-5)


def test_num_domains_mismatch_and_missing_get_clear_errors(data, params):
    x, y = data
    batches = kdg.data.domain_batches([(x[d], y[d]) for d in range(3)], batch_size=8)
    model = softmax_regression(ERM(), params, num_domains=2)
    with pytest.raises(ValueError, match=r"hold 3 domains, the model was set to num_domains=2"):
        model.fit(batches, steps_per_epoch=1, verbose=0)
    flat_x, flat_y = domain_batch(x, y)
    missing = r"does not know how many training domains.*model.num_domains = D"
    with pytest.raises(ValueError, match=missing):
        softmax_regression(ERM(), params).train_on_batch(flat_x, flat_y)
    with pytest.raises(ValueError, match=missing):
        softmax_regression(ERM(), params).fit(
            ((flat_x, flat_y) for _ in range(2)), steps_per_epoch=2, verbose=0)
    with pytest.raises(ValueError, match=r"24 examples do not divide into num_domains=5"):
        softmax_regression(ERM(), params, num_domains=5).train_on_batch(flat_x, flat_y)
    with pytest.raises(ValueError, match="num_domains must be a positive integer"):
        model.num_domains = 0


def test_a_saved_model_keeps_num_domains(tmp_path, data, params):
    x, y = data
    model = softmax_regression(Fish(), params, num_domains=3)
    model.train_on_batch(*domain_batch(x, y))
    assert model.get_config()["num_domains"] == 3
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.num_domains == 3
    inputs = keras.Input((5,))
    wrapped = kdg.wrap(keras.Model(inputs, keras.layers.Dense(4)(inputs)), num_domains=4)
    wrapped.save(tmp_path / "w.keras")
    assert keras.models.load_model(tmp_path / "w.keras").num_domains == 4


def test_the_step_sees_each_domain_as_its_own():
    """GGA-L's logged cosines are those of the per-domain gradients: a
    wrong view of the batch (domain-major, say) mixes the domains."""
    x, y = make_data(num_domains=3, batch=6, seed=7)
    params = init_params(seed=2)
    model = softmax_regression(GGAL(), params, num_domains=3)
    logs = model.train_on_batch(*domain_batch(x, y), return_dict=True)
    cosines = ref.cosines([g for _, g in ref.domain_grads(params, x, y)])
    np.testing.assert_allclose(logs["grad_cos_min"], cosines.min(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logs["grad_cos_mean"], cosines.mean(), rtol=1e-4, atol=1e-5)
    # the domains' losses differ, so the mean over domains is the check's own
    losses = [loss for loss, _ in ref.domain_grads(params, x, y)]
    np.testing.assert_allclose(logs["loss"], np.mean(losses), rtol=1e-5)


# -- several devices: the recipe's batch must divide among them ---------------------------

def test_a_batch_the_devices_do_not_divide_is_refused_before_the_run():
    recipe = recipes.validate({"dataset": {"name": "RotatedDigits"}, "backend": "jax",
                               "training": {"devices": 4, "batch_size": 6}})
    with pytest.raises(recipes.RecipeError,
                       match=r"training.batch_size: 6 examples per domain do not divide among "
                             r"training.devices=4.*multiple of 4 \(e.g. 8\)"):
        recipes.check_run(recipe, ["a", "b", "c"], [0], count_devices=False)
    fine = recipes.validate({"dataset": {"name": "RotatedDigits"}, "backend": "jax",
                             "training": {"devices": 2, "batch_size": 6}})
    recipes.check_run(fine, ["a", "b", "c"], [0], count_devices=False)
