"""A loop over the leading axis written out in Python: PyTorch's eager
`scan`, and JAX's (see `kdg.backend.jax.scan` for why it is not a
`lax.scan`)."""

from keras import ops
from keras import tree


def scan(fn, carry, xs):
    """`fn(carry, x) -> (carry, y)` over the leading axis of `xs`: (final
    carry, stacked ys)."""
    ys = []
    for i in range(tree.flatten(xs)[0].shape[0]):
        carry, y = fn(carry, tree.map_structure(lambda t: t[i], xs))
        ys.append(y)
    return carry, tree.map_structure(lambda *t: ops.stack(t), *ys)
