"""Everything that talks to the ``musdb`` package (and through it ``stempeg`` and ffmpeg).

* :func:`import_musdb` -- ``import musdb`` behind a guard: stempeg looks for ``ffmpeg`` and
  ``ffprobe`` when it is imported (even when only MUSDB18-HQ wav files will be read) and raises
  ``RuntimeError("ffmpeg or ffprobe could not be found! ...")`` from ``stempeg/cmds.py``; that
  becomes a :class:`~lightning_sep.errors.LightningSepError` saying how to install them.
* :func:`scan_subset` -- the tracks of ``train/`` or ``test/`` as ``musdb.MultiTrack`` objects,
  with a missing, unreadable or corrupt file reported by name.
* :func:`decode_track` -- the one place where audio is decoded: mixture and the four stems of a
  track as float32 ``(5, channels, samples)`` in :data:`STEMS` order, resampled to the requested
  rate.  The decoded-audio cache (:mod:`datamodules.audio_cache`) calls it once per track.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lightning_sep.errors import LightningSepError

log = logging.getLogger(__name__)

#: Order of the decoded/cached stems (musdb's ``stem_ids``: the NI-stems stream order).
STEMS: tuple[str, ...] = ("mixture", "drums", "bass", "other", "vocals")
#: The four sources (MUSDB18 ``track.sources``).
SOURCES: tuple[str, ...] = STEMS[1:]

FFMPEG_HELP = (
    "ffmpeg/ffprobe not found on PATH: the musdb package needs them (even for MUSDB18-HQ wav) "
    "and .stem.mp4 decoding needs ffmpeg. Install them with `make setup` "
    "(Debian/Ubuntu: `sudo apt-get install ffmpeg`; macOS: `brew install ffmpeg`; "
    "conda: `conda install -c conda-forge ffmpeg`), or put the folder that holds the ffmpeg and "
    "ffprobe programs on PATH, then run the command again."
)


def missing_ffmpeg_programs() -> list[str]:
    """The ones of ``ffmpeg``/``ffprobe`` that ``shutil.which`` cannot find on PATH."""
    return [p for p in ("ffmpeg", "ffprobe") if shutil.which(p) is None]


def require_ffmpeg(what: str = "") -> None:
    """Raise :class:`LightningSepError` (:data:`FFMPEG_HELP`) unless ffmpeg and ffprobe are on PATH."""
    missing = missing_ffmpeg_programs()
    if missing:
        where = f" (needed to decode {what})" if what else ""
        raise LightningSepError(f"{FFMPEG_HELP} Missing: {', '.join(missing)}{where}.")


def import_musdb() -> Any:
    """``import musdb``, turning stempeg's import-time ffmpeg check into a clear error.

    Without ffmpeg or ffprobe on PATH, ``import musdb`` -> ``import stempeg`` -> ``stempeg.cmds``
    raises ``RuntimeError('ffmpeg or ffprobe could not be found! Please install them before using
    stempeg. See: https://github.com/faroit/stempeg')``.
    """
    try:
        import musdb
    except RuntimeError as err:
        if "ffmpeg" in str(err) or "ffprobe" in str(err) or missing_ffmpeg_programs():
            missing = missing_ffmpeg_programs()
            detail = f" Missing: {', '.join(missing)}." if missing else ""
            raise LightningSepError(f"{FFMPEG_HELP}{detail} (stempeg said: {err})") from err
        raise
    except ImportError as err:
        raise LightningSepError(
            f"The Python package {err.name or 'musdb'!r} is not installed ({err}); "
            "run `make setup` (or `pip install -e .`) in the lightning-sep checkout."
        ) from err
    return musdb


# -- listing tracks ------------------------------------------------------------------------------
def detect_is_wav(root: Path) -> bool | None:
    """``True`` for MUSDB18-HQ (``train/<track>/mixture.wav``), ``False`` for MUSDB18
    (``train/<track>.stem.mp4``), ``None`` when neither is found under ``train/`` or ``test/``."""
    n_wav = n_stem = 0
    for subset in ("train", "test"):
        folder = root / subset
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if entry.name.startswith("."):
                continue
            if entry.is_dir() and (entry / "mixture.wav").is_file():
                n_wav += 1
            elif entry.is_file() and entry.name.endswith(".stem.mp4"):
                n_stem += 1
    if n_wav == 0 and n_stem == 0:
        return None
    if n_wav and n_stem:
        log.warning(
            "%s holds both MUSDB18-HQ wav folders (%d) and .stem.mp4 files (%d); reading the %s. "
            "Pass is_wav=%s to choose the other.", root, n_wav, n_stem,
            "wav folders" if n_wav >= n_stem else ".stem.mp4 files", n_wav < n_stem,
        )
    return n_wav >= n_stem


def track_files(track: Any) -> list[str]:
    """The files a track is decoded from (mixture first): 5 wav files, or the one ``.stem.mp4``."""
    if track.is_wav:
        folder = Path(track.path).parent
        return [str(folder / f"{name}.wav") for name in STEMS]
    return [str(track.path)]


def _probe(path: str) -> str | None:
    """``None`` if ffprobe reads ``path``; otherwise the reason it cannot."""
    import stempeg

    try:
        info = stempeg.Info(path)
    except Exception as err:  # ffmpeg.Error carries ffprobe's stderr
        stderr = getattr(err, "stderr", b"") or b""
        text = stderr.decode(errors="replace").strip().splitlines()
        return text[-1] if text else str(err)
    if info.nb_audio_streams == 0:
        return "it has no audio stream"
    return None


def scan_subset(root: Path, subset: str, is_wav: bool, fix_hint: str) -> list[Any]:
    """The tracks of ``root/subset`` as ``musdb.MultiTrack`` objects, sorted by name.

    Raises :class:`LightningSepError` naming the file when a track folder lacks a stem file or a
    file cannot be read by ffprobe (musdb probes each mixture when it lists the tracks).
    """
    musdb = import_musdb()
    folder = root / subset
    if not folder.is_dir():
        return []
    if is_wav:  # musdb silently drops missing stem files; say which one is missing instead
        for track_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            missing = [f"{s}.wav" for s in STEMS if not (track_dir / f"{s}.wav").is_file()]
            if missing:
                raise LightningSepError(
                    f"Track folder {track_dir} lacks {', '.join(missing)}: a MUSDB18-HQ track "
                    f"folder holds {', '.join(s + '.wav' for s in STEMS)}. {fix_hint}"
                )
    try:
        db = musdb.DB(root=str(root), is_wav=is_wav, subsets=subset)
    except LightningSepError:
        raise
    except Exception as err:
        _raise_unreadable(folder, is_wav, fix_hint, err)
    tracks = [t for t in db.tracks if not t.name.startswith(".")]
    for t in tracks:
        if t.info is None or t.rate is None:
            raise LightningSepError(f"{t.path} does not exist or cannot be read. {fix_hint}")
    return sorted(tracks, key=lambda t: t.name)


def _raise_unreadable(folder: Path, is_wav: bool, fix_hint: str, err: BaseException) -> None:
    """Find which file made ``musdb.DB`` fail and name it."""
    if is_wav:
        candidates = sorted(str(p) for p in folder.glob("*/mixture.wav"))
    else:
        candidates = sorted(str(p) for p in folder.rglob("*.stem.mp4"))
    for path in candidates:
        reason = _probe(path)
        if reason is not None:
            raise LightningSepError(
                f"Cannot read {path}: {reason}. The file is corrupt or truncated. {fix_hint}"
            ) from err
    raise LightningSepError(f"musdb could not list the tracks in {folder}: {err}. {fix_hint}") from err


# -- decoding --------------------------------------------------------------------------------------
def _sf_info(path: str, fix_hint: str) -> Any:
    import soundfile as sf

    try:
        return sf.info(path)
    except Exception as err:
        raise LightningSepError(
            f"Cannot read {path} ({err}). The file is corrupt or not a wav file. {fix_hint}"
        ) from err


def _check_wav_track(track: Any, fix_hint: str) -> int:
    """Rate and channel count must agree across the 5 files (musdb would silently resample or
    mis-shape a stem that differs from the mixture).  Returns the track's sample rate."""
    files = track_files(track)
    infos = [(path, _sf_info(path, fix_hint)) for path in files]
    rates = {p: i.samplerate for p, i in infos}
    chans = {p: i.channels for p, i in infos}
    if len(set(rates.values())) > 1:
        detail = ", ".join(f"{Path(p).name}: {r} Hz" for p, r in rates.items())
        raise LightningSepError(
            f"Track {track.name!r} ({Path(files[0]).parent}): its stems have different sample rates "
            f"({detail}); every file of a track must have the same rate. {fix_hint}"
        )
    if len(set(chans.values())) > 1:
        detail = ", ".join(f"{Path(p).name}: {c}" for p, c in chans.items())
        raise LightningSepError(
            f"Track {track.name!r} ({Path(files[0]).parent}): its stems have different channel "
            f"counts ({detail}). {fix_hint}"
        )
    return int(infos[0][1].samplerate)


def _decode_stem_file(track: Any, fix_hint: str) -> tuple[np.ndarray, int]:
    """All 5 streams of a ``.stem.mp4`` as ``(5, samples, channels)``."""
    require_ffmpeg(f"{track.path}")
    info = track.info
    n = info.nb_audio_streams
    if n != len(STEMS):
        raise LightningSepError(
            f"{track.path} has {n} audio stream(s); a MUSDB18 .stem.mp4 has 5 "
            f"({', '.join(STEMS)}). {fix_hint}"
        )
    rates = [info.sample_rate(k) for k in range(n)]
    if len(set(rates)) > 1:
        raise LightningSepError(
            f"Track {track.name!r} ({track.path}): its streams have different sample rates "
            f"({dict(zip(STEMS, rates))}). {fix_hint}"
        )
    lengths = [info.samples(k) for k in range(n)]
    if len(set(lengths)) > 1:
        raise LightningSepError(
            f"Track {track.name!r} ({track.path}): its streams have different lengths "
            f"({dict(zip(STEMS, lengths))} samples). {fix_hint}"
        )
    try:
        stems = np.asarray(track.stems, dtype=np.float32)
    except LightningSepError:
        raise
    except Exception as err:
        raise LightningSepError(f"Cannot decode {track.path} ({err}). {fix_hint}") from err
    if stems.ndim == 2:  # mono streams come back squeezed
        stems = stems[:, :, None]
    if stems.ndim != 3 or stems.shape[0] != len(STEMS):
        raise LightningSepError(f"Cannot decode {track.path}: got audio of shape {stems.shape}. {fix_hint}")
    expected = int(lengths[0])
    if stems.shape[1] < expected - max(4096, expected // 200):
        raise LightningSepError(
            f"Cannot decode {track.path}: only {stems.shape[1]} of its {expected} samples could be "
            f"read; the file looks truncated. {fix_hint}"
        )
    # The AAC encoder pads the end to a whole frame; keep the length the container declares.
    return stems[:, :expected], int(rates[0])


def _decode_wav_track(track: Any, fix_hint: str) -> tuple[np.ndarray, int]:
    rate = _check_wav_track(track, fix_hint)
    files = track_files(track)
    audio = []
    for name, path in zip(STEMS, files):
        try:
            a = track.audio if name == "mixture" else track.sources[name].audio
        except LightningSepError:
            raise
        except Exception as err:
            raise LightningSepError(f"Cannot decode {path} ({err}). {fix_hint}") from err
        a = np.asarray(a, dtype=np.float32)
        if a.ndim == 1:
            a = a[:, None]
        audio.append(a)
    lengths = {Path(p).name: a.shape[0] for p, a in zip(files, audio)}
    if len(set(lengths.values())) > 1:
        raise LightningSepError(
            f"Track {track.name!r} ({Path(files[0]).parent}): its stems have different lengths "
            f"({', '.join(f'{k}: {v}' for k, v in lengths.items())} samples); every file of a "
            f"track must have the same length. {fix_hint}"
        )
    if lengths[Path(files[0]).name] == 0:
        raise LightningSepError(f"{files[0]} holds no audio. {fix_hint}")
    return np.stack(audio), rate


def decode_track(track: Any, sample_rate: int, fix_hint: str = "") -> np.ndarray:
    """Decode mixture + stems of a musdb track: float32 ``(5, channels, samples)`` in
    :data:`STEMS` order, resampled to ``sample_rate`` (``torchaudio.functional.resample``) when
    the file's rate differs.  Problems raise :class:`LightningSepError` naming the file."""
    if track.is_wav:
        stems, rate = _decode_wav_track(track, fix_hint)
    else:
        stems, rate = _decode_stem_file(track, fix_hint)
    out = np.ascontiguousarray(stems.transpose(0, 2, 1), dtype=np.float32)  # (5, C, N)
    if int(rate) != int(sample_rate):
        import torch
        import torchaudio.functional as AF

        log.info("Resampling %s from %d Hz to %d Hz", track.name, rate, sample_rate)
        out = np.stack(
            [AF.resample(torch.from_numpy(s), int(rate), int(sample_rate)).numpy() for s in out]
        ).astype(np.float32, copy=False)
    return out


def official_validation_names(names: Sequence[str]) -> list[str]:
    """Those of ``names`` in musdb's official validation list (``mus.yaml``: what
    ``musdb.DB(subsets="train", split="valid")`` selects)."""
    import yaml

    musdb = import_musdb()
    with open(os.path.join(musdb.__path__[0], "configs", "mus.yaml")) as fh:
        official = set(yaml.safe_load(fh)["validation_tracks"])
    return [n for n in names if n in official]
