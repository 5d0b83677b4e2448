"""kdg.backend.jax_conv: convolutions rewritten into XLA:CPU's fast layout
compute what the original program computes, and no other layout is left.

The references are NumPy's closed-form weight gradient and XLA's own
evaluation of the program as JAX wrote it.
"""

import numpy as np
import pytest

from conftest import BACKEND

if BACKEND != "jax":
    pytestmark = pytest.mark.skip(reason="the rewrite is part of the JAX backend")
else:
    import jax
    import jax.numpy as jnp
    import keras

    from kdg import backend
    from kdg.backend.jax_conv import canonical_convolutions, for_platform

CANONICAL = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def conv_layouts(fn, *args):
    """The dimension numbers of every convolution in fn's jaxpr, calls included."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                found.append(tuple(tuple(s) for s in eqn.params["dimension_numbers"]))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def test_weight_gradient_matches_numpy():
    """d/dW sum(conv(x, W)) for a VALID stride-1 convolution is the sum of
    the input windows: dW[h, w, i, o] = sum_{b, y, x} X[b, y+h, x+w, i]."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 7, 3)).astype("float32")
    w = rng.normal(size=(3, 2, 3, 4)).astype("float32")

    def loss(w, x):
        y = jax.lax.conv_general_dilated(
            x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return jnp.sum(y)

    grad = canonical_convolutions(jax.grad(loss))
    got = np.asarray(jax.jit(grad)(w, x))
    expected = np.zeros_like(w)
    for h in range(3):
        for v in range(2):
            window = x[:, h : h + 4, v : v + 6, :].sum(axis=(0, 1, 2))
            expected[h, v] = window[:, None]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert set(conv_layouts(grad, w, x)) == {CANONICAL}
    # Without the rewrite JAX writes the weight gradient in another layout.
    assert set(conv_layouts(jax.grad(loss), w, x)) != {CANONICAL}


@pytest.mark.parametrize("layout", [("NHWC", "HWIO", "NHWC"), ("NCHW", "OIHW", "NCHW"),
                                    ("NHWC", "OIHW", "NCHW")])
@pytest.mark.parametrize("groups", [1, 2])
def test_same_values_and_gradients_as_xla(layout, groups):
    """Strides, input and kernel dilation, padding and feature groups, in
    several layouts: the rewritten program gives what XLA gives for the
    original, inside a compiled loop too."""
    rng = np.random.default_rng(groups)
    channels_last = layout[0] == "NHWC"
    x = rng.normal(size=(3, 9, 10, 4 * groups) if channels_last else (3, 4 * groups, 9, 10))
    w = rng.normal(size=(3, 2, 4, 6 * groups) if layout[1] == "HWIO" else (6 * groups, 4, 3, 2))
    x, w = x.astype("float32"), w.astype("float32")

    def loss(w, x):
        y = jax.lax.conv_general_dilated(
            x, w, (2, 1), [(1, 2), (0, 1)], lhs_dilation=(1, 2), rhs_dilation=(2, 1),
            dimension_numbers=layout, feature_group_count=groups,
        )
        return jnp.sum(jnp.sin(y)), y

    grad = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    rewritten = canonical_convolutions(grad)

    def looped(fn):
        def run(w, x):
            def body(i, acc):
                (value, _), (gw, gx) = fn(w + 0.01 * acc[0], x)
                return acc[0] + gw, acc[1] + gx, acc[2] + value
            zero = (jnp.zeros_like(w), jnp.zeros_like(x), jnp.zeros(()))
            return jax.lax.fori_loop(0, 2, body, zero)
        return run

    for expected, got in [(grad(w, x), jax.jit(rewritten)(w, x)),
                          (jax.jit(looped(grad))(w, x), jax.jit(looped(rewritten))(w, x))]:
        for e, g in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
            np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=2e-4, atol=2e-4)
    assert set(conv_layouts(rewritten, w, x)) == {CANONICAL}
    assert set(conv_layouts(looped(rewritten), w, x)) == {CANONICAL}


def test_keras_model_gradients_through_the_backend_seam():
    """kdg's gradient primitive on a channels-first Keras CNN with BatchNorm
    and a depthwise convolution: the gradients and new state are XLA's."""
    assert jax.default_backend() == "cpu"
    model = keras.Sequential([
        keras.Input((3, 12, 12)),
        keras.layers.Conv2D(8, 3, strides=2, padding="same", data_format="channels_first"),
        keras.layers.BatchNormalization(axis=1),
        keras.layers.ReLU(),
        keras.layers.DepthwiseConv2D(3, data_format="channels_first"),
        keras.layers.GlobalAveragePooling2D(data_format="channels_first"),
        keras.layers.Dense(5),
    ])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3, 12, 12)).astype("float32")
    y = rng.integers(0, 5, size=(4,))

    def loss(params, state, x, y):
        logits, state = model.stateless_call(params, state, x, training=True)
        value = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        return jnp.mean(value), state

    params = [v.value for v in model.trainable_variables]
    state = [v.value for v in model.non_trainable_variables]
    expected = jax.value_and_grad(loss, has_aux=True)(params, state, x, y)
    got = jax.jit(backend.value_and_grad(loss))(params, state, x, y)
    for e, g in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-4, atol=1e-5)
    layouts = conv_layouts(backend.value_and_grad(loss), params, state, x, y)
    # Two forward passes, two weight gradients, the second one's input gradient.
    assert len(layouts) == 5 and set(layouts) == {CANONICAL}


@pytest.mark.parametrize("platform", ["gpu", "cuda", "rocm", "tpu"])
def test_the_rewrite_is_off_on_accelerators(platform):
    """Keyed on the CPU platform (what backend.value_and_grad passes it:
    jax.default_backend()): on a GPU or TPU the gradient function is JAX's
    own, its convolutions left in the layouts JAX wrote; on the CPU they are
    rewritten."""
    x = jnp.ones((2, 3, 8, 8))
    w = jnp.ones((4, 3, 3, 3))

    def loss(w, x):
        return jnp.sum(jax.lax.conv(x, w, (1, 1), "SAME") ** 2), ()

    grad = jax.value_and_grad(loss, has_aux=True)
    assert for_platform(grad, platform) is grad
    assert set(conv_layouts(grad, w, x)) != {CANONICAL}
    assert set(conv_layouts(for_platform(grad, "cpu"), w, x)) == {CANONICAL}
    assert jax.default_backend() == "cpu" and set(
        conv_layouts(backend.value_and_grad(loss), w, x)) == {CANONICAL}
