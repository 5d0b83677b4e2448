"""Exceptions raised by :mod:`kdg.data`.

Every message says what is wrong, where, and what to do about it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

LAYOUT = "ROOT/<Folder>/<domain>/<class>/<image>"


class DataError(Exception):
    """Base class of the errors raised by :mod:`kdg.data`."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """A dataset is not where it should be (or no data root was given).

    Args:
        name: the dataset's name.
        where: what is missing, e.g. ``"/data/PACS/sketch does not exist"``.
        expected: the expected layout; default: the DomainBed folder layout
            (with ``folder`` filled in when given).
        folder: the dataset's folder under the data root.
        downloadable: whether to suggest ``kdg data download``.
    """

    def __init__(self, name: str, where: str, *, expected: str | None = None,
                 folder: str | None = None, downloadable: bool = True):
        if expected is None:
            expected = LAYOUT if folder is None else f"ROOT/{folder}/<domain>/<class>/<image>"
        lines = [f"Dataset {name} not found: {where}.", f"Expected layout: {expected}."]
        if downloadable:
            lines.append(
                f"Get it with: kdg data download {name} --root DIR "
                "(then pass root=DIR, or set KDG_DATA_ROOT=DIR)."
            )
        super().__init__("\n".join(lines))
        self.name = name


class DatasetLayoutError(DataError):
    """A dataset folder exists but its content does not match the expected layout."""


class CorruptImageError(DataError):
    """One or more image files cannot be decoded.

    Args:
        files: ``(path, reason)`` of each bad file.
        check: the ``kdg data check`` command that lists every problem of
            the dataset folder (a generic one when not given).
        hint: a last line to add.
    """

    def __init__(self, files: Sequence[tuple[str, str]], *, check: str | None = None,
                 hint: str = ""):
        self.files = list(files)
        shown = "\n".join(f"  {os.path.abspath(path)}: {reason}"
                          for path, reason in self.files[:20])
        more = f"\n  ... and {len(self.files) - 20} more" if len(self.files) > 20 else ""
        check = check or "kdg data check NAME --root DIR"
        message = (
            f"{len(self.files)} image file(s) cannot be decoded:\n{shown}{more}\n"
            f"Delete or replace them ({check} lists every problem of the dataset folder)."
        )
        super().__init__(message + (f"\n{hint}" if hint else ""))


class DownloadError(DataError):
    """A download failed; the message names the dataset, the URL and what to do."""


class ChecksumError(DownloadError):
    """A downloaded file does not have the expected sha256 checksum."""
