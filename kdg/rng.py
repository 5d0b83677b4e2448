"""A counter-based random number generator written with `keras.ops`.

Keras' random ops draw from each backend's own generator, so the same seed
gives different numbers on JAX, TensorFlow and PyTorch. kdg's algorithms need
their noise (GGA's perturbations, GGA-L's gradient noise, Fish's random domain
order) to be the same on every backend, so that a seeded run gives the same
weights everywhere. The numbers here are a pure function of a key and an
element index, hashed in 32-bit integer arithmetic (Wellons' "lowbias32"),
which every backend computes identically. Being pure, they also work inside
compiled loops (GGA's search) without threading generator state.

Keys are int32 tensors of shape (2,), drawn from the model's
`keras.random.SeedGenerator` once per step (`key_from_seed_generator`).
"""

import math

from keras import ops

_M1 = 0x7FEB352D
_M2 = 0x846CA68B - (1 << 32)  # as a signed int32
_GOLDEN = 0x9E3779B9 - (1 << 32)


def _shr(x, k):
    """Logical right shift of int32 values."""
    return ops.bitwise_and(ops.right_shift(x, k), (1 << (32 - k)) - 1)


def _mix(x):
    x = ops.bitwise_xor(x, _shr(x, 16))
    x = ops.multiply(x, ops.cast(_M1, "int32"))
    x = ops.bitwise_xor(x, _shr(x, 15))
    x = ops.multiply(x, ops.cast(_M2, "int32"))
    return ops.bitwise_xor(x, _shr(x, 16))


def key_from_seed_generator(seed_generator):
    """A fresh key (int32, shape (2,)) from a `keras.random.SeedGenerator`."""
    return ops.cast(seed_generator.next(), "int32")


def fold_in(key, data):
    """A new key derived from `key` and an int (or int32 scalar tensor)."""
    data = ops.cast(data, "int32")
    return ops.stack([_mix(key[0] + _mix(data)), _mix(key[1] ^ _mix(data + 1))])


def _stream(key):
    """What the element hashes need of a key, hashed once per key."""
    return _mix(key[0] + ops.cast(_GOLDEN, "int32")), key[1]


def _uniform_values(n, stream, offset):
    """n floats uniform in [0, 1): elements offset..offset+n-1 of a stream."""
    index = ops.arange(n, dtype="int32") + ops.cast(offset, "int32")
    h = _mix(ops.bitwise_xor(_mix(ops.bitwise_xor(index, stream[0])), stream[1]))
    return ops.cast(_shr(h, 8), "float32") * (1.0 / (1 << 24))


def _normal_streams(key):
    return _stream(fold_in(key, 1)), _stream(fold_in(key, 2))


def _normal_values(n, streams, offset):
    """Box-Muller on two uniform streams."""
    u1 = _uniform_values(n, streams[0], offset)
    u2 = _uniform_values(n, streams[1], offset)
    return ops.sqrt(-2.0 * ops.log(1.0 - u1)) * ops.cos((2.0 * math.pi) * u2)


def uniform(shape, key, offset=0, minval=0.0, maxval=1.0):
    """float32 numbers uniform in [minval, maxval), 24 random bits each."""
    u = _uniform_values(math.prod(shape), _stream(key), offset)
    return ops.reshape(minval + (maxval - minval) * u, shape)


def normal(shape, key, offset=0):
    """float32 standard normal numbers (Box-Muller on two uniform streams)."""
    return ops.reshape(_normal_values(math.prod(shape), _normal_streams(key), offset), shape)


def tree_noise(shapes, key, kind):
    """One noise tensor per shape, `kind` "uniform" ([0, 1)) or "normal";
    each shape gets its own stretch of the key's stream. The keys' hashes
    are computed once for all shapes (not once per shape: on TensorFlow,
    which traces op by op, that was most of GGA-L's compile)."""
    if kind == "uniform":
        streams, draw = _stream(key), _uniform_values
    elif kind == "normal":
        streams, draw = _normal_streams(key), _normal_values
    else:
        raise ValueError(f"tree_noise draws 'uniform' or 'normal' noise; got {kind!r}.")
    out, offset = [], 0
    for shape in shapes:
        n = math.prod(shape)
        out.append(ops.reshape(draw(n, streams, offset), tuple(shape)))
        offset += n
    return out


def _log_gamma_variates(shape, key, a, tries=16):
    """log of Gamma(a, 1) variates: Marsaglia and Tsang's method on Gamma(a + 1)
    (`tries` candidates each, the first accepted one; one is accepted with
    probability > 0.95), times U ** (1 / a). In log space, so that small
    shapes (Gamma(0.2) is often below float32's range) stay finite."""
    n = math.prod(shape)
    d = a + 1.0 - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    z = ops.reshape(normal((tries * n,), fold_in(key, 1)), (tries, n))
    u = ops.reshape(uniform((tries * n,), fold_in(key, 2)), (tries, n))
    v = ops.power(ops.maximum(1.0 + c * z, 1e-6), 3.0)
    log_v = ops.log(v)
    ok = ops.logical_and(
        1.0 + c * z > 0,
        ops.log(1.0 - u) < 0.5 * z * z + d - d * v + d * log_v,
    )
    first = ops.argmax(ops.cast(ok, "int32"), axis=0)
    pick = ops.take_along_axis(log_v, ops.expand_dims(first, 0), axis=0)[0]
    log_g = math.log(d) + pick  # log(d * v): Gamma(a + 1)
    boost = ops.log(1.0 - uniform((n,), fold_in(key, 3))) / a  # log U ** (1 / a)
    return ops.reshape(log_g + boost, shape)


def beta(shape, key, a, b):
    """float32 Beta(a, b) numbers: X / (X + Y), X ~ Gamma(a), Y ~ Gamma(b),
    the same on every backend."""
    log_x = _log_gamma_variates(shape, fold_in(key, 11), float(a))
    log_y = _log_gamma_variates(shape, fold_in(key, 12), float(b))
    return ops.sigmoid(log_x - log_y)
