"""The Keras augmentation layers used inside tf.data, one at a time."""

import numpy as np
import tensorflow as tf

from kdg.data.augment import ImagePolicy, make_augmenter, random_resized_crop

IMAGES = np.random.default_rng(0).uniform(0, 255, (6, 12, 12, 3)).astype(np.float32)


def run(policy: ImagePolicy, seed: int = 0) -> np.ndarray:
    augment = make_augmenter(policy, seed)
    dataset = tf.data.Dataset.from_tensors(IMAGES).map(augment)
    return next(iter(dataset)).numpy()


def test_flip_only_mirrors_some_images():
    out = run(ImagePolicy(color_jitter=0, grayscale=0), seed=3)
    same = [np.allclose(o, x) for o, x in zip(out, IMAGES)]
    mirrored = [np.allclose(o, x[:, ::-1]) for o, x in zip(out, IMAGES)]
    assert all(s or m for s, m in zip(same, mirrored)) and any(mirrored)


def test_grayscale_only():
    out = run(ImagePolicy(flip=False, color_jitter=0, grayscale=1.0))
    assert np.allclose(out[..., 0], out[..., 1], atol=1e-3)
    assert np.allclose(out[..., 1], out[..., 2], atol=1e-3)


def test_full_augmentation_keeps_shape_and_range():
    out = run(ImagePolicy())
    assert out.shape == IMAGES.shape and 0 <= out.min() and out.max() <= 255
    assert not np.allclose(out, IMAGES)


def test_random_resized_crop_is_seeded():
    image = tf.constant(np.arange(40 * 30 * 3, dtype=np.uint8).reshape(40, 30, 3))
    a = random_resized_crop(image, 16, tf.constant([1, 2], tf.int64))
    b = random_resized_crop(image, 16, tf.constant([1, 2], tf.int64))
    c = random_resized_crop(image, 16, tf.constant([1, 3], tf.int64))
    assert a.shape == (16, 16, 3) and a.dtype == tf.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
