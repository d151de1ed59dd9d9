"""What a study leaves behind: the best configuration, the trial table and the plots, on the parent run.

* ``best.yaml`` -- the best trial's configuration (seed, budget, the whole data and model
  sections), which ``make train MODEL=<m> ARGS="--config best.yaml"`` retrains;
* ``trials.csv`` -- every trial: number, state, value, parameters, duration, fail reason, MLflow run;
* ``optimization_history.png`` and ``param_importances.png`` -- Optuna's plots (matplotlib, Agg).

They are written under ``mlruns/tune/<study>/`` (atomically) and logged to the study's MLflow
parent run; the parent run also gets ``best/<metric>`` and the best trial's parameters as tags.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import yaml

from lightning_sep.tracking.mlflow import redact
from lightning_sep.tuning.space import TuneConfig
from lightning_sep.utils.atomic import atomic_write_bytes, atomic_write_text


def _close_stale_children(study: Any, client: Any) -> None:
    """A trial that Optuna failed by heartbeat (its worker was killed) leaves a RUNNING child run."""
    for trial in study.get_trials(deepcopy=False):
        run_id = trial.user_attrs.get("mlflow_run_id")
        if not run_id or trial.state.name != "FAIL":
            continue
        with contextlib.suppress(Exception):
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_tag(run_id, "optuna.trial_state", "FAIL")
                client.set_tag(run_id, "optuna.fail_reason", fail_reason(trial))
                client.set_terminated(run_id, status="FAILED")


def fail_reason(trial: Any) -> str:
    """Why a trial failed: recorded by the objective; a trial failed by Optuna's heartbeat check has none."""
    reason = trial.user_attrs.get("fail_reason") or trial.system_attrs.get("fail_reason")
    return redact(reason) if reason else "no reason recorded (its worker stopped: Optuna's heartbeat check failed it)"


def trials_table(study: Any) -> str:
    """``trials.csv``: one row per trial."""
    import csv

    trials = study.get_trials(deepcopy=False)
    names = sorted({n for t in trials for n in t.params})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["number", "state", "value", *names, "seconds", "baseline", "pruned_at_step", "fail_reason", "mlflow_run_id"])
    for t in trials:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else ""
        pruned = max(t.intermediate_values) if t.state.name == "PRUNED" and t.intermediate_values else ""
        writer.writerow([
            t.number, t.state.name, "" if t.value is None else f"{t.value:.4f}", *[t.params.get(n, "") for n in names],
            f"{seconds:.1f}" if seconds != "" else "", bool(t.user_attrs.get("baseline")), pruned,
            fail_reason(t).splitlines()[0][:300] if t.state.name == "FAIL" else "",
            t.user_attrs.get("mlflow_run_id", ""),
        ])
    return out.getvalue()


def plots(study: Any, folder: Path, metric: str = "Objective Value") -> list[Path]:
    """The optimisation history (and, with two or more complete trials, the parameter importances)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    made: list[Path] = []
    jobs = [("optimization_history.png", ovm.plot_optimization_history)]
    if len(complete) >= 2 and any(len({repr(t.params.get(n)) for t in complete}) > 1 for n in complete[0].params):
        jobs.append(("param_importances.png", ovm.plot_param_importances))
    for name, plot in jobs:
        if not complete:
            break
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                ax = plot(study, target_name=metric)
            except (ValueError, RuntimeError, ZeroDivisionError) as err:
                print(f"[tune {study.study_name}] no {name}: {err}")
                continue
        fig = (ax[0] if isinstance(ax, (list, tuple)) else ax).figure
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        atomic_write_bytes(folder / name, buf.getvalue())
        made.append(folder / name)
    return made


def best_config_text(study: Any, settings: Any, config: TuneConfig) -> str:
    best = study.best_trial
    params = ", ".join(f"{k}={v}" for k, v in best.params.items())
    header = (
        f"# Best configuration of Optuna study {settings.study_name!r} (MODEL={settings.model} DATA={settings.data} "
        f"TRAINER={settings.trainer}):\n# trial {best.number}, {config.metric} {best.value:.3f} ({params}).\n"
        f"# Retrain: make train MODEL={settings.model} ARGS=\"--config <this file>\"\n"
    )
    return header + yaml.safe_dump(best.user_attrs["config"], sort_keys=False)


def report(study: Any, settings: Any, config: TuneConfig, client: Any, parent: str, folder: Path) -> Any:
    """Write and log the study's results (see the module docstring) and print a summary."""
    from lightning_sep.tuning.study import TuneResult

    _close_stale_children(study, client)
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    result = TuneResult(study_name=settings.study_name, parent_run_id=parent, counts=counts, out_dir=folder)

    atomic_write_text(folder / "trials.csv", trials_table(study))
    client.log_artifact(parent, str(folder / "trials.csv"))
    baseline = [t for t in trials if t.user_attrs.get("baseline") and t.state.name == "COMPLETE"]
    if baseline:
        result.baseline_value = baseline[0].value
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if complete:
        best = study.best_trial
        result.best_value, result.best_trial, result.best_params = best.value, best.number, dict(best.params)
        if "config" in best.user_attrs:
            atomic_write_text(folder / "best.yaml", best_config_text(study, settings, config))
            result.best_config = folder / "best.yaml"
            client.log_artifact(parent, str(result.best_config))
        metric = config.metric.replace("/", "_")
        client.log_metric(parent, f"best/{metric}", best.value)
        if result.baseline_value is not None:
            client.log_metric(parent, f"baseline/{metric}", result.baseline_value)
        client.set_tag(parent, "optuna.best_trial", str(best.number))
        client.set_tag(parent, "optuna.best_run_id", best.user_attrs.get("mlflow_run_id", ""))
        for name, value in best.params.items():
            client.set_tag(parent, f"best.{name}", str(value))
    result.plots = plots(study, folder, config.metric)
    for path in result.plots:
        client.log_artifact(parent, str(path))
    for state, n in counts.items():
        client.set_tag(parent, f"optuna.trials.{state.lower()}", str(n))
    if not any(t.state.name == "RUNNING" for t in trials):
        client.set_terminated(parent, status="FINISHED")

    lines = ["", "=" * 72, f"Optuna study {settings.study_name!r}: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))]
    if result.best_value is not None:
        lines.append(f"best trial:      {result.best_trial}, {config.metric} {result.best_value:.3f} "
                     f"({', '.join(f'{k}={v}' for k, v in result.best_params.items())})")
    if result.baseline_value is not None:
        lines.append(f"default config:  {config.metric} {result.baseline_value:.3f}"
                     + (f"  (best is {result.best_value - result.baseline_value:+.3f})" if result.best_value is not None else ""))
    if result.best_config:
        lines.append(f"best config:     {result.best_config}")
        lines.append(f"retrain it:      make train MODEL={settings.model} ARGS=\"--config {result.best_config}\"")
    lines.append(f"results:         {folder} (trials.csv, plots); MLflow parent run {parent} (experiment {settings.experiment!r})")
    lines.append("dashboard:       make tune-dashboard")
    lines.append("=" * 72)
    print("\n".join(lines), flush=True)
    return result
