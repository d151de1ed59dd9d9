"""Benchmark of ``make eval`` and ``separate``: museval wall time with 1 worker and with every core
(on the same tracks, with identical scores), and separation speed as a multiple of real time.

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


def bench_eval(method: str, workers: list[int]) -> list[tuple[int, float, Path]]:
    from lightning_sep.evaluation.evaluate import EvalSettings, evaluate

    rows = []
    for n in workers:
        out = Path(tempfile.mkdtemp(prefix=f"bench-eval-{n}-"))
        start = time.perf_counter()
        result = evaluate(EvalSettings(model=method, out=str(out), workers=n, log_mlflow=False, progress=False))
        rows.append((n, time.perf_counter() - start, result.folder))
    return rows


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
        rows = bench_eval(args.method, sorted({1, cores}))
        base = rows[0]
        same = all(
            filecmp.cmp(p, folder / "test" / p.name, shallow=False)
            for _, _, folder in rows[1:] for p in (base[2] / "test").glob("*.json")
        )
        n_tracks = len(list((base[2] / "test").glob("*.json")))
        print(f"| museval, {args.method}, {n_tracks} test tracks | workers | wall time (s) | speed-up |")
        print("|---|---:|---:|---:|")
        for n, wall, _ in rows:
            print(f"| | {n} | {wall:.1f} | {base[1] / wall:.2f}x |")
        print(f"\nscores identical across worker counts: {same}\n")
    print(f"| separate ({args.seconds:g} s stereo, skip-filter) | device | Wiener | x real time |")
    print("|---|---|---:|---:|")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for wiener in (0, 1):
            print(f"| | {device} | {wiener} | {bench_separate(args.seconds, device, wiener):.1f} |")


if __name__ == "__main__":
    main()
