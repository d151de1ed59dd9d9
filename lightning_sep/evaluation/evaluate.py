"""``make eval``: BSS Eval v4 (museval's) scores of a model or a reference method on the MUSDB18 test set.

(A DataModule of speech mixtures -- ``DATA=timit`` -- is scored with BSS Eval v3 instead:
:mod:`lightning_sep.evaluation.speech`, through the same separators, results folders and MLflow
logging.)

The job (:func:`evaluate`):

1. finds what to evaluate -- a trained model through MLflow (:mod:`lightning_sep.tracking.runs`)
   or a reference method (``mixture``, ``oracle_ibm``, ``oracle_irm1``, ``oracle_irm2``);
2. separates every test track in full, chunk by chunk (:func:`~lightning_sep.separation.separate_track`);
3. scores it with BSS Eval v4 -- by default :mod:`~lightning_sep.evaluation.bsseval_v4` (museval's
   numbers, in a few seconds per track, on the GPU when there is one), or with museval itself
   (``metrics="museval"``, ``--metrics museval``: about a minute and several GB per real track, in
   ``workers`` processes; its results folder is ``<method>-museval``) -- and writes one museval
   JSON per track, atomically, to ``<out>/<dataset>/<method>/test/<track>.json``.  A track whose
   JSON is complete is never recomputed, so a killed evaluation restarted finishes only the rest;
4. aggregates the SiSEC way (:mod:`~lightning_sep.evaluation.aggregate`), prints the table next
   to every other method evaluated on the same tracks (the reference rows), saves it as CSV, and
   logs it to the model's training run in MLflow (``test/<target>/<metric>``, JSON and CSV files).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import shutil
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import pandas as pd

from lightning_sep.errors import LightningSepError, UnknownNameError
from lightning_sep.evaluation import aggregate
from lightning_sep.evaluation.bsseval import (
    HOP,
    MUSDB_TARGETS,
    WIN,
    check_implementation,
    json_is_complete,
    n_frames,
    score_track_to_json,
    write_track_json,
)
from lightning_sep.paths import default_tracking_uri
from lightning_sep.registry import available, config_path
from lightning_sep.utils.atomic import atomic_open, atomic_write_text

#: Memory museval needs for a 3-minute, 4-target stereo track (measured; it scales with both).
_MUSEVAL_BYTES_3MIN_4SRC = 4.5e9


@dataclass
class EvalSettings:
    """Everything ``lightning-sep eval`` takes (``make eval`` variables in brackets)."""

    model: Optional[str] = None  # MODEL: a family (its latest finished run) or a reference method
    ckpt: Optional[str] = None  # CKPT
    run_id: Optional[str] = None  # RUN_ID
    data: str = "musdb"  # DATA: conf/data/<data>.yaml
    root: Optional[str] = None  # the dataset folder (default: MUSDB_ROOT, else the embedded corpus)
    tracks: Optional[list[str]] = None  # only these test tracks
    targets: Optional[list[str]] = None  # reference methods: which estimates (default: all five)
    out: Optional[str] = None  # results folder (default: <mlruns>/eval)
    workers: Optional[int] = None  # EVAL_WORKERS (default: 1 for bsseval; museval: from cores and free memory)
    metrics: str = "bsseval"  # BSS Eval v4 implementation: bsseval (lightning_sep.evaluation.bsseval_v4) or museval
    wiener_iterations: int = 0  # > 0: multichannel Wiener post-filter
    separation_iterations: Optional[int] = None  # families that separate by optimisation: its iterations
    chunk_seconds: float = 20.0
    overlap_seconds: float = 1.0
    device: str = "auto"
    save_estimates: bool = False  # also write the estimates as wav (museval's folder layout)
    log_mlflow: bool = True
    experiment: str = "lightning-sep"
    overwrite: bool = False  # discard results of other settings in the method's folder
    trust_checkpoint: bool = False
    progress: bool = True


@dataclass
class EvalResult:
    method: str
    folder: Path
    medians: pd.DataFrame
    table: pd.DataFrame
    evaluated: list[str]
    reused: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    run_id: Optional[str] = None


# -- where things are --------------------------------------------------------------------------------
def default_out_root() -> Path:
    """``<mlruns>/eval``: beside the local MLflow store (``<repo>/mlruns/eval`` for a remote one)."""
    from lightning_sep.tracking.mlflow import results_dir

    return results_dir("eval")


def datamodule_class(name: str) -> tuple[type, str, dict[str, Any]]:
    """The class, class path and init args of ``conf/data/<name>.yaml`` (nothing is built)."""
    import yaml

    config = yaml.safe_load(config_path("data", name).read_text())["data"]
    module, _, cls = config["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), cls), config["class_path"], dict(config.get("init_args") or {})


def accepts_argument(cls: type, name: str) -> bool:
    """Whether ``cls(...)`` takes the keyword argument ``name``."""
    import inspect

    params = inspect.signature(cls).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def load_datamodule(name: str, root: Optional[str] = None, overrides: Optional[dict[str, Any]] = None) -> Any:
    """The DataModule of ``conf/data/<name>.yaml`` (``root`` overrides its ``root``, ``overrides``
    any other init args, e.g. ``{"test_snr_db": 5.0}``)."""
    cls, class_path, init_args = datamodule_class(name)
    if root is not None:
        init_args["root"] = root
    for key, value in (overrides or {}).items():
        if not accepts_argument(cls, key):
            raise LightningSepError(f"DATA={name}: {class_path} has no argument {key!r}.")
        init_args[key] = value
    datamodule = cls(**init_args)
    if not (hasattr(datamodule, "full_tracks") or hasattr(datamodule, "test_mixtures")):
        raise LightningSepError(f"DATA={name}: {class_path} has no full tracks to evaluate on.")
    return datamodule


def select_tracks(names: Sequence[str], wanted: Optional[Sequence[str]]) -> list[str]:
    """The test tracks ``wanted`` (``--tracks``), in the data's order; all of ``names`` when None; an unknown
    name is an error that lists the tracks."""
    names = list(names)
    for name in wanted or []:
        if name not in names:
            raise UnknownNameError("test track", name, names)
    return [n for n in names if n in wanted] if wanted else names


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LightningSepError(f"--device {device}: no CUDA GPU is available here; use --device cpu.")
    return device


def mem_available() -> float:
    """Bytes of memory available to new processes (``MemAvailable``), or 8 GB if unknown."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    return 8e9


def default_workers(pending: int, longest_seconds: float, n_sources: int) -> int:
    """Worker processes for museval: one per core, as many as the free memory holds, <= tracks."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_worker = 0.5e9 + _MUSEVAL_BYTES_3MIN_4SRC * (longest_seconds / 180.0) * max(n_sources, 2) / 4
    by_memory = int(mem_available() * 0.8 // per_worker)
    return max(1, min(cores, by_memory, pending))


def settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def check_manifest(folder: Path, manifest: dict[str, Any], overwrite: bool, results: Sequence[str] = ("test", "estimates"),
                   command: str = "make eval") -> None:
    """Results in ``folder`` (its subfolders ``results``) must come from the same settings; else stop (or discard
    them with overwrite). ``command`` is named in the message."""
    path = folder / "manifest.json"
    if path.is_file():
        with contextlib.suppress(ValueError, OSError):
            old = json.loads(path.read_text())
            if old.get("settings_hash") == manifest["settings_hash"]:
                return
            changed = sorted(k for k in manifest["settings"] if old.get("settings", {}).get(k) != manifest["settings"][k])
            if not overwrite:
                raise LightningSepError(
                    f"{folder} holds results computed with other settings ({', '.join(changed) or 'unknown'} changed). "
                    f"Pass --overwrite ({command} ARGS=--overwrite) to discard them, or --out another folder."
                )
        for sub in results:
            shutil.rmtree(folder / sub, ignore_errors=True)
    atomic_write_text(path, json.dumps(manifest, indent=2, default=str))


# -- the separator --------------------------------------------------------------------------------------
def build_separator(settings: EvalSettings, datamodule: Any, device: str, default_targets: Optional[Sequence[str]] = None,
                    sources: Optional[Sequence[str]] = None) -> tuple[Any, str, dict[str, Any], Optional[str]]:
    """(separator, method label, settings that make its results what they are, MLflow run id).

    ``sources`` are the dataset's reference rows (MUSDB18's stems by default) and
    ``default_targets`` what a reference method estimates unless ``--targets`` says otherwise."""
    from lightning_sep.separation import REFERENCE_METHODS, ModelSeparator, reference_separator
    from lightning_sep.separation.separators import ALL_TARGETS, SOURCES
    from lightning_sep.tracking.runs import load_model, resolve_checkpoint

    default_targets = list(default_targets or ALL_TARGETS)
    model = settings.model
    if model in REFERENCE_METHODS:
        if settings.ckpt or settings.run_id:
            raise LightningSepError(f"MODEL={model} is a reference method: it has no checkpoint (drop CKPT/RUN_ID).")
        if settings.separation_iterations is not None:
            raise LightningSepError(f"MODEL={model} is a reference method: it has no separation iterations (drop --iterations).")
        sep = reference_separator(model, datamodule.front_end, settings.targets or default_targets, sources or SOURCES)
        info = {"method": model, "targets": sep.targets, "front_end": datamodule.front_end,
                "chunk_seconds": settings.chunk_seconds, "overlap_seconds": settings.overlap_seconds}
        # museval scores a target set as a scenario: another set is another results folder
        label = model if sep.targets == default_targets else f"{model}-{'+'.join(sep.targets)}"
        return sep, label, info, None
    if model is not None and model not in available("model"):
        raise UnknownNameError("MODEL", model, available("model") + list(REFERENCE_METHODS))
    if settings.targets:
        raise LightningSepError("--targets is for the reference methods; a model estimates the targets it was trained on.")
    resolved = resolve_checkpoint(model, settings.ckpt, settings.run_id, experiment=settings.experiment,
                                  dataset=datamodule.dataset_name)
    net = load_model(resolved, device=device, trust_checkpoint=settings.trust_checkpoint)
    sep = ModelSeparator(net, wiener_iterations=settings.wiener_iterations,
                         separation_iterations=settings.separation_iterations)
    label = resolved.label + (f"-wiener{settings.wiener_iterations}" if settings.wiener_iterations else "")
    if settings.separation_iterations is not None:
        label += f"-it{settings.separation_iterations}"
    stat = resolved.path.stat()
    info = {
        "method": resolved.family, "checkpoint": str(resolved.path), "checkpoint_stamp": [stat.st_size, stat.st_mtime_ns],
        "class_path": resolved.class_path, "targets": sep.targets, "wiener_iterations": settings.wiener_iterations,
        "separation_iterations": getattr(net, "hparams", {}).get("separation_iterations"),
        "chunk_seconds": settings.chunk_seconds, "overlap_seconds": settings.overlap_seconds,
    }
    print(f"Evaluating {resolved.path} (MODEL={resolved.family}, run {resolved.run_id or 'not in MLflow'})", flush=True)
    return sep, label, info, resolved.run_id


# -- the job ----------------------------------------------------------------------------------------------
def evaluate(settings: EvalSettings) -> EvalResult:
    """Run (or finish) an evaluation; see the module docstring."""
    if settings.workers is not None and settings.workers < 1:
        raise LightningSepError(f"EVAL_WORKERS={settings.workers}: must be at least 1.")
    check_implementation(settings.metrics)
    if settings.log_mlflow or not settings.ckpt:  # the store finds the model or keeps the scores: usable, before any work
        from lightning_sep.tracking.mlflow import check_tracking_uri

        check_tracking_uri(default_tracking_uri())
    device = resolve_device(settings.device)
    datamodule = load_datamodule(settings.data, settings.root)
    if hasattr(datamodule, "test_mixtures"):
        from lightning_sep.evaluation.speech import evaluate_mixtures

        if settings.metrics != "bsseval":
            raise LightningSepError(
                f"--metrics {settings.metrics} is for music (BSS Eval v4); DATA={settings.data} is scored with BSS Eval v3 "
                "(bss_eval_sources) and SI-SDR: drop --metrics.")

        return evaluate_mixtures(settings, datamodule, device)
    tracks = datamodule.full_tracks("test")
    rate = int(datamodule.sample_rate)
    separator, label, info, run_id = build_separator(settings, datamodule, device)
    if settings.metrics == "museval":  # the reference implementation's results sit beside ours
        label += "-museval"
    foreign = [t for t in separator.targets if t not in MUSDB_TARGETS]
    if foreign:
        raise LightningSepError(
            f"{label} was trained for the sources {separator.targets} ({len(separator.targets)}); DATA={settings.data} "
            f"has {', '.join(MUSDB_TARGETS)}: evaluate it on the data it was trained on (e.g. DATA=timit).")
    reported = [t for t in MUSDB_TARGETS if t in separator.targets]
    has_acc = {"vocals", "accompaniment"} <= set(reported)  # museval's vocals/accompaniment scenario
    if not has_acc and len(reported) < 2:
        raise LightningSepError(
            f"{label} estimates {separator.targets}: BSS Eval needs at least two targets (museval), e.g. "
            "vocals (+ accompaniment = mixture - vocals) or drums, bass, other, vocals."
        )

    names = select_tracks(tracks.names, settings.tracks)

    out_root = Path(settings.out).expanduser() if settings.out else default_out_root()
    folder = out_root / datamodule.dataset_name / label
    from lightning_sep.separation.audio import check_writable_folder

    check_writable_folder(folder, "--out")
    with exclusive(folder):
        return _evaluate_in(settings, datamodule, tracks, names, rate, separator, label, info, run_id, reported,
                            out_root, folder, device)


@contextlib.contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """One evaluation at a time writes a results folder (a second one stops with a clear message)."""
    import fcntl

    with open(folder / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LightningSepError(
                f"Another evaluation is writing {folder}: wait for it to finish, or pass --out another folder."
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _evaluate_in(settings: EvalSettings, datamodule: Any, tracks: Any, names: list[str], rate: int, separator: Any, label: str,
                 info: dict[str, Any], run_id: Optional[str], reported: list[str], out_root: Path, folder: Path,
                 device: str) -> EvalResult:
    index = {n: i for i, n in enumerate(tracks.names)}
    run_settings = {**info, "dataset": datamodule.dataset_name, "root": str(datamodule.root), "sample_rate": rate,
                    "win": WIN, "hop": HOP, "metrics": settings.metrics,
                    "implementation": _implementation_version(settings.metrics)}
    manifest = {"settings_hash": settings_hash(run_settings), "settings": run_settings}
    check_manifest(folder, manifest, settings.overwrite)
    (folder / "test").mkdir(parents=True, exist_ok=True)
    work = folder / ".work"
    shutil.rmtree(work, ignore_errors=True)  # leftovers of a killed run (never results)
    for stale in (folder / "test").glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    work.mkdir()

    skipped: dict[str, str] = {}
    done, pending = [], []
    for name in names:
        length = tracks.lengths[index[name]]
        if length < int(WIN * rate):
            skipped[name] = (
                f"{length / rate:.2f} s long, shorter than one {WIN:g} s museval window: skipped "
                "(not in the medians)"
            )
            continue
        json_path = folder / "test" / f"{name}.json"
        if json_is_complete(json_path, reported, n_frames(length, rate, WIN, HOP)):
            done.append(name)
        else:
            pending.append(name)
    for name, why in skipped.items():
        print(f"warning: test track {name!r} is {why}.", file=sys.stderr, flush=True)
    if not done and not pending:
        raise LightningSepError(f"No test track of {datamodule.root} is long enough to evaluate (1 s at least).")

    longest = max((tracks.lengths[index[n]] for n in pending), default=0) / rate
    n_sources = max(len([t for t in reported if t != "accompaniment"]), 2)
    if settings.workers is None and settings.metrics == "bsseval":
        workers = 1  # seconds per track, all cores (or the GPU) in this process
    else:
        workers = settings.workers or default_workers(len(pending), longest, n_sources)
    workers = max(1, min(workers, len(pending) or 1))
    print(
        f"{settings.metrics} (BSS Eval v4) on {len(done) + len(pending)} test track(s) of {datamodule.dataset_name} ({datamodule.root}): "
        f"{len(done)} already scored, {len(pending)} to do with {workers} worker process(es) -> {folder}",
        flush=True,
    )
    started = time.perf_counter()
    if pending:
        _run_tracks(settings, separator, tracks, index, pending, folder, work, rate, workers, device)
    shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - started

    scored = done + pending
    df = aggregate.load_scores(folder / "test" / f"{n}.json" for n in scored)
    medians = aggregate.sisec_medians(df)
    aggregate.write_csv(aggregate.track_medians(df), folder / "tracks.csv")
    aggregate.write_csv(medians, folder / "scores.csv")
    methods = {label: medians, **_other_methods(out_root / datamodule.dataset_name, label, scored)}
    table = aggregate.comparison_table(methods)
    aggregate.write_csv(table, folder / "comparison.csv")
    print(
        f"\nBSS Eval v4 ({settings.metrics}) on {len(scored)} test track(s) of {datamodule.dataset_name}, SiSEC medians "
        f"(median over 1 s frames, then over tracks), dB; * = this evaluation:\n"
        + aggregate.format_table(table, highlight=label),
        flush=True,
    )
    if pending:
        print(f"Scored {len(pending)} track(s) in {elapsed:.1f} s with {workers} worker(s).", flush=True)

    if settings.log_mlflow:
        prefix = metric_prefix(settings)
        run_id = log_scores(settings, label, run_id, info, manifest, aggregate.metric_dict(medians, prefix), folder,
                            datamodule.dataset_name, datamodule.root, len(scored), "museval",
                            ("scores.csv", "tracks.csv", "comparison.csv", "manifest.json"), prefix,
                            {f"{prefix}.metrics": settings.metrics,
                             f"{prefix}.{settings.metrics}": _implementation_version(settings.metrics)})
    return EvalResult(label, folder, medians, table, pending, done, skipped, run_id)


def _implementation_version(metrics: str) -> str:
    """museval's version, or ours (``lightning-sep <version>``) for the torch implementation."""
    from importlib.metadata import version

    return version("museval") if metrics == "museval" else f"lightning-sep {version('lightning-sep')}"


def _run_tracks(settings: EvalSettings, separator: Any, tracks: Any, index: dict[str, int], pending: list[str],
                folder: Path, work: Path, rate: int, workers: int, device: str) -> None:
    """Separate each pending track here; score it here (1 worker) or in a worker process."""
    from tqdm.auto import tqdm

    from lightning_sep.separation import separate_track
    from lightning_sep.separation.audio import write_wav

    bar = tqdm(total=len(pending), desc=settings.metrics, unit="track", disable=None if settings.progress else True)
    pool: Optional[ProcessPoolExecutor] = None
    futures: dict[Future, str] = {}
    try:
        if workers > 1:
            import multiprocessing

            pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
        for name in pending:
            bar.set_postfix_str(f"separating {name}")
            stems = tracks.array(index[name])  # (5, C, L), memory-mapped
            estimates = separate_track(
                separator, stems[0], rate, references=stems[1:] if separator.needs_references else None,
                chunk_seconds=settings.chunk_seconds, overlap_seconds=settings.overlap_seconds, device=device,
            )
            if settings.save_estimates:
                for target, audio in estimates.items():
                    write_wav(folder / "estimates" / "test" / name / f"{target}.wav", audio, rate)
            json_path = folder / "test" / f"{name}.json"
            if pool is None:
                bar.set_postfix_str(f"scoring {name}")
                write_track_json(name, stems, estimates, json_path, rate, WIN, HOP, settings.metrics,
                                 device if settings.metrics == "bsseval" else None)
                bar.update(1)
                continue
            npz = work / f"{name}.npz"  # handed to a worker process through the disk
            with atomic_open(npz, "wb") as fh:
                np.savez(fh, **estimates)
            del estimates
            job = (name, tracks.paths[index[name]], str(npz), str(json_path), rate, WIN, HOP, settings.metrics)
            futures[pool.submit(score_track_to_json, *job)] = name
            while len(futures) > workers:  # bound the estimates waiting in memory/disk
                _collect(futures, bar)
        while futures:
            _collect(futures, bar)
    except BaseException:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
            pool = None
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
        bar.close()


def _collect(futures: dict[Future, str], bar: Any) -> None:
    """Wait for at least one scoring job; a failed one stops the evaluation, naming its track."""
    finished, _ = wait(list(futures), return_when=FIRST_COMPLETED)
    for fut in finished:
        name = futures.pop(fut)
        try:
            fut.result()
        except LightningSepError:
            raise
        except Exception as err:
            raise LightningSepError(f"BSS Eval failed on test track {name!r}: {type(err).__name__}: {err}") from err
        bar.update(1)


def _other_methods(dataset_folder: Path, label: str, tracks: Sequence[str]) -> dict[str, pd.DataFrame]:
    """SiSEC medians of every other method evaluated on exactly these tracks (the reference rows)."""
    out = {}
    for folder in sorted(p for p in dataset_folder.iterdir() if p.is_dir() and p.name != label):
        jsons = [folder / "test" / f"{n}.json" for n in tracks]
        if not (folder / "manifest.json").is_file() or not all(p.is_file() for p in jsons):
            continue
        with contextlib.suppress(Exception):
            out[folder.name] = aggregate.sisec_medians(aggregate.load_scores(jsons))
    return out


def metric_prefix(settings: EvalSettings) -> str:
    """``test``, or ``test_wiener<n>`` / ``test_it<n>`` / both when the inference differs from the default,
    so that evaluations of one run with other inference settings do not overwrite each other in MLflow."""
    prefix = f"test_wiener{settings.wiener_iterations}" if settings.wiener_iterations else "test"
    return prefix + (f"_it{settings.separation_iterations}" if settings.separation_iterations is not None else "")


def log_scores(settings: EvalSettings, label: str, run_id: Optional[str], info: dict[str, Any], manifest: dict[str, Any],
               metrics: dict[str, float], folder: Path, dataset: str, root: Any, n_items: int, kind: str,
               files: Sequence[str], prefix: str, extra_tags: dict[str, Any]) -> Optional[str]:
    """Log an evaluation to the model's run (a reference method: to its own run, created once per
    settings): ``metrics``, tags ``<prefix>.*``, the per-item results under ``<kind>/<label>/test``
    and ``files`` of ``folder`` under ``<kind>/<label>``."""
    from lightning_sep.separation import REFERENCE_METHODS
    from lightning_sep.tracking.mlflow import redact
    from lightning_sep.tracking.runs import log_evaluation, reference_run

    if run_id is None and info["method"] in REFERENCE_METHODS:
        run_id = reference_run(info["method"], label, dataset, manifest["settings_hash"], experiment=settings.experiment)
    if run_id is None:
        print("The checkpoint is not from a run of this MLflow store: scores are not logged to MLflow.", flush=True)
        return None
    tags = {
        f"{prefix}.dataset": dataset, f"{prefix}.root": str(root), f"{prefix}.tracks": n_items,
        f"{prefix}.results": str(folder), f"{prefix}.settings": manifest["settings_hash"], **extra_tags,
    }
    artifacts = {f"{kind}/{label}/test": folder / "test"}
    csv_dir = folder / ".csv"
    shutil.rmtree(csv_dir, ignore_errors=True)
    csv_dir.mkdir()
    for name in files:
        shutil.copy2(folder / name, csv_dir / name)
    artifacts[f"{kind}/{label}"] = csv_dir
    try:
        log_evaluation(run_id, metrics, tags, artifacts)
    finally:
        shutil.rmtree(csv_dir, ignore_errors=True)
    print(f"Logged to MLflow run {run_id} ({redact(default_tracking_uri())}): "
          + ", ".join(f"{k}={v:.2f}" for k, v in metrics.items() if k.endswith("/SDR")), flush=True)
    return run_id
