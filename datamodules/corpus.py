"""Generated corpora, written once: the manifest check, the lock and the atomic build.

Both embedded corpora (:mod:`datamodules.embedded_musdb`, :mod:`datamodules.embedded_timit`) are
generated on first use.  :func:`ensure_corpus` makes that safe: the corpus is trusted only when its
manifest (written last) records this version and these parameters and every file has its
recorded size (:func:`manifest_is_complete`); otherwise it is built under an inter-process lock
into a hidden sibling folder that is renamed into place when complete, so concurrent processes
(DDP ranks, parallel tests) generate it once and an interrupted generation is never mistaken for
a finished one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Collection

from lightning_sep.errors import LightningSepError
from lightning_sep.utils.atomic import atomic_directory, file_lock

MANIFEST = "manifest.json"


def manifest_is_complete(root: Path, version: int, params: dict, expected_files: Collection[str]) -> bool:
    """True if ``root/manifest.json`` has this ``version`` and ``params``, lists exactly
    ``expected_files``, and each is present with its recorded size."""
    try:
        manifest = json.loads((Path(root) / MANIFEST).read_text())
        if manifest.get("version") != version or manifest.get("params") != params:
            return False
        files = manifest["files"]
        if set(files) != set(expected_files):
            return False
        return all((Path(root) / f).stat().st_size == info["bytes"] for f, info in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def check_replaceable(root: Path, allowed: Collection[str], kind: str) -> None:
    """Refuse to delete a folder that a generator cannot have written (a mistyped ``root``)."""
    if not root.exists():
        return
    if not root.is_dir():
        raise LightningSepError(f"{root} exists and is not a folder; remove it or choose another root.")
    foreign = [p.name for p in root.iterdir() if not p.name.startswith(".") and p.name not in (*allowed, MANIFEST)]
    if foreign:
        raise LightningSepError(
            f"{root} holds files that are not part of an {kind} ({', '.join(sorted(foreign)[:5])}); "
            "refusing to replace it. Choose another root or remove that folder.")


def ensure_corpus(root: Path, is_complete: Callable[[Path], bool], allowed: Collection[str], kind: str,
                  write: Callable[[Path], None]) -> Path:
    """``root`` once it holds a complete corpus, calling ``write(tmp)`` to build one if needed.

    ``write`` fills a temporary folder and writes the manifest last; ``allowed`` are the top-level
    names a corpus has (anything else in an existing ``root`` stops with an error instead of being
    deleted)."""
    root = Path(root).expanduser().absolute()
    if is_complete(root):
        return root
    with file_lock(root.parent / f".{root.name}.lock"):
        if is_complete(root):  # another process finished it while we waited
            return root
        check_replaceable(root, allowed, kind)
        for stale in [*root.parent.glob(f".{root.name}.tmp-*"), *root.parent.glob(f".{root.name}.old-*")]:
            shutil.rmtree(stale, ignore_errors=True)  # left by an interrupted generation
        with atomic_directory(root) as tmp:
            tmp.chmod(0o755)  # mkdtemp makes it private; the corpus is ordinary shared data
            write(tmp)
    return root
