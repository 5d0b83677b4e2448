"""Why GGA's search is slow on JAX on a CPU: XLA:CPU runs a convolution's
weight gradient ~20-80x slower inside a `lax.fori_loop` than outside one.

    python benchmarks/xla_cpu_loop_conv.py

Outside a loop, XLA:CPU's convolution canonicalization rewrites the
weight-gradient convolution (dimension labels f01b_i01o->01bf) into the
canonical form that its Eigen convolution kernel runs (b01f_01io->b01f,
with transposes); inside a while loop's body the rewrite does not happen and
the convolution is emitted as a plain loop nest. The script times one
weight gradient at the top level, four unrolled, and four in a `fori_loop`,
and prints the dimension labels of the compiled convolutions. GGA's search
is such a loop (one compiled loop over the trials, as the issue asks), so
on JAX + CPU each trial costs far more than one evaluation; TensorFlow's
and PyTorch's kernels do not depend on where the convolution sits. Small
enough to attach to an XLA bug report.
"""

import re
import time

import jax
import jax.numpy as jnp
import numpy as np

x = jnp.asarray(np.random.default_rng(0).random((32, 28, 28, 64), dtype=np.float32))
w = jnp.asarray(np.random.default_rng(1).random((3, 3, 64, 128), dtype=np.float32) * 0.01)


def loss(w, x):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(y ** 2)


grad = jax.grad(loss)


def step(i, w):
    return w - 1e-9 * grad(w, x)


variants = {
    "one weight gradient, top level": lambda w: step(0, w),
    "4 weight gradients, unrolled": lambda w: step(3, step(2, step(1, step(0, w)))),
    "4 weight gradients, lax.fori_loop": lambda w: jax.lax.fori_loop(0, 4, step, w),
}
times = {}
for name, fn in variants.items():
    fn = jax.jit(fn)
    fn(w).block_until_ready()
    start = time.perf_counter()
    fn(w).block_until_ready()
    times[name] = time.perf_counter() - start
    labels = re.findall(r"dim_labels=([^,\s]+)", fn.lower(w).compile().as_text())
    print(f"{name:36s} {times[name] * 1000:9.1f} ms   convolutions: {', '.join(labels)}")
loop, unrolled = times["4 weight gradients, lax.fori_loop"], times["4 weight gradients, unrolled"]
print(f"fori_loop / unrolled: {loop / unrolled:.1f}x  (jax {jax.__version__}, "
      f"{jax.devices()[0].platform})")
