"""tf.data pipelines: shapes, determinism, augmentation on training only, corrupt files."""

import itertools

import numpy as np
import pytest
from PIL import Image

from kdg import data
from kdg.data.augment import IMAGENET_MEAN, IMAGENET_STD

SIZE = 24


@pytest.fixture(scope="module")
def toy(clean_folder):
    return data.load("custom", path=clean_folder, image_size=SIZE)


def take(batches, n):
    return list(itertools.islice(iter(batches), n))


def test_train_batches_shape_dtype_and_labels(toy):
    batches = toy.train_batches(["alpha", "gamma"], batch_size=5, seed=1)
    x, y = next(iter(batches))
    assert x.shape == (10, SIZE, SIZE, 3) and x.dtype == np.float32  # D*B, kdg.layout's order
    assert y.shape == (10,) and y.dtype == np.int32
    assert batches.num_domains == 2
    assert set(np.unique(y)) <= {0, 1, 2}
    assert batches.num_batches is None
    with pytest.raises(TypeError, match="infinite"):
        len(batches)


def test_train_stream_is_infinite_and_visits_the_whole_in_split(toy):
    in_split = toy.split("beta", "in")  # 10 of 12 images
    batches = take(toy.train_batches(["beta"], batch_size=4, seed=0), 10)  # 40 draws
    labels = np.concatenate([y for _, y in batches])  # one domain: the batch is its minibatch
    source = toy.sources[1]
    assert np.bincount(labels, minlength=3).tolist() == np.bincount(
        np.repeat(source.labels[in_split.indices], 4), minlength=3).tolist()


def test_train_stream_is_deterministic_given_seed(toy):
    # 8 batches of 3 = 24 draws: more than two passes over the 10 in-split images
    first = take(toy.train_batches([0, 1], batch_size=3, seed=7), 8)
    second = take(toy.train_batches([0, 1], batch_size=3, seed=7), 8)
    other = take(toy.train_batches([0, 1], batch_size=3, seed=8), 8)
    for (x1, y1), (x2, y2) in zip(first, second):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert any(not np.allclose(x1, x3) for (x1, _), (x3, _) in zip(first, other))


def test_eval_batches_are_finite_ordered_and_never_augmented(toy):
    split = toy.split("alpha", "out")  # int(12 * 0.2) = 2 images
    batches = toy.eval_batches(split, batch_size=1)
    assert len(batches) == 2
    first = [x for x, _ in batches]
    second = [x for x, _ in batches]
    assert [x.shape for x in first] == [(1, SIZE, SIZE, 3)] * 2
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    labels = np.concatenate([y for _, y in batches])
    assert labels.tolist() == toy.sources[0].labels[split.indices].tolist()
    whole = toy.eval_batches("alpha", batch_size=5)
    assert len(whole) == 3 and sum(len(y) for _, y in whole) == 12


def test_eval_is_resize_plus_imagenet_normalisation(tmp_path, tools):
    color = (255, 0, 128)
    tools.write_image(tmp_path / "one" / "d" / "c" / "a.png", np.random.default_rng(0),
                      size=(40, 30), color=color)
    ds = data.load("custom", path=tmp_path / "one", image_size=SIZE)
    x, _ = next(iter(ds.eval_batches("d")))
    expected = (np.array(color) / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(x[0], np.broadcast_to(expected, (SIZE, SIZE, 3)), atol=1e-5)


def _nearest_distance(images, references):
    flat = references.reshape(len(references), -1)
    return np.array([np.abs(flat - im.reshape(-1)).max(axis=1).min() for im in images])


def test_training_augments_and_can_be_switched_off(clean_folder):
    split_images = {}
    for augment in (True, False):
        ds = data.load("custom", path=clean_folder, image_size=SIZE, augment=augment)
        in_split = ds.split("gamma", "in")
        references = np.concatenate([x for x, _ in ds.eval_batches(in_split)])
        train = np.concatenate([x for x, _ in take(ds.train_batches(["gamma"], 5), 4)])
        split_images[augment] = _nearest_distance(train, references)
    assert (split_images[False] < 1e-5).all()  # unaugmented: exactly eval's images
    assert (split_images[True] > 1e-2).mean() > 0.9  # augmented: (almost) never equal


def test_grey_and_rgba_images_become_rgb(tmp_path):
    for mode, name in (("L", "grey.png"), ("RGBA", "alpha.png")):
        path = tmp_path / "modes" / "d" / "c" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new(mode, (10, 12)).save(path)
    ds = data.load("custom", path=tmp_path / "modes", image_size=8)
    x, _ = next(iter(ds.eval_batches("d")))
    assert x.shape == (2, 8, 8, 3)


def test_corrupt_file_raises_an_error_naming_it(broken_folder):
    ds = data.load("custom", path=broken_folder, image_size=SIZE, augment=False)
    with pytest.raises(data.CorruptImageError) as error:
        for _ in ds.eval_batches("alpha", batch_size=4):
            pass
    assert "garbage.jpg" in str(error.value) and "truncated.png" in str(error.value)
    with pytest.raises(data.CorruptImageError, match="garbage.jpg"):
        take(ds.train_batches([ds.split("alpha", "all")], batch_size=4), 10)
    x, _ = next(iter(ds.eval_batches("gamma")))  # other domains are fine
    assert x.shape[1:] == (SIZE, SIZE, 3)


def test_tf_dataset_is_exposed(toy):
    batches = toy.eval_batches(toy.split("beta", "out"))
    x, y = next(iter(batches.dataset))
    assert tuple(x.shape) == (2, SIZE, SIZE, 3) and y.dtype.name == "int32"
