"""Benchmark of the speech metrics: our BSS Eval v3 ``bss_eval_sources`` against
``mir_eval.separation.bss_eval_sources`` (the reference) on the TIMIT test mixtures, same inputs.

    python -m lightning_sep.benchmarks.speech_metrics [--data timit] [--repeat 3]

The estimates are the oracle IRM2 separation of each test mixture (``TIMIT_ROOT``, else the
embedded corpus); the table gives the best-of-``repeat`` wall time per mixture of each
implementation, single process, and the largest score difference between them.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from lightning_sep.benchmarks.eval_speed import machine


def _best(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main(argv: list[str] | None = None) -> None:
    from mir_eval.separation import bss_eval_sources as reference

    from lightning_sep.evaluation.evaluate import load_datamodule
    from lightning_sep.evaluation.speech_metrics import bss_eval_sources
    from lightning_sep.separation import reference_separator, separate_track

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="timit", help="conf/data/<name>.yaml of a speech DataModule")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    dm = load_datamodule(args.data)
    mixtures = dm.test_mixtures()
    sources = list(dm.sources)
    sep = reference_separator("oracle_irm2", dm.front_end, sources, sources)
    print(f"# speech metrics benchmark, {time.strftime('%Y-%m-%d')}\nmachine: {machine()}\n")
    print(f"| {dm.dataset_name} test mixture | seconds | ours (s) | mir_eval (s) | speed-up | max |diff| (dB) |")
    print("|---|---:|---:|---:|---:|---:|")
    total_ours = total_ref = 0.0
    for m in mixtures:
        est = separate_track(sep, m.audio[:1], dm.sample_rate, references=m.audio[1:, None, :])
        est = np.stack([est[s][:, 0] for s in sources]).astype(np.float64)
        refs = m.audio[1:].astype(np.float64)
        t_ours, ours = _best(lambda: bss_eval_sources(refs, est), args.repeat)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t_ref, ref = _best(lambda: reference(refs, est), args.repeat)
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip((ours.sdr, ours.sir, ours.sar), ref[:3]))
        total_ours, total_ref = total_ours + t_ours, total_ref + t_ref
        print(f"| {m.name} | {m.audio.shape[-1] / dm.sample_rate:.2f} | {t_ours:.3f} | {t_ref:.3f} | "
              f"{t_ref / t_ours:.1f}x | {diff:.1e} |")
    print(f"| all {len(mixtures)} | | {total_ours:.3f} | {total_ref:.3f} | {total_ref / total_ours:.1f}x | |")


if __name__ == "__main__":
    main()
