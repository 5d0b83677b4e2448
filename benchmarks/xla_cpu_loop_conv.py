"""Why kdg rewrites convolutions on JAX + CPU: XLA:CPU runs a convolution's
weight gradient ~20-80x slower inside a `lax.fori_loop` than outside one.

    python benchmarks/xla_cpu_loop_conv.py

Outside a loop, XLA:CPU's convolution canonicalization rewrites the
weight-gradient convolution (dimension labels f01b_i01o->01bf) into the
canonical form that its Eigen convolution kernel runs (b01f_01io->b01f,
with transposes); inside a while loop's body the rewrite does not happen and
the convolution is emitted as a plain loop nest (jax-ml/jax#12868). GGA's
search is such a loop (one compiled loop over the trials, as the issue
asks). The script times one weight gradient at the top level, four
unrolled, four in a `fori_loop`, and four in a `fori_loop` with kdg's
workaround (`kdg.backend.jax_conv.canonical_convolutions`, which kdg's JAX
gradient primitive applies on a CPU: the canonical layout written before XLA
sees the program), and prints the dimension labels of the compiled
convolutions. Small enough to attach to an XLA bug report.
"""

import os
import re
import time

os.environ.setdefault("KERAS_BACKEND", "jax")  # importing kdg imports Keras

import jax
import jax.numpy as jnp
import numpy as np

from kdg.backend.jax_conv import canonical_convolutions

x = jnp.asarray(np.random.default_rng(0).random((32, 28, 28, 64), dtype=np.float32))
w = jnp.asarray(np.random.default_rng(1).random((3, 3, 64, 128), dtype=np.float32) * 0.01)


def loss(w, x):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(y ** 2)


grad = jax.grad(loss)


def step(i, w):
    return w - 1e-9 * grad(w, x)


def canonical_step(i, w):
    return w - 1e-9 * canonical_convolutions(grad)(w, x)


variants = {
    "one weight gradient, top level": lambda w: step(0, w),
    "4 weight gradients, unrolled": lambda w: step(3, step(2, step(1, step(0, w)))),
    "4 weight gradients, lax.fori_loop": lambda w: jax.lax.fori_loop(0, 4, step, w),
    "the same loop, kdg's canonical layout": lambda w: jax.lax.fori_loop(0, 4, canonical_step, w),
}
times = {}
for name, fn in variants.items():
    fn = jax.jit(fn)
    fn(w).block_until_ready()
    start = time.perf_counter()
    fn(w).block_until_ready()
    times[name] = time.perf_counter() - start
    labels = re.findall(r"dim_labels=([^,\s]+)", fn.lower(w).compile().as_text())
    print(f"{name:38s} {times[name] * 1000:9.1f} ms   convolutions: {', '.join(labels)}")
loop, unrolled = times["4 weight gradients, lax.fori_loop"], times["4 weight gradients, unrolled"]
canonical = times["the same loop, kdg's canonical layout"]
print(f"fori_loop / unrolled: {loop / unrolled:.1f}x; with kdg's layout: {canonical / unrolled:.2f}x"
      f"  (jax {jax.__version__}, {jax.devices()[0].platform})")
