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
are listed as ignored by :func:`kdg.data.check_layout`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

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
    """

    path: Path
    domains: tuple[str, ...]
    classes: tuple[str, ...]
    files: dict[str, dict[str, list[str]]]
    ignored: list[str] = field(default_factory=list)


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
    classes = sorted({cls for per_class in files.values() for cls in per_class})
    return FolderLayout(path, tuple(wanted), tuple(classes), files, ignored)


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

    def find_corrupt(self, indices: np.ndarray) -> list[tuple[str, str]]:
        return find_corrupt_images(self.paths[indices].tolist())


def decode_error(path: str) -> str | None:
    """Why ``path`` cannot be read and decoded as the pipeline does, or ``None``."""
    try:
        decode_image(tf.constant(Path(path).read_bytes()))
    except OSError as error:
        return f"unreadable ({error.strerror or error})"
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
        return f"cannot be decoded ({error.message.splitlines()[0]})"
    return None


def find_corrupt_images(paths: Sequence[str], workers: int = 8) -> list[tuple[str, str]]:
    """``(path, reason)`` for every file of ``paths`` that does not decode, in order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(pool.map(decode_error, paths))
    return [(path, reason) for path, reason in zip(paths, reasons) if reason is not None]
