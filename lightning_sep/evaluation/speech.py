"""``make eval DATA=timit``: BSS Eval v3 scores of a model or a reference method on speech mixtures.

The speech papers (cae-nae-rcae-venkataramani-2017, vae-separation-pandey) score two-speaker
separation with BSS Eval's ``bss_eval_sources`` (SDR, SIR, SAR with the best permutation) over
whole test mixtures; :mod:`~lightning_sep.evaluation.speech_metrics` computes it (equal to
``mir_eval.separation.bss_eval_sources``), plus SI-SDR.  The job (:func:`evaluate_mixtures`):

1. separates every test mixture of the DataModule (``test_mixtures()``) whole, chunk by chunk,
   with the same separators as the MUSDB evaluation (a trained model, ``mixture``, the oracles);
2. scores it and writes one JSON per mixture, atomically, to
   ``<out>/<dataset>-<protocol>/<method>/test/<mixture>.json``; a mixture whose JSON is complete
   is never recomputed (a killed evaluation restarted finishes only the rest);
3. prints the per-pair table, the mean and median over mixtures, and the comparison with every
   other method scored on the same mixtures; saves them as CSV and logs the means to the
   model's MLflow run (``test/<source>/<metric>``, ``test/all/<metric>``) with the files.

A model that records statistics of its separation (``separation_stats``: the VAE's average
posterior variance, the per-source models' KL) gets them in each mixture's JSON
(``separation_stats``), their means over mixtures in the summary and ``separation_stats.csv``, and
in MLflow as ``test/<stat>`` (``test/posterior_variance``, ``test/posterior_variance/male``, ...).
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from lightning_sep.errors import LightningSepError, UnknownNameError
from lightning_sep.utils.atomic import atomic_write_text

#: The metrics of every source, in table order.
METRICS: tuple[str, ...] = ("SDR", "SIR", "SAR", "SI-SDR")
METRIC_NAME = "bss_eval_sources v3 (best permutation) + SI-SDR"


# -- one mixture ----------------------------------------------------------------------------------------
def score_mixture(references: np.ndarray, estimates: np.ndarray, sources: Sequence[str]) -> dict[str, Any]:
    """BSS Eval v3 of ``estimates`` ``(n_src, n)`` (in ``sources`` order) against ``references``.

    The scores are reported per reference source, for the estimate the best permutation assigns
    to it (``permutation[source]`` names that estimate)."""
    from lightning_sep.evaluation.speech_metrics import bss_eval_sources

    s = bss_eval_sources(references, estimates)
    scores = {
        name: {"SDR": float(s.sdr[i]), "SIR": float(s.sir[i]), "SAR": float(s.sar[i]), "SI-SDR": float(s.si_sdr[i])}
        for i, name in enumerate(sources)
    }
    return {"scores": scores, "permutation": {name: sources[int(p)] for name, p in zip(sources, s.permutation)}}


def json_is_complete(path: Path, sources: Sequence[str]) -> bool:
    try:
        data = json.loads(path.read_text())
        return all(set(METRICS) <= set(data["scores"][s]) for s in sources)
    except (OSError, ValueError, KeyError, TypeError):
        return False


# -- tables -------------------------------------------------------------------------------------------
def load_scores(paths: Iterable[Path]) -> pd.DataFrame:
    """Columns ``mixture, pair, source, metric, score`` from the per-mixture JSONs."""
    rows = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        for source, metrics in data["scores"].items():
            for metric in METRICS:
                value = metrics.get(metric)
                rows.append({"mixture": data["mixture"], "pair": data.get("pair", ""), "source": source,
                             "metric": metric, "score": np.nan if value is None else float(value)})
    return pd.DataFrame(rows, columns=["mixture", "pair", "source", "metric", "score"])


def load_separation_stats(paths: Iterable[Path]) -> pd.DataFrame:
    """Columns ``mixture, stat, value``: the model's separation statistics recorded in the
    per-mixture JSONs (none for JSONs without them: reference methods, older results)."""
    rows = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        for stat, value in (data.get("separation_stats") or {}).items():
            try:
                rows.append({"mixture": data["mixture"], "stat": str(stat), "value": float(value)})
            except (TypeError, ValueError):
                continue
    return pd.DataFrame(rows, columns=["mixture", "stat", "value"])


def stats_means(df: pd.DataFrame) -> dict[str, tuple[float, int]]:
    """``{stat: (mean over mixtures, number of mixtures)}`` in the order the stats first appear."""
    return {stat: (float(block["value"].mean()), int(block["mixture"].nunique()))
            for stat, block in df.groupby("stat", sort=False)}


def _metric_safe(name: str) -> str:
    """``name`` with the characters MLflow refuses in metric names replaced by ``_``."""
    return re.sub(r"[^\w\-. /:]", "_", name)


def per_mixture(df: pd.DataFrame) -> pd.DataFrame:
    """One row per mixture and source, one column per metric."""
    keys = ["mixture", "pair", "source"]
    table = df.pivot(index=keys, columns="metric", values="score").reindex(columns=list(METRICS))
    order = df[keys].drop_duplicates()  # the JSONs' order, not pandas' sorting
    return table.reindex(pd.MultiIndex.from_frame(order)).reset_index().rename_axis(columns=None)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and median over mixtures per source, and over mixtures and sources (``all``)."""
    rows = []
    for source, block in [*df.groupby("source", sort=False), ("all", df)]:
        for stat in ("mean", "median"):
            g = block.groupby("metric")["score"]
            values = g.mean() if stat == "mean" else g.median()
            rows.append({"source": source, "stat": stat, **{m: float(values.get(m, np.nan)) for m in METRICS},
                         "mixtures": int(block["mixture"].nunique())})
    return pd.DataFrame(rows, columns=["source", "stat", *METRICS, "mixtures"])


def metric_dict(table: pd.DataFrame, prefix: str = "test") -> dict[str, float]:
    """``{"test/male/SDR": mean, ..., "test/all/SDR": mean, "test/all/SDR_median": median}`` for MLflow."""
    out = {}
    for r in table.to_dict("records"):
        for m in METRICS:
            if r["stat"] == "mean":
                out[f"{prefix}/{r['source']}/{m}"] = float(r[m])
            elif r["source"] == "all":
                out[f"{prefix}/all/{m}_median"] = float(r[m])
    return out


def _fmt(value: float) -> str:
    return f"{value:>9.2f}" if math.isfinite(value) else f"{str(value):>9}"


def format_rows(table: pd.DataFrame, keys: Sequence[str], widths: Sequence[int], highlight: Optional[str] = None,
                mark_key: Optional[str] = None) -> str:
    head = "".join(f"{k:<{w}}" for k, w in zip(keys, widths)) + "".join(f"{m:>9}" for m in METRICS)
    lines = [head, "-" * len(head)]
    for r in table.to_dict("records"):
        cells = [str(r[k]) for k in keys]
        if mark_key is not None:
            i = list(keys).index(mark_key)
            cells[i] = ("* " if r[mark_key] == highlight else "  ") + cells[i]
        lines.append("".join(f"{c:<{w}}" for c, w in zip(cells, widths)) + "".join(_fmt(r[m]) for m in METRICS))
    return "\n".join(lines)


def write_csv(df: pd.DataFrame, path: Path) -> None:
    atomic_write_text(path, df.to_csv(index=False, float_format="%.4f"))


# -- the job --------------------------------------------------------------------------------------------
def evaluate_mixtures(settings: Any, datamodule: Any, device: str) -> Any:
    """Run (or finish) a speech evaluation; see the module docstring.  ``settings`` is an
    :class:`~lightning_sep.evaluation.evaluate.EvalSettings`."""
    from lightning_sep.evaluation import evaluate as ev
    from lightning_sep.separation.audio import check_writable_folder

    sources = list(datamodule.sources)
    mixtures = datamodule.test_mixtures()  # first: it finds the data (and so the dataset's name)
    separator, label, info, run_id = ev.build_separator(settings, datamodule, device, sources, sources)
    missing = [s for s in sources if s not in separator.targets]
    if missing:
        raise LightningSepError(
            f"{label} estimates {separator.targets}; BSS Eval of {datamodule.dataset_name} needs every source "
            f"({', '.join(sources)}): evaluate a model trained on this data (targets {sources}).")
    if settings.workers is not None:
        print("note: EVAL_WORKERS is for museval; BSS Eval v3 of speech mixtures runs in this process.", flush=True)
    names = [m.name for m in mixtures]
    if settings.tracks:
        for name in settings.tracks:
            if name not in names:
                raise UnknownNameError("test mixture", name, names)
        mixtures = [m for m in mixtures if m.name in settings.tracks]
    rate = int(datamodule.sample_rate)
    dataset = getattr(datamodule, "eval_name", datamodule.dataset_name)
    out_root = Path(settings.out).expanduser() if settings.out else ev.default_out_root()
    folder = out_root / dataset / label
    check_writable_folder(folder, "--out")
    with ev.exclusive(folder):
        run_settings = {**info, "dataset": dataset, "root": str(datamodule.root), "sample_rate": rate,
                        "metrics": METRIC_NAME, "data": datamodule.describe()}
        manifest = {"settings_hash": ev.settings_hash(run_settings), "settings": run_settings}
        ev.check_manifest(folder, manifest, settings.overwrite)
        (folder / "test").mkdir(parents=True, exist_ok=True)
        for stale in (folder / "test").glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        done = [m for m in mixtures if json_is_complete(folder / "test" / f"{m.name}.json", sources)]
        pending = [m for m in mixtures if m not in done]
        print(f"BSS Eval on {len(mixtures)} test mixture(s) of {dataset} ({datamodule.root}): {len(done)} already "
              f"scored, {len(pending)} to do -> {folder}", flush=True)
        started = time.perf_counter()
        _run(settings, separator, pending, sources, folder, rate, device)
        elapsed = time.perf_counter() - started
        return _report(settings, datamodule, dataset, label, info, run_id, manifest, folder, out_root,
                       [m.name for m in mixtures], len(pending), elapsed, done, pending)


def _run(settings: Any, separator: Any, pending: list, sources: list[str], folder: Path, rate: int, device: str) -> None:
    from tqdm.auto import tqdm

    from lightning_sep.separation import separate_track
    from lightning_sep.separation.audio import write_wav

    take_stats = getattr(separator, "take_stats", None)
    if take_stats is not None:
        take_stats()  # nothing left over from before
    for m in tqdm(pending, desc="BSS Eval", unit="mixture", disable=None if settings.progress else True):
        estimates = separate_track(
            separator, m.audio[:1], rate, references=m.audio[1:, None, :] if separator.needs_references else None,
            chunk_seconds=settings.chunk_seconds, overlap_seconds=settings.overlap_seconds, device=device,
        )
        if settings.save_estimates:
            for target, audio in estimates.items():
                write_wav(folder / "estimates" / "test" / m.name / f"{target}.wav", audio, rate)
        est = np.stack([estimates[s][:, 0] for s in sources])
        if not np.all(np.isfinite(est)):
            raise LightningSepError(f"{separator.name} produced NaN or inf on test mixture {m.name!r}: "
                                    "the model is broken (retrain it, or use another checkpoint).")
        result = score_mixture(m.audio[1:], est, sources)
        silent = [s for s in sources if not np.any(est[sources.index(s)])]
        if silent:
            print(f"warning: {separator.name} estimated silence for {', '.join(silent)} in {m.name}: its scores "
                  "are NaN (left out of the means).", flush=True)
        record = {"mixture": m.name, "pair": m.pair, "snr_db": m.snr_db, "utterances": m.utterances,
                  "samples": int(m.audio.shape[-1]), "sample_rate": rate, "metrics": METRIC_NAME, **result}
        stats = take_stats() if take_stats is not None else {}
        if stats:
            record["separation_stats"] = stats
        atomic_write_text(folder / "test" / f"{m.name}.json", json.dumps(record, indent=1))


def _other_methods(dataset_folder: Path, label: str, mixtures: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Summaries of every other method scored on exactly these mixtures (the reference rows)."""
    out = {}
    for folder in sorted(p for p in dataset_folder.iterdir() if p.is_dir() and p.name != label):
        jsons = [folder / "test" / f"{n}.json" for n in mixtures]
        if (folder / "manifest.json").is_file() and all(p.is_file() for p in jsons):
            try:
                out[folder.name] = summary(load_scores(jsons))
            except (ValueError, KeyError, OSError):
                continue
    return out


def comparison_table(methods: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per method and source (and ``all``): the means over mixtures."""
    rows = []
    for method, table in methods.items():
        for r in table[table["stat"] == "mean"].to_dict("records"):
            rows.append({"source": r["source"], "method": method, **{m: r[m] for m in METRICS},
                         "mixtures": r["mixtures"]})
    table = pd.DataFrame(rows, columns=["source", "method", *METRICS, "mixtures"])
    order = {s: i for i, s in enumerate(dict.fromkeys(table["source"]))}
    order["all"] = len(order) + 1
    table["_s"] = table["source"].map(order)
    return table.sort_values(["_s", "SDR"], ascending=[True, False], kind="stable").drop(columns="_s").reset_index(drop=True)


def _report(settings: Any, datamodule: Any, dataset: str, label: str, info: dict, run_id: Optional[str],
            manifest: dict, folder: Path, out_root: Path, names: list[str], n_scored: int, elapsed: float,
            done: list, pending: list) -> Any:
    from lightning_sep.evaluation import evaluate as ev

    df = load_scores(folder / "test" / f"{n}.json" for n in names)
    pairs, stats = per_mixture(df), summary(df)
    write_csv(pairs, folder / "mixtures.csv")
    write_csv(stats, folder / "scores.csv")
    table = comparison_table({label: stats, **_other_methods(out_root / dataset, label, names)})
    write_csv(table, folder / "comparison.csv")
    print(f"\n{METRIC_NAME} on {len(names)} test mixture(s) of {dataset}, dB ({label}):\n"
          + format_rows(pairs, ["mixture", "source"], [34, 10])
          + "\n\nMean and median over mixtures:\n" + format_rows(stats, ["source", "stat"], [10, 8])
          + "\n\nMeans over the same mixtures, every method scored on them; * = this evaluation:\n"
          + format_rows(table, ["source", "method"], [10, 34], highlight=label, mark_key="method"), flush=True)
    sep_stats = load_separation_stats(folder / "test" / f"{n}.json" for n in names)
    means = stats_means(sep_stats)
    files = ["scores.csv", "mixtures.csv", "comparison.csv", "manifest.json"]
    if means:
        atomic_write_text(folder / "separation_stats.csv", sep_stats.to_csv(index=False, float_format="%.6g"))
        files.append("separation_stats.csv")
        print(f"\nSeparation statistics of {label}, mean over mixtures:\n" + "\n".join(
            f"  {stat:<32}{value:>12.6g}" + (f"   ({count} of {len(names)} mixtures)" if count < len(names) else "")
            for stat, (value, count) in means.items()), flush=True)
    else:
        (folder / "separation_stats.csv").unlink(missing_ok=True)
    if n_scored:
        print(f"Separated and scored {n_scored} mixture(s) in {elapsed:.1f} s.", flush=True)
    if settings.log_mlflow:
        prefix = ev.metric_prefix(settings)
        metrics = {**metric_dict(stats, prefix),
                   **{f"{prefix}/{_metric_safe(stat)}": value for stat, (value, _) in means.items()}}
        run_id = ev.log_scores(settings, label, run_id, info, manifest, metrics, folder,
                               dataset, datamodule.root, len(names), "bss_eval", tuple(files), prefix,
                               {f"{prefix}.metrics": METRIC_NAME})
    return ev.EvalResult(label, folder, stats, table, [m.name for m in pending], [m.name for m in done], {}, run_id)

