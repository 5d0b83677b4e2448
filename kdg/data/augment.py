"""Image preprocessing: DomainBed's training augmentation and evaluation transform.

DomainBed (``datasets.py``) trains on::

    RandomResizedCrop(224, scale=(0.7, 1.0)), RandomHorizontalFlip(),
    ColorJitter(0.3, 0.3, 0.3, 0.3), RandomGrayscale(p=0.1),
    ToTensor(), Normalize(ImageNet mean, std)

and evaluates on ``Resize((224, 224))`` + the same normalisation. Here:

* the random resized crop is done per image, on the decoded image at its
  original resolution, with stateless random ops seeded per element
  (:func:`random_resized_crop`), so it runs in a parallel ``map`` and stays
  reproducible;
* flip, colour jitter and grayscale are Keras preprocessing layers
  (:func:`make_augmenter`) applied to whole batches inside ``tf.data``, where
  they run on TensorFlow whatever the Keras backend is. Their random state
  advances once per batch, so the map that applies them is sequential, which
  keeps the stream reproducible for a given seed.

Differences with torchvision's ``ColorJitter`` that cannot be removed with
the Keras layers, and the choices made:

* brightness: torchvision multiplies by ``U(0.7, 1.3)``; Keras'
  ``RandomBrightness`` adds ``U(-f, f) * 255``. ``f = jitter / 2`` changes a
  mid-grey pixel (0.5) exactly as torchvision does, by ``U(-0.15, 0.15)``;
  darker pixels change more than with torchvision, brighter ones less.
* contrast: both blend with the mean by a factor ``U(0.7, 1.3)`` (Keras uses
  the per-channel mean, torchvision the grey mean).
* saturation: Keras multiplies the HSV saturation by ``g = u / (1 - u)``;
  ``u ~ U(0.7/1.7, 1.3/2.3)`` gives ``g`` in ``[0.7, 1.3]`` as torchvision.
* hue: Keras shifts hue by ``+-u/2`` with ``u ~ U(lo, hi)``; ``(0, 2*jitter)``
  gives a shift in ``[-0.3, 0.3]`` of the hue circle, as torchvision.
* order: Keras applies brightness, contrast, saturation, hue in this fixed
  order; torchvision draws a random order per image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras
from kdg.tf_data import tf

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImagePolicy:
    """How images of a natural-image dataset are turned into model inputs.

    Attributes:
        image_size: side of the square model input (224 in DomainBed).
        augment: augment training batches (evaluation batches never are).
        crop_scale: area range of the random resized crop.
        crop_ratio: aspect-ratio range of the random resized crop.
        flip: random horizontal flip.
        color_jitter: strength of brightness/contrast/saturation/hue jitter.
        grayscale: probability of turning a training image to grey.
        normalize: subtract the ImageNet mean and divide by its std.
    """

    image_size: int = 224
    augment: bool = True
    crop_scale: tuple[float, float] = (0.7, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    color_jitter: float = 0.3
    grayscale: float = 0.1
    normalize: bool = True


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
    """Resize an ``(H, W, 3)`` image to ``(size, size, 3)`` float32 in [0, 255]
    (no aspect preservation, as DomainBed's ``Resize((224, 224))``)."""
    image = tf.image.resize(image, (size, size), method="bilinear", antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0)


def random_resized_crop(image: tf.Tensor, size: int, seed: tf.Tensor, *,
                        scale: tuple[float, float] = (0.7, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tf.Tensor:
    """Crop a random box of ``scale`` x area and ``ratio`` aspect, resize it to ``size``.

    ``seed`` is a shape-(2,) integer tensor; the same seed gives the same box.
    Falls back to the whole image when no box fits in 10 attempts, as
    ``tf.image.sample_distorted_bounding_box`` does.
    """
    begin, box_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.zeros([1, 0, 4], tf.float32),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=ratio,
        area_range=scale,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return resize(tf.slice(image, begin, box_size), size)


def jitter_layer(strength: float, seed: int) -> keras.layers.Layer:
    """``keras.layers.RandomColorJitter`` matching torchvision's
    ``ColorJitter(strength, strength, strength, strength)`` (see the module notes)."""
    return keras.layers.RandomColorJitter(
        value_range=(0, 255),
        brightness_factor=strength / 2,
        contrast_factor=strength,
        saturation_factor=((1 - strength) / (2 - strength), (1 + strength) / (2 + strength)),
        hue_factor=(0.0, 2 * strength),
        seed=seed,
    )


def make_augmenter(policy: ImagePolicy, seed: int) -> Callable[[tf.Tensor], tf.Tensor]:
    """Build the batch augmentation: flip, colour jitter, grayscale (Keras layers).

    The returned function maps a ``(B, S, S, 3)`` float32 batch in [0, 255] to
    an augmented batch in the same range. Fresh layers are created on every
    call, so two augmenters made with the same seed produce the same stream.
    """
    layers: list[keras.layers.Layer] = []
    if policy.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if policy.color_jitter > 0:
        layers.append(jitter_layer(policy.color_jitter, seed + 1))
    if policy.grayscale > 0:
        layers.append(keras.layers.RandomGrayscale(factor=policy.grayscale, seed=seed + 2))

    def augment(images: tf.Tensor) -> tf.Tensor:
        shape = images.shape
        for layer in layers:
            # Some layers lose the static channel count that the next one needs.
            images = tf.ensure_shape(layer(images), shape)
        return tf.clip_by_value(images, 0.0, 255.0)

    return augment


def imagenet_normalize(images: tf.Tensor) -> tf.Tensor:
    """Map [0, 255] RGB to ImageNet-normalised float32 (torchvision's ``Normalize``)."""
    mean = tf.constant(IMAGENET_MEAN, tf.float32)
    std = tf.constant(IMAGENET_STD, tf.float32)
    return (tf.cast(images, tf.float32) / 255.0 - mean) / std
