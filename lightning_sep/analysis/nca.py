"""``make analyze``: the neural couplings analysis of trained DAE, MSS-DAE and skip-filter models.

Paper ``dae-skipfilter-nca-mimilakis`` Sec. 4.2 and 5 (Tables 1-3, Figs. 2-3). For each model
(found as ``make eval`` finds it: the best checkpoint of the latest finished run, or CKPT / RUN_ID):

1. every test track of the MUSDB18-format data is averaged to mono and turned into the model's
   input (its STFT front end and per-band normalisation); the frames are cut into batches of
   ``T`` adjacent frames (:func:`active_segments`), and only the batches where **all four stems
   are active** are kept -- the idea of the sigsep cut-list generator the paper uses, because
   silent stretches give randomly structured couplings that bias the TOD-R;
2. on every batch the model's output (the skip-filter's *mask*) is approximated by the student
   and the compositional strategies (:mod:`~lightning_sep.analysis.couplings`, fitted by Adam on
   the L1 error) and by the linear-composition and identity baselines;
3. per batch: the TOD-R of every couplings matrix (Table 1), the SNR of each approximation
   against the model's output (Table 2; the skip-filter's after masking the mixture) and against
   the true source (Table 3, next to the model's own SNR);
4. writes, atomically, to ``<mlruns>/analysis/<dataset>/<method>/nca/``: ``segments.csv`` (one row
   per track, batch, target and method), ``summary.csv`` (mean and standard deviation),
   ``couplings.npz`` (the mean couplings matrices) and ``couplings-<target>-<method>.png`` heatmaps
   (full and zoomed on the low bins); and to ``<mlruns>/analysis/<dataset>/``: the tables of every
   model analysed there (``table1_todr``, ``table2_snr_model``, ``table3_snr_source``, ``.csv`` and
   ``tables.md``), printed too; logs the files and the means to the model's MLflow run (``nca/``).

Finished tracks are kept in ``tracks/`` and reused by a rerun with the same settings, so an
interrupted analysis only computes the rest.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from lightning_sep.analysis.couplings import (
    BASELINES,
    STRATEGIES,
    CompositionalCouplings,
    CoupledLayers,
    StudentCouplings,
    coupled_layers,
    fit_couplings,
    linear_composition,
    snr_db,
    tod_ratio,
)
from lightning_sep.errors import LightningSepError, UnknownNameError
from lightning_sep.utils.atomic import atomic_open, atomic_write_bytes, atomic_write_text

#: the families the NCA covers (square feed-forward ReLU layers), in the paper's table order
NCA_FAMILIES: tuple[str, ...] = ("dae", "mss_dae", "skipfilter")
#: column names of the paper's tables
DISPLAY = {"dae": "DAE", "mss_dae": "MSS-DAE", "skipfilter": "SF"}
METHODS: tuple[str, ...] = STRATEGIES + BASELINES
#: the rows of Table 3 also have the model's own SNR against the true source
MODEL_ROW = "model"
ROW_NAMES = {"student": "NCA student", "compositional": "NCA compositional", "linear_composition": "linear composition",
             "identity": "identity", MODEL_ROW: "model output"}
MEASURES = {"tod_r": ("table1_todr", "Table 1: TOD-R of the couplings matrices (lower = more inter-frequency structure)"),
            "snr_model_db": ("table2_snr_model", "Table 2: SNR (dB) of the approximation against the model's output"),
            "snr_source_db": ("table3_snr_source", "Table 3: SNR (dB) against the true source")}


@dataclass
class AnalyzeSettings:
    """Everything ``lightning-sep analyze`` takes (``make analyze`` variables in brackets)."""

    model: Optional[list[str]] = None  # MODEL: one or more of dae, mss_dae, skipfilter (latest finished run each)
    ckpt: Optional[str] = None  # CKPT
    run_id: Optional[str] = None  # RUN_ID
    data: str = "musdb"  # DATA: conf/data/<data>.yaml, MUSDB18-format data
    root: Optional[str] = None  # the dataset folder (default: MUSDB_ROOT, else the embedded corpus)
    tracks: Optional[list[str]] = None  # only these test tracks
    segment_seconds: float = 3.1  # T adjacent frames (paper Sec. 4.2: ~3.1 s)
    max_segments: int = 2  # at most this many active batches per track, evenly spread (0 = every one)
    threshold_db: float = 40.0  # a stem is active in a frame within this many dB of its loudest frame
    active_fraction: float = 0.6  # a batch is kept when every stem is active in this fraction of its frames
    iterations: int = 600  # Adam iterations per batch and strategy (authors' code)
    lr: float = 1e-4  # Adam learning rate (paper Sec. 4.2)
    zoom_bins: int = 128  # the zoomed heatmaps show the first bins
    seed: int = 42
    out: Optional[str] = None  # results folder (default: <mlruns>/analysis)
    device: str = "auto"
    log_mlflow: bool = True
    experiment: str = "lightning-sep"
    overwrite: bool = False
    trust_checkpoint: bool = False
    progress: bool = True


@dataclass
class AnalysisResult:
    method: str
    folder: Path
    segments: pd.DataFrame
    summary: pd.DataFrame
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    run_id: Optional[str] = None


# -- which batches -------------------------------------------------------------------------------------------
def active_segments(stem_magnitudes: np.ndarray, frames: int, threshold_db: float = 40.0,
                    active_fraction: float = 0.6) -> list[int]:
    """Start frames of the non-overlapping batches of ``frames`` adjacent frames where every stem is active.

    ``stem_magnitudes``: ``(stems, bins, total_frames)``. A stem is active in a frame when its
    energy there is within ``threshold_db`` of its loudest frame in the track; a batch is kept when
    every stem is active in at least ``active_fraction`` of its frames (the cut-list idea: regions
    where all sources play, paper Sec. 4.2). A stem that is silent in the whole track makes no
    batch active.
    """
    energy = (np.asarray(stem_magnitudes, dtype=np.float64) ** 2).sum(axis=1)  # (stems, frames)
    peak = energy.max(axis=1, keepdims=True)
    on = (energy > peak * 10 ** (-threshold_db / 10)) & (peak > 0)
    starts = []
    for start in range(0, energy.shape[1] - frames + 1, frames):
        if on[:, start : start + frames].mean(axis=1).min() >= active_fraction:
            starts.append(start)
    return starts


def spread(items: Sequence[int], limit: Optional[int]) -> list[int]:
    """At most ``limit`` of ``items``, evenly spread over them (all when ``limit`` is None)."""
    if limit is None or len(items) <= limit:
        return list(items)
    idx = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in idx]


# -- one batch -------------------------------------------------------------------------------------------------
def analyze_batch(layers: CoupledLayers, network: Any, x: Any, target: Any, iterations: int, lr: float,
                  linear: Any, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The NCA and the baselines on one batch ``x`` ``(T, N)`` of normalised mixture frames.

    ``target``: the true source, normalised likewise. Returns one row per method (TOD-R, SNR against
    the model's output and against the source, the L1 error) and the fitted matrices.
    """
    import torch

    with torch.no_grad():
        y = network.mask(x) if layers.masks else network(x)  # what the NCA approximates (Sec. 3)
    out = (lambda a: x * a) if layers.masks else (lambda a: a)  # to the model's output (SF: mask the mixture)
    model_out = out(y)
    matrices: dict[str, Any] = {}
    approx: dict[str, Any] = {}
    l1: dict[str, float] = {}
    for i, name in enumerate(STRATEGIES):
        torch.manual_seed(seed + i)
        strategy = StudentCouplings(layers.n_bins) if name == "student" else CompositionalCouplings(layers)
        strategy.to(x.device)
        fit = fit_couplings(strategy, x, y, iterations=iterations, lr=lr)
        matrices[name], l1[name] = fit.matrix, fit.l1
        approx[name] = x @ fit.matrix.T
    matrices["linear_composition"] = linear
    approx["linear_composition"] = x @ linear.T
    # identity: the mixture stands for the model's output (paper Sec. 4.2); for the mask that is a mask of ones
    approx["identity"] = torch.ones_like(x) if layers.masks else x
    rows = []
    for name in METHODS:
        est = out(approx[name])
        rows.append({
            "method": name,
            "tod_r": tod_ratio(matrices[name]) if name in matrices else math.nan,
            "snr_model_db": snr_db(model_out, est),
            "snr_source_db": snr_db(target, est),
            "l1": l1.get(name, float((y - approx[name]).abs().sum())),
        })
    rows.append({"method": MODEL_ROW, "tod_r": math.nan, "snr_model_db": math.inf,
                 "snr_source_db": snr_db(target, model_out), "l1": 0.0})
    return rows, matrices


# -- the job ---------------------------------------------------------------------------------------------------
def default_out_root() -> Path:
    from lightning_sep.evaluation.evaluate import default_out_root as eval_root

    return eval_root().parent / "analysis"


def _check_settings(s: AnalyzeSettings) -> None:
    if not s.segment_seconds > 0:
        raise LightningSepError(f"--segment-seconds {s.segment_seconds}: must be > 0 (paper: 3.1).")
    if s.max_segments < 0:
        raise LightningSepError(f"--max-segments {s.max_segments}: must be >= 0 (0 = every active batch).")
    if not 0 < s.active_fraction <= 1:
        raise LightningSepError(f"--active-fraction {s.active_fraction}: must be in (0, 1].")
    if not s.threshold_db > 0:
        raise LightningSepError(f"--threshold-db {s.threshold_db}: must be > 0 (dB below each stem's loudest frame).")
    if s.iterations < 1:
        raise LightningSepError(f"--iterations {s.iterations}: must be at least 1 (authors' code: 600).")
    if not s.lr > 0:
        raise LightningSepError(f"--lr {s.lr}: must be > 0 (paper: 1e-4).")
    if s.zoom_bins < 2:
        raise LightningSepError(f"--zoom-bins {s.zoom_bins}: must be at least 2.")
    models = list(s.model or [])
    if len(models) > 1 and (s.ckpt or s.run_id):
        raise LightningSepError("CKPT / RUN_ID name one model: pass a single MODEL with them (or none).")
    for m in models:
        if m not in NCA_FAMILIES:
            from lightning_sep.registry import available

            if m not in available("model"):
                raise UnknownNameError("MODEL", m, list(NCA_FAMILIES))
            raise _not_covered(m)


def _not_covered(family: str) -> LightningSepError:
    return LightningSepError(
        f"MODEL={family}: the neural couplings analysis (paper dae-skipfilter-nca-mimilakis) covers feed-forward "
        f"ReLU models of square layers: MODEL={', '.join(NCA_FAMILIES)}.")


def analyze(settings: AnalyzeSettings) -> list[AnalysisResult]:
    """Analyse every model of ``settings.model`` (or the one CKPT / RUN_ID names); see the module docstring."""
    from lightning_sep.evaluation import evaluate as ev

    _check_settings(settings)
    device = ev.resolve_device(settings.device)
    datamodule = ev.load_datamodule(settings.data, settings.root)
    if not hasattr(datamodule, "full_tracks"):
        raise LightningSepError(
            f"DATA={settings.data}: the neural couplings analysis needs MUSDB18-format tracks with their four stems "
            "(all stems active, paper Sec. 4.2): use DATA=musdb.")
    models: list[Optional[str]] = list(settings.model or []) or [None]
    tracks = datamodule.full_tracks("test")  # first: it finds the data (and so its name)
    jobs = [_prepare(settings, m, datamodule, tracks, device) for m in models]  # every model checked before any work
    results = [_run(settings, job, tracks, device) for job in jobs]
    tables = write_tables(results[-1].folder.parent.parent)
    for r in results:
        r.tables = tables
    print("\n" + format_tables(tables) + f"\n-> {results[-1].folder.parent.parent / 'tables.md'}", flush=True)
    if settings.log_mlflow:
        for r in results:
            _log(settings, r)
    return results


@dataclass
class _Job:
    """One model's analysis, checked and ready to run."""

    model: Any
    resolved: Any
    layers: dict[str, CoupledLayers]
    names: list[str]
    frames: int
    folder: Path
    manifest: dict[str, Any]


def _prepare(settings: AnalyzeSettings, model_name: Optional[str], datamodule: Any, tracks: Any, device: str) -> _Job:
    """Find, load and check one model; its results folder and settings."""
    from lightning_sep.evaluation import evaluate as ev
    from lightning_sep.separation.audio import check_writable_folder
    from lightning_sep.tracking.runs import load_model, resolve_checkpoint

    resolved = resolve_checkpoint(model_name, settings.ckpt, settings.run_id, experiment=settings.experiment,
                                  dataset=datamodule.dataset_name)
    if resolved.family not in NCA_FAMILIES:
        raise _not_covered(resolved.family)
    model = load_model(resolved, device=device, trust_checkpoint=settings.trust_checkpoint)
    layers = {t: coupled_layers(model.networks[t], resolved.family) for t in model.targets}  # square N -> N only
    front_end = model.front_end
    if front_end.sample_rate != int(datamodule.sample_rate):
        raise LightningSepError(
            f"{resolved.path} was trained at {front_end.sample_rate} Hz; DATA={settings.data} is at "
            f"{datamodule.sample_rate} Hz: analyse it on the data it was trained on.")
    names = ev.select_tracks(tracks.names, settings.tracks)
    frames = max(2, int(round(settings.segment_seconds * front_end.sample_rate / front_end.hop_length)))
    out_root = Path(settings.out).expanduser() if settings.out else default_out_root()
    dataset = datamodule.dataset_name
    label = resolved.label
    folder = out_root / dataset / label / "nca"
    check_writable_folder(folder, "--out")
    stat = resolved.path.stat()
    manifest_settings = {
        "method": resolved.family, "checkpoint": str(resolved.path), "checkpoint_stamp": [stat.st_size, stat.st_mtime_ns],
        "targets": list(model.targets), "dataset": dataset, "root": str(datamodule.root), "frames": frames,
        **{k: getattr(settings, k) for k in ("segment_seconds", "max_segments", "threshold_db", "active_fraction",
                                              "iterations", "lr", "seed")},
    }
    manifest = {"settings": manifest_settings, "settings_hash": ev.settings_hash(manifest_settings),
                "run_id": resolved.run_id, "label": label}
    return _Job(model, resolved, layers, names, frames, folder, manifest)


def _run(settings: AnalyzeSettings, job: _Job, tracks: Any, device: str) -> AnalysisResult:
    """Analyse the tracks one model has not finished yet, then write its results."""
    from tqdm.auto import tqdm

    from lightning_sep.evaluation import evaluate as ev

    model, resolved, names, frames, folder, manifest = job.model, job.resolved, job.names, job.frames, job.folder, job.manifest
    label, dataset = resolved.label, manifest["settings"]["dataset"]
    print(f"NCA of {resolved.path} (MODEL={resolved.family}, run {resolved.run_id or 'not in MLflow'}): "
          f"{len(names)} test track(s), batches of {frames} frames, {settings.iterations} Adam iterations per strategy",
          flush=True)
    track_dir = folder / "tracks"
    with ev.exclusive(folder):
        # per-track results of other settings are never mixed in: stop, or with --overwrite discard them
        ev.check_manifest(folder, manifest, settings.overwrite, results=("tracks",), command="make analyze")
        track_dir.mkdir(exist_ok=True)
        linear = {t: linear_composition(job.layers[t].weights) for t in model.targets}
        index = {n: i for i, n in enumerate(tracks.names)}
        bar = tqdm(names, desc=f"NCA {label}", unit="track", disable=None if settings.progress else True)
        for name in bar:
            path = track_dir / f"{name}.npz"
            if path.is_file():
                continue  # finished by an earlier run with these settings
            began = time.monotonic()
            rows, sums, counts = _analyze_track(tracks.array(index[name]), model, job.layers, linear, frames, settings,
                                                device, name, lambda text: bar.set_postfix_str(text, refresh=True))
            buf = io.BytesIO()
            np.savez(buf, rows=json.dumps(rows), counts=json.dumps(counts),
                     **{f"{t}/{m}": s for (t, m), s in sums.items()})
            with atomic_open(path, "wb") as fh:
                fh.write(buf.getvalue())
            n_batches = max(counts.values(), default=0)
            print(f"  {name}: {n_batches} active batch(es) in {time.monotonic() - began:.0f} s", flush=True)
        bar.close()
        rows, sums, counts = _collect(track_dir, names)
        if not rows:
            raise LightningSepError(
                f"No batch of {frames} frames with all stems active in the {len(names)} test track(s) of {dataset}: "
                "lower --segment-seconds or --active-fraction, or raise --threshold-db.")
        segments = pd.DataFrame(rows, columns=["track", "start_s", "target", "method", "tod_r", "snr_model_db",
                                               "snr_source_db", "l1"])
        summary = summarize(segments, resolved.family, label)
        atomic_write_text(folder / "segments.csv", segments.to_csv(index=False, float_format="%.6g"))
        atomic_write_text(folder / "summary.csv", summary.to_csv(index=False, float_format="%.6g"))
        means = {f"{t}/{m}": (s / counts[t]).numpy() for (t, m), s in sums.items()}
        buf = io.BytesIO()
        np.savez_compressed(buf, **means)
        atomic_write_bytes(folder / "couplings.npz", buf.getvalue())
        for key, matrix in means.items():
            target, method = key.split("/")
            title = (f"{DISPLAY.get(resolved.family, resolved.family)} {target}: {ROW_NAMES[method]} "
                     f"(mean over {counts[target]} batches)")
            atomic_write_bytes(folder / f"couplings-{target}-{method}.png", heatmap_png(matrix, settings.zoom_bins, title))
        manifest["tracks"] = names
        manifest["batches"] = counts
        atomic_write_text(folder / "manifest.json", json.dumps(manifest, indent=2, default=str))
    return AnalysisResult(label, folder, segments, summary, run_id=resolved.run_id)


def _analyze_track(array: np.ndarray, model: Any, layers: dict[str, CoupledLayers], linear: dict[str, Any], frames: int,
                   settings: AnalyzeSettings, device: str, name: str,
                   progress: Callable[[str], None] = lambda text: None) -> tuple[list[dict], dict, dict[str, int]]:
    import torch

    from datamodules._musdb import STEMS

    audio = torch.from_numpy(np.asarray(array).mean(axis=1, dtype=np.float32))  # (5, samples): mono, paper Sec. 4.1
    if not torch.isfinite(audio).all():
        raise LightningSepError(f"Test track {name!r} has NaN or inf samples: its cached audio is corrupt "
                                "(make clean-data, then rerun).")
    with torch.no_grad():
        mags = model.spectrogram(audio.to(device))[0]  # (5, N, frames)
        x_all = model.normalize(mags[:1])[0].T  # (frames, N)
    stems = [STEMS.index(s) for s in ("drums", "bass", "other", "vocals")]
    starts = spread(active_segments(mags[stems].cpu().numpy(), frames, settings.threshold_db, settings.active_fraction),
                    settings.max_segments or None)
    hop_s = model.front_end.hop_length / model.front_end.sample_rate
    rows: list[dict[str, Any]] = []
    sums: dict[tuple[str, str], Any] = {}
    counts = {t: 0 for t in model.targets}
    for t in model.targets:
        with torch.no_grad():
            if t == "accompaniment":
                tgt_mag = model.spectrogram((audio[1] + audio[2] + audio[3]).to(device)[None])[0][0]
            else:
                tgt_mag = mags[STEMS.index(t)]
            tgt_all = model.normalize(tgt_mag[None])[0].T
        for k, start in enumerate(starts):
            progress(f"{name}, {t}: batch {k + 1}/{len(starts)}")
            x, target = x_all[start : start + frames], tgt_all[start : start + frames]
            batch_rows, matrices = analyze_batch(layers[t], model.networks[t], x, target, settings.iterations,
                                                 settings.lr, linear[t], settings.seed + 1000 * k)
            for r in batch_rows:
                rows.append({"track": name, "start_s": round(start * hop_s, 3), "target": t, **r})
            for m, c in matrices.items():
                key = (t, m)
                sums[key] = sums.get(key, 0) + c.detach().cpu().double()
            counts[t] += 1
    return rows, sums, counts


def _collect(track_dir: Path, names: Sequence[str]) -> tuple[list[dict], dict, dict[str, int]]:
    import torch

    rows: list[dict] = []
    sums: dict[tuple[str, str], Any] = {}
    counts: dict[str, int] = {}
    for name in names:
        with np.load(track_dir / f"{name}.npz") as z:
            rows += json.loads(str(z["rows"]))
            for t, c in json.loads(str(z["counts"])).items():
                counts[t] = counts.get(t, 0) + c
            for key in z.files:
                if "/" in key:
                    t, m = key.split("/")
                    sums[(t, m)] = sums.get((t, m), 0) + torch.as_tensor(z[key])
    return rows, sums, counts


# -- tables ----------------------------------------------------------------------------------------------------
def summarize(segments: pd.DataFrame, family: str, label: str) -> pd.DataFrame:
    """Mean and standard deviation over the batches, per target and method (inf / NaN left out)."""
    out = []
    for (target, method), block in segments.groupby(["target", "method"], sort=False):
        row: dict[str, Any] = {"family": family, "label": label, "target": target, "method": method,
                               "batches": len(block)}
        for col in MEASURES:
            v = block[col].to_numpy(float)
            v = v[np.isfinite(v)]
            row[f"{col}_mean"] = float(v.mean()) if len(v) else math.nan
            row[f"{col}_std"] = float(v.std()) if len(v) else math.nan
        out.append(row)
    return pd.DataFrame(out)


def collect_summaries(dataset_folder: Path) -> pd.DataFrame:
    """The ``summary.csv`` of every model analysed in ``<analysis>/<dataset>/``."""
    frames = []
    for path in sorted(dataset_folder.glob("*/nca/summary.csv")):
        with contextlib.suppress(Exception):
            frames.append(pd.read_csv(path))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def paper_tables(summaries: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Tables 1-3 as the paper lays them out: one row per strategy, one column per model ("mean (std)").

    A model analysed several times (several runs) gets a column per run label. Multi-target models
    have one column per target.
    """
    if summaries.empty:
        return {}
    order = {f: i for i, f in enumerate(NCA_FAMILIES)}
    cols = summaries[["family", "label", "target"]].drop_duplicates()
    cols = cols.assign(_o=cols["family"].map(order).fillna(99)).sort_values(["_o", "label", "target"])
    per_family = cols.groupby("family")["label"].nunique().to_dict()
    multi_target = summaries["target"].nunique() > 1
    tables = {}
    for measure, (name, _) in MEASURES.items():
        if measure == "tod_r":  # the identity has no off-diagonal part (TOD-R infinite)
            methods = [*STRATEGIES, "linear_composition"]
        else:
            methods = [*METHODS, *([MODEL_ROW] if measure == "snr_source_db" else [])]
        table = pd.DataFrame(index=[ROW_NAMES[m] for m in methods])
        for c in cols.itertuples():
            head = DISPLAY.get(c.family, c.family)
            if per_family.get(c.family, 1) > 1:
                head += f" ({c.label})"
            if multi_target:
                head += f" {c.target}"
            values = []
            for m in methods:
                hit = summaries[(summaries["label"] == c.label) & (summaries["target"] == c.target)
                                & (summaries["method"] == m)]
                if hit.empty or not np.isfinite(hit[f"{measure}_mean"].iloc[0]):
                    values.append("")
                else:
                    values.append(f"{hit[f'{measure}_mean'].iloc[0]:.2f} ({hit[f'{measure}_std'].iloc[0]:.2f})")
            table[head] = values
        table.index.name = "approximation"
        tables[name] = table
    return tables


def write_tables(dataset_folder: Path) -> dict[str, pd.DataFrame]:
    """Tables 1-3 of every model analysed on the dataset, as CSV and one Markdown file."""
    tables = paper_tables(collect_summaries(dataset_folder))
    for name, table in tables.items():
        atomic_write_text(dataset_folder / f"{name}.csv", table.to_csv())
    atomic_write_text(dataset_folder / "tables.md", format_tables(tables) + "\n")
    return tables


def format_tables(tables: dict[str, pd.DataFrame]) -> str:
    """The tables as Markdown: "mean (standard deviation)" over the active test batches."""
    parts = []
    for measure, (name, title) in MEASURES.items():
        if name not in tables:
            continue
        t = tables[name]
        head = "| " + " | ".join([t.index.name or "", *t.columns]) + " |"
        sep = "|" + "|".join(["---"] * (len(t.columns) + 1)) + "|"
        body = ["| " + " | ".join([str(i), *(str(v) for v in row)]) + " |" for i, row in zip(t.index, t.values)]
        parts.append(f"**{title}**, mean (standard deviation) over the active test batches\n\n" +
                     "\n".join([head, sep, *body]))
    return "\n\n".join(parts)


# -- figures ---------------------------------------------------------------------------------------------------
def heatmap_png(matrix: np.ndarray, zoom_bins: int, title: str) -> bytes:
    """A couplings matrix as PNG bytes: the full matrix and the first ``zoom_bins`` bins (paper Figs. 2-3);
    diverging colours symmetric around 0, clipped at the 99.5th percentile of ``|C|``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = np.asarray(matrix, dtype=np.float64)
    finite = np.abs(m[np.isfinite(m)])
    vmax = float(np.percentile(finite, 99.5)) if finite.size else 1.0
    vmax = vmax if vmax > 0 else 1.0
    fig = Figure(figsize=(11.0, 5.0), dpi=100)
    FigureCanvasAgg(fig)
    zoom = min(zoom_bins, m.shape[0])
    for k, (part, sub) in enumerate(((m, "all bins"), (m[:zoom, :zoom], f"bins 0-{zoom - 1}"))):
        ax = fig.add_subplot(1, 2, k + 1)
        im = ax.imshow(part, cmap="RdBu_r", vmin=-vmax, vmax=vmax, origin="lower", interpolation="nearest",
                       aspect="equal")
        ax.set_title(sub, fontsize="small")
        ax.set_xlabel("input (mixture) bin")
        ax.set_ylabel("output bin")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# -- MLflow ----------------------------------------------------------------------------------------------------
def _log(settings: AnalyzeSettings, result: AnalysisResult) -> None:
    """The means as metrics ``nca/<target>/<method>/<measure>``, tags ``nca.*`` and the files under ``nca/``
    on the model's run (as ``make eval`` logs its scores)."""
    from lightning_sep.paths import default_tracking_uri
    from lightning_sep.tracking.mlflow import redact
    from lightning_sep.tracking.runs import log_evaluation

    if result.run_id is None:
        print(f"{result.method}: the checkpoint is not from a run of this MLflow store: the analysis is not logged "
              "to MLflow.", flush=True)
        return
    metrics = {}
    for r in result.summary.to_dict("records"):
        for measure in MEASURES:
            for stat in ("mean", "std"):
                value = r[f"{measure}_{stat}"]
                if np.isfinite(value):
                    suffix = "" if stat == "mean" else "_std"
                    metrics[f"nca/{r['target']}/{r['method']}/{measure}{suffix}"] = float(value)
    manifest = json.loads((result.folder / "manifest.json").read_text())
    tags = {"nca.results": str(result.folder), "nca.dataset": manifest["settings"]["dataset"],
            "nca.batches": json.dumps(manifest.get("batches", {})),
            "nca.settings": manifest["settings_hash"]}
    with tempfile.TemporaryDirectory(prefix="lightning-sep-nca-") as tmp:
        for p in result.folder.iterdir():
            if p.is_file() and not p.name.startswith("."):
                shutil.copy2(p, Path(tmp) / p.name)
        dataset_folder = result.folder.parent.parent
        for p in dataset_folder.glob("table*"):
            shutil.copy2(p, Path(tmp) / p.name)
        log_evaluation(result.run_id, metrics, tags, {"nca": Path(tmp)})
    print(f"Logged to MLflow run {result.run_id} ({redact(default_tracking_uri())}): {len(metrics)} metrics "
          f"nca/<target>/<method>/..., files under nca/", flush=True)

