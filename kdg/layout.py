"""The layout of a kdg training batch: the one place that says where each
domain's examples sit in it.

A training batch is an ordinary Keras batch ``(x, y)``: ``x`` of shape
``(N, ...)`` (or any structure of such tensors) and integer labels ``y`` of
shape ``(N,)``, where ``N = D * B`` holds B examples of each of the D
training domains, **domain-minor**: example ``b`` of domain ``d`` is at
index ``b * D + d``. So the batch cycles through the domains (d0, d1, d2,
d0, d1, d2, ...), and cutting it into n equal contiguous parts (Keras'
`DataParallel` across n devices) gives every part B/n examples of every
domain. The model knows D (`DGModel(num_domains=...)`); its training step
turns the batch into the (D, B, ...) view the algorithms work on.

`interleave_domains` builds such a batch from D per-domain minibatches,
`split_domains` takes it apart again. Both take NumPy arrays (or anything
`np.asarray` reads) and nested tuples, lists and dicts of them.
"""

import numpy as np


def _map(fn, *structures):
    first = structures[0]
    if isinstance(first, dict):
        return {k: _map(fn, *(s[k] for s in structures)) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_map(fn, *parts) for parts in zip(*structures))
    return fn(*structures)


def _interleave(parts, xp):
    """D tensors of shape (B, ...) -> (B*D, ...), domain-minor (`xp`: NumPy,
    or TensorFlow inside a tf.data pipeline)."""
    stacked = xp.stack(parts, axis=1)  # (B, D, ...): row b holds example b of every domain
    return xp.reshape(stacked, (-1,) + tuple(stacked.shape[2:]))


def _split(t, num_domains, xp):
    """(B*D, ...) -> (D, B, ...), the inverse of `_interleave` (`xp`: NumPy,
    or `keras.ops` in the training step)."""
    grouped = xp.reshape(t, (-1, num_domains) + tuple(xp.shape(t)[1:]))  # (B, D, ...)
    return xp.swapaxes(grouped, 0, 1)


def interleave_domains(per_domain):
    """One training batch from D per-domain minibatches of B examples each.

    Args:
        per_domain: a list of D minibatches (arrays, or ``(x, y)`` tuples and
            other structures of arrays, all with the same structure and the
            same B), or one stacked array (or structure) of shape
            ``(D, B, ...)``.

    Returns:
        The same structure with every array of shape ``(D*B, ...)``, example b
        of domain d at index ``b*D + d``: a batch to give `DGModel.fit` or
        `train_on_batch` (with the model's ``num_domains`` = D).
    """
    if isinstance(per_domain, list):
        if not per_domain:
            raise ValueError("interleave_domains: the list of per-domain minibatches is empty.")
        sizes = {len(np.asarray(leaf)) for part in per_domain for leaf in _leaves(part)}
        if len(sizes) != 1:
            raise ValueError(
                "interleave_domains: every domain's minibatch must have the same number of "
                f"examples B; got sizes {sorted(sizes)}. Cut them to the smallest.")
        return _map(lambda *parts: _interleave([np.asarray(p) for p in parts], np),
                    *per_domain)
    return _map(lambda t: _interleave(list(np.asarray(t)), np), per_domain)


def split_domains(batch, num_domains):
    """The inverse of `interleave_domains`: a training batch (a structure of
    ``(D*B, ...)`` arrays) -> the same structure of ``(D, B, ...)`` arrays,
    entry ``[d, b]`` being example b of domain d."""
    def one(t):
        t = np.asarray(t)
        if t.shape[0] % num_domains:
            raise ValueError(
                f"split_domains: a batch of {t.shape[0]} examples does not hold "
                f"{num_domains} domains equally (N must be a multiple of num_domains).")
        return _split(t, num_domains, np)

    return _map(one, batch)


def _leaves(structure):
    if isinstance(structure, dict):
        return [leaf for v in structure.values() for leaf in _leaves(v)]
    if isinstance(structure, (tuple, list)):
        return [leaf for v in structure for leaf in _leaves(v)]
    return [structure]
