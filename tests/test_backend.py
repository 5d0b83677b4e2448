"""The backend seam's loop over domains (`kdg.backend.scan`), compiled as the
training step is, against a plain NumPy loop."""

import keras
import numpy as np
from conftest import BACKEND
from keras import ops

from kdg import backend


def compiled(fn):
    """`fn` compiled as Keras compiles a training step on this backend."""
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, autograph=False)
    return fn


def numpy_scan(a, b):
    total, count, ys = np.zeros(4, "float32"), 0, []
    for a_i, b_i in zip(a, b):
        count += 1
        total = total + a_i.sum(axis=0) * count
        ys.append((a_i * count, b_i + count))
    return total, count, np.stack([y[0] for y in ys]), np.stack([y[1] for y in ys])


def test_scan_threads_the_carry_and_stacks_the_outputs():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 2, 4)).astype("float32")
    b = rng.integers(0, 9, size=(3, 5)).astype("int32")

    def fn(carry, x):
        total, count = carry
        count = count + 1
        total = total + ops.sum(x["a"], axis=0) * ops.cast(count, "float32")
        return [total, count], (x["a"] * ops.cast(count, "float32"), x["b"] + count)

    def run(a, b):
        init = [ops.zeros((4,), "float32"), ops.convert_to_tensor(0, "int32")]
        return backend.scan(fn, init, {"a": a, "b": b})

    (total, count), (ya, yb) = compiled(run)(ops.convert_to_tensor(a), ops.convert_to_tensor(b))
    want_total, want_count, want_a, want_b = numpy_scan(a, b)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(total), want_total, rtol=1e-6)
    assert int(keras.ops.convert_to_numpy(count)) == want_count
    assert keras.ops.convert_to_numpy(count).dtype == np.int32
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ya), want_a, rtol=1e-6)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(yb), want_b)
