"""Benchmark of ``make eval`` and ``separate``: the evaluation's wall time with the torch BSS Eval v4
(the default) and with museval on 1 worker and on every core (on the same tracks: the museval runs'
JSONs byte-identical, ours within the JSON's 1e-5 dB rounding of them), and separation speed as a
multiple of real time.

    python -m lightning_sep.benchmarks.eval_speed [--method oracle_irm2] [--seconds 60]

The evaluation runs the real pipeline (:func:`lightning_sep.evaluation.evaluate.evaluate`) on the
test set (``MUSDB_ROOT``, else the embedded corpus) into temporary folders, without MLflow.  The
separation speed is that of the paper's skip-filter (weights do not change its speed) through
:func:`lightning_sep.separation.separate_track` on a stereo mixture of ``--seconds`` seconds.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {cores} cores, {gpu}, torch {torch.__version__}"


def bench_eval(method: str, runs: list[tuple[str, int]]) -> list[tuple[str, int, float, Path]]:
    """``(metrics, workers, wall time, results folder)`` of one evaluation per ``(metrics, workers)``."""
    from lightning_sep.evaluation.evaluate import EvalSettings, evaluate

    rows = []
    for metrics, n in runs:
        out = Path(tempfile.mkdtemp(prefix=f"bench-eval-{metrics}-{n}-"))
        start = time.perf_counter()
        result = evaluate(EvalSettings(model=method, out=str(out), workers=n, metrics=metrics, log_mlflow=False,
                                       progress=False))
        rows.append((metrics, n, time.perf_counter() - start, result.folder))
    return rows


def max_json_difference(a: Path, b: Path) -> float:
    """The largest |difference| (dB) between two folders of museval JSONs (NaN where both are NaN)."""
    from lightning_sep.evaluation import aggregate

    def scores(folder: Path):
        df = aggregate.load_scores(sorted((folder / "test").glob("*.json")))
        return df.set_index(["track", "target", "metric", "time"])["score"].sort_index()

    x, y = scores(a), scores(b)
    both = x.notna() & y.reindex(x.index).notna()
    if not (x.isna() == y.reindex(x.index).isna()).all():
        return float("inf")
    return float((x[both] - y.reindex(x.index)[both]).abs().max())


def bench_separate(seconds: float, device: str, wiener: int) -> float:
    from lightning_sep.models import SkipFilter
    from lightning_sep.separation import ModelSeparator, separate_track

    torch.manual_seed(0)
    sep = ModelSeparator(SkipFilter(targets=["vocals"]), wiener_iterations=wiener, device=device)
    mixture = np.random.default_rng(0).standard_normal((2, int(seconds * 44100))).astype(np.float32) * 0.1
    separate_track(sep, mixture[:, :44100], 44100, device=device)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    separate_track(sep, mixture, 44100, device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return seconds / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="oracle_irm2", help="what to evaluate (a reference method: no checkpoint needed)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the separated mixture")
    parser.add_argument("--skip-eval", action="store_true")
    args = parser.parse_args(argv)
    print(f"# eval / separate benchmark, {time.strftime('%Y-%m-%d')}\nmachine: {machine()}\n")
    if not args.skip_eval:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        rows = bench_eval(args.method, [("museval", n) for n in sorted({1, cores})] + [("bsseval", 1)])
        base = rows[0]
        museval_rows = [r for r in rows if r[0] == "museval"]
        same = all(
            filecmp.cmp(p, folder / "test" / p.name, shallow=False)
            for _, _, _, folder in museval_rows[1:] for p in (base[3] / "test").glob("*.json")
        )
        n_tracks = len(list((base[3] / "test").glob("*.json")))
        print(f"| make eval {args.method}, {n_tracks} test tracks | metrics | workers | wall time (s) | speed-up |")
        print("|---|---|---:|---:|---:|")
        for metrics, n, wall, _ in rows:
            print(f"| | {metrics} | {n} | {wall:.1f} | {base[2] / wall:.2f}x |")
        print(f"\nmuseval's JSONs identical across worker counts: {same}; largest |difference| of bsseval's from "
              f"museval's: {max_json_difference(base[3], rows[-1][3]):.2g} dB\n")
    print(f"| separate ({args.seconds:g} s stereo, skip-filter) | device | Wiener | x real time |")
    print("|---|---|---:|---:|")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for wiener in (0, 1):
            print(f"| | {device} | {wiener} | {bench_separate(args.seconds, device, wiener):.1f} |")


if __name__ == "__main__":
    main()
