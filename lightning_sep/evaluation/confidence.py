"""``make confidence``: the VAE's confidence score against the input SNR (paper ``vae-separation-pandey``
Sec. 4.3, Fig. 5).

The VAE separates with the posterior mean and records the average posterior variance of its
latent code over the segments of an input (``separation_stats["posterior_variance"]``, one value
per target network and their mean): lower = a more peaked posterior = a more confident separation.
The paper trains at 0 dB and shows that the average variance falls as the test SNR rises.

The job (:func:`confidence_curve`):

1. for each input SNR, builds the speech DataModule of ``--data`` with ``test_snr_db=SNR`` (the
   same test mixtures, remixed at that male-to-female power ratio);
2. separates every test mixture whole with the model (found like ``make eval`` finds it) and
   records, per mixture and source, the average posterior variance and the BSS Eval v3 SDR of the
   estimate (:func:`~lightning_sep.evaluation.speech.score_mixture`);
3. writes, atomically, ``confidence.csv`` (one row per SNR, mixture and source),
   ``confidence_summary.csv`` (per SNR: the means over mixtures), ``confidence.png`` (the curve)
   and ``manifest.json`` to ``<mlruns>/eval/<dataset>/<method>/confidence/`` (``--out``); prints
   the curve; logs the files to the model's MLflow run under ``confidence/`` with the metrics
   ``confidence/snr_<SNR>dB/posterior_variance[/<source>]`` and ``confidence/snr_<SNR>dB/SDR``.
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from lightning_sep.errors import LightningSepError, UnknownNameError
from lightning_sep.utils.atomic import atomic_write_bytes, atomic_write_text

#: ``make confidence``'s input SNRs (dB, male-to-female power) unless SNRS says otherwise
DEFAULT_SNRS: tuple[float, ...] = (-10.0, -5.0, -2.5, 0.0, 2.5, 5.0, 10.0)
#: the families whose separation records the average posterior variance
VARIATIONAL_FAMILIES: tuple[str, ...] = ("vae", "deep_vae")
STAT = "posterior_variance"


@dataclass
class ConfidenceSettings:
    """Everything ``lightning-sep confidence`` takes (``make confidence`` variables in brackets)."""

    model: Optional[str] = None  # MODEL: vae or deep_vae (its latest finished run on DATA)
    ckpt: Optional[str] = None  # CKPT
    run_id: Optional[str] = None  # RUN_ID
    data: str = "timit_ten_speakers"  # DATA: conf/data/<data>.yaml, a speech DataModule with test_snr_db
    root: Optional[str] = None  # the TIMIT folder (default: TIMIT_ROOT, else the embedded corpus)
    snrs: Optional[Sequence[Any]] = None  # SNRS: input SNRs in dB (default DEFAULT_SNRS)
    mixtures: Optional[list[str]] = None  # only these test mixtures (default: every one)
    out: Optional[str] = None  # results folder (default: <mlruns>/eval/<dataset>/<method>/confidence)
    wiener_iterations: int = 0
    separation_iterations: Optional[int] = None
    chunk_seconds: float = 20.0
    overlap_seconds: float = 1.0
    device: str = "auto"
    log_mlflow: bool = True
    experiment: str = "lightning-sep"
    trust_checkpoint: bool = False
    progress: bool = True


@dataclass
class ConfidenceResult:
    method: str
    folder: Path
    table: pd.DataFrame  # one row per SNR, mixture and source (confidence.csv)
    summary: pd.DataFrame  # one row per SNR (confidence_summary.csv)
    plot: Path
    run_id: Optional[str] = None


# -- input -------------------------------------------------------------------------------------------------
def parse_snrs(values: Optional[Iterable[Any]]) -> list[float]:
    """Input SNRs in dB, ascending and without duplicates; ``None`` = :data:`DEFAULT_SNRS`.

    Each value may hold several, separated by commas or spaces (``"-10 -5,0"``)."""
    if values is None:
        return list(DEFAULT_SNRS)
    tokens = [t for v in values for t in re.split(r"[,\s]+", str(v).strip()) if t]
    if not tokens:
        raise LightningSepError('No input SNR given: pass e.g. --snrs -10 -5 0 5 10 (make confidence SNRS="-10 -5 0 5 10").')
    snrs = []
    for token in tokens:
        try:
            value = float(token.removesuffix("dB").removesuffix("db"))
        except ValueError:
            raise LightningSepError(
                f"SNR {token!r} is not a number of dB: pass e.g. --snrs -10 -5 0 5 10 "
                '(make confidence SNRS="-10 -5 0 5 10").') from None
        if not math.isfinite(value):
            raise LightningSepError(f"SNR {token!r} must be a finite number of dB.")
        snrs.append(value + 0.0)  # -0.0 -> 0.0
    return sorted(set(snrs))


def snr_key(snr: float) -> str:
    """``snr_-2.5dB``, ``snr_0dB``, ``snr_10dB``: SNRs in MLflow metric names (no ``+``: MLflow refuses it)."""
    return f"snr_{snr:g}dB"


def _check_data(name: str) -> None:
    from lightning_sep.evaluation.evaluate import accepts_argument, datamodule_class

    cls, class_path, _ = datamodule_class(name)
    if not (accepts_argument(cls, "test_snr_db") and hasattr(cls, "test_mixtures")):
        raise LightningSepError(
            f"DATA={name} ({class_path}): the confidence curve needs speech mixtures with a settable SNR "
            "(test_snr_db): use DATA=timit_ten_speakers (the VAE paper's protocol) or DATA=timit.")


def _select(mixtures: list, names: Optional[Sequence[str]]) -> list:
    if not names:
        return list(mixtures)
    available = [m.name for m in mixtures]
    for name in names:
        if name not in available:
            raise UnknownNameError("test mixture", name, available)
    return [m for m in mixtures if m.name in names]


def _no_variance(label: str, family: str) -> LightningSepError:
    return LightningSepError(
        f"{label} (MODEL={family}) records no posterior variance when it separates: the confidence curve "
        "(paper vae-separation-pandey Sec. 4.3, Fig. 5) needs a variational model: "
        + " or ".join(f"MODEL={f}" for f in VARIATIONAL_FAMILIES) + ".")


# -- the job ---------------------------------------------------------------------------------------------------
def confidence_curve(settings: ConfidenceSettings) -> ConfidenceResult:
    """Average posterior variance (and SDR) of every test mixture at every input SNR; see the module docstring."""
    from tqdm.auto import tqdm

    from lightning_sep.evaluation import evaluate as ev
    from lightning_sep.evaluation.speech import score_mixture
    from lightning_sep.separation import REFERENCE_METHODS, separate_track
    from lightning_sep.separation.audio import check_writable_folder

    snrs = parse_snrs(settings.snrs)
    _check_data(settings.data)
    if settings.model in REFERENCE_METHODS:
        raise _no_variance(f"MODEL={settings.model}", settings.model)
    device = ev.resolve_device(settings.device)
    datamodule = ev.load_datamodule(settings.data, settings.root, {"test_snr_db": snrs[0]})
    mixtures = _select(datamodule.test_mixtures(), settings.mixtures)  # first: it finds the data (and its name)
    sources = list(datamodule.sources)
    dataset = datamodule.dataset_name  # <corpus>-<protocol>, without the test SNR
    eval_settings = ev.EvalSettings(
        model=settings.model, ckpt=settings.ckpt, run_id=settings.run_id, data=settings.data, root=settings.root,
        wiener_iterations=settings.wiener_iterations, separation_iterations=settings.separation_iterations,
        chunk_seconds=settings.chunk_seconds,
        overlap_seconds=settings.overlap_seconds, device=device, log_mlflow=settings.log_mlflow,
        experiment=settings.experiment, trust_checkpoint=settings.trust_checkpoint, progress=settings.progress)
    separator, label, info, run_id = ev.build_separator(eval_settings, datamodule, device, sources, sources)
    take_stats = getattr(separator, "take_stats", None)
    if take_stats is None:
        raise _no_variance(label, info["method"])
    missing = [s for s in sources if s not in separator.targets]
    if missing:
        raise LightningSepError(
            f"{label} estimates {separator.targets}; the SDR on {dataset} needs every source ({', '.join(sources)}): "
            f"use a model trained on this data (targets {sources}).")
    out_root = ev.default_out_root()
    folder = Path(settings.out).expanduser() if settings.out else out_root / dataset / label / "confidence"
    check_writable_folder(folder, "--out")
    rate = int(datamodule.sample_rate)

    with ev.exclusive(folder):
        rows: list[dict[str, Any]] = []
        take_stats()  # nothing left over from before
        bar = tqdm(total=len(snrs) * len(mixtures), desc="confidence", unit="mixture",
                   disable=None if settings.progress else True)
        try:
            for i, snr in enumerate(snrs):
                if i:
                    datamodule = ev.load_datamodule(settings.data, settings.root, {"test_snr_db": snr})
                    mixtures = _select(datamodule.test_mixtures(), settings.mixtures)
                for m in mixtures:
                    bar.set_postfix_str(f"{snr:g} dB {m.name}")
                    estimates = separate_track(separator, m.audio[:1], rate, chunk_seconds=settings.chunk_seconds,
                                               overlap_seconds=settings.overlap_seconds, device=device)
                    stats = take_stats()
                    if STAT not in stats:
                        raise _no_variance(label, info["method"])
                    est = np.stack([estimates[s][:, 0] for s in sources])
                    if not np.all(np.isfinite(est)):
                        raise LightningSepError(f"{separator.name} produced NaN or inf on test mixture {m.name!r} at "
                                                f"{snr:g} dB: the model is broken (retrain it, or use another checkpoint).")
                    scores = score_mixture(m.audio[1:], est, sources)["scores"]
                    for s in sources:
                        rows.append({"snr_db": snr, "mixture": m.name, "source": s,
                                     STAT: stats.get(f"{STAT}/{s}", np.nan), "SDR": scores[s]["SDR"]})
                    bar.update(1)
        finally:
            bar.close()
        table = pd.DataFrame(rows, columns=["snr_db", "mixture", "source", STAT, "SDR"])
        summary = summarize(table, sources)
        manifest = {"settings": {**info, "dataset": dataset, "data": settings.data, "root": str(datamodule.root),
                                 "snrs_db": snrs, "mixtures": [m.name for m in mixtures], "sample_rate": rate,
                                 "sdr": "bss_eval_sources v3 (best permutation)"}}
        atomic_write_text(folder / "confidence.csv", table.to_csv(index=False, float_format="%.6g"))
        atomic_write_text(folder / "confidence_summary.csv", summary.to_csv(index=False, float_format="%.6g"))
        atomic_write_text(folder / "manifest.json", json.dumps(manifest, indent=2, default=str))
        plot = folder / "confidence.png"
        atomic_write_bytes(plot, plot_png(summary, sources, f"{label} on {dataset}"))
        print(f"\nAverage posterior variance (lower = more confident) and SDR against the input SNR "
              f"(male-to-female), mean over {len(mixtures)} test mixture(s) of {dataset} ({label}):\n"
              + format_summary(summary, sources) + f"\n-> {folder}", flush=True)
        if settings.log_mlflow:
            run_id = _log(settings, run_id, summary, sources, folder, dataset, snrs)
    return ConfidenceResult(label, folder, table, summary, plot, run_id)


def summarize(table: pd.DataFrame, sources: Sequence[str]) -> pd.DataFrame:
    """Per SNR: mixtures, the mean posterior variance per source and over sources, the mean SDR per
    source and over sources (means over mixtures; NaN values are left out)."""
    rows = []
    for snr, block in table.groupby("snr_db", sort=True):
        row: dict[str, Any] = {"snr_db": float(snr), "mixtures": int(block["mixture"].nunique())}
        for s in sources:
            row[f"{STAT}/{s}"] = float(block.loc[block["source"] == s, STAT].mean())
        row[STAT] = float(block[STAT].mean())
        for s in sources:
            row[f"SDR/{s}"] = float(block.loc[block["source"] == s, "SDR"].mean())
        row["SDR"] = float(block["SDR"].mean())
        rows.append(row)
    columns = ["snr_db", "mixtures", *(f"{STAT}/{s}" for s in sources), STAT, *(f"SDR/{s}" for s in sources), "SDR"]
    return pd.DataFrame(rows, columns=columns)


def format_summary(summary: pd.DataFrame, sources: Sequence[str]) -> str:
    var_cols = [*(f"{STAT}/{s}" for s in sources), STAT]
    head = (f"{'SNR dB':>8}  " + "".join(f"{'var ' + (c.split('/', 1)[1] if '/' in c else 'mean'):>14}" for c in var_cols)
            + f"{'SDR dB':>10}")
    lines = [head, "-" * len(head)]
    for r in summary.to_dict("records"):
        lines.append(f"{r['snr_db']:>8g}  " + "".join(f"{r[c]:>14.6g}" for c in var_cols) + f"{r['SDR']:>10.2f}")
    return "\n".join(lines)


def plot_png(summary: pd.DataFrame, sources: Sequence[str], title: str) -> bytes:
    """The curve as PNG bytes: average posterior variance per source and their mean against the
    input SNR, the mean SDR on a second axis (matplotlib's Agg canvas: no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = summary["snr_db"].to_numpy(float)
    for s in sources:
        ax.plot(x, summary[f"{STAT}/{s}"].to_numpy(float), marker="o", linewidth=1.2, label=f"{s} VAE")
    ax.plot(x, summary[STAT].to_numpy(float), marker="s", color="black", linewidth=2.0, label="mean")
    ax.set_xlabel("input SNR (male-to-female), dB")
    ax.set_ylabel("average posterior variance\n(lower = more confident)")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{v:g}" for v in x])
    ax.grid(True, alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(x, summary["SDR"].to_numpy(float), linestyle="--", marker="^", color="tab:gray", label="SDR (mean)")
    ax2.set_ylabel("SDR, dB")
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], loc="best", fontsize="small")
    ax.set_title(f"Confidence vs input SNR: {title}", fontsize="medium")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _log(settings: ConfidenceSettings, run_id: Optional[str], summary: pd.DataFrame, sources: Sequence[str],
         folder: Path, dataset: str, snrs: Sequence[float]) -> Optional[str]:
    """Metrics, tags and files to the model's MLflow run (as ``make eval`` logs its scores)."""
    from lightning_sep.paths import default_tracking_uri
    from lightning_sep.tracking.mlflow import redact
    from lightning_sep.tracking.runs import log_evaluation

    if run_id is None:
        print("The checkpoint is not from a run of this MLflow store: the curve is not logged to MLflow.", flush=True)
        return None
    prefix = f"confidence_wiener{settings.wiener_iterations}" if settings.wiener_iterations else "confidence"
    metrics = {}
    for r in summary.to_dict("records"):
        key = f"{prefix}/{snr_key(r['snr_db'])}"
        metrics[f"{key}/{STAT}"] = r[STAT]
        for s in sources:
            metrics[f"{key}/{STAT}/{s}"] = r[f"{STAT}/{s}"]
        metrics[f"{key}/SDR"] = r["SDR"]
    tags = {f"{prefix}.dataset": dataset, f"{prefix}.results": str(folder),
            f"{prefix}.snrs_db": " ".join(f"{v:g}" for v in snrs)}
    with tempfile.TemporaryDirectory(prefix="lightning-sep-confidence-") as tmp:
        for name in ("confidence.csv", "confidence_summary.csv", "confidence.png", "manifest.json"):
            shutil.copy2(folder / name, Path(tmp) / name)
        log_evaluation(run_id, metrics, tags, {"confidence": Path(tmp)})
    print(f"Logged to MLflow run {run_id} ({redact(default_tracking_uri())}): {len(metrics)} metrics "
          f"{prefix}/snr_<SNR>dB/..., files under confidence/", flush=True)
    return run_id
