"""Reading any input file and writing estimates, with clear errors and atomic writes.

wav, flac, ogg and mp3 are read with ``soundfile`` (libsndfile); anything else (``.stem.mp4``,
``.m4a``, ``.mp4``, ``.aac``, ...) is decoded with ffmpeg (for a ``.stem.mp4`` the first audio
stream, which is the mixture).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from lightning_sep.errors import LightningSepError
from lightning_sep.utils.atomic import atomic_open

#: what soundfile reads on every platform we support (libsndfile >= 1.1 reads mp3)
_SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif"}
_WAV_SUBTYPES = ("FLOAT", "PCM_16", "PCM_24", "PCM_32", "DOUBLE")


def _ffmpeg_help() -> str:
    from datamodules._musdb import FFMPEG_HELP

    return FFMPEG_HELP


def probe(path: str | os.PathLike) -> tuple[int, int, float]:
    """``(sample_rate, channels, seconds)`` of an audio file, or a clear error naming it."""
    path = Path(path)
    if not path.is_file():
        raise LightningSepError(f"{path}: no such file.")
    if not os.access(path, os.R_OK):
        raise LightningSepError(f"{path}: not readable (permission denied).")
    if path.suffix.lower() in _SOUNDFILE_SUFFIXES:
        import soundfile as sf

        try:
            info = sf.info(str(path))
        except Exception as err:  # soundfile raises LibsndfileError / RuntimeError
            raise LightningSepError(
                f"{path}: cannot be read as audio ({err}). Pass a wav, flac, ogg or mp3 file "
                "(or mp4/.stem.mp4 with ffmpeg installed)."
            ) from None
        return int(info.samplerate), int(info.channels), float(info.duration)
    if shutil.which("ffprobe") is None or shutil.which("ffmpeg") is None:
        raise LightningSepError(f"{path}: reading {path.suffix or 'this'} files needs ffmpeg. {_ffmpeg_help()}")
    proc = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
         "stream=sample_rate,channels:format=duration", "-of", "json", str(path)],
        capture_output=True, text=True,
    )
    try:
        meta = json.loads(proc.stdout or "{}")
        stream = meta["streams"][0]
        seconds = float(meta.get("format", {}).get("duration", "nan"))
        return int(stream["sample_rate"]), int(stream["channels"]), seconds
    except (KeyError, IndexError, ValueError):
        detail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no audio stream"
        raise LightningSepError(f"{path}: cannot be read as audio ({detail}).") from None


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """An audio file as float32 ``(channels, samples)`` and its sample rate."""
    path = Path(path)
    rate, channels, _ = probe(path)
    if path.suffix.lower() in _SOUNDFILE_SUFFIXES:
        import soundfile as sf

        try:
            audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
        except Exception as err:
            raise LightningSepError(f"{path}: cannot be decoded ({err}).") from None
        return np.ascontiguousarray(audio.T), int(rate)
    proc = subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-map", "0:a:0", "-f", "f32le",
         "-acodec", "pcm_f32le", "-ar", str(rate), "-ac", str(channels), "-"],
        capture_output=True,
    )
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        raise LightningSepError(f"{path}: ffmpeg cannot decode it ({detail[-1] if detail else 'unknown error'}).")
    audio = np.frombuffer(proc.stdout, dtype=np.float32).reshape(-1, channels)
    return np.ascontiguousarray(audio.T), rate


def check_writable_folder(folder: str | os.PathLike, option: str = "--out") -> Path:
    """Create ``folder`` if needed and make sure files can be written in it (else a clear error)."""
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_open(folder / ".write-test", "wb") as fh:
            fh.write(b"ok")
        (folder / ".write-test").unlink()
    except OSError as err:
        raise LightningSepError(
            f"{option} {folder}: cannot write there ({err.strerror or err}). Choose a folder you can write to."
        ) from None
    return folder


def write_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int, subtype: str = "FLOAT") -> None:
    """Write ``(samples, channels)`` audio as a wav file, atomically."""
    import soundfile as sf

    if subtype not in _WAV_SUBTYPES:
        raise LightningSepError(f"subtype={subtype!r}: choose one of {', '.join(_WAV_SUBTYPES)}.")
    with atomic_open(path, "wb") as fh:
        sf.write(fh, audio, sample_rate, subtype=subtype, format="WAV")
