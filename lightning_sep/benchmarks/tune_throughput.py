"""Benchmark of ``make tune``: trials per hour with and without the pruner.

    python -m lightning_sep.benchmarks.tune_throughput [--model vae] [--data timit] [--trials 12]

Runs the same study twice -- the model's search space (``conf/tune/<model>.yaml``, its budget), the
same seed, the same number of trials -- once with the file's pruner and once with ``--pruner none``,
each in a fresh Optuna storage and MLflow store in a temporary folder (the repository's ``mlruns/``
is not touched).  Reported: wall time of the whole study (the worker's start-up included), trials per
hour, how many trials were pruned, the epochs trained in all (from the trials' intermediate values),
and the best validation SDR each study found.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
from pathlib import Path

from lightning_sep.benchmarks.eval_speed import machine


def run_study(model: str, data: str, trials: int, pruner: str | None, seed: int, folder: Path) -> dict:
    import optuna

    from lightning_sep.tuning.study import TuneSettings, tune

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    storage = f"sqlite:///{folder / 'optuna.db'}"
    settings = TuneSettings(model=model, data=data, n_trials=trials, study="bench", storage=storage, pruner=pruner,
                            seed=seed, out=str(folder / "out"))
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        result = tune(settings)
    seconds = time.perf_counter() - start
    study = optuna.load_study(study_name="bench", storage=storage)
    epochs = 0
    for t in study.get_trials(deepcopy=False):
        if t.intermediate_values:
            epochs += max(t.intermediate_values) + 1
    return {"seconds": seconds, "counts": result.counts, "best": result.best_value, "epochs": epochs}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vae")
    parser.add_argument("--data", default="timit")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    from lightning_sep.tuning.space import load_tune_config

    config = load_tune_config(args.model, args.data)
    pruner = config.pruner.get("name", "median")
    print(f"# make tune MODEL={args.model} DATA={args.data}: {args.trials} trials, budget {config.trainer_overrides}, "
          f"seed {args.seed}\n# {machine()}")
    print("| pruner | trials | pruned | failed | epochs trained | wall time | trials / hour | best val SDR (dB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        for name in (pruner, "none"):
            with tempfile.TemporaryDirectory(prefix="tune-bench-") as tmp:
                r = run_study(args.model, args.data, args.trials, name, args.seed, Path(tmp))
            n = sum(r["counts"].values())
            best = f"{r['best']:.2f}" if r["best"] is not None else "-"
            print(f"| {name} | {n} | {r['counts'].get('PRUNED', 0)} | {r['counts'].get('FAIL', 0)} | {r['epochs']} | "
                  f"{r['seconds'] / 60:.1f} min | {3600 * n / r['seconds']:.0f} | {best} |", flush=True)
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old


if __name__ == "__main__":
    main()
