"""Shared test helpers: tiny MUSDB18-layout corpora.

* :func:`make_wav_corpus` -- MUSDB18-HQ layout (``train/<track>/{mixture,drums,bass,other,vocals}.wav``).
* :func:`make_stems_corpus` -- MUSDB18 layout (``train/<track>.stem.mp4``, needs ffmpeg).
* :func:`easy_sources`, :func:`easy_datamodule` -- an in-memory, easy two-source case (low harmonics +
  high band noise) on which every separator family must beat the mixture after a few seconds of training.
* :func:`train_tiny`, :func:`fit_command` -- real trainings, in-process or as ``make train``'s subprocess.
* :func:`free_port`, :func:`kill_group`, :func:`http_server` -- servers (MLflow, Optuna) in subprocesses.

The two corpus writers return the stems they wrote so tests can compare decoded audio with them.
"""

from __future__ import annotations

import contextlib
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
    """Every test gets its own MLflow store and Optuna storage and no ``MUSDB_ROOT``; corpora are shared per session."""
    monkeypatch.setenv("LIGHTNING_SEP_DATA", str(data_home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    monkeypatch.setenv("OPTUNA_STORAGE", f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}")
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
    return train_tiny(base, data_home, "skipfilter", n_test=n_test)


def train_tiny(base: Path, data_home: Path, model: str, *extra: str, n_test: int = 1, seconds: float = 3.0,
               tracking_uri: str | None = None):
    """A real one-epoch ``lightning-sep fit`` of ``model`` on a tiny MUSDB18-HQ corpus (``base/corpus``, made
    once), in the MLflow store ``base/mlruns`` (several models may share it) or ``tracking_uri``; ``extra``
    CLI arguments.

    Returns ``SimpleNamespace(uri, corpus, run_id, ckpt, base)``; ``ckpt`` is the best checkpoint.
    """
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from lightning_sep.cli import main

    corpus = base / "corpus"
    if not corpus.is_dir():
        make_wav_corpus(corpus, n_train=3, n_test=n_test, seconds=seconds)
    (base / "mlruns").mkdir(exist_ok=True)
    uri = tracking_uri or f"sqlite:///{base / 'mlruns' / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIGHTNING_SEP_DATA", str(data_home))
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("MUSDB_ROOT", raising=False)
        mp.chdir(base)
        rc = main(["fit", *config_args(model), "--data.root", str(corpus), "--data.cache_dir", str(base / "cache"),
                   "--trainer.max_epochs", "1", "--data.samples_per_track", "2", "--data.val_segments_per_track", "1",
                   "--data.val_segment_frames", "128", "--trainer.enable_progress_bar", "false",
                   "--trainer.enable_model_summary", "false", *extra])
    assert rc == 0
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string=f"tags.`model.family` = '{model}'", order_by=["attributes.start_time DESC"])
    assert runs and runs[0].data.tags["model.family"] == model
    ckpt = Path(runs[0].data.tags["checkpoint.best"])
    assert ckpt.is_file() and ckpt.parent.name == "checkpoints"
    return SimpleNamespace(uri=uri, corpus=corpus, run_id=runs[0].info.run_id, ckpt=ckpt, base=base)


def fit_in_subprocess(base: Path, corpus: Path, data_home: Path, probe: str, *extra: str, interrupt_at: int | None = None,
                      trainer: str = "ddp_cpu", model: str = "skipfilter", epochs: int = 2) -> "subprocess.CompletedProcess":
    """``lightning-sep fit`` as ``make train`` runs it, in a subprocess (so DDP can re-launch it), on the tiny
    corpus ``corpus`` (4 training tracks; "Tiny - Train 04" validates), with the DDP probe
    (``tests/ddp_probe.py``) writing what each rank saw to ``base/probe``; MLflow store in ``base/mlruns``.
    ``interrupt_at=n``: Ctrl-C when epoch ``n`` starts."""
    import subprocess

    args, env = fit_command(base, corpus, data_home, probe, *extra, interrupt_at=interrupt_at, trainer=trainer,
                            model=model, epochs=epochs)
    return subprocess.run(args, cwd=base, env=env, capture_output=True, text=True, timeout=900)


def fit_command(base: Path, corpus: Path, data_home: Path, probe: str, *extra: str, interrupt_at: int | None = None,
                trainer: str = "ddp_cpu", model: str = "skipfilter", epochs: int = 2,
                probe_env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """``(argv, environment)`` of :func:`fit_in_subprocess`'s command (run it with ``cwd=base``);
    ``probe_env``: more ``PROBE_*`` settings of ``tests/ddp_probe.py``."""
    import json
    import os
    import sys

    env = {
        **os.environ,
        "LIGHTNING_SEP_DATA": str(data_home),
        "MLFLOW_TRACKING_URI": f"sqlite:///{base / 'mlruns' / 'mlflow.db'}",
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)]),
        "PROBE_DIR": str(base / probe),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("MUSDB_ROOT", None)
    for key in [k for k in env if k.startswith("PROBE_") and k != "PROBE_DIR"]:
        env.pop(key)
    if interrupt_at is not None:
        env["PROBE_INTERRUPT_EPOCH"] = str(interrupt_at)
    env.update(probe_env or {})
    (base / "mlruns").mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable, "-m", "lightning_sep.cli", "fit", *config_args(model, trainer=trainer),
        "--data.root", str(corpus), "--data.cache_dir", str(base / "cache"), "--data.validation_tracks", "[Tiny - Train 04]",
        "--data.samples_per_track", "4", "--data.batch_size", "2",
        "--data.val_segments_per_track", "3", "--data.val_segment_frames", "64",
        "--trainer.max_epochs", str(epochs), "--trainer.deterministic", "true",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.log_every_n_steps", "1", "--model.init_args.early_stopping_patience", "null",
        "--trainer.callbacks", json.dumps([{"class_path": "ddp_probe.Probe"}]), *extra,
    ]
    return args, env


def store_runs(base: Path):
    """``(client, runs)`` of the MLflow store ``base/mlruns``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{base / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return client, runs


def metric_history(client, run_id: str, key: str) -> list[float]:
    """A metric's values in step order."""
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]



# -- shared checks ---------------------------------------------------------------------------------------------------
def cli_error(capsys, *args: str) -> str:
    """Run ``lightning-sep ARGS``: it must exit 2 with exactly one ``lightning-sep: error:`` line and no
    traceback; returns that line."""
    from lightning_sep.cli import main

    capsys.readouterr()
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("lightning-sep: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def eval_error(capsys, *args: str) -> str:
    """:func:`cli_error` of ``lightning-sep eval ARGS --no-progress``."""
    return cli_error(capsys, "eval", *args, "--no-progress")


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


# -- an easy two-source case for the separator families --------------------------------------------------------------
#: a small front end for the easy case: 8 kHz, 32 ms windows, 8 ms hop, every bin (129)
EASY_FRONT_END = dict(sample_rate=8000, n_fft=256, win_length=256, hop_length=64, window="hann", retained_bins=129)


def easy_sources(seed: int, count: int, seconds: float = 1.0):
    """``(mixtures (count, L), sources (count, 2, L))`` float32 tensors of an easy, stationary two-source case.

    Source 0 (the "male" one): three low harmonics of 250 Hz; source 1 ("female"): noise band-passed to
    2-3.5 kHz.  Each under its own slow random envelope, at equal power (0.1 RMS); the mixture is their sum.
    The spectra do not overlap, so every family should separate them well above the mixture's SDR (0 dB).
    """
    import torch

    sr = EASY_FRONT_END["sample_rate"]
    n = int(round(seconds * sr))
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    freqs = np.fft.rfftfreq(n, 1 / sr)

    def envelope() -> np.ndarray:
        return 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * t + rng.uniform(0, 2 * np.pi))

    out = []
    for _ in range(count):
        low = sum(np.sin(2 * np.pi * 250 * k * t + rng.uniform(0, 2 * np.pi)) / k for k in (1, 2, 3)) * envelope()
        spec = np.fft.rfft(rng.standard_normal(n))
        spec[(freqs < 2000) | (freqs > 3500)] = 0
        high = np.fft.irfft(spec, n) * envelope()
        out.append(np.stack([0.1 * low / low.std(), 0.1 * high / high.std()]))
    sources = torch.from_numpy(np.stack(out).astype(np.float32))
    return sources.sum(1), sources


def easy_datamodule(steps: int, batch_size: int = 4, targets=("male", "female"), seed: int = 0):
    """A tiny in-memory DataModule of :func:`easy_sources`: ``steps`` training batches (one epoch) and
    one validation batch, yielding ``(mixture (B, L), targets (B, S, L))``; ``targets=["vocals"]`` gives
    only source 0 (its complement is the other).  It has what the models ask a lightning-sep
    DataModule for: ``targets`` and ``train_mixtures()``."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    class EasyDataModule(L.LightningDataModule):
        def __init__(self):
            super().__init__()
            self.targets = list(targets)
            n_src = len(self.targets)
            mix, src = easy_sources(seed, steps * batch_size)
            self.train_set = TensorDataset(mix, src[:, :n_src])
            mix, src = easy_sources(seed + 1000, batch_size)
            self.val_set = TensorDataset(mix, src[:, :n_src])

        def train_mixtures(self):
            return (m.numpy() for m, _ in self.train_set)

        def train_dataloader(self):
            return DataLoader(self.train_set, batch_size=batch_size, shuffle=True)

        def val_dataloader(self):
            return DataLoader(self.val_set, batch_size=batch_size)

    return EasyDataModule()


def easy_trainer(steps: int, root):
    """A plain CPU trainer for ``steps`` steps: no logger, no checkpoints, no progress bar."""
    import lightning as L

    return L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     accelerator="cpu", devices=1, max_steps=steps, max_epochs=1, default_root_dir=str(root))


def train_easy(cls, steps: int, root, **kwargs):
    """A family (``targets`` male, female; the easy front end) trained ``steps`` steps on the easy case,
    seeded; returns ``(model, trainer)``."""
    import torch

    torch.manual_seed(0)
    model = cls(front_end=EASY_FRONT_END, targets=["male", "female"], **kwargs)
    trainer = easy_trainer(steps, root)
    trainer.fit(model, easy_datamodule(steps))
    return model, trainer


def reload_weights_only(cls, trainer, path):
    """Save the trainer's model to ``path`` and load it back with ``weights_only=True``: ``(checkpoint
    dict, loaded model)``; the checkpoint holds no pickled objects (``torch.load`` would refuse them)."""
    import torch

    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    loaded = cls.load_from_checkpoint(path, weights_only=True)
    assert type(loaded) is cls
    return ckpt, loaded


def sdr_gains(estimates, references, mixtures):
    """SDR of each estimate minus the mixture's SDR against the same reference, ``(B, S)`` in dB."""
    from lightning_sep.evaluation.metrics import signal_to_distortion_ratio as sdr

    estimates = estimates[:, : references.shape[1]]
    return sdr(estimates, references) - sdr(mixtures.unsqueeze(1).expand_as(references), references)


def one_torch_thread():
    """Generator for a module-scoped autouse fixture: torch on one thread for the module, then as before.

    The models of these tests are tiny; on a loaded 2-core machine torch's second intra-op thread only
    spins against other processes (measured: a 100-step deep VAE training in 6 s on one thread, 80 s on two)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def wait_for_file(path: Path, proc: "subprocess.Popen", timeout: float = 300) -> None:
    """Wait until ``path`` exists (a probe's mark), failing with the stderr of ``proc`` if it ends first."""
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the training ended (rc {proc.returncode}) before {path.name}:\n{err[-4000:]}")
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.2)


# -- servers in subprocesses ------------------------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port nothing listens on, on 127.0.0.1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_group(proc: "subprocess.Popen") -> None:
    """End ``proc`` (started with ``start_new_session=True``) and whatever it started (e.g. uvicorn workers)."""
    import os
    import signal
    import subprocess

    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def http_server(args: list[str], log: Path, port: int, env: dict[str, str] | None = None, timeout: float = 120.0):
    """Run the server command ``args`` (listening on 127.0.0.1:``port``) in its own session, its output in
    ``log``; yields its URL once ``/health`` answers; always stopped, with its children, at the end."""
    import subprocess
    import time
    import urllib.request

    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent, env=env,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            said = f"command: {' '.join(args)}\nits output:\n{log.read_text(errors='replace')[-4000:]}"
            if proc.poll() is not None:
                pytest.fail(f"the server exited with status {proc.returncode} before answering {url}/health.\n{said}")
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not answer {url}/health within {timeout:.0f} s.\n{said}")
            time.sleep(0.5)
        yield url
    finally:
        kill_group(proc)
