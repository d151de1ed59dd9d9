"""Aggregating museval scores the SiSEC 2018 way, and the results tables.

SiSEC rule (Stöter, Liutkus & Ito 2018, Sec. 4): for each target and metric, the median over a
track's 1 s frames, then the median over tracks.  NaN frames (silent references or estimates)
are left out of the first median, and a track whose frames are all NaN for a target is left out
of the second, so a silent stem never turns a result into NaN.  The JSONs are read with museval's
own ``json2df``.  The same rule in memory, on :class:`museval.TrackStore` objects and per-track arrays
(:func:`store_scores`, :func:`track_median_array`, :func:`sisec_median_array`), serves the BSS Eval of
validation (:mod:`lightning_sep.evaluation.validation`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from lightning_sep.evaluation.bsseval import METRICS, MUSDB_TARGETS
from lightning_sep.utils.atomic import atomic_write_text

if TYPE_CHECKING:
    import museval


def load_scores(json_paths: Iterable[Path]) -> pd.DataFrame:
    """Frame scores of many museval JSONs: columns ``track, target, metric, time, score``."""
    import simplejson
    from museval.aggregate import json2df

    frames = []
    for path in json_paths:
        with open(path) as fh:
            frames.append(json2df(simplejson.loads(fh.read(), allow_nan=True), Path(path).stem))
    return _frame_table(frames)


def _frame_table(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """museval's per-track frame tables as one, scores numeric (NaN where museval wrote none)."""
    if not frames:
        return pd.DataFrame(columns=["track", "target", "metric", "time", "score"])
    df = pd.concat(frames, ignore_index=True)
    df["score"] = pd.to_numeric(df["score"], errors="coerce")
    return df


def track_medians(df: pd.DataFrame) -> pd.DataFrame:
    """Median over frames per track, target and metric (NaN frames skipped)."""
    return df.groupby(["track", "target", "metric"], sort=False)["score"].median().reset_index()


def sisec_medians(df: pd.DataFrame) -> pd.DataFrame:
    """Per target and metric: the median over tracks of the per-track frame medians.

    Columns ``target, metric, score, tracks`` (tracks that have a finite value)."""
    per_track = track_medians(df)
    g = per_track.groupby(["target", "metric"], sort=False)["score"]
    out = pd.DataFrame({"score": g.median(), "tracks": g.count()}).reset_index()
    order = {t: i for i, t in enumerate(MUSDB_TARGETS)}
    out["_t"] = out["target"].map(order)
    out["_m"] = out["metric"].map({m: i for i, m in enumerate(METRICS)})
    return out.sort_values(["_t", "_m"]).drop(columns=["_t", "_m"]).reset_index(drop=True)


def metric_dict(medians: pd.DataFrame, prefix: str = "test") -> dict[str, float]:
    """``{"test/vocals/SDR": 4.2, ...}`` for MLflow."""
    return {f"{prefix}/{r.target}/{r.metric}": float(r.score) for r in medians.itertuples()}


def write_csv(df: pd.DataFrame, path: Path) -> None:
    atomic_write_text(path, df.to_csv(index=False, float_format="%.4f"))


def comparison_table(methods: dict[str, pd.DataFrame], targets: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """One row per method and target, one column per metric (SiSEC medians)."""
    rows = []
    for method, med in methods.items():
        for target, block in med.groupby("target", sort=False):
            if targets is not None and target not in targets:
                continue
            row = {"method": method, "target": target}
            row.update({r.metric: r.score for r in block.itertuples()})
            row["tracks"] = int(block["tracks"].max()) if len(block) else 0
            rows.append(row)
    table = pd.DataFrame(rows, columns=["method", "target", *METRICS, "tracks"])
    order = {t: i for i, t in enumerate(MUSDB_TARGETS)}
    table["_t"] = table["target"].map(order)
    return table.sort_values(["_t", "SDR"], ascending=[True, False], kind="stable").drop(columns="_t").reset_index(drop=True)


def format_table(table: pd.DataFrame, highlight: Optional[str] = None) -> str:
    """A plain-text table (medians in dB), the method ``highlight`` marked with ``*``."""
    lines = [f"{'target':<14}{'method':<32}" + "".join(f"{m:>9}" for m in METRICS) + f"{'tracks':>8}"]
    lines.append("-" * len(lines[0]))
    previous = None
    for r in table.itertuples():
        if previous is not None and r.target != previous:
            lines.append("")
        previous = r.target
        mark = "* " if r.method == highlight else "  "
        values = "".join(f"{getattr(r, m):>9.2f}" for m in METRICS)
        lines.append(f"{r.target:<14}{mark + r.method:<32}{values}{r.tracks:>8}")
    return "\n".join(lines)


# -- in memory (the validation's BSS Eval, lightning_sep.evaluation.validation) ------------------------
def store_scores(stores: Iterable["museval.TrackStore"]) -> pd.DataFrame:
    """Frame scores of in-memory :class:`museval.TrackStore` objects, as :func:`load_scores` reads them
    from their JSON files (museval's own ``TrackStore.df``): columns ``track, target, metric, time, score``."""
    return _frame_table([store.df for store in stores])


def track_median_array(store: "museval.TrackStore", targets: Sequence[str]) -> np.ndarray:
    """One track's frame medians (NaN frames skipped) as a float64 array ``(len(targets), len(METRICS))``:
    rows in ``targets`` order, columns in :data:`METRICS` order; NaN for a target the store lacks or whose
    frames are all NaN."""
    out = np.full((len(targets), len(METRICS)), np.nan)
    rows = {t: i for i, t in enumerate(targets)}
    cols = {m: j for j, m in enumerate(METRICS)}
    for r in track_medians(store_scores([store])).itertuples():
        if r.target in rows and r.metric in cols:
            out[rows[r.target], cols[r.metric]] = float(r.score)
    return out


def sisec_median_array(per_track: np.ndarray) -> np.ndarray:
    """The SiSEC median over tracks of per-track frame medians ``(tracks, ...)``: NaN tracks skipped (as
    :func:`sisec_medians`), NaN where no track has a value."""
    import warnings

    per_track = np.asarray(per_track, dtype=np.float64)
    if per_track.shape[0] == 0:
        return np.full(per_track.shape[1:], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "All-NaN slice encountered": NaN is the answer
        return np.nanmedian(per_track, axis=0)
