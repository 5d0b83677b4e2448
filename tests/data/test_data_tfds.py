"""DomainNet through tensorflow-datasets, tested on small tf.data datasets (no download)."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kdg import data
from kdg.data.augment import ImagePolicy
from kdg.data.dataset import DGDataset
from kdg.data.tfds import TFDSSource, join_splits


def encoded(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((10, 14, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def examples(values, labels):
    return tf.data.Dataset.from_tensor_slices(
        {"image": [encoded(v) for v in values], "label": np.array(labels, np.int64)})


# tfds' DomainNet order is not Python's sorted order: capitals sort first there
NAMES = ["aircraft_carrier", "The_Eiffel_Tower", "zebra"]


def test_join_splits_concatenates_and_renumbers_by_sorted_name():
    train, test = examples([1, 2, 3], [0, 1, 2]), examples([4, 5], [2, 0])
    joined, classes = join_splits([train, test], NAMES)
    assert classes == ("The_Eiffel_Tower", "aircraft_carrier", "zebra")
    pairs = [(tf.io.decode_png(x).numpy()[0, 0, 0], int(y)) for x, y in joined]
    old = [(1, 0), (2, 1), (3, 2), (4, 2), (5, 0)]
    assert pairs == [(v, classes.index(NAMES[label])) for v, label in old]


def test_tfds_source_selects_indices_and_feeds_the_pipeline():
    joined, classes = join_splits([examples(range(10, 22), [i % 3 for i in range(12)])], NAMES)
    source = TFDSSource(joined, 12)
    picked = [int(tf.io.decode_png(x)[0, 0, 0]) for x, _ in source.records(np.array([7, 2, 5]))]
    assert picked == [12, 15, 17]  # dataset order, whatever the order of the indices

    ds = DGDataset("DomainNetTFDS", ["a", "b"], ["A", "B"], classes, (8, 8, 3),
                   [source, TFDSSource(joined, 12)], policy=ImagePolicy(image_size=8))
    x, y = next(iter(ds.train_batches([0, 1], batch_size=4, seed=0)))
    assert x.shape == (8, 8, 8, 3) and y.shape == (8,)
    out = ds.split("a", "out")
    x, y = next(iter(ds.eval_batches(out)))
    assert len(y) == len(out) == 2


def test_unprepared_tfds_dataset_is_not_found(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match="no prepared domainnet/clipart"):
        data.load("DomainNetTFDS", tmp_path)
