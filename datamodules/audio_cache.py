"""A decoded-audio cache: every track is decoded once, stored as ``.npy`` and memory-mapped after.

An entry is keyed by a hash of the source (its path), the sample rate and a *stamp* of every file
it is decoded from (size and ``mtime_ns``), so replacing or editing a file makes a new entry and
the stale one is removed.  Entries are written atomically (:func:`~lightning_sep.utils.atomic.atomic_open`)
under a per-track :func:`~lightning_sep.utils.atomic.file_lock`, so DDP ranks or parallel test
workers that need the same track decode it once and never see half-written data.

Layout: ``<cache_dir>/<label>.<source-hash>.<key-hash>.npy`` and ``<cache_dir>/.locks/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from lightning_sep.errors import LightningSepError
from lightning_sep.utils.atomic import atomic_open, file_lock

log = logging.getLogger(__name__)
#: numpy parses a ``.npy`` header with ``ast.literal_eval``, and CPython 3.11's AST construction is not
#: safe in concurrent threads (``SystemError: AST constructor recursion depth mismatch``, python/cpython
#: gh-106905; seen here when the decode threads of ``MUSDBDataModule._entries`` opened entries at once)
_NPY_HEADER_LOCK = threading.Lock()

#: Bumped when the stored format changes; old entries are then never read again.
CACHE_VERSION = 1


def file_stamp(path: str | os.PathLike) -> tuple[int, int]:
    """``(size, mtime_ns)`` of a file: changes when the file is edited or replaced."""
    st = os.stat(path)
    return int(st.st_size), int(st.st_mtime_ns)


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", label).strip("_")[:80] or "track"


def _sha(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


class AudioCache:
    """Decoded audio arrays in ``folder``, one ``.npy`` per source (e.g. per track).

    Attributes:
        decoded: how many entries this object decoded (cache misses) so far.
        reused: how many entries it found already decoded (cache hits).
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder).expanduser()
        self.decoded = 0
        self.reused = 0
        self._count_lock = threading.Lock()  # get() may run in several threads

    def _count(self, hit: bool) -> None:
        with self._count_lock:
            if hit:
                self.reused += 1
            else:
                self.decoded += 1

    def entry_path(
        self, label: str, source: str | os.PathLike, sample_rate: int, files: Sequence[str | os.PathLike]
    ) -> Path:
        """Where the entry of ``source`` decoded at ``sample_rate`` from ``files`` (as they are now) lives."""
        source = str(Path(source).resolve())
        stamps = [[str(Path(f).resolve()), *file_stamp(f)] for f in files]
        key = _sha({"v": CACHE_VERSION, "source": source, "sample_rate": int(sample_rate), "files": stamps})
        return self.folder / f"{_safe(label)}.{_sha(source)[:12]}.{key[:20]}.npy"

    def get(
        self,
        label: str,
        source: str | os.PathLike,
        sample_rate: int,
        files: Sequence[str | os.PathLike],
        decode: Callable[[], np.ndarray],
    ) -> Path:
        """The ``.npy`` of ``source``; ``decode()`` is called (once, under a lock) if it is missing."""
        try:
            path = self.entry_path(label, source, sample_rate, files)
        except FileNotFoundError as err:
            raise LightningSepError(f"{err.filename} does not exist (it was listed a moment ago).") from err
        if self._readable(path):
            self._count(hit=True)
            return path
        prefix = path.name.rsplit(".", 2)[0]  # <label>.<source-hash>: only [A-Za-z0-9_.-]
        try:
            with file_lock(self.folder / ".locks" / f"{prefix}.lock"):
                if self._readable(path):  # another process filled it while we waited
                    self._count(hit=True)
                    return path
                array = np.ascontiguousarray(decode(), dtype=np.float32)
                with atomic_open(path, "wb") as fh:
                    np.save(fh, array, allow_pickle=False)
                self._count(hit=False)
                for stale in self.folder.glob(f"{prefix}.*.npy"):
                    if stale.name != path.name:  # an older version of the same files
                        with contextlib.suppress(OSError):
                            stale.unlink()
                            log.info("Removed stale cache entry %s", stale)
        except PermissionError as err:
            raise LightningSepError(
                f"Cannot write the decoded-audio cache in {self.folder} ({err}): choose a writable "
                "folder with cache_dir=... (or LIGHTNING_SEP_DATA=...)."
            ) from err
        except OSError as err:
            if err.errno == 28:  # ENOSPC
                raise LightningSepError(
                    f"No space left to cache decoded audio in {self.folder}: free some space or "
                    "choose another folder with cache_dir=... (or LIGHTNING_SEP_DATA=...)."
                ) from err
            raise
        return path

    @staticmethod
    def load(path: str | os.PathLike) -> np.ndarray:
        """A read-only memory map of an entry (its header parsed under a lock: see :data:`_NPY_HEADER_LOCK`)."""
        with _NPY_HEADER_LOCK:
            return np.load(path, mmap_mode="r", allow_pickle=False)

    @staticmethod
    def _readable(path: Path) -> bool:
        if not path.is_file():
            return False
        try:
            AudioCache.load(path)
        except (ValueError, OSError, EOFError):
            log.warning("Cache entry %s is unreadable; decoding it again", path)
            with contextlib.suppress(OSError):
                path.unlink()
            return False
        return True

