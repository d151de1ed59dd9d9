"""Shared test helpers: tiny MUSDB18-layout corpora.

* :func:`make_wav_corpus` -- MUSDB18-HQ layout (``train/<track>/{mixture,drums,bass,other,vocals}.wav``).
* :func:`make_stems_corpus` -- MUSDB18 layout (``train/<track>.stem.mp4``, needs ffmpeg).

Both return the stems they wrote so tests can compare decoded audio with them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

STEM_ORDER = ("mixture", "drums", "bass", "other", "vocals")


def synth_track(rng: np.random.Generator, n: int, sample_rate: int, channels: int = 2) -> np.ndarray:
    """``(5, n, channels)`` float32 stems in :data:`STEM_ORDER`; the mixture is their sum.

    Every source is a sine (its own frequency per source and channel) under a slow random
    envelope, plus a little noise; peaks stay below 0.2 per source, so the mixture never clips.
    """
    t = np.arange(n) / sample_rate
    sources = []
    for k in range(4):
        chans = []
        for c in range(channels):
            f = rng.uniform(80, 2000) * (1 + 0.1 * c)
            env = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.2, 2.0) * t + rng.uniform(0, 2 * np.pi))
            x = 0.15 * env * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
            chans.append(x + 0.01 * rng.standard_normal(n))
        sources.append(np.stack(chans, axis=-1))
    sources = np.stack(sources).astype(np.float32)
    return np.concatenate([sources.sum(0, keepdims=True), sources]).astype(np.float32)


def track_names(subset: str, n: int, prefix: str = "Tiny") -> list[str]:
    return [f"{prefix} - {subset.capitalize()} {i + 1:02d}" for i in range(n)]


def make_wav_corpus(
    root: str | Path, n_train: int = 3, n_test: int = 1, seconds: float = 4.0,
    sample_rate: int = 44100, channels: int = 2, seed: int = 0, subtype: str = "PCM_16",
) -> dict[str, np.ndarray]:
    """Write a MUSDB18-HQ-layout corpus; returns ``{"<subset>/<track>": stems (5, n, channels)}``.

    The written stems are 16-bit PCM (as MUSDB18-HQ), so decoded audio equals the returned
    arrays up to 16-bit quantisation (returned already quantised for ``PCM_16``).
    """
    import soundfile as sf

    root = Path(root)
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    written = {}
    for subset, count in (("train", n_train), ("test", n_test)):
        for name in track_names(subset, count):
            folder = root / subset / name
            folder.mkdir(parents=True, exist_ok=True)
            stems = synth_track(rng, n, sample_rate, channels)
            if subtype == "PCM_16":
                stems = (np.round(stems * 32768).clip(-32768, 32767) / 32768).astype(np.float32)
            for stem_name, audio in zip(STEM_ORDER, stems):
                sf.write(folder / f"{stem_name}.wav", audio, sample_rate, subtype=subtype)
            written[f"{subset}/{name}"] = stems
    return written


def make_stems_corpus(
    root: str | Path, n_train: int = 2, n_test: int = 1, seconds: float = 3.0,
    sample_rate: int = 44100, seed: int = 0,
) -> dict[str, np.ndarray]:
    """Write a MUSDB18-layout corpus of ``.stem.mp4`` files (5 AAC streams: mixture, drums, bass,
    other, vocals) with ``stempeg.write_stems(..., writer=stempeg.StreamsWriter(...))`` (the
    ``NIStemsWriter`` would also need MP4Box).  Returns ``{"<subset>/<track>": stems (5, n, 2)}``
    as written (before AAC coding)."""
    import stempeg

    root = Path(root)
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    written = {}
    for subset, count in (("train", n_train), ("test", n_test)):
        (root / subset).mkdir(parents=True, exist_ok=True)
        for name in track_names(subset, count):
            stems = synth_track(rng, n, sample_rate, 2)
            stempeg.write_stems(
                str(root / subset / f"{name}.stem.mp4"), stems, sample_rate=sample_rate,
                writer=stempeg.StreamsWriter(codec="aac", bitrate=256000, stem_names=list(STEM_ORDER)),
            )
            written[f"{subset}/{name}"] = stems
    return written


def have_ffmpeg() -> bool:
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


needs_ffmpeg = pytest.mark.skipif(not have_ffmpeg(), reason="ffmpeg/ffprobe not on PATH (apt-get install ffmpeg)")


# -- the real entry points on the embedded corpus ------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_home(tmp_path_factory) -> Path:
    """One ``LIGHTNING_SEP_DATA`` for the session: the embedded corpus is generated once."""
    return tmp_path_factory.mktemp("lightning_sep_data")


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, tmp_path, data_home):
    """Every test gets its own MLflow store and no ``MUSDB_ROOT``; corpora are shared per session."""
    monkeypatch.setenv("LIGHTNING_SEP_DATA", str(data_home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    (tmp_path / "mlruns").mkdir(exist_ok=True)
    monkeypatch.delenv("MUSDB_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing a test runs writes into the repository


def config_args(model: str = "skipfilter", data: str = "musdb", trainer: str = "cpu") -> list[str]:
    """``make train``'s arguments for ``lightning-sep fit``."""
    return [
        "--config", str(REPO / "conf" / "trainer" / f"{trainer}.yaml"),
        "--config", str(REPO / "conf" / "data" / f"{data}.yaml"),
        "--config", str(REPO / "conf" / "model" / f"{model}.yaml"),
    ]


def train_tiny_skipfilter(base: Path, data_home: Path, n_test: int = 1):
    """A real one-epoch skip-filter run on a tiny MUSDB18-HQ corpus, in its own MLflow store.

    For module-scoped fixtures (the per-test stores of :func:`_isolated_environment` are empty).
    Returns ``SimpleNamespace(uri, corpus, run_id, ckpt, base)``; ``ckpt`` is the best checkpoint.
    """
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from lightning_sep.cli import main

    corpus = base / "corpus"
    make_wav_corpus(corpus, n_train=3, n_test=n_test, seconds=3.0)
    (base / "mlruns").mkdir()
    uri = f"sqlite:///{base / 'mlruns' / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIGHTNING_SEP_DATA", str(data_home))
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("MUSDB_ROOT", raising=False)
        mp.chdir(base)
        rc = main(["fit", *config_args("skipfilter"), "--data.root", str(corpus), "--data.cache_dir", str(base / "cache"),
                   "--trainer.max_epochs", "1", "--data.samples_per_track", "2", "--data.val_segments_per_track", "1",
                   "--data.val_segment_frames", "128", "--trainer.enable_progress_bar", "false",
                   "--trainer.enable_model_summary", "false"])
    assert rc == 0
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].data.tags["model.family"] == "skipfilter"
    ckpt = Path(runs[0].data.tags["checkpoint.best"])
    assert ckpt.is_file() and ckpt.parent.name == "checkpoints"
    return SimpleNamespace(uri=uri, corpus=corpus, run_id=runs[0].info.run_id, ckpt=ckpt, base=base)


# -- shared checks ---------------------------------------------------------------------------------------------------
def eval_error(capsys, *args: str) -> str:
    """Run ``lightning-sep eval ARGS``: it must exit 2 with exactly one ``lightning-sep: error:`` line
    and no traceback; returns that line."""
    from lightning_sep.cli import main

    capsys.readouterr()
    assert main(["eval", *args, "--no-progress"]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("lightning-sep: error: ")]
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def median_f0(audio: np.ndarray, sr: int, fmin: float = 60.0, fmax: float = 400.0) -> float:
    """Median F0 over voiced frames: normalised autocorrelation of 40 ms frames every 10 ms."""
    n, hop = int(0.04 * sr), int(0.01 * sr)
    frames = np.lib.stride_tricks.sliding_window_view(audio.astype(np.float64), n)[::hop]
    energy = (frames**2).mean(axis=1)
    frames = frames[energy > energy.max() * 10 ** (-25 / 10)]
    frames = frames - frames.mean(axis=1, keepdims=True)
    ac = np.fft.irfft(np.abs(np.fft.rfft(frames, 2 * n)) ** 2)[:, :n]
    ac = ac / np.maximum(ac[:, :1], 1e-12) * n / (n - np.arange(n))  # unbiased
    lo, hi = int(sr / fmax), int(sr / fmin)
    lag = lo + ac[:, lo:hi].argmax(axis=1)
    voiced = ac[np.arange(len(ac)), lag] > 0.6
    assert voiced.sum() >= 10, "too few voiced frames to estimate F0"
    return float(np.median(sr / lag[voiced]))
