"""The embedded MUSDB18-format corpus: synthetic songs generated on first use.

The platform needs a separation corpus that works out of the box (tests, CI, demos) without the
real MUSDB18.  :func:`ensure_embedded_musdb` writes a small corpus of synthetic songs (see
:mod:`datamodules.synth`) in the MUSDB18-HQ layout::

    root/train/Embedded - Train 01/{mixture,vocals,drums,bass,other}.wav
    root/test/Embedded - Test 01/...
    root/manifest.json

so ``musdb.DB(root=root, is_wav=True)`` and everything built for MUSDB18 read it unchanged.  Files
are 32-bit float WAV so that ``mixture.wav`` equals the sum of the four stem files exactly (to
float32 rounding), as separation losses and metrics assume.

Generation is deterministic (same seed and parameters: bit-identical audio on a given machine),
atomic (built in a hidden sibling folder, renamed into place when complete, the manifest written
last) and guarded by a file lock, so concurrent processes generate the corpus once.  A folder
without a manifest that matches the requested parameters -- an interrupted or foreign generation
-- is never trusted: it is regenerated.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zlib
from pathlib import Path

import numpy as np
import soundfile as sf

from datamodules import synth
from datamodules.corpus import MANIFEST, ensure_corpus, manifest_is_complete
from lightning_sep.errors import LightningSepError
from lightning_sep.paths import data_home

CORPUS_VERSION = 1
FILES = ("mixture", "vocals", "drums", "bass", "other")
DEFAULTS = {"n_train": 12, "n_test": 4, "duration": 20.0, "sample_rate": 44100}
_SFC_SET_ADD_PEAK_CHUNK = 0x1050  # libsndfile's sndfile.h


def track_names(n_train: int, n_test: int) -> dict[str, list[str]]:
    """``{"train": ["Embedded - Train 01", ...], "test": ["Embedded - Test 01", ...]}``.

    The names are not in musdb's official validation list, so ``split="train"`` keeps them all."""
    return {
        "train": [f"Embedded - Train {i + 1:02d}" for i in range(n_train)],
        "test": [f"Embedded - Test {i + 1:02d}" for i in range(n_test)],
    }


def default_root(seed: int = 2018, **params) -> Path:
    """``data_home()/embedded-musdb18-v<version>-seed<seed>``, plus a suffix naming any parameter
    that differs from the defaults (so corpora of different parameters never share a folder)."""
    name = f"embedded-musdb18-v{CORPUS_VERSION}-seed{seed}"
    p = {**DEFAULTS, **params}
    if p != DEFAULTS:
        name += f"-train{p['n_train']}-test{p['n_test']}-{p['duration']:g}s-{p['sample_rate']}Hz"
    return data_home() / name


def _rngs(name: str, seed: int, count: int) -> list[np.random.Generator]:
    """Independent generators derived from (seed, track name) -- one per part of the song, so
    changing one instrument's code does not change the others.  ``zlib.crc32`` (not ``hash``)
    keeps the derivation stable across processes."""
    seq = np.random.SeedSequence([int(seed), zlib.crc32(name.encode("utf-8"))])
    return [np.random.default_rng(s) for s in seq.spawn(count)]


def _song(rng: np.random.Generator, duration: float, sample_rate: int) -> synth.Song:
    return synth.plan_song(rng, int(round(duration * sample_rate)), int(sample_rate))


def plan_track(name: str, seed: int, duration: float, sample_rate: int = 44100) -> synth.Song:
    """The song plan of a track (tempo, key, mode, progression) without rendering it."""
    return _song(_rngs(name, seed, 6)[0], duration, sample_rate)


def describe_track(name: str, seed: int, duration: float, sample_rate: int = 44100) -> dict:
    """:meth:`synth.Song.describe` of :func:`plan_track`: JSON-ready tempo, key, progression."""
    return plan_track(name, seed, duration, sample_rate).describe()


def generate_track(name: str, seed: int, duration: float, sample_rate: int) -> dict[str, np.ndarray]:
    """Render one song: stems ``vocals``, ``drums``, ``bass``, ``other`` as float32 arrays shaped
    ``(n_samples, 2)``, and ``mixture``, their exact float32 sum.  Deterministic in
    ``(name, seed, duration, sample_rate)``."""
    if duration <= 0 or sample_rate < 8000:
        raise ValueError(f"need duration > 0 and sample_rate >= 8000, got {duration}, {sample_rate}")
    plan, vocals, drums, bass, other, mix = _rngs(name, seed, 6)
    song = _song(plan, duration, sample_rate)
    stems = {
        "vocals": synth.render_vocals(song, vocals),
        "drums": synth.render_drums(song, drums),
        "bass": synth.render_bass(song, bass),
        "other": synth.render_other(song, other),
    }
    return synth.mix_stems(stems, mix)


def vocals_to_accompaniment_db(stems: dict[str, np.ndarray]) -> float:
    acc = stems["drums"].astype(np.float64) + stems["bass"] + stems["other"]
    return 10 * np.log10(synth.energy(stems["vocals"]) / synth.energy(acc))


def _params(seed, n_train, n_test, duration, sample_rate) -> dict:
    return {"seed": int(seed), "n_train": int(n_train), "n_test": int(n_test),
            "duration": float(duration), "sample_rate": int(sample_rate)}


def _expected_files(params: dict) -> set[str]:
    names = track_names(params["n_train"], params["n_test"])
    return {f"{subset}/{track}/{f}.wav" for subset, tracks in names.items() for track in tracks
            for f in FILES}


def is_complete(root: str | os.PathLike, params: dict) -> bool:
    """True if ``root`` holds a finished corpus of exactly these parameters: a manifest of this
    version and parameters listing every expected file, each present with its recorded size."""
    return manifest_is_complete(Path(root), CORPUS_VERSION, params, _expected_files(params))


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """32-bit float WAV.  libsndfile adds a PEAK chunk stamped with the current time to float
    files; it is switched off (``SFC_SET_ADD_PEAK_CHUNK``, no public soundfile wrapper) so equal
    audio gives byte-identical files.  If that private call is unavailable the audio is unchanged
    and only the header differs."""
    with sf.SoundFile(path, "w", sample_rate, audio.shape[1], subtype="FLOAT", format="WAV") as f:
        try:
            sf._snd.sf_command(f._file, _SFC_SET_ADD_PEAK_CHUNK, sf._ffi.NULL, sf._snd.SF_FALSE)
        except AttributeError:  # pragma: no cover - a soundfile without these internals
            pass
        f.write(audio)


def _write(tmp: Path, params: dict, progress: bool) -> None:
    """Generate every track into ``tmp`` (the manifest last: its presence marks completion)."""
    from tqdm import tqdm

    names = track_names(params["n_train"], params["n_test"])
    jobs = [(subset, track) for subset, tracks in names.items() for track in tracks]
    files, tracks = {}, {}
    with tqdm(jobs, desc="Generating embedded MUSDB18", unit="track", disable=not progress,
              file=sys.stderr) as bar:
        for subset, track in bar:
            _write_track(tmp, subset, track, params, files, tracks)
    manifest = {"format": "embedded-musdb18", "version": CORPUS_VERSION, "params": params,
                "tracks": tracks, "files": files}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False))


def _write_track(tmp: Path, subset: str, track: str, params: dict, files: dict, tracks: dict) -> None:
    """Render one track into ``tmp/subset/track`` and record its files and plan for the manifest."""
    stems = generate_track(track, params["seed"], params["duration"], params["sample_rate"])
    folder = tmp / subset / track
    folder.mkdir(parents=True)
    for f in FILES:
        path = folder / f"{f}.wav"
        write_wav(path, stems[f], params["sample_rate"])
        files[f"{subset}/{track}/{f}.wav"] = {
            "bytes": path.stat().st_size,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
    tracks[f"{subset}/{track}"] = {
        **describe_track(track, params["seed"], params["duration"], params["sample_rate"]),
        "vocals_to_accompaniment_db": round(vocals_to_accompaniment_db(stems), 2),
        "mixture_peak": round(float(np.abs(stems["mixture"]).max()), 4),
    }


def ensure_embedded_musdb(root: str | os.PathLike | None = None, *, seed: int = 2018,
                          n_train: int = 12, n_test: int = 4, duration: float = 20.0,
                          sample_rate: int = 44100, progress: bool = True) -> Path:
    """Return the root of a complete embedded corpus, generating it first if needed.

    ``root`` defaults to :func:`default_root`.  The corpus is trusted only if its manifest matches
    ``CORPUS_VERSION`` and all parameters and every file has its recorded size; otherwise it is
    regenerated (under a lock, into a hidden sibling folder renamed into place when complete).
    ``progress`` shows one tqdm tick per track on stderr."""
    params = _params(seed, n_train, n_test, duration, sample_rate)
    if min(params["n_train"], params["n_test"]) < 0 or params["n_train"] + params["n_test"] < 1:
        raise LightningSepError(f"n_train={n_train} and n_test={n_test}: need >= 0 each, >= 1 track in all.")
    if not params["duration"] > 0 or params["sample_rate"] < 8000:
        raise LightningSepError(
            f"duration={duration} and sample_rate={sample_rate}: need duration > 0 and a sample rate >= 8000 Hz.")
    if root is None:
        root = default_root(seed, **{k: params[k] for k in DEFAULTS})
    return ensure_corpus(Path(root), lambda r: is_complete(r, params), ("train", "test"),
                         "embedded MUSDB18 corpus", lambda tmp: _write(tmp, params, progress))
