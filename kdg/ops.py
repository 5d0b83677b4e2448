"""Gradient arithmetic shared by the algorithms, written once with keras.ops.

Per-domain gradients are kept "stacked": a list with one tensor per trainable
variable, of shape (D, *variable.shape).
"""

import numpy as np
from keras import ops


def gram(stacked):
    """Gram matrix (D, D) of the flattened per-domain gradients."""
    total = 0.0
    for g in stacked:
        flat = ops.reshape(g, (g.shape[0], -1))
        total = total + ops.matmul(flat, ops.transpose(flat))
    return total


def gram_cosines(g):
    """The cosines of every pair i < j of per-domain gradients, shape
    (D(D-1)/2,), from their (D, D) Gram matrix. A zero gradient has cosine 0
    with everything."""
    d = g.shape[0]
    norms = ops.sqrt(ops.maximum(ops.diagonal(g), 0.0))
    denom = norms[:, None] * norms[None, :]
    cos = ops.where(denom > 0, g / ops.where(denom > 0, denom, 1.0), 0.0)
    i, j = np.triu_indices(d, 1)
    return ops.take(ops.reshape(cos, (-1,)), ops.convert_to_tensor(i * d + j))


def gram_cosine_stats(g):
    """(min, mean) of the pairwise cosines, from a (D, D) Gram matrix."""
    cos = gram_cosines(g)
    return ops.min(cos), ops.mean(cos)


def cosine_stats(stacked):
    """(min, mean) of the pairwise cosines."""
    return gram_cosine_stats(gram(stacked))
