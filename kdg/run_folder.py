"""A run's folder: the names of its files, the one reader of its
`results.jsonl`, the lock that lets one process at a time write it, and
writes that fail with one message naming the file and the fix, never losing
what was already written. Every other module names and reads these files
through this one.

`results.jsonl`'s bad-line policy (:func:`read_results`): a line that is not
a JSON object with an integer `step` is skipped, everywhere it is read
(resuming a run, a sweep's status, a report). A bad last line is what a run
killed in mid-write leaves (`truncated`); a bad line elsewhere is damage
(`bad_lines` has both). A resumed run rewrites the file without them.

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
from dataclasses import dataclass, field
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


@dataclass
class Results:
    """The records of one results.jsonl in file order, and the lines skipped."""

    path: Path
    records: list[dict] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # each record's line number (from 1)
    bad_lines: list[int] = field(default_factory=list)  # the skipped lines' numbers
    truncated: bool = False  # the last line is bad: a run killed while writing it

    @property
    def last_step(self) -> int | None:
        return self.records[-1]["step"] if self.records else None


def read_results(path: Path) -> Results:
    """The records of a results.jsonl (`path`, or a run folder holding one);
    no file gives no records. A line that is not a JSON object with an
    integer `step` is skipped and its number kept in `bad_lines`."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS
    out = Results(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    except FileNotFoundError:
        return out
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    for position, (lineno, line) in enumerate(numbered):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        step = record.get("step") if isinstance(record, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            out.bad_lines.append(lineno)
            out.truncated = position == len(numbered) - 1
            continue
        out.records.append(record)
        out.lines.append(lineno)
    return out


def is_done(directory: Path) -> bool:
    """Has the run in `directory` finished (its `done` file written last)?"""
    return (Path(directory) / DONE).exists()


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


@contextmanager
def replacing(path: Path, suffix: str = ""):
    """Yield a temporary path beside `path` for the block to write; on
    success it replaces `path` (fsynced, all or nothing), on failure it is
    removed and `path` stays as it was. `suffix`: the temporary name's
    ending, for writers that choose the format by it (".npz", ".keras")."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp{suffix}")  # one per writer
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` by `data`, all or nothing: the old file stays intact
    (and no temporary file is left) when the write fails."""
    with replacing(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


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
