"""``MUSDBDataModule``: MUSDB18 / MUSDB18-HQ (or the embedded corpus) as monaural separation data.

Where the data comes from
    ``root=`` if given, else ``$MUSDB_ROOT``, else the embedded corpus
    (:func:`datamodules.embedded_musdb.ensure_embedded_musdb`, generated on first use).  The folder
    holds ``train/`` and ``test/`` with MUSDB18 ``<track>.stem.mp4`` files or MUSDB18-HQ
    ``<track>/{mixture,drums,bass,other,vocals}.wav`` folders (``is_wav=None`` tells which).
    Tracks are listed and decoded through the ``musdb`` package (which needs ffmpeg/ffprobe).

Decoded once
    :meth:`MUSDBDataModule.prepare_data` decodes every track once into a cache of float32
    ``(5, channels, samples)`` arrays (mixture, drums, bass, other, vocals) at ``sample_rate``
    (:mod:`datamodules.audio_cache`); later epochs and runs memory-map the cache and never decode
    again.  Editing or replacing a file invalidates its entry.

Splits
    The official MUSDB18 validation tracks (musdb's ``split="valid"``) when the training folder
    holds them; otherwise (the embedded corpus, a folder of one's own) a seeded
    ``validation_fraction`` of the training tracks, or exactly ``validation_tracks``.  The held-out
    tracks are logged once.

Items
    ``(mixture, targets)``: float32 tensors ``(n_samples,)`` and ``(n_targets, n_samples)``.
    Segments are ``(segment_frames - 1) * hop_length`` samples long, so a centred STFT with that
    hop gives exactly ``segment_frames`` frames.  ``mono=True`` averages the channels;
    ``mono=False`` makes every channel its own monaural example.  The target ``accompaniment`` is
    ``mixture - vocals`` (musdb's ``drums + bass + other``).

Randomness
    Segments are drawn by :mod:`datamodules.segments` (per-item seeding, no global RNG state):
    reproducible for any ``num_workers``, new segments every epoch, different ones per DDP rank.
    Validation and test segments are fixed: the same every epoch and every run.
"""

from __future__ import annotations

import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from datamodules import _musdb
from datamodules._musdb import SOURCES, STEMS
from datamodules.audio_cache import AudioCache
from datamodules.base import SeparationDataModule, check_at_least, check_targets
from datamodules.segments import FixedSegments, StemItem, TrainSegments
from lightning_sep.errors import LightningSepError, UnknownNameError
from lightning_sep.paths import data_home

log = logging.getLogger(__name__)

#: The targets a model can be trained to extract.
TARGETS: tuple[str, ...] = ("vocals", "drums", "bass", "other", "accompaniment")
_ROW = {name: i for i, name in enumerate(STEMS)}  # row of each stem in a cache entry
#: Tracks decoded at once by prepare_data (each decode holds a track in memory, as float64).
_DECODE_THREADS = 4

_LAYOUT = (
    "train/<track>.stem.mp4 and test/<track>.stem.mp4 (MUSDB18), or "
    "train/<track>/{mixture,drums,bass,other,vocals}.wav and test/<track>/... (MUSDB18-HQ)"
)


def default_cache_dir() -> Path:
    """``<data_home>/cache/musdb`` (``$LIGHTNING_SEP_DATA/cache/musdb`` or ``<repo>/data/cache/musdb``)."""
    return data_home() / "cache" / "musdb"


# -- datasets ------------------------------------------------------------------------------------
class CachedTracks:
    """Tracks as memory-mapped cache entries ``(5, channels, samples)``; cheap to pickle (the maps
    are reopened lazily in each dataloader worker)."""

    def __init__(self, names: Sequence[str], paths: Sequence[Path]):
        self.names = list(names)
        self.paths = [str(p) for p in paths]
        shapes = [AudioCache.load(p).shape for p in self.paths]
        self.channels = [int(s[1]) for s in shapes]
        self.lengths = [int(s[2]) for s in shapes]
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def array(self, i: int) -> np.ndarray:
        a = self._maps.get(i)
        if a is None:
            a = self._maps[i] = AudioCache.load(self.paths[i])
        return a

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state


def musdb_item(targets: Sequence[str]) -> StemItem:
    """Targets as rows of a cache entry; ``accompaniment`` is ``mixture - vocals``."""
    return StemItem([_ROW["vocals" if t == "accompaniment" else t] for t in targets],
                    [t == "accompaniment" for t in targets])


def MUSDBTrainDataset(tracks: CachedTracks, targets: Sequence[str], segment_samples: int, samples_per_track: int,
                      mono: bool, seed: int, random_track_mix: bool = False) -> TrainSegments:
    """Random training segments (:class:`~datamodules.segments.TrainSegments`); with
    ``random_track_mix`` each of the four sources comes from its own random track, channel and
    offset, and the mixture is their sum (open-unmix's augmentation)."""
    remix = [_ROW[name] for name in SOURCES] if random_track_mix else None
    return TrainSegments(tracks, musdb_item(targets), segment_samples, samples_per_track, mono, seed, remix)


def MUSDBSegmentDataset(tracks: CachedTracks, targets: Sequence[str], segment_samples: int,
                        segments_per_track: int, mono: bool) -> FixedSegments:
    """Fixed validation/test segments (:class:`~datamodules.segments.FixedSegments`)."""
    return FixedSegments(tracks, musdb_item(targets), segment_samples, segments_per_track, mono)


# -- the DataModule ------------------------------------------------------------------------------
class MUSDBDataModule(SeparationDataModule):
    """MUSDB18 / MUSDB18-HQ as ``(mixture, targets)`` waveform segments for monaural separation.

    Args:
        root: the dataset folder (``train/``, ``test/``); default ``$MUSDB_ROOT``, else the
            embedded corpus (generated once under ``data_home()``, see
            :func:`datamodules.embedded_musdb.ensure_embedded_musdb`).
        is_wav: ``True`` for MUSDB18-HQ wav folders, ``False`` for ``.stem.mp4``; ``None`` detects.
        targets: any of vocals, drums, bass, other, accompaniment (= mixture - vocals).
        mono: average the channels (``True``) or use every channel as its own example.
        sample_rate, n_fft, win_length, hop_length, window, retained_bins: the front end, handed
            to the model as :attr:`front_end`; audio is resampled to ``sample_rate``.
        segment_frames: training segment length in STFT frames.
        samples_per_track: training segments per track per epoch.
        random_track_mix: draw every source from a different random track (augmentation).
        val_segment_frames, val_segments_per_track: the fixed validation/test segments.
        validation_tracks: training tracks to hold out (exact names); default: the official
            MUSDB18 validation tracks if present, else ``validation_fraction`` of them (seeded).
        batch_size, num_workers: the dataloaders' (workers are persistent when > 0).
        seed: seeds the split and the training segments (no global RNG state is touched).
        cache_dir: the decoded-audio cache (default ``data_home()/cache/musdb``).
        embedded_seed: seed of the embedded corpus, used when no root is configured.
    """

    dataset_name = "musdb"

    def __init__(
        self,
        root: Optional[str] = None,
        is_wav: Optional[bool] = None,
        targets: list[str] = ["vocals"],  # noqa: B006 - copied below; a list default reads well in the CLI
        mono: bool = True,
        sample_rate: int = 44100,
        n_fft: int = 4096,
        win_length: int = 2049,
        hop_length: int = 384,
        window: str = "hamming",
        retained_bins: int = 744,
        segment_frames: int = 128,
        samples_per_track: int = 64,
        random_track_mix: bool = False,
        val_segment_frames: int = 512,
        val_segments_per_track: int = 4,
        validation_tracks: Optional[list[str]] = None,
        validation_fraction: float = 0.15,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 42,
        cache_dir: Optional[str] = None,
        embedded_seed: int = 2018,
    ):
        super().__init__(
            sample_rate=sample_rate, n_fft=n_fft, win_length=win_length, hop_length=hop_length, window=window,
            retained_bins=retained_bins, segment_frames=segment_frames, val_segment_frames=val_segment_frames,
            batch_size=batch_size, num_workers=num_workers, seed=seed,
        )
        targets = check_targets(targets, TARGETS)
        check_at_least(1, samples_per_track=samples_per_track, val_segments_per_track=val_segments_per_track)
        if not 0.0 < float(validation_fraction) < 1.0:
            raise LightningSepError(f"validation_fraction={validation_fraction} must be between 0 and 1 (exclusive).")
        if int(seed) < 0 or int(embedded_seed) < 0:
            raise LightningSepError(f"seed={seed} and embedded_seed={embedded_seed} must be >= 0.")
        if validation_tracks is not None:
            validation_tracks = [validation_tracks] if isinstance(validation_tracks, str) else list(validation_tracks)
            if not validation_tracks:
                raise LightningSepError("validation_tracks is an empty list: name at least one track, or leave it unset.")
        self.save_hyperparameters()

        self.root_arg = root
        self.is_wav = is_wav
        self.targets = targets
        self.source_names = list(targets)
        self.mono = bool(mono)
        self.samples_per_track = int(samples_per_track)
        self.random_track_mix = bool(random_track_mix)
        self.val_segments_per_track = int(val_segments_per_track)
        self.validation_tracks = validation_tracks
        self.validation_fraction = float(validation_fraction)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.embedded_seed = int(embedded_seed)

        # set by prepare_data/setup
        self.root: Optional[Path] = None
        self.train_tracks: list[str] = []
        self.valid_tracks: list[str] = []
        self.test_tracks: list[str] = []
        self._embedded = False
        self._scanned: Optional[dict[str, list[Any]]] = None

    # -- where the data is ---------------------------------------------------------------------------
    def _resolve_root(self) -> Path:
        if self.root is not None:
            return self.root
        env = os.environ.get("MUSDB_ROOT", "").strip()
        if self.root_arg:
            root, origin = Path(self.root_arg).expanduser(), f"root={self.root_arg}"
            advice = (
                "Point root (or MUSDB_ROOT) at a folder with train/ and test/ (MUSDB18 .stem.mp4 "
                "or MUSDB18-HQ wav), or leave both unset to use the embedded corpus."
            )
        elif env:
            root, origin = Path(env).expanduser(), f"MUSDB_ROOT={env}"
            advice = (
                "Point MUSDB_ROOT at a folder with train/ and test/ (MUSDB18 .stem.mp4 or "
                "MUSDB18-HQ wav), or unset it to use the embedded corpus."
            )
        else:
            try:
                from datamodules.embedded_musdb import ensure_embedded_musdb
            except ImportError as err:
                raise LightningSepError(
                    f"No dataset configured and the embedded corpus is unavailable ({err}): set "
                    "MUSDB_ROOT to a folder with train/ and test/ (MUSDB18 .stem.mp4 or MUSDB18-HQ wav)."
                ) from err
            self._embedded = True
            root = Path(ensure_embedded_musdb(seed=self.embedded_seed))
            self.root = root
            self.dataset_name = "embedded_musdb"
            return root
        if not root.exists():
            raise LightningSepError(f"{origin}: {root} does not exist. {advice}")
        if not root.is_dir():
            raise LightningSepError(f"{origin}: {root} is not a folder. {advice}")
        self.root = root
        return root

    def _fix_hint(self) -> str:
        if self._embedded:
            return f"The embedded corpus is generated: delete its folder {self.root} to regenerate it."
        return "Replace the file (re-download or re-extract MUSDB18 / MUSDB18-HQ), then run again."

    def _scan(self) -> dict[str, list[Any]]:
        """The musdb tracks of ``train/`` and ``test/`` (listed once per DataModule)."""
        if self._scanned is not None:
            return self._scanned
        root = self._resolve_root()
        _musdb.import_musdb()  # a clear error without ffmpeg, before anything else
        is_wav = self.is_wav
        if is_wav is None:
            is_wav = _musdb.detect_is_wav(root)
            if is_wav is None:
                raise LightningSepError(
                    f"No MUSDB tracks found in {root}: expected {_LAYOUT}. "
                    "Point MUSDB_ROOT (or root) at such a folder, or unset it to use the embedded corpus."
                )
        self.is_wav = bool(is_wav)
        if not self._embedded:
            self.dataset_name = "musdb18hq" if self.is_wav else "musdb18"
        scanned = {s: _musdb.scan_subset(root, s, self.is_wav, self._fix_hint()) for s in ("train", "test")}
        if not scanned["train"] and not scanned["test"]:
            kind = "MUSDB18-HQ wav folders" if self.is_wav else "MUSDB18 .stem.mp4 files"
            raise LightningSepError(
                f"No {kind} found in {root} (is_wav={self.is_wav}): expected {_LAYOUT}."
            )
        self._scanned = scanned
        self.test_tracks = [t.name for t in scanned["test"]]
        return scanned

    def _split(self) -> tuple[list[Any], list[Any]]:
        """(train, validation) musdb tracks."""
        tracks = self._scan()["train"]
        names = [t.name for t in tracks]
        root = self.root
        if not tracks:
            raise LightningSepError(f"No training tracks in {root}/train: expected {_LAYOUT}.")
        if self.validation_tracks is not None:
            for name in self.validation_tracks:
                if name not in names:
                    raise UnknownNameError("validation track", name, names)
            held = sorted(set(self.validation_tracks))
            how = "validation_tracks"
        else:
            official = _musdb.official_validation_names(names)
            if official and len(official) < len(names):
                held, how = official, "the official MUSDB18 validation split"
            else:
                if len(names) < 2:
                    raise LightningSepError(
                        f"{root}/train holds {len(names)} track: at least 2 are needed to hold one "
                        "out for validation. Add tracks, or use a folder with more."
                    )
                n_valid = min(len(names) - 1, max(1, round(self.validation_fraction * len(names))))
                order = np.random.default_rng([self.seed, 0]).permutation(len(names))
                held = sorted(names[i] for i in order[:n_valid])
                how = f"validation_fraction={self.validation_fraction}, seed={self.seed}"
        if len(held) >= len(names):
            raise LightningSepError(
                f"validation_tracks holds out all {len(names)} training tracks of {root}/train: "
                "leave at least one for training."
            )
        valid = [t for t in tracks if t.name in held]
        train = [t for t in tracks if t.name not in held]
        self.train_tracks, self.valid_tracks = [t.name for t in train], [t.name for t in valid]
        self._announce(
            f"MUSDB data: {root} ({self.dataset_name}); {len(train)} training, {len(valid)} validation "
            f"({how}), {len(self.test_tracks)} test tracks. Validation tracks: {', '.join(self.valid_tracks)}"
        )
        return train, valid

    # -- the cache ------------------------------------------------------------------------------------
    def _cache(self) -> AudioCache:
        return AudioCache(self.cache_dir or default_cache_dir())

    def _entries(self, cache: AudioCache, tracks: Sequence[Any], progress: bool = False) -> list[Path]:
        """Cache entry of each track, decoding the missing ones (a few tracks at a time: the
        decoding runs in ffmpeg subprocesses)."""
        hint = self._fix_hint()

        def entry(track: Any) -> Path:
            def decode() -> np.ndarray:
                return _musdb.decode_track(track, self.sample_rate, hint)

            label = f"{track.subset}-{track.name}"
            return cache.get(label, track.path, self.sample_rate, _musdb.track_files(track), decode)

        workers = max(1, min(_DECODE_THREADS, os.cpu_count() or 1, len(tracks)))
        with ThreadPoolExecutor(workers) as pool:
            results = pool.map(entry, tracks)
            if progress and tracks:
                from tqdm.auto import tqdm

                results = tqdm(results, total=len(tracks), desc="Caching decoded MUSDB tracks",
                               unit="track", disable=None, leave=False)
            return list(results)

    def prepare_data(self) -> None:
        """Find the data (generating the embedded corpus if needed) and decode every track into the cache."""
        scanned = self._scan()
        cache = self._cache()
        self._entries(cache, scanned["train"] + scanned["test"], progress=True)
        if cache.decoded:
            log.info("Decoded %d track(s) into %s (%d already cached)", cache.decoded, cache.folder, cache.reused)

    def setup(self, stage: Optional[str] = None) -> None:
        cache = self._cache()
        if stage in (None, "fit", "validate"):
            train, valid = self._split()
            if self.train_set is None and stage in (None, "fit"):
                tracks = CachedTracks(self.train_tracks, self._entries(cache, train))
                self._set_train_set(MUSDBTrainDataset(
                    tracks, self.targets, self.segment_samples, self.samples_per_track, self.mono,
                    self.seed, self.random_track_mix,
                ))
                for name, n in zip(tracks.names, tracks.lengths):
                    if n < self.segment_samples:
                        warnings.warn(
                            f"Training track {name!r} has {n} samples, fewer than a segment "
                            f"({self.segment_samples}); its segments are zero-padded.", stacklevel=2,
                        )
            if self.valid_set is None:
                self.valid_set = MUSDBSegmentDataset(
                    CachedTracks(self.valid_tracks, self._entries(cache, valid)), self.targets,
                    self.val_segment_samples, self.val_segments_per_track, self.mono,
                )
        if stage in (None, "test", "predict") and self.test_set is None:
            test = self._scan()["test"]
            if not test:
                if stage is None:
                    return
                raise LightningSepError(f"No test tracks in {self.root}/test: expected {_LAYOUT}.")
            self.test_set = MUSDBSegmentDataset(
                CachedTracks(self.test_tracks, self._entries(cache, test)), self.targets,
                self.val_segment_samples, self.val_segments_per_track, self.mono,
            )

    # -- data ------------------------------------------------------------------------------------------
    def full_tracks(self, subset: str = "test") -> CachedTracks:
        """Whole stereo tracks of ``subset`` (``train`` or ``test``) as cache entries
        ``(5, channels, samples)`` at ``sample_rate``, decoding the missing ones (``make eval``)."""
        if subset not in ("train", "test"):
            raise UnknownNameError("subset", subset, ["train", "test"])
        tracks = self._scan()[subset]
        if not tracks:
            raise LightningSepError(f"No {subset} tracks in {self.root}/{subset}: expected {_LAYOUT}.")
        return CachedTracks([t.name for t in tracks], self._entries(self._cache(), tracks, progress=True))

    def train_mixtures(self) -> Iterator[np.ndarray]:
        """The training tracks' mixtures, float32 ``(channels, samples)`` from the cache:
        ``(1, samples)`` (channel average) when ``mono``, every channel otherwise."""
        if self.train_set is None:
            self.setup("fit")
        tracks = self.train_set.tracks
        for i in range(len(tracks)):
            mixture = tracks.array(i)[0]
            if self.mono:
                yield mixture.mean(axis=0, keepdims=True, dtype=np.float32)
            else:
                yield np.array(mixture, dtype=np.float32)
