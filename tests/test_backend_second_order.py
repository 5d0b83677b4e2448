"""The backend seam's second-order gradient (`value_and_grad(fn,
differentiable=True)` differentiated by an enclosing `value_and_grad`)
against closed forms in NumPy, eagerly and compiled as a training step is."""

import keras
import numpy as np
import pytest
from conftest import BACKEND
from keras import ops

from kdg import backend
from kdg.algorithms.base import StepContext


def compiled(fn):
    """`fn` compiled as Keras compiles a training step on this backend
    (PyTorch's steps run eagerly)."""
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, autograph=False)
    return fn


def numpy_tanh_case(a, w):
    """f(w) = sum(tanh(A w)): grad f = A^T s with t = tanh(A w), s = 1 - t^2;
    h = ||grad f||^2 has grad h = 2 A^T diag(ds/du) A grad f, ds/du = -2 t s."""
    t = np.tanh(a @ w)
    s = 1 - t**2
    g = a.T @ s
    return g, float(g @ g), 2 * a.T @ ((-2 * t * s) * (a @ g))


def squared_grad_norm(vg_inner):
    """The enclosing function: ||grad f||^2, with the inner gradient's value."""

    def outer(params, *args):
        (_, _), grads = vg_inner(params, *args)
        return ops.sum(grads[0] ** 2), grads[0]

    return outer


@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_gradient_of_a_squared_gradient_norm_matches_the_closed_form(mode):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 4)).astype("float32")
    w = rng.normal(scale=0.5, size=(4,)).astype("float32")

    def f(params, a):
        return ops.sum(ops.tanh(ops.matmul(a, params[0]))), None

    outer = backend.value_and_grad(
        squared_grad_norm(backend.value_and_grad(f, differentiable=True))
    )
    run = compiled(outer) if mode == "compiled" else outer
    (h, g), (dh,) = run([ops.convert_to_tensor(w)], ops.convert_to_tensor(a))

    want_g, want_h, want_dh = numpy_tanh_case(a.astype("float64"), w.astype("float64"))
    np.testing.assert_allclose(ops.convert_to_numpy(g), want_g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(ops.convert_to_numpy(h)), want_h, rtol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(dh), want_dh, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_second_order_through_a_keras_layer(mode):
    """Through a Keras layer's `stateless_call` (PyTorch's torch.func would give
    zeros here), by StepContext's `value_and_grad`, as algorithms call it:
    h(W) = ||d/dW sum(tanh(x W))||^2, dh/dW = 2 x^T ((-2 t s) * (x G)),
    G = x^T s, t = tanh(x W), s = 1 - t^2."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 3)).astype("float32")
    kernel = rng.normal(scale=0.5, size=(3, 2)).astype("float32")
    layer = keras.layers.Dense(2, activation="tanh", use_bias=False)
    layer.build((None, 3))
    layer.set_weights([kernel])

    def f(params, x):
        out, _ = layer.stateless_call(params, [], x, training=True)
        return ops.sum(out), out

    outer = StepContext.value_and_grad(
        squared_grad_norm(StepContext.value_and_grad(f, differentiable=True))
    )
    run = compiled(outer) if mode == "compiled" else outer
    (h, g), (dh,) = run([ops.convert_to_tensor(kernel)], ops.convert_to_tensor(x))

    x64, k64 = x.astype("float64"), kernel.astype("float64")
    t = np.tanh(x64 @ k64)
    s = 1 - t**2
    want_g = x64.T @ s
    want_dh = 2 * x64.T @ ((-2 * t * s) * (x64 @ want_g))
    np.testing.assert_allclose(ops.convert_to_numpy(g), want_g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(ops.convert_to_numpy(h)), (want_g**2).sum(), rtol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(dh), want_dh, rtol=1e-4, atol=1e-6)


def test_inner_loss_and_aux_stay_differentiable():
    """The enclosing gradient also sees the inner loss: d/dw [f(w) + ||grad f||^2]
    = grad f + grad h (IGA's objective is of this form)."""
    rng = np.random.default_rng(2)
    a = rng.normal(size=(6, 4)).astype("float32")
    w = rng.normal(scale=0.5, size=(4,)).astype("float32")

    def f(params, a):
        return ops.sum(ops.tanh(ops.matmul(a, params[0]))), None

    inner = backend.value_and_grad(f, differentiable=True)

    def outer(params, a):
        (loss, _), grads = inner(params, a)
        return loss + ops.sum(grads[0] ** 2), None

    (_, _), (got,) = compiled(backend.value_and_grad(outer))(
        [ops.convert_to_tensor(w)], ops.convert_to_tensor(a))
    g, _, dh = numpy_tanh_case(a.astype("float64"), w.astype("float64"))
    np.testing.assert_allclose(ops.convert_to_numpy(got), g + dh, rtol=1e-4, atol=1e-6)
