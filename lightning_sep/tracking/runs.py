"""Finding trained models through MLflow, loading them safely, and logging evaluations to their runs.

``make eval MODEL=skipfilter`` (and ``make separate``) use :func:`resolve_checkpoint`: the best
checkpoint of the latest *finished* training run whose ``model.family`` tag is the model's name;
``--run-id`` picks a run, ``--ckpt`` a file.  :func:`load_model` loads it weights-only (no pickled
code runs) and checks that it belongs to the family asked for.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from lightning_sep.errors import LightningSepError
from lightning_sep.paths import default_tracking_uri
from lightning_sep.tracking.mlflow import check_tracking_uri, default_artifact_location, redact

EXPERIMENT = "lightning-sep"


@dataclass
class ResolvedCheckpoint:
    """A checkpoint file and what it is: its class, family and (if known) its MLflow run."""

    path: Path
    class_path: str
    family: str
    run_id: Optional[str] = None

    @property
    def label(self) -> str:
        """A short name for result folders: ``<family>-<run id[:8]>`` (or the file's stem)."""
        return f"{self.family}-{self.run_id[:8]}" if self.run_id else f"{self.family}-{self.path.stem}"


def client(tracking_uri: Optional[str] = None) -> Any:
    import logging

    from mlflow.tracking import MlflowClient

    # "Creating initial MLflow database tables..." is not news to a user of `make eval`
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    tracking_uri = tracking_uri or default_tracking_uri()
    check_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri)


def _read_hparams(path: Path) -> dict[str, Any]:
    import torch

    if not path.is_file():
        raise LightningSepError(f"Checkpoint {path}: no such file.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LightningSepError(
            f"Checkpoint {path}: cannot be loaded as a weights-only Lightning checkpoint ({first[:200]}). "
            "Pass a .ckpt written by `make train`."
        ) from None
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or "state_dict" not in ckpt:
        raise LightningSepError(f"Checkpoint {path}: not a Lightning checkpoint of a lightning-sep model.")
    return hp


def _class(class_path: str, where: Path) -> type:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise LightningSepError(f"Checkpoint {where}: its model class {class_path!r} does not exist in this version.") from None


def describe_checkpoint(path: str | Path, run_id: Optional[str] = None) -> ResolvedCheckpoint:
    """Class and family of a checkpoint file (read weights-only)."""
    path = Path(path).expanduser().resolve()
    hp = _read_hparams(path)
    class_path = hp.get("_class_path")
    if not class_path:
        raise LightningSepError(
            f"Checkpoint {path}: it does not record its model class (_class_path): it was not written "
            "by `lightning-sep fit`."
        )
    cls = _class(class_path, path)
    family = getattr(cls, "family", cls.__name__)
    if run_id is None and path.parent.name == "checkpoints":
        run_id = path.parent.parent.name  # mlruns/<experiment>/<run>/checkpoints/x.ckpt
    return ResolvedCheckpoint(path=path, class_path=class_path, family=family, run_id=run_id)


def _run_checkpoint(run: Any, tracking_uri: Optional[str] = None) -> Optional[Path]:
    """The run's best (else last, else newest) checkpoint on this machine; else the one uploaded to the
    store (``--trainer.logger.init_args.log_model true``, e.g. a teammate's run on a tracking server)."""
    tags = run.data.tags
    for key in ("checkpoint.best", "checkpoint.last"):
        value = tags.get(key)
        if value and Path(value).is_file():
            return Path(value)
    folder = tags.get("checkpoint.dir")
    if folder and Path(folder).is_dir():
        found = sorted(Path(folder).glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
        if found:
            return found[-1]
    return _uploaded_checkpoint(run, [tags.get("checkpoint.best"), tags.get("checkpoint.last")], tracking_uri)


def _uploaded_checkpoint(run: Any, paths: list[Optional[str]], tracking_uri: Optional[str]) -> Optional[Path]:
    """Download the first of ``paths`` that the run has as an artifact (Lightning's MLflow logger uploads
    ``<dir>/<name>.ckpt`` as ``<name>/<name>.ckpt``) into ``mlruns/downloaded/<run id>/`` (once)."""
    from lightning_sep.tracking.mlflow import results_dir
    from lightning_sep.utils.atomic import atomic_directory

    c = None
    for value in filter(None, paths):
        name = Path(value).name
        folder = results_dir("downloaded", tracking_uri) / run.info.run_id / Path(name).stem
        if (folder / name).is_file():
            return folder / name
        c = c or client(tracking_uri)
        try:
            if name not in [Path(a.path).name for a in c.list_artifacts(run.info.run_id, Path(name).stem)]:
                continue
            with atomic_directory(folder) as tmp:
                Path(c.download_artifacts(run.info.run_id, f"{Path(name).stem}/{name}", str(tmp))).rename(tmp / name)
        except Exception as err:
            raise LightningSepError(
                f"Run {run.info.run_id}: its checkpoint {name} could not be downloaded from the store "
                f"({' '.join(str(err).split())[:200]})."
            ) from None
        return folder / name
    return None


def resolve_checkpoint(
    model: Optional[str] = None,
    ckpt: Optional[str] = None,
    run_id: Optional[str] = None,
    tracking_uri: Optional[str] = None,
    experiment: str = EXPERIMENT,
    dataset: Optional[str] = None,
) -> ResolvedCheckpoint:
    """The checkpoint to use: ``ckpt``, else the run ``run_id``'s best, else the best of the latest
    finished run of family ``model`` (trained on ``dataset``, the tag ``data.dataset``, when given).
    A checkpoint of another family than ``model`` is an error."""
    if ckpt:
        resolved = describe_checkpoint(ckpt)
        if resolved.run_id is not None:
            try:
                client(tracking_uri).get_run(resolved.run_id)
            except Exception:
                resolved.run_id = None  # not a run of this store: results are not logged to a run
    elif run_id:
        try:
            run = client(tracking_uri).get_run(run_id)
        except Exception:
            raise LightningSepError(
                f"RUN_ID={run_id}: no such MLflow run in {redact(tracking_uri or default_tracking_uri())}."
            ) from None
        path = _run_checkpoint(run, tracking_uri)
        if path is None:
            raise LightningSepError(
                f"RUN_ID={run_id}: the run has no checkpoint on this machine (tags checkpoint.best/last) nor in the store "
                "(train with --trainer.logger.init_args.log_model true to upload checkpoints)."
            )
        resolved = describe_checkpoint(path, run_id=run_id)
    else:
        if not model:
            raise LightningSepError("Say which model: MODEL=<name>, CKPT=<path> or RUN_ID=<id>.")
        resolved = _latest_run_checkpoint(model, tracking_uri, experiment, dataset)
    if model and resolved.family != model:
        raise LightningSepError(
            f"Checkpoint {resolved.path} belongs to MODEL={resolved.family}, not MODEL={model}: "
            f"pass MODEL={resolved.family}, or the checkpoint of a {model} run."
        )
    return resolved


def _latest_run_checkpoint(model: str, tracking_uri: Optional[str], experiment: str,
                           dataset: Optional[str] = None) -> ResolvedCheckpoint:
    c = client(tracking_uri)
    store = redact(tracking_uri or default_tracking_uri())
    exp = c.get_experiment_by_name(experiment)
    hint = f"train one with `make train MODEL={model}`, or pass CKPT=<path> or RUN_ID=<id>."
    if exp is None:
        raise LightningSepError(f"No MLflow experiment {experiment!r} in {store}: {hint}")
    runs = c.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`model.family` = '{model}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=200,
    )
    others: set[str] = set()
    for run in runs:
        if run.data.tags.get("lightning_sep.stage", "fit") != "fit":
            continue
        trained_on = run.data.tags.get("data.dataset")
        if dataset is not None and trained_on != dataset:
            others.add(str(trained_on))
            continue
        path = _run_checkpoint(run, tracking_uri)
        if path is not None:
            return describe_checkpoint(path, run_id=run.info.run_id)
    on = f" trained on {dataset}" if dataset else ""
    seen = f" (there are runs on {', '.join(sorted(others))}: pass the DATA they were trained on, or RUN_ID=<id>)" if others else ""
    raise LightningSepError(f"No finished training run of MODEL={model}{on} with a checkpoint in {store}{seen}: {hint}")


def load_model(resolved: ResolvedCheckpoint, device: str = "cpu", trust_checkpoint: bool = False) -> Any:
    """The LightningModule of a checkpoint, in eval mode on ``device``.

    Loaded with ``weights_only=True`` unless ``trust_checkpoint`` (only for files you trust: a
    full unpickling can run code).
    """
    from lightning_sep.models.base import SpectrogramSeparator

    cls = _class(resolved.class_path, resolved.path)
    if not (isinstance(cls, type) and issubclass(cls, SpectrogramSeparator)):
        raise LightningSepError(
            f"Checkpoint {resolved.path}: {resolved.class_path} is not a separator family this command can run."
        )
    try:
        model = cls.load_from_checkpoint(resolved.path, map_location=device, weights_only=not trust_checkpoint)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise LightningSepError(f"Checkpoint {resolved.path}: cannot be loaded into {resolved.class_path} ({first[:300]}).") from None
    return model.eval()


def reference_run(method: str, label: str, dataset: str, settings_hash: str, tracking_uri: Optional[str] = None,
                  experiment: str = EXPERIMENT) -> str:
    """The MLflow run that holds a reference method's scores on a dataset (created once per settings)."""
    c = client(tracking_uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is not None:
        exp_id = exp.experiment_id
    else:  # as MLflowLogger does: artifacts beside a local store
        location = default_artifact_location(tracking_uri or default_tracking_uri())
        exp_id = c.create_experiment(experiment, artifact_location=location)
    runs = c.search_runs(
        [exp_id],
        filter_string=(
            f"tags.`model.family` = '{method}' and tags.`data.dataset` = '{dataset}' "
            f"and tags.`eval.settings` = '{settings_hash}'"
        ),
        max_results=1,
    )
    if runs:
        return runs[0].info.run_id
    run = c.create_run(
        exp_id, run_name=f"{label} on {dataset}",
        tags={"model.family": method, "data.dataset": dataset, "eval.settings": settings_hash,
              "lightning_sep.stage": "reference"},
    )
    c.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def log_evaluation(
    run_id: str,
    metrics: dict[str, float],
    tags: dict[str, Any],
    artifact_dirs: dict[str, Path],
    tracking_uri: Optional[str] = None,
) -> None:
    """Log test scores (``test/<target>/<metric>``), tags and result files to an existing run."""
    import math

    from mlflow.entities import Metric

    c = client(tracking_uri)
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None and math.isfinite(v)]
    for i in range(0, len(batch), 500):
        c.log_batch(run_id, metrics=batch[i : i + 500])
    for key, value in redact({k: str(v) for k, v in tags.items()}).items():
        c.set_tag(run_id, key, value)
    for artifact_path, folder in artifact_dirs.items():
        c.log_artifacts(run_id, str(folder), artifact_path=artifact_path)


@dataclass
class Resume:
    """Where ``RESUME=`` continues: the checkpoint, and the MLflow run to continue (None: a new run)."""

    ckpt: Path
    run_id: Optional[str]


def _last_checkpoint(run: Any) -> Optional[Path]:
    """``last.ckpt`` in the run's checkpoint folder (tagged when training starts, so a killed run has it too)."""
    tags = run.data.tags
    candidates = [tags.get("checkpoint.last")]
    if tags.get("checkpoint.dir"):
        candidates.append(str(Path(tags["checkpoint.dir"]) / "last.ckpt"))
    for value in candidates:
        if value and Path(value).is_file():
            return Path(value)
    return None


def resolve_resume(resume: str, family: str, tracking_uri: Optional[str] = None,
                   experiment: str = EXPERIMENT) -> Resume:
    """``RESUME=last``: the last checkpoint of the latest training run of ``family`` (finished, failed,
    killed or still marked running), continuing that run; ``RESUME=<path>``: that checkpoint, continuing
    its run when the file is in a run's checkpoint folder of this store (else the training is a new run)."""
    store = redact(tracking_uri or default_tracking_uri())
    if resume != "last":
        path = Path(resume).expanduser().resolve()
        if not path.is_file():
            raise LightningSepError(
                f"RESUME={resume}: no such checkpoint file. Pass RESUME=last (the latest {family} run) or the path "
                "of a .ckpt written by `make train` (mlruns/<experiment>/<run>/checkpoints/last.ckpt)."
            )
        resolved = describe_checkpoint(path)
        if resolved.family != family:
            raise LightningSepError(
                f"RESUME={resume}: the checkpoint is of MODEL={resolved.family}, not MODEL={family}: pass "
                f"MODEL={resolved.family}, or a checkpoint of a {family} run."
            )
        run_id = resolved.run_id
        if run_id is not None:
            try:
                client(tracking_uri).get_run(run_id)
            except Exception:
                run_id = None  # not a run of this store: the resumed training is logged as a new run
        return Resume(path, run_id)
    c = client(tracking_uri)
    exp = c.get_experiment_by_name(experiment)
    hint = f"start one with `make train MODEL={family}` (without RESUME), or pass RESUME=<path to a .ckpt>."
    runs = [] if exp is None else c.search_runs(
        [exp.experiment_id], filter_string=f"tags.`model.family` = '{family}'",
        order_by=["attributes.start_time DESC"], max_results=200,
    )
    for run in runs:
        if run.data.tags.get("lightning_sep.stage", "fit") != "fit":
            continue
        path = _last_checkpoint(run)
        if path is not None:
            describe_checkpoint(path)  # a readable, weights-only Lightning checkpoint
            return Resume(path.resolve(), run.info.run_id)
    raise LightningSepError(
        f"RESUME=last: no training run of MODEL={family} with a last checkpoint in {store}: {hint}"
    )
