"""kdg.rng against a NumPy implementation of the same counter-based
generator (Wellons' lowbias32 hash in uint32 arithmetic)."""

import numpy as np
from keras import ops

from kdg import rng as kdg_rng

GOLDEN = np.uint32(0x9E3779B9)


def mix(x):
    x = np.asarray(x, np.uint32)
    with np.errstate(over="ignore"):
        x = x ^ (x >> 16)
        x = x * np.uint32(0x7FEB352D)
        x = x ^ (x >> 15)
        x = x * np.uint32(0x846CA68B)
        return x ^ (x >> 16)


def fold_in(key, data):
    with np.errstate(over="ignore"):
        return np.array([mix(key[0] + mix(data)), mix(key[1] ^ mix(np.uint32(data + 1)))],
                        np.uint32)


def uniform(n, key, offset):
    index = np.arange(n, dtype=np.uint32) + np.uint32(offset)
    with np.errstate(over="ignore"):
        h = mix(mix(index ^ mix(key[0] + GOLDEN)) ^ key[1])
    return (h >> 8).astype(np.float32) * np.float32(2.0**-24)


def normal(n, key, offset):
    u1 = uniform(n, fold_in(key, 1), offset).astype(np.float64)
    u2 = uniform(n, fold_in(key, 2), offset).astype(np.float64)
    return np.sqrt(-2.0 * np.log(1.0 - u1)) * np.cos(2.0 * np.pi * u2)


KEY = np.array([12345, -678], np.int32)
SHAPES = [(3, 3, 4, 5), (5,), (7, 2), (1,)]


def test_uniform_and_normal_match_numpy():
    key = ops.convert_to_tensor(KEY)
    want = uniform(24, KEY.view(np.uint32), 3)
    got = ops.convert_to_numpy(kdg_rng.uniform((4, 6), key, offset=3))
    np.testing.assert_array_equal(got.reshape(-1), want)
    scaled = ops.convert_to_numpy(kdg_rng.uniform((24,), key, 3, minval=-2.0, maxval=3.0))
    np.testing.assert_allclose(scaled, -2.0 + 5.0 * want, rtol=1e-6, atol=1e-6)
    got = ops.convert_to_numpy(kdg_rng.normal((24,), key, offset=3))
    np.testing.assert_allclose(got, normal(24, KEY.view(np.uint32), 3), rtol=1e-4, atol=1e-5)


def test_tree_noise_gives_each_shape_its_stretch_of_the_stream():
    key = ops.convert_to_tensor(KEY)
    total = sum(int(np.prod(s)) for s in SHAPES)
    for kind, draw in (("uniform", uniform), ("normal", normal)):
        flat = draw(total, KEY.view(np.uint32), 0)
        got = kdg_rng.tree_noise(SHAPES, key, kind)
        start = 0
        for shape, tensor in zip(SHAPES, got):
            size = int(np.prod(shape))
            assert tuple(tensor.shape) == shape
            np.testing.assert_allclose(ops.convert_to_numpy(tensor).reshape(-1),
                                       flat[start:start + size], rtol=1e-4, atol=1e-5)
            start += size
