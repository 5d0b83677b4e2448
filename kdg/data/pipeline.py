"""tf.data input pipelines (DomainBed protocol).

* :func:`train_batches`: one infinite stream per training domain (shuffled,
  reshuffled on every pass, repeated, batches of ``B`` with the remainder
  dropped), zipped and interleaved into kdg's training batches
  (:mod:`kdg.layout`): ``x`` of shape ``(D*B, H, W, C)`` float32 and ``y``
  of shape ``(D*B,)`` int32, example b of domain d at index ``b*D + d``.
* :func:`domain_batches`: the same kind of stream from your own D datasets
  or arrays.
* :func:`eval_batches`: finite ``(B, H, W, C)`` batches in split order,
  never augmented.

Both return :class:`Batches`, an iterable of NumPy ``(x, y)`` pairs (usable
on every Keras backend) that keeps the ``tf.data.Dataset`` as ``.dataset``.
Image decoding errors are turned into :class:`~kdg.data.errors.CorruptImageError`
naming the files: the loader raises, it never skips silently. Code that
hands ``.dataset`` to Keras runs it inside :meth:`Batches.naming_bad_images`.
"""

from __future__ import annotations

import abc
import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from kdg.tf_data import tf

from kdg.data.augment import (
    ImagePolicy,
    imagenet_normalize,
    make_augmenter,
    random_resized_crop,
    resize,
)
from kdg.data.errors import CorruptImageError
from kdg.data.splits import Split, seed_hash
from kdg.layout import _interleave

AUTOTUNE = -1  # tf.data.AUTOTUNE, without importing TensorFlow


def decode_image(data: tf.Tensor) -> tf.Tensor:
    """Decode JPEG/PNG/BMP/GIF/WebP bytes to a uint8 ``(H, W, 3)`` RGB tensor
    (grey and RGBA images are converted, as PIL's ``convert("RGB")``)."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


class Source(abc.ABC):
    """The examples of one domain, addressed by position ``0..size-1``."""

    size: int

    @abc.abstractmethod
    def records(self, indices: np.ndarray) -> tf.data.Dataset:
        """``(record, label)`` pairs of the given positions, in that order."""

    def shuffle_buffer(self, n: int) -> int:
        """Shuffle buffer for a split of ``n`` examples (a full shuffle by default)."""
        return max(n, 1)

    def find_corrupt(self, indices: np.ndarray, decode: bool = True) -> list[tuple[str, str]]:
        """``(name, reason)`` of the examples that cannot be decoded (none by
        default); ``decode=False``: only what cheap checks find."""
        return []


class ArraySource(Source):
    """Images held in memory as uint8 ``(N, H, W, C)``, already at model size.

    Used by the MNIST and digits datasets: no augmentation, values scaled to
    [0, 1], as DomainBed.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError("images must be uint8 of shape (N, H, W, C)")
        self.images = images
        self.labels = labels.astype(np.int32)
        self.size = len(images)

    def records(self, indices: np.ndarray) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices((self.images[indices], self.labels[indices]))


class EncodedSource(Source):
    """Encoded images (files or bytes) decoded inside the pipeline."""

    @abc.abstractmethod
    def read(self, record: tf.Tensor) -> tf.Tensor:
        """The encoded bytes of a record (a file path, or the bytes themselves)."""


class Batches:
    """An iterable of NumPy ``(x, y)`` batches backed by a ``tf.data.Dataset``.

    Every ``iter()`` starts the stream from its beginning: the same batches
    again for the same seed. When an image fails to decode, the files behind
    the stream are decoded one by one to name the culprits (slow on a large
    domain, but only on failure) and :class:`CorruptImageError` is raised.

    Attributes:
        dataset: the underlying ``tf.data.Dataset`` of ``(x, y)`` tensors.
        num_batches: number of batches, or ``None`` for an infinite stream.
        check: the ``kdg data check`` command a bad-image message suggests.
        num_domains: D for training batches (`kdg.DGModel.fit` takes it from
            here), None for evaluation batches.
    """

    check: str | None = None

    def __init__(self, dataset: tf.data.Dataset, num_batches: int | None,
                 find_corrupt: Callable[[], list[tuple[str, str]]],
                 num_domains: int | None = None):
        self.dataset = dataset
        self.num_batches = num_batches
        self.num_domains = num_domains
        self._find_corrupt = find_corrupt

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("an infinite training stream has no length")
        return self.num_batches

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self.iterate()

    def iterate(self, skip: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The NumPy batches from batch number ``skip`` on."""
        iterator = iter(self.dataset.skip(skip) if skip else self.dataset)
        while True:
            with self.naming_bad_images():
                try:
                    x, y = next(iterator)
                except StopIteration:
                    return
            yield x.numpy(), y.numpy()

    @contextlib.contextmanager
    def naming_bad_images(self):
        """Turn a TensorFlow error raised inside the block (e.g. by
        ``model.evaluate(batches.dataset)``) into :class:`CorruptImageError`
        naming the files behind it, when a file is to blame."""
        try:
            yield
        except tf.errors.OpError as error:
            corrupt = self._find_corrupt()
            if corrupt:
                raise CorruptImageError(corrupt, check=self.check) from error
            raise


def _finish_array_batch(images: tf.Tensor, labels: tf.Tensor):
    return tf.cast(images, tf.float32) / 255.0, labels


def _finish(images: tf.Tensor, policy: ImagePolicy) -> tf.Tensor:
    return imagenet_normalize(images) if policy.normalize else images / 255.0


def _train_stream(source: Source, split: Split, batch_size: int,
                  policy: ImagePolicy | None, seed: int) -> tf.data.Dataset:
    n = len(split)
    if n == 0:
        raise ValueError(f"domain {split.domain!r} has no examples in its {split.part!r} split")
    shuffle_seed, crop_seed, augment_seed = (
        seed_hash(seed, split.domain_index, purpose) for purpose in ("shuffle", "crop", "augment")
    )
    records = source.records(split.indices).shuffle(
        source.shuffle_buffer(n), seed=shuffle_seed, reshuffle_each_iteration=True
    ).repeat()

    if not isinstance(source, EncodedSource):
        return records.batch(batch_size, drop_remainder=True).map(_finish_array_batch)

    assert policy is not None, "encoded images need an ImagePolicy"

    def load(record_label, counter):
        record, label = record_label
        image = decode_image(source.read(record))
        if policy.augment:
            seed_pair = tf.stack([tf.constant(crop_seed, tf.int64), counter])
            image = random_resized_crop(image, policy.image_size, seed_pair,
                                        scale=policy.crop_scale, ratio=policy.crop_ratio)
        else:
            image = resize(image, policy.image_size)
        return image, label

    stream = tf.data.Dataset.zip((records, tf.data.Dataset.counter()))
    stream = stream.map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
    stream = stream.batch(batch_size, drop_remainder=True)
    augment = make_augmenter(policy, augment_seed) if policy.augment else None

    def finish(images, labels):
        if augment is not None:
            images = augment(images)
        return _finish(images, policy), labels

    # Sequential on purpose: the Keras layers' random state advances per call.
    return stream.map(finish)


def train_batches(streams: Sequence[tuple[Source, Split]], batch_size: int = 32, *,
                  policy: ImagePolicy | None = None, seed: int = 0) -> Batches:
    """Infinite training batches: ``x`` ``(D*B, H, W, C)`` float32, ``y``
    ``(D*B,)`` int32, laid out as :mod:`kdg.layout` says (``num_domains`` = D).

    Args:
        streams: one ``(source, split)`` per training domain, in output order.
        batch_size: ``B``, examples per domain and step.
        policy: preprocessing of encoded images (ignored for in-memory arrays).
        seed: seeds shuffling, crops and augmentation; the same seed gives
            the same stream.
    """
    if not streams:
        raise ValueError("train_batches needs at least one training domain")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    per_domain = tuple(
        _train_stream(source, split, batch_size, policy, seed).prefetch(1)
        for source, split in streams
    )

    dataset = tf.data.Dataset.zip(per_domain).map(_interleave_batches).prefetch(AUTOTUNE)
    return Batches(dataset, None, lambda: _find_all_corrupt(streams), num_domains=len(streams))


def _interleave_batches(*batches):
    """D per-domain ``(x, y)`` minibatches -> one training batch (kdg.layout)."""
    return (tf.nest.map_structure(lambda *xs: _interleave(list(xs), tf),
                                  *[x for x, _ in batches]),
            _interleave([tf.cast(y, tf.int32) for _, y in batches], tf))


def domain_batches(per_domain, batch_size: int = 32, *, seed: int = 0,
                   shuffle: bool = True, shuffle_buffer: int = 10_000) -> Batches:
    """kdg's training batches from your own data: an infinite stream of
    ``(x, y)`` batches of B examples of each of D domains, laid out as
    `kdg.DGModel` expects (:mod:`kdg.layout`), which ``model.fit(batches)``
    takes as it is (it sets the model's ``num_domains``).

    Args:
        per_domain: one entry per training domain, in order: a
            ``tf.data.Dataset`` of single ``(x, y)`` examples, or an
            ``(x, y)`` pair of arrays (x of shape (n, ...), y of shape (n,)).
        batch_size: ``B``, examples per domain and step.
        seed: seeds the shuffling (domain d's stream with ``seed + d``).
        shuffle: shuffle each domain's examples, again on every pass.
        shuffle_buffer: shuffle buffer for a dataset of unknown size
            (arrays and datasets of known size are shuffled in full).

    Each domain's examples repeat forever, in batches of B with the
    remainder dropped; give ``fit`` a ``steps_per_epoch``.
    """
    if isinstance(per_domain, tf.data.Dataset) or not per_domain:
        raise ValueError("domain_batches: give a list with one dataset (or (x, y) pair of "
                         "arrays) per training domain.")
    if batch_size < 1:
        raise ValueError(f"domain_batches: batch_size must be positive, got {batch_size}")
    streams = []
    for d, data in enumerate(per_domain):
        if not isinstance(data, tf.data.Dataset):
            if not (isinstance(data, (tuple, list)) and len(data) == 2):
                raise ValueError(
                    f"domain_batches: domain {d} is a {type(data).__name__}; give a "
                    "tf.data.Dataset of (x, y) examples or an (x, y) pair of arrays.")
            data = tf.data.Dataset.from_tensor_slices(tuple(data))
        size = int(data.cardinality())
        if shuffle:
            buffer = size if size > 0 else shuffle_buffer
            data = data.shuffle(buffer, seed=seed + d, reshuffle_each_iteration=True)
        streams.append(data.repeat().batch(batch_size, drop_remainder=True))
    dataset = tf.data.Dataset.zip(tuple(streams)).map(_interleave_batches).prefetch(AUTOTUNE)
    return Batches(dataset, None, lambda: [], num_domains=len(streams))


def eval_batches(source: Source, split: Split, batch_size: int = 64, *,
                 policy: ImagePolicy | None = None) -> Batches:
    """Finite evaluation batches of ``split`` in order: resize and normalise only."""
    records = source.records(split.indices)
    if isinstance(source, EncodedSource):
        assert policy is not None, "encoded images need an ImagePolicy"

        def load(record, label):
            return resize(decode_image(source.read(record)), policy.image_size), label

        def finish(images, labels):
            return _finish(images, policy), labels

        batches = records.map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
        batches = batches.batch(batch_size).map(finish)
    else:
        batches = records.batch(batch_size).map(_finish_array_batch)
    batches = batches.map(lambda x, y: (x, tf.cast(y, tf.int32))).prefetch(AUTOTUNE)
    return Batches(batches, math.ceil(len(split) / batch_size),
                   lambda: source.find_corrupt(split.indices))


def _find_all_corrupt(streams: Sequence[tuple[Source, Split]]) -> list[tuple[str, str]]:
    return [item for source, split in streams for item in source.find_corrupt(split.indices)]
