"""A run's folder: the names of its files, the lock that lets one process at
a time write it, and writes that fail with one message naming the file and
the fix, never losing what was already written.

The lock is `fcntl.flock` on `run.lock` in the folder: the operating system
releases it when the process ends, however it ends (even `kill -9`). The file
itself stays; it says who held the lock last (pid, host, since when).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None

RECIPE = "recipe.yaml"
RESULTS = "results.jsonl"
CHECKPOINT = "checkpoint.npz"
MODEL = "model.keras"
DONE = "done"
LOCK = "run.lock"


class RunError(RuntimeError):
    """A run that cannot start or go on, with the reason and the fix."""


def check_output_dir(out: Path) -> None:
    """Refuse an output_dir that is a file, or lies under one (nothing is written)."""
    fix = "Choose another output_dir (--set output_dir=DIR), or move the file away."
    if out.exists() and not out.is_dir():
        raise RunError(f"output_dir {out} is a file, not a folder. {fix}")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RunError(f"output_dir {out} lies under {parent}, which is a file, not a "
                               f"folder. {fix}")
            break


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} on host {info['host']}, since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not said who it is yet"


@contextmanager
def lock(out: Path):
    """Hold the folder's lock for the duration of the block; a RunError
    naming the holder when another process holds it."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    path = out / LOCK
    with writing(path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(
                f"{out} is in use by another run: {_holder(path)} (from {path}). Wait for it "
                "to finish or stop it, or choose another output_dir (--set output_dir=DIR)."
            ) from None
        since = time.strftime("%Y-%m-%d %H:%M:%S %z")
        with writing(path):
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "since": since}).encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def write_error(path: Path, error: OSError, resume: str = "") -> RunError:
    """One message for a write that the file system refused."""
    code = error.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        fix = f"The disk that holds {path.parent} is full: free space there"
    elif code == errno.EFBIG:
        fix = "The file would exceed the largest file this process may write: raise the limit " \
              "(ulimit -f)"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = f"{path.parent} cannot be written by this user: fix its permissions"
    else:
        fix = "Fix the cause"
    return RunError(f"could not write {path}: {error.strerror or error}. {fix}, then run the same "
                    f"command again{resume}. Nothing already written was lost.")


@contextmanager
def writing(path: Path, resume: str = ""):
    """Turn an OSError raised in the block into `write_error`'s RunError."""
    try:
        yield
    except OSError as error:
        raise write_error(path, error, resume) from None


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` by `data`, all or nothing: the old file stays intact
    (and no temporary file is left) when the write fails."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # one per writer
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def append_line(path: Path, text: str) -> None:
    """Append one line; a failed append is cut off again, leaving the file as it was."""
    data = text.encode() + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)
