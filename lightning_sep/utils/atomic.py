"""Atomic writes: a reader sees either the old file or the complete new one, never a half-write.

Every result, checkpoint and cache the platform writes goes through these helpers: the data is
written to a temporary file in the destination folder, flushed to disk, then ``os.replace``-d over
the destination (atomic on POSIX within one file system).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temporary name; it appears at ``path`` only when complete.

    If ``path`` already exists it is replaced.  An interrupted build leaves only a hidden
    ``.<name>.tmp-*`` folder, which is never mistaken for a finished one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive inter-process lock (``fcntl.flock``) held for the ``with`` block.

    Used so that concurrent processes (DDP ranks, parallel test workers) generate a corpus or
    fill a cache entry once instead of racing.
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def sqlite_lock(url: str) -> contextlib.AbstractContextManager:
    """An inter-process lock beside a SQLite database file (``<file>.lock``); a no-op for servers.

    A new SQLite store's tables are created by its first client; clients that start together (DDP
    ranks under torchrun, tuning workers) take this lock so that they are created once.
    """
    if url.startswith("sqlite:///"):
        db = Path(url[len("sqlite:///"):]).expanduser().resolve()
        return file_lock(db.with_name(db.name + ".lock"))
    return contextlib.nullcontext()
