"""Image folders in DomainBed's layout: ``ROOT/<Folder>/<domain>/<class>/<image>``.

Domains are the sorted sub-folders of the dataset folder (DomainBed's
``MultipleEnvironmentImageFolder``); classes are the sorted class folders;
the images of a class are found recursively, in sorted ``os.walk`` order, as
torchvision's ``ImageFolder`` does. Labels index the sorted union of the class
folders of all domains, so a class missing in one domain does not shift the
labels of the others (DomainBed would silently mislabel them;
:func:`kdg.data.check_layout` reports it).

Only the formats TensorFlow decodes are loaded: ``.jpg .jpeg .png .bmp .gif
.webp``. Other files (torchvision would also read ``.ppm .pgm .tif .tiff``)
are listed as ignored by :func:`kdg.data.check_layout`. A class folder that
holds no image is an error (as in ``ImageFolder``); a class folder absent
from some domains is not.

A *bad image* is an image file that the pipeline's decoder cannot decode:
:func:`image_problem` says why. Its cheap checks (an empty file; a file whose
first bytes are not JPEG, PNG, BMP, GIF or WebP, e.g. a text or HTML page
saved as ``.jpg``; a file whose end does not look like the end of its format,
which is then decoded to be sure) read a few bytes per file; the full check
decodes it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from kdg.tf_data import tf

from kdg.data.pipeline import EncodedSource, decode_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _subfolders(path: Path) -> list[str]:
    return sorted(
        entry.name for entry in os.scandir(path)
        if entry.is_dir() and not entry.name.startswith(".")
    )


@dataclass
class FolderLayout:
    """What a dataset folder contains.

    Attributes:
        path: the dataset folder (the one holding the domain folders).
        domains: domain folders found, sorted.
        classes: sorted union of the class folders of all domains.
        files: ``files[domain][class]`` = image paths, in loading order.
        ignored: non-hidden files that are not loadable images.
        empty: class folders (paths) that hold no loadable image.
    """

    path: Path
    domains: tuple[str, ...]
    classes: tuple[str, ...]
    files: dict[str, dict[str, list[str]]]
    ignored: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)


def scan_layout(path: str | os.PathLike, domains: Sequence[str] | None = None) -> FolderLayout:
    """List the images of a dataset folder.

    Args:
        path: the dataset folder.
        domains: scan only these domain folders (those missing are left out;
            the caller decides whether that is an error). Default: all.
    """
    path = Path(path)
    found = _subfolders(path)
    wanted = found if domains is None else [d for d in domains if d in found]
    files: dict[str, dict[str, list[str]]] = {}
    ignored: list[str] = []
    empty: list[str] = []
    for domain in wanted:
        files[domain] = {}
        for cls in _subfolders(path / domain):
            images = []
            for dirpath, _, filenames in sorted(os.walk(path / domain / cls, followlinks=True)):
                for name in sorted(filenames):
                    if name.startswith("."):
                        continue
                    full = os.path.join(dirpath, name)
                    (images if is_image_file(name) else ignored).append(full)
            files[domain][cls] = images
            if not images:
                empty.append(str(path / domain / cls))
    classes = sorted({cls for per_class in files.values() for cls in per_class})
    return FolderLayout(path, tuple(wanted), tuple(classes), files, ignored, empty)


class FileSource(EncodedSource):
    """The image files of one domain, with their labels."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int]):
        self.paths = np.asarray(paths, dtype=object)
        self.labels = np.asarray(labels, dtype=np.int32)
        self.size = len(self.paths)

    @classmethod
    def from_layout(cls, layout: FolderLayout, domain: str) -> FileSource:
        paths, labels = [], []
        for label, name in enumerate(layout.classes):
            images = layout.files[domain].get(name, [])
            paths += images
            labels += [label] * len(images)
        return cls(paths, labels)

    def records(self, indices: np.ndarray) -> tf.data.Dataset:
        paths = tf.constant(self.paths[indices].astype(str), tf.string)
        return tf.data.Dataset.from_tensor_slices((paths, self.labels[indices]))

    def read(self, record: tf.Tensor) -> tf.Tensor:
        return tf.io.read_file(record)

    def find_corrupt(self, indices: np.ndarray, decode: bool = True) -> list[tuple[str, str]]:
        return find_corrupt_images(self.paths[indices].tolist(), decode=decode)


# (first bytes, format): what tf.io.decode_image recognises
SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"), (b"BM", "BMP"),
)
_HEAD, _TAIL = 16, 16
# files that decoded, with the (size, mtime) they had then: a run checks its
# dataset twice (the command, then the run), and decodes it once
_decoded: dict[str, tuple[int, int]] = {}


def image_format(head: bytes) -> str | None:
    """The format the first bytes of a file announce, or ``None`` if none TF decodes."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in SIGNATURES if head.startswith(magic)), None)


def _looks_complete(fmt: str, head: bytes, tail: bytes, size: int) -> bool:
    """Whether the end of a file is where its format says (a cut-short file's is not)."""
    if fmt == "JPEG":
        return tail.endswith(b"\xff\xd9")
    if fmt == "PNG":
        return tail.endswith(b"IEND\xaeB`\x82")
    if fmt == "GIF":
        return tail.endswith(b"\x3b")
    if fmt == "BMP":
        return len(head) >= 6 and int.from_bytes(head[2:6], "little") == size
    return len(head) >= 8 and int.from_bytes(head[4:8], "little") + 8 <= size  # WebP


def _decode_problem(data: bytes) -> str | None:
    try:
        decode_image(tf.constant(data))
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
        message = error.message.splitlines()[0]
        message = message.split("}} ", 1)[-1]  # drop TF's "{{function_node ...}}" prefix
        return f"cannot be decoded ({message})"
    return None


def image_problem(path: str, decode: bool = True) -> str | None:
    """Why the pipeline cannot load the image file ``path``, or ``None``.

    Always: the file must be readable and not empty, its first bytes must be
    those of JPEG, PNG, BMP, GIF or WebP, and a file whose last bytes are not
    where its format ends is decoded to be sure. With ``decode``, every file
    is decoded as the pipeline decodes it (this finds damage inside a file).
    """
    try:
        stat = os.stat(path)
        if _decoded.get(path) == (stat.st_size, stat.st_mtime_ns):
            return None
        if stat.st_size == 0:
            return "empty file (0 bytes)"
        with open(path, "rb") as f:
            head = f.read(_HEAD)
            f.seek(max(stat.st_size - _TAIL, 0))
            tail = f.read(_TAIL)
            fmt = image_format(head)
            if fmt is None:
                return f"not an image: starts with {head[:8]!r}, not JPEG, PNG, BMP, GIF or WebP"
            if not decode and _looks_complete(fmt, head, tail, stat.st_size):
                return None
            f.seek(0)
            data = f.read()
    except OSError as error:
        return f"unreadable ({error.strerror or error})"
    problem = _decode_problem(data)
    if problem is None:
        _decoded[path] = (stat.st_size, stat.st_mtime_ns)
    return problem


def find_corrupt_images(paths: Sequence[str], workers: int = 8,
                        decode: bool = True) -> list[tuple[str, str]]:
    """``(path, reason)`` for every file of ``paths`` that the pipeline cannot
    load, in order (:func:`image_problem`; ``decode=False``: its cheap checks)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(pool.map(lambda path: image_problem(path, decode), paths))
    return [(path, reason) for path, reason in zip(paths, reasons) if reason is not None]
