"""RotatedDigits and ColoredDigits: small offline stand-ins for the MNIST datasets.

They apply DomainBed's RotatedMNIST and ColoredMNIST constructions
(:mod:`kdg.data.mnist`) to scikit-learn's handwritten digits
(``sklearn.datasets.load_digits``: 1,797 images of 8 x 8 pixels with values
0..16, shipped inside scikit-learn, so nothing is downloaded).

Each 8 x 8 digit is upsampled (bilinear) to a box of ``image_size - 2 * pad``
pixels and centred on a black square of ``image_size`` pixels, with
``pad = round(image_size / 7)``: for ``image_size=28`` that is MNIST's own
geometry (a 20 x 20 digit in a 28 x 28 frame), for the default 16 a 12 x 12
digit with a 2-pixel margin, which leaves room for rotation.

* RotatedDigits: 6 environments (0, 15, 30, 45, 60, 75 degrees), ~300 images
  each, 10 classes, ``(image_size, image_size, 1)``.
* ColoredDigits: 3 environments (colour-flip probabilities 0.1, 0.2, 0.9),
  ~600 images each, 2 classes, ``(image_size, image_size, 2)``.

Both are deterministic for a given ``data_seed``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from kdg.tf_data import tf

from kdg.data.mnist import colored_environments, rotated_environments
from kdg.data.registry import COLOR_FLIP_PROBABILITIES, ROTATIONS


@lru_cache(maxsize=4)
def digit_images(image_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as MNIST-like uint8 images ``(1797, image_size, image_size)``,
    and their labels."""
    from sklearn.datasets import load_digits

    if image_size < 8:
        raise ValueError(f"image_size must be at least 8, got {image_size}")
    digits = load_digits()
    pad = round(image_size / 7)
    box = image_size - 2 * pad
    small = digits.images.astype(np.float32)[..., None] * (255.0 / 16.0)
    large = tf.image.resize(small, (box, box), method="bilinear").numpy()[..., 0]
    images = np.zeros((len(large), image_size, image_size), np.uint8)
    images[:, pad:pad + box, pad:pad + box] = np.rint(np.clip(large, 0, 255))
    images.setflags(write=False)
    return images, digits.target.astype(np.int64)


def rotated_digits(image_size: int = 16, data_seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """RotatedMNIST's construction on the digits: one ``(images, labels)`` per angle."""
    images, labels = digit_images(image_size)
    # bilinear, as when the quickstart's numbers were measured (RotatedMNIST: bicubic)
    return rotated_environments(images, labels, ROTATIONS, data_seed, resample="bilinear")


def colored_digits(image_size: int = 16, data_seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """ColoredMNIST's construction on the digits: one ``(images, labels)`` per environment."""
    images, labels = digit_images(image_size)
    return colored_environments(images, labels, COLOR_FLIP_PROBABILITIES, data_seed)
