"""Reading a TIMIT tree as distributed (LDC93S1), or the embedded TIMIT-format corpus.

Layout (upper- or lower-case names, as on the CD-ROM or as copied by many tools)::

    <root>/TRAIN|TEST/DR1..DR8/<F|M><3 initials><digit>/<SA|SI|SX><number>.WAV (+ .TXT .WRD .PHN)

``root`` may also be a folder that holds the tree one level down (``TIMIT/``, ``timit/`` or
``data/``, as in common copies).  Speaker sex and dialect region come from the path; the ``.WAV``
files are NIST SPHERE (:mod:`datamodules.sphere`), 16 kHz 16-bit PCM; the transcript is the text
of the ``.TXT`` file (``<start> <end> <text>``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

from lightning_sep.errors import LightningSepError

#: The two sexes TIMIT labels its speakers with (the first letter of the speaker folder).
SEXES: tuple[str, ...] = ("male", "female")
SUBSETS: tuple[str, ...] = ("train", "test")
LAYOUT = "TRAIN|TEST/DR1..DR8/<F|M><initials><digit>/<SA|SI|SX><n>.WAV (NIST SPHERE, with .TXT transcripts)"
FIX_HINT = ("Replace the file with an intact copy from the TIMIT distribution (LDC93S1), "
                 "or point TIMIT_ROOT at another copy.")

_REGION = re.compile(r"^dr([1-8])$", re.IGNORECASE)
_SPEAKER = re.compile(r"^([fm])([a-z]{3})(\d)$", re.IGNORECASE)
_SENTENCE = re.compile(r"^(sa|si|sx)(\d+)\.wav$", re.IGNORECASE)


@dataclass(frozen=True)
class TimitUtterance:
    """One recorded sentence and what its path says about it."""

    subset: str  # "train" or "test"
    region: str  # "DR1" .. "DR8"
    speaker: str  # e.g. "FCJF0" (upper case)
    sex: str  # "male" or "female"
    sentence: str  # e.g. "SA1", "SI648", "SX127" (upper case)
    path: Path  # the .WAV file
    text: Optional[str] = None  # the .TXT transcript, if present

    @property
    def kind(self) -> str:
        """``SA`` (dialect), ``SX`` (compact) or ``SI`` (diverse) sentence."""
        return self.sentence[:2]

    @property
    def id(self) -> str:
        """``<speaker>_<sentence>``: unique in a TIMIT tree."""
        return f"{self.speaker}_{self.sentence}"


def _child(folder: Path, name: str) -> Optional[Path]:
    """The entry of ``folder`` named ``name`` in any case."""
    for p in folder.iterdir():
        if p.name.lower() == name.lower():
            return p
    return None


def find_timit_root(root: Path) -> Optional[Path]:
    """``root`` itself if it holds ``TRAIN``/``TEST`` (any case), or such a folder one level down."""
    if not root.is_dir():
        return None
    for candidate in (root, *(c for n in ("timit", "data") if (c := _child(root, n)) is not None)):
        if candidate.is_dir() and any(_child(candidate, s) is not None for s in SUBSETS):
            return candidate
    return None


def _transcript(wav: Path) -> Optional[str]:
    for suffix in (".TXT", ".txt"):
        txt = wav.with_suffix(suffix)
        if txt.is_file():
            parts = txt.read_text(errors="replace").split(maxsplit=2)
            return parts[2].strip() if len(parts) == 3 else ""
    return None


def scan_timit(root: Path, include_sa: bool = True, subsets: tuple[str, ...] = SUBSETS) -> list[TimitUtterance]:
    """Every utterance of ``subsets`` under a TIMIT tree, sorted by subset, region, speaker, sentence.

    Folders and files that do not follow the TIMIT naming (``DOC/``, ``README``, ...) are ignored.
    """
    tree = find_timit_root(root)
    if tree is None:
        raise LightningSepError(
            f"{root} is not a TIMIT tree: expected {LAYOUT} under it (or under {root}/TIMIT). "
            "Point TIMIT_ROOT (or root) at the folder that holds TRAIN and TEST, or leave it unset "
            "to use the embedded corpus."
        )
    out = []
    for subset in subsets:
        sub = _child(tree, subset)
        if sub is None or not sub.is_dir():
            continue
        for region in sorted(sub.iterdir(), key=lambda p: p.name.upper()):
            if not (region.is_dir() and _REGION.match(region.name)):
                continue
            for spk in sorted(region.iterdir(), key=lambda p: p.name.upper()):
                m = _SPEAKER.match(spk.name)
                if not (spk.is_dir() and m):
                    continue
                sex = "female" if m.group(1).lower() == "f" else "male"
                for wav in sorted(spk.iterdir(), key=lambda p: _sentence_key(p.name)):
                    s = _SENTENCE.match(wav.name)
                    if not (s and wav.is_file()):
                        continue
                    if s.group(1).lower() == "sa" and not include_sa:
                        continue
                    out.append(TimitUtterance(
                        subset=subset, region=region.name.upper(), speaker=spk.name.upper(), sex=sex,
                        sentence=f"{s.group(1).upper()}{int(s.group(2))}", path=wav, text=_transcript(wav),
                    ))
    if not out:
        raise LightningSepError(
            f"No TIMIT utterances found under {tree} (subsets {', '.join(subsets)}): expected {LAYOUT}. "
            "Point TIMIT_ROOT (or root) at a TIMIT copy, or leave it unset to use the embedded corpus."
        )
    return out


def _sentence_key(name: str) -> tuple:
    s = _SENTENCE.match(name)
    return (0, "", 0) if s is None else (1, s.group(1).upper(), int(s.group(2)))


def _read(path: Path) -> tuple[np.ndarray, dict]:
    from datamodules.sphere import read_sphere

    try:
        return read_sphere(path)
    except LightningSepError as err:
        raise LightningSepError(f"{err} {FIX_HINT}") from None
    except OSError as err:
        raise LightningSepError(f"{path}: cannot be read ({err.strerror or err}). {FIX_HINT}") from None


def read_utterance(utt: TimitUtterance) -> tuple[np.ndarray, int]:
    """The utterance as float32 mono in [-1, 1) and its sample rate."""
    samples, header = _read(utt.path)
    if samples.ndim > 1:
        samples = samples.mean(axis=1)
    if samples.size == 0:
        raise LightningSepError(f"{utt.path}: holds no samples. {FIX_HINT}")
    return samples.astype(np.float32) / 32768.0, int(header["sample_rate"])  # read_sphere gives full-scale int16


@lru_cache(maxsize=None)
def _cached_length(path: Path, mtime_ns: int) -> int:
    from datamodules.sphere import read_header

    try:
        return int(read_header(path)["sample_count"])
    except LightningSepError as err:
        raise LightningSepError(f"{err} {FIX_HINT}") from None


def utterance_length(utt: TimitUtterance) -> int:
    """Samples in the utterance, from its SPHERE header (no audio is read)."""
    try:
        stamp = utt.path.stat().st_mtime_ns
    except OSError as err:
        raise LightningSepError(f"{utt.path}: cannot be read ({err.strerror or err}).") from None
    return _cached_length(utt.path, stamp)
