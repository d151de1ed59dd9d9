"""``make tune``: an Optuna study over one family's hyperparameters, tracked in MLflow.

One trial is one ``make train`` run: the configs of ``conf/trainer``, ``conf/data`` and
``conf/model``, then the trial's values and budget (:mod:`lightning_sep.tuning.space`), trained by
the same LightningCLI; its objective is the best epoch's validation SDR, computed by the metric code
of training (:meth:`SpectrogramSeparator.log_scores`) -- or another metric logged every epoch (the
space file's ``metric``, or ``--metric``): with ``val/bss/sdr`` or ``val/bss/<target>/<SDR|SIR|SAR|ISR>``
every trial switches on BSS Eval v4 of the full validation tracks each epoch
(:class:`~lightning_sep.evaluation.validation.BSSEvalValidation`, ``--bsseval.every_n_epochs 1``).  The pieces:

* **Storage** -- an Optuna RDB storage: ``sqlite:///<repo>/mlruns/optuna.db`` unless
  ``--storage`` / ``$OPTUNA_STORAGE`` names another SQLAlchemy URL; several workers (processes or
  machines) on one URL share one study, and running again with the same study name resumes it.
  Heartbeats mark the trial of a killed worker as failed.
* **Sampler** -- TPE, seeded: the random draws of trial *n* come from ``seed`` and *n*, so a study
  run by one worker is reproducible, a resumed one does not repeat its start, and two workers do not
  draw the same configurations.  The first trial of a new study is the default configuration (when
  it lies in the space): the baseline the study has to beat.
* **Pruner** -- fed each validation's SDR by :class:`~lightning_sep.tuning.pruning.OptunaPruning`.
* **Failures** -- a trial that raises (NaN loss, out of memory, a configuration the model refuses)
  is recorded as failed with its reason; the study goes on.
* **MLflow** -- one parent run per study (experiment ``lightning-sep-tune``), one child run per
  trial with its params, per-epoch metrics and state; at the end of each worker the parent gets
  the best configuration as ``best.yaml`` (``make train MODEL=<m> ARGS="--config best.yaml"``
  retrains it), ``trials.csv``, and the optimisation-history and parameter-importance plots.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from lightning_sep.errors import LightningSepError
from lightning_sep.evaluation.validation import check_bss_metric, is_bss_metric
from lightning_sep.paths import REPO_ROOT
from lightning_sep.paths import default_optuna_storage as default_storage
from lightning_sep.registry import config_path
from lightning_sep.tracking.mlflow import _local_store_dir, default_artifact_location, git_commit, redact
from lightning_sep.tuning.space import TuneConfig, load_tune_config
from lightning_sep.utils.atomic import sqlite_lock

#: MLflow experiment of the studies (kept apart from training runs, which ``make eval`` looks up).
EXPERIMENT = "lightning-sep-tune"
#: Trial states counted towards ``--n-trials`` (a study's total, shared by its workers).
COUNTED_STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING")


def open_storage(url: str, heartbeat_interval: int = 60, grace_period: int = 180) -> Any:
    """An Optuna RDB storage on ``url``, connected now: an unreachable database is a clear error here,
    before any trial.  The password of the URL never appears in a message."""
    import optuna
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    shown = redact(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise LightningSepError(
            f"Optuna storage {shown!r} is not a SQLAlchemy URL; e.g. sqlite:///mlruns/optuna.db or "
            "postgresql://user:password@host:5432/database (--storage or OPTUNA_STORAGE)."
        ) from None
    backend = parsed.get_backend_name()
    engine: dict[str, Any] = {"pool_pre_ping": True}
    if backend == "sqlite":
        db = parsed.database or ""
        if db in ("", ":memory:"):
            raise LightningSepError(f"Optuna storage {shown!r}: an in-memory database cannot be shared or resumed; name a file.")
        folder = Path(db).expanduser().resolve().parent
        if not folder.is_dir():
            raise LightningSepError(f"Optuna storage {shown!r}: the folder {folder} does not exist; create it or pick another path.")
        engine["connect_args"] = {"timeout": 60}  # workers wait for each other's writes
    elif backend in ("postgresql", "mysql", "mariadb"):
        engine["connect_args"] = {"connect_timeout": 10}
    for attempt in range(4):
        try:
            # workers starting together on a new database race to create its tables: one at a time on
            # this machine (a lock beside a SQLite file), and a retry for the loser on a server
            with sqlite_lock(url), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine, heartbeat_interval=heartbeat_interval, grace_period=grace_period
                )
        except ImportError as err:
            raise LightningSepError(
                f"Optuna storage {shown!r}: the database driver {getattr(err, 'name', None) or ''} is not installed "
                f"({err}). PostgreSQL's (psycopg) comes with `make setup`; for MySQL: .venv/bin/pip install pymysql."
            ) from None
        except Exception as err:
            text = str(getattr(err, "orig", None) or err).strip()
            if attempt < 3 and _creation_race(text):
                time.sleep(0.5 * (attempt + 1))
                continue
            first = redact(text.splitlines()[0] if text else type(err).__name__)
            raise LightningSepError(
                f"Optuna storage {shown!r} cannot be reached ({first[:300]}). Check that the database server runs "
                "and that the URL's host, port, user, password and database are right; unset OPTUNA_STORAGE for "
                "the default mlruns/optuna.db."
            ) from None
    raise AssertionError("unreachable")


def _creation_race(message: str) -> bool:
    """Whether an error is another worker creating the same tables at the same moment."""
    message = message.lower()
    return any(k in message for k in ("already exists", "duplicate", "unique constraint", "alembic_version"))


def make_sampler(config: TuneConfig, seed: int) -> Any:
    from optuna.samplers import TPESampler

    class TrialSeededTPESampler(TPESampler):
        """TPE whose random draws for trial *n* come from ``(seed, n)`` (see the module docstring)."""

        def before_trial(self, study: Any, trial: Any) -> None:
            state = (seed * 1_000_003 + trial.number) % 2**32
            # TPESampler keeps two generators: its own (candidates) and its startup RandomSampler's
            self._rng.rng.seed(state)
            self._random_sampler._rng.rng.seed(state)
            super().before_trial(study, trial)

    try:
        return TrialSeededTPESampler(seed=seed, **config.sampler)
    except TypeError as err:
        raise LightningSepError(f"{config.path} sampler: {err}; see optuna.samplers.TPESampler.") from None


def make_pruner(config: TuneConfig, name: Optional[str] = None) -> Any:
    from optuna import pruners

    spec = dict(config.pruner)
    named = spec.pop("name", "median")
    chosen = name or named
    if chosen != named:
        spec = {}  # the options in the file are for the file's pruner
    classes = {
        "median": pruners.MedianPruner,
        "percentile": pruners.PercentilePruner,
        "hyperband": pruners.HyperbandPruner,
        "successive_halving": pruners.SuccessiveHalvingPruner,
        "none": pruners.NopPruner,
    }
    if chosen not in classes:
        raise LightningSepError(f"--pruner {chosen!r}: use one of {', '.join(classes)}.")
    try:
        return classes[chosen](**spec)
    except (TypeError, ValueError) as err:
        raise LightningSepError(f"{config.path} pruner ({chosen}): {err}.") from None


@dataclass
class TuneSettings:
    """What ``lightning-sep tune`` was asked (see :func:`lightning_sep.cli.tune_parser`)."""

    model: str
    data: str = "timit"
    trainer: str = "cpu"
    n_trials: int = 20
    study: Optional[str] = None
    storage: Optional[str] = None
    space: Optional[str] = None
    pruner: Optional[str] = None
    seed: int = 42
    timeout: Optional[float] = None
    experiment: str = EXPERIMENT
    out: Optional[str] = None
    baseline: bool = True
    metric: Optional[str] = None  # the objective, instead of the space file's metric (e.g. val/bss/sdr)

    @property
    def study_name(self) -> str:
        return self.study or f"{self.model}-{self.data}"


@dataclass
class TuneResult:
    """What a worker leaves: the study's counts, its best trial, and where the files are."""

    study_name: str
    parent_run_id: str
    counts: dict[str, int]
    best_value: Optional[float] = None
    best_trial: Optional[int] = None
    best_params: dict[str, Any] = field(default_factory=dict)
    baseline_value: Optional[float] = None
    best_config: Optional[Path] = None
    plots: list[Path] = field(default_factory=list)
    out_dir: Optional[Path] = None


def _study_dir(settings: TuneSettings, tracking_uri: str) -> Path:
    if settings.out:
        return Path(settings.out).expanduser().resolve()
    store = _local_store_dir(tracking_uri)
    return (store if store is not None else REPO_ROOT / "mlruns") / "tune" / settings.study_name


def _mlflow_client(experiment: str) -> tuple[Any, str, str]:
    from lightning_sep.paths import default_tracking_uri
    from lightning_sep.tracking.runs import client as make_client

    uri = default_tracking_uri()
    try:
        with sqlite_lock(uri):  # a new SQLite store's tables are created by the first client, once
            client = make_client(uri)
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                try:
                    exp_id = client.create_experiment(experiment, artifact_location=default_artifact_location(uri))
                except Exception:  # another worker (on another machine) created it first
                    exp = client.get_experiment_by_name(experiment)
                    if exp is None:
                        raise
                    exp_id = exp.experiment_id
            else:
                exp_id = exp.experiment_id
    except LightningSepError:
        raise
    except Exception as err:
        text = str(err).strip()
        raise LightningSepError(
            f"MLflow tracking store {redact(uri)!r} cannot be used ({redact(text.splitlines()[0] if text else type(err).__name__)[:300]})."
        ) from None
    return client, exp_id, uri


def _create_parent_run(client: Any, experiment_id: str, settings: TuneSettings, config: TuneConfig, storage_url: str) -> str:
    """The study's MLflow parent run, made by the worker that created the study: its params are
    the study's fixed settings and search space, ``space.yaml`` is the space file."""
    commit, dirty = git_commit()
    run = client.create_run(
        experiment_id,
        run_name=f"tune-{settings.study_name}",
        tags={
            "optuna.study_name": settings.study_name, "optuna.storage": redact(storage_url), "tune.role": "study",
            "model.family": settings.model, "data.dataset": settings.data,
            "mlflow.source.git.commit": commit, "git.dirty": str(dirty),
        },
    )
    run_id = run.info.run_id
    params = {"model": settings.model, "data": settings.data, "trainer": settings.trainer,
              "metric": config.metric, "direction": config.direction, "seed": settings.seed}
    params.update({f"space.{p.name}": _describe(p) for p in config.params})
    params.update({f"budget.{k}": v for k, v in config.trainer_overrides.items()})
    for key, value in params.items():
        client.log_param(run_id, key, redact(str(value))[:6000])
    client.log_text(run_id, config.path.read_text(), "space.yaml")
    return run_id


def _parent_run(study: Any, created: bool, client: Any, experiment_id: str, settings: TuneSettings, config: TuneConfig,
                storage_url: str) -> str:
    """The parent run of ``study``: its id is a user attribute of the study, set by the worker that
    created the study, so every worker (on any machine) logs to the same run (a joining worker has
    waited for it, :func:`_parent_wait`); a resumed study whose run is not in this MLflow store gets
    a new one."""
    key = "mlflow_parent_run_id"
    if not created:
        run_id = study.user_attrs.get(key)
        if run_id:
            with contextlib.suppress(Exception):
                if client.get_run(run_id).info.lifecycle_stage == "active":
                    client.update_run(run_id, status="RUNNING")
                    return run_id
    run_id = _create_parent_run(client, experiment_id, settings, config, storage_url)
    study.set_user_attr(key, run_id)
    return run_id


def _describe(p: Any) -> str:
    if p.kind == "categorical":
        return "choices " + json.dumps(list(p.choices))
    text = f"{p.kind} [{p.low}, {p.high}]"
    if p.step:
        text += f" step {p.step}"
    return text + (" log" if p.log else "")


def _check_study(study: Any, settings: TuneSettings, config: TuneConfig) -> None:
    """A resumed study must be of the same model, data and metric; a new one is labelled so."""
    want = {"model": settings.model, "data": settings.data, "metric": config.metric, "direction": config.direction}
    have = study.user_attrs
    if not have.get("model"):
        for key, value in want.items():
            study.set_user_attr(key, value)
        return
    clash = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
    if clash:
        detail = ", ".join(f"{k} {old!r} (asked: {new!r})" for k, (old, new) in clash.items())
        raise LightningSepError(
            f"STUDY={settings.study_name} already exists with {detail}. Pick another STUDY name, or the same MODEL and DATA to resume it."
        )


def _preflight(settings: TuneSettings, config: TuneConfig) -> None:
    """Parse and instantiate the default configuration once (no training): a broken config or data
    root fails here, before the study, not once per trial."""
    from lightning_sep.cli import run as cli_run

    args = [
        "--config", str(config_path("trainer", settings.trainer)), "--config", str(config_path("data", settings.data)),
        "--config", str(config_path("model", settings.model)), "--trainer.logger=false",
    ]
    if is_bss_metric(config.metric):  # the trials' BSS Eval validation: refused here for data without full tracks
        args += ["--bsseval.every_n_epochs", "1"]
    with _quiet():
        try:
            cli_run(args, subcommand=False, exit_on_error=False)
        except LightningSepError:
            raise
        except Exception as err:
            raise LightningSepError(
                f"MODEL={settings.model} DATA={settings.data} TRAINER={settings.trainer}: the configuration does not "
                f"instantiate ({str(err).strip().splitlines()[0][:400] if str(err).strip() else type(err).__name__})."
            ) from None


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        yield


class Objective:
    """One trial: a training run with the trial's values, returning the best epoch's metric."""

    def __init__(self, settings: TuneSettings, config: TuneConfig, client: Any, experiment_id: str,
                 parent_run_id: str, study_dir: Path, prune: bool):
        self.settings, self.config, self.client = settings, config, client
        self.experiment_id, self.parent_run_id, self.study_dir, self.prune = experiment_id, parent_run_id, study_dir, prune

    def __call__(self, trial: Any) -> float:
        import optuna

        from lightning_sep.cli import run as cli_run
        from lightning_sep.tuning.pruning import OptunaPruning

        values = self.config.suggest(trial)
        baseline = bool(trial.user_attrs.get("baseline"))
        child = self.client.create_run(
            self.experiment_id,
            run_name=f"{self.settings.study_name}-trial-{trial.number:03d}",
            tags={
                "mlflow.parentRunId": self.parent_run_id, "tune.role": "trial",
                "optuna.study_name": self.settings.study_name, "optuna.trial_number": str(trial.number),
                "optuna.trial_state": "RUNNING", "tune.baseline": str(baseline).lower(),
            },
        ).info.run_id
        trial.set_user_attr("mlflow_run_id", child)
        for name, value in values.items():
            self.client.log_param(child, name, json.dumps(value) if isinstance(value, (list, dict)) else str(value))

        overrides = self.config.overrides(values)
        if is_bss_metric(self.config.metric):  # the objective is BSS Eval of the full validation tracks: every epoch
            overrides["bsseval"] = {"every_n_epochs": 1}
        trainer = overrides.setdefault("trainer", {})
        trainer.setdefault("enable_progress_bar", False)
        trainer["logger"] = {
            "class_path": "lightning_sep.tracking.MLflowLogger",
            "init_args": {"experiment_name": self.settings.experiment, "run_id": child},
        }
        pruning = OptunaPruning(trial, self.config.metric, prune=self.prune)
        print(f"[tune {self.settings.study_name}] trial {trial.number}{' (default configuration)' if baseline else ''}: "
              + ", ".join(f"{k}={v}" for k, v in values.items()), flush=True)
        try:
            with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix=f"trial-{trial.number:04d}-",
                                             dir=self.study_dir, delete=False) as fh:
                yaml.safe_dump(overrides, fh, sort_keys=False)
            args = [
                "--config", str(config_path("trainer", self.settings.trainer)),
                "--config", str(config_path("data", self.settings.data)),
                "--config", str(config_path("model", self.settings.model)),
                "--config", fh.name,
            ]
            with _quiet():
                cli = cli_run(args, subcommand=False, callbacks=[pruning], exit_on_error=False)
                config = self.reproducible(cli, values)
                trial.set_user_attr("config", config)
                self.client.log_text(child, yaml.safe_dump(config, sort_keys=False), "trial_config.yaml")
                cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        except SystemExit as stop:  # Lightning turns Ctrl-C into exit(1) after its graceful shutdown
            self.finish(child, "FAIL", reason="interrupted", trial=trial)
            signal = stop.__context__  # which signal it was (lightning_sep.cli.main reports it)
            raise (signal if isinstance(signal, KeyboardInterrupt) else KeyboardInterrupt()) from stop
        except BaseException as err:
            from lightning_sep.cli import user_error

            # the user's error, not jsonargparse's "does not validate" wrapper around it
            cause = user_error(err) or err
            self.finish(child, "FAIL", reason=f"{type(cause).__name__}: {str(cause).strip()}", trial=trial)
            raise
        finally:
            with contextlib.suppress(OSError, UnboundLocalError):
                os.unlink(fh.name)
            cli = None
            self.release_memory()

        best = pruning.best(self.config.direction)
        if pruning.pruned_at is not None:
            self.finish(child, "PRUNED", value=best, extra={"optuna.pruned_at_epoch": str(pruning.pruned_at)})
            raise optuna.TrialPruned(f"pruned after epoch {pruning.pruned_at} ({self.config.metric} {best:.3f})")
        if best is None:
            reason = f"no finite {self.config.metric} was measured (does validation run within the trial's max_epochs?)"
            self.finish(child, "FAIL", reason=reason, trial=trial)
            raise RuntimeError(reason)
        self.finish(child, "COMPLETE", value=best)
        return best

    def reproducible(self, cli: Any, values: dict[str, Any]) -> dict[str, Any]:
        """The config that retrains this trial with ``make train``: the seed, the budget and trainer
        values, and the whole data and model sections (every argument, so that the DataModule's
        defaults of another ``DATA`` cannot leak in)."""
        full = yaml.safe_load(cli.parser.dump(cli.config, skip_none=False))
        trainer = self.config.overrides(values).get("trainer", {})
        out = {"seed_everything": full.get("seed_everything")}
        if trainer:
            out["trainer"] = trainer
        out["data"] = full["data"]
        out["model"] = full["model"]
        if is_bss_metric(self.config.metric):  # retrained, it logs the metric it was chosen by
            out["bsseval"] = full.get("bsseval")
        return redact(out)

    def finish(self, run_id: str, state: str, value: Optional[float] = None, reason: Optional[str] = None,
               extra: Optional[dict[str, str]] = None, trial: Any = None) -> None:
        """Close the child run with the trial's state (MLflow status FINISHED, KILLED for a pruned
        trial, FAILED) and its value or failure reason; the reason also goes to the trial's user
        attribute ``fail_reason`` (Optuna 5 keeps none), which ``trials.csv`` and the dashboard show."""
        tags = {"optuna.trial_state": state, **(extra or {})}
        if reason:
            tags["optuna.fail_reason"] = redact(reason)[:4000]
            if trial is not None:
                with contextlib.suppress(Exception):
                    trial.set_user_attr("fail_reason", redact(reason)[:4000])
            print(f"[tune {self.settings.study_name}] trial failed: {redact(reason)[:500]}", flush=True)
        with contextlib.suppress(Exception):
            for key, val in tags.items():
                self.client.set_tag(run_id, key, val)
            if value is not None and math.isfinite(value):
                self.client.log_metric(run_id, "optuna/value", value)
            status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(state, "FAILED")
            self.client.set_terminated(run_id, status=status)

    @staticmethod
    def release_memory() -> None:
        gc.collect()
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def tune(settings: TuneSettings) -> TuneResult:
    """Run (or resume) the study of ``settings``; returns its state when this worker is done."""
    import optuna

    if settings.n_trials < 1:
        raise LightningSepError(f"N_TRIALS={settings.n_trials}: give at least 1 (the study's total number of trials).")
    if settings.timeout is not None and settings.timeout <= 0:
        raise LightningSepError(f"--timeout {settings.timeout}: give a positive number of seconds.")
    config = load_tune_config(settings.model, settings.data, settings.trainer, settings.space)
    if settings.metric is not None:
        if not settings.metric.strip():
            raise LightningSepError("--metric: give a validation metric logged every epoch, e.g. val/sdr or val/bss/sdr.")
        config.metric = settings.metric.strip()
    if is_bss_metric(config.metric):
        check_bss_metric(config.metric, "--metric" if settings.metric is not None else f"{config.path}: metric")
    sampler = make_sampler(config, settings.seed)
    pruner = make_pruner(config, settings.pruner)
    storage_url = settings.storage or default_storage()
    storage = open_storage(storage_url)
    client, experiment_id, tracking_uri = _mlflow_client(settings.experiment)
    _preflight(settings, config)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, parent = join_study(settings, config, storage, sampler, pruner, client, experiment_id, storage_url)
    study_dir = _study_dir(settings, tracking_uri)
    study_dir.mkdir(parents=True, exist_ok=True)
    client.set_tag(parent, "tune.n_trials", str(settings.n_trials))
    pruner_name = settings.pruner or config.pruner.get("name", "median")
    client.set_tag(parent, "tune.pruner", pruner_name)

    states = tuple(getattr(optuna.trial.TrialState, s) for s in COUNTED_STATES)
    done = len(study.get_trials(deepcopy=False, states=states))
    remaining = settings.n_trials - done
    prune = pruner_name != "none"
    print(f"[tune {settings.study_name}] MODEL={settings.model} DATA={settings.data}: {done} of {settings.n_trials} "
          f"trials already in the study; storage {redact(storage_url)}; MLflow parent run {parent}", flush=True)
    started = time.time()
    if remaining > 0:
        objective = Objective(settings, config, client, experiment_id, parent, study_dir, prune)
        try:
            study.optimize(
                objective, n_trials=remaining, timeout=settings.timeout, catch=(Exception,), gc_after_trial=True,
                callbacks=[optuna.study.MaxTrialsCallback(settings.n_trials, states=states),
                           _ProgressLog(client, parent, config)],
            )
        finally:
            client.set_tag(parent, "tune.last_worker_seconds", f"{time.time() - started:.1f}")
    else:
        print(f"[tune {settings.study_name}] the study has its {settings.n_trials} trials; raise N_TRIALS to run more.", flush=True)
    from lightning_sep.tuning.report import report

    return report(study, settings, config, client, parent, study_dir)


def join_study(settings: TuneSettings, config: TuneConfig, storage: Any, sampler: Any, pruner: Any, client: Any,
               experiment_id: str, storage_url: str) -> tuple[Any, str]:
    """Create or join the study; returns ``(study, MLflow parent run id)``.

    Exactly one worker creates the study (Optuna's unique study name decides, on any storage); it
    labels the study (model, data, metric), creates the MLflow parent run and records its id in the
    study, then enqueues the default configuration.  The others wait for that id and use the same run.
    """
    study, created = _open_study(settings, config, storage, sampler, pruner)
    if not created:
        _parent_wait(study)
    _check_study(study, settings, config)
    parent = _parent_run(study, created, client, experiment_id, settings, config, storage_url)
    if created and settings.baseline:
        point = config.baseline()
        if point is not None:  # only the creator: two workers must not both run the defaults
            study.enqueue_trial(point, user_attrs={"baseline": True})
    return study, parent


def _open_study(settings: TuneSettings, config: TuneConfig, storage: Any, sampler: Any, pruner: Any) -> tuple[Any, bool]:
    """Create the study, or load it when it exists (another worker's, or an earlier run's); returns
    ``(study, created)``.  Exactly one worker creates a study, and only it enqueues the baseline."""
    import optuna

    try:
        study = optuna.create_study(
            study_name=settings.study_name, storage=storage, sampler=sampler, pruner=pruner,
            direction=config.direction, load_if_exists=False,
        )
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        pass
    study = optuna.load_study(study_name=settings.study_name, storage=storage, sampler=sampler, pruner=pruner)
    if study.direction.name.lower() != config.direction:
        raise LightningSepError(
            f"STUDY={settings.study_name} exists and is {study.direction.name.lower()}d, but {config.path} says "
            f"{config.direction}. Pick another STUDY name."
        )
    return study, False


def _parent_wait(study: Any, wait: float = 120.0) -> None:
    """A worker that joins a study just created by another waits until the creator has labelled it
    and named its parent run (seconds; after ``wait`` it goes on and makes its own)."""
    if study.get_trials(deepcopy=False):  # trials ran: the creator was done long ago
        return
    deadline = time.monotonic() + wait
    while "mlflow_parent_run_id" not in study.user_attrs and time.monotonic() < deadline:
        time.sleep(0.5)


class _ProgressLog:
    """After each trial: the trial's value and the best so far on the parent run (MLflow charts them
    against the trial number), and one line on the terminal."""

    def __init__(self, client: Any, parent: str, config: TuneConfig):
        self.client, self.parent, self.config = client, parent, config

    def __call__(self, study: Any, trial: Any) -> None:
        state = trial.state.name
        line = f"[tune {study.study_name}] trial {trial.number} {state}"
        with contextlib.suppress(Exception):
            if trial.value is not None:
                self.client.log_metric(self.parent, "trial/value", trial.value, step=trial.number)
                if state == "PRUNED" and trial.intermediate_values:
                    line += f" at epoch {max(trial.intermediate_values)}"
                line += f": {self.config.metric} {trial.value:.3f}"
            best = study.best_trial
            self.client.log_metric(self.parent, "best/value", best.value, step=trial.number)
            line += f"  (best {best.value:.3f}, trial {best.number})"
        print(line, flush=True)
