"""DomainNet through tensorflow-datasets (``domainnet/<domain>`` builder configs).

DomainBed uses every image of a domain, so each domain's ``train`` and
``test`` splits are joined (train first). tensorflow-datasets numbers the 345
classes in the official DomainNet order, which is not DomainBed's (the
sorted folder names, where ``The_Eiffel_Tower`` sorts before ``aircraft_carrier``);
:func:`join_splits` renumbers them by sorted name so both versions share labels.
The order of the images inside a domain differs from the folder version's,
so in/out splits are not the same images as DomainBed's.

The encoded JPEG bytes are read (``SkipDecoding``) and decoded in kdg's
pipeline like files are. The training shuffle buffer is capped at
:data:`SHUFFLE_BUFFER` examples per domain (the whole domain of encoded
images would not fit in memory), so shuffling is approximate.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from kdg.tf_data import INSTALL, TensorFlowMissing, tf

from kdg.data.errors import DatasetNotFoundError
from kdg.data.pipeline import EncodedSource

BUILDER = "domainnet"
SPLITS = ("train", "test")
SHUFFLE_BUFFER = 4096


def join_splits(splits: Sequence[tf.data.Dataset],
                label_names: Sequence[str]) -> tuple[tf.data.Dataset, tuple[str, ...]]:
    """Concatenate one domain's splits and renumber labels in sorted-name order.

    Args:
        splits: datasets of ``{"image": bytes, "label": int}`` examples, where
            ``label`` indexes ``label_names``.
        label_names: the class names in the order the labels use.

    Returns:
        A dataset of ``(image, label)`` pairs with ``label`` indexing the
        returned sorted class names.
    """
    classes = tuple(sorted(label_names))
    new_label = tf.constant([classes.index(name) for name in label_names], tf.int32)
    joined = splits[0]
    for split in splits[1:]:
        joined = joined.concatenate(split)
    return joined.map(lambda ex: (ex["image"], tf.gather(new_label, ex["label"]))), classes


class TFDSSource(EncodedSource):
    """One domain held by tensorflow-datasets, as ``(encoded image, label)`` examples."""

    def __init__(self, dataset: tf.data.Dataset, size: int):
        self.dataset = dataset
        self.size = size

    def records(self, indices: np.ndarray) -> tf.data.Dataset:
        """The examples at ``indices``, in dataset order (one pass over the domain)."""
        keep = np.zeros(self.size, bool)
        keep[indices] = True
        keep = tf.constant(keep)
        selected = self.dataset.enumerate().filter(lambda i, _: tf.gather(keep, i))
        return selected.map(lambda _, example: example)

    def shuffle_buffer(self, n: int) -> int:
        return max(1, min(n, SHUFFLE_BUFFER))

    def read(self, record: tf.Tensor) -> tf.Tensor:
        return record


def load_domainnet_tfds(root: str | os.PathLike, domains: Sequence[str], *,
                        download: bool = False) -> tuple[list[TFDSSource], tuple[str, ...]]:
    """Open (optionally download and prepare) DomainNet's domains from ``root``.

    Returns one source per domain and the sorted class names.
    """
    try:
        import tensorflow_datasets as tfds
    except ModuleNotFoundError as error:
        if error.name != "tensorflow_datasets":
            raise
        raise TensorFlowMissing("DomainNetTFDS needs tensorflow-datasets, which is not "
                                f"installed. Install it with: {INSTALL}") from None

    sources, classes = [], ()
    for domain in domains:
        builder = tfds.builder(f"{BUILDER}/{domain}", data_dir=os.fspath(root))
        if download:
            builder.download_and_prepare()
        if not builder.is_prepared():
            raise DatasetNotFoundError(
                "DomainNetTFDS",
                f"tensorflow-datasets has no prepared {BUILDER}/{domain} in {root}",
                expected=f"a tensorflow-datasets data_dir ROOT holding {BUILDER}/<domain>",
            )
        parts = builder.as_dataset(split=list(SPLITS), shuffle_files=False,
                                   decoders={"image": tfds.decode.SkipDecoding()})
        names = builder.info.features["label"].names
        joined, classes = join_splits(parts, names)
        size = sum(builder.info.splits[split].num_examples for split in SPLITS)
        sources.append(TFDSSource(joined, size))
    return sources, classes
