"""MLflow tracking for every ``lightning-sep`` run.

* :class:`MLflowLogger` is Lightning's ``MLFlowLogger`` with the platform's defaults: the SQLite
  store ``sqlite:///<repo>/mlruns/mlflow.db`` (``MLFLOW_TRACKING_URI`` overrides it), artifacts
  and checkpoints under ``mlruns/``.
* :class:`MLflowSaveConfig` records the resolved config of a run: flattened as params, and as
  ``config.yaml`` (which ``lightning-sep fit --config config.yaml`` re-runs), with tags for the
  git commit, the model family and the dataset.
* :class:`RunSummary` tags the best and last checkpoint paths and prints the run's summary; a training
  that raises ends ``FAILED``, one stopped by Ctrl-C (SIGINT) or SIGTERM ends ``KILLED``, with the reason
  in the tag ``end.reason`` (never ``RUNNING`` forever; a SIGKILLed run is continued by ``RESUME=last``).
* :func:`check_tracking_uri` says at once, before any data is loaded, that a tracking server cannot be
  reached or a local store cannot be written (MLflow's own client retries a refused connection for about
  4 minutes, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` with back-off, before it fails).

Passwords in URLs (``scheme://user:password@host``) are replaced by ``***`` in everything written
to MLflow (:func:`redact`).
"""

from __future__ import annotations

import os
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

import yaml
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

from lightning_sep.errors import LightningSepError
from lightning_sep.paths import REPO_ROOT, default_tracking_uri
from lightning_sep.utils.atomic import sqlite_lock

_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]+:)(?P<pw>[^@\s]+)(?P<at>@)")


def redact(value: Any) -> Any:
    """Replace the password of every ``scheme://user:password@host`` URL by ``***`` (recursively)."""
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\g<head>***\g<at>", value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


def _local_store_dir(tracking_uri: str) -> Optional[Path]:
    """The folder of a local store (``sqlite:///path/x.db`` or ``file:``/plain path); else None."""
    if tracking_uri.startswith("sqlite:///"):
        db = tracking_uri[len("sqlite:///") :]
        return Path(db if db.startswith("/") else Path.cwd() / db).parent
    parsed = urlparse(tracking_uri)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path)
    return None


def results_dir(name: str, tracking_uri: Optional[str] = None) -> Path:
    """``<store folder>/<name>``: where a command's result files go, beside the local MLflow store of
    ``tracking_uri`` (default: the platform's, e.g. ``mlruns/eval``); ``<repo>/mlruns/<name>`` for a
    tracking server."""
    store = _local_store_dir(tracking_uri or default_tracking_uri())
    return (store if store is not None else REPO_ROOT / "mlruns") / name


def is_remote(tracking_uri: str) -> bool:
    """An MLflow tracking server (``http(s)://``), as opposed to a store this process opens itself."""
    return tracking_uri.startswith(("http://", "https://"))


def _uri_source(tracking_uri: str) -> str:
    return "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") == tracking_uri else "the tracking URI"


_reachable: set[str] = set()


def check_tracking_uri(tracking_uri: str, timeout: float = 5.0) -> None:
    """Fail at once, clearly, when the MLflow store of ``tracking_uri`` cannot be used.

    A server (``http(s)://``) must answer MLflow's ``/health`` endpoint within ``timeout`` seconds;
    a SQLite store's folder must be creatable and writable. Checked once per process and URI.
    """
    if tracking_uri in _reachable:
        return
    shown, source = redact(tracking_uri), _uri_source(tracking_uri)
    if is_remote(tracking_uri):
        url = tracking_uri.rstrip("/") + "/health"
        hint = ("start it (`make server`, see the README's team server section), check the address, or unset "
                "MLFLOW_TRACKING_URI to track in the local store mlruns/mlflow.db")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (http/https only)
                response.read(64)
        except urllib.error.HTTPError as err:
            if err.code not in (401, 403):  # behind authentication: MLflow's client brings the credentials
                raise LightningSepError(
                    f"The MLflow tracking server {shown} ({source}) answers HTTP {err.code} on /health: it is not an "
                    f"MLflow tracking server, or not at this address. Give the URL `mlflow server` prints, or {hint}."
                ) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise LightningSepError(
                f"The MLflow tracking server {shown} ({source}) cannot be reached ({reason}): {hint}."
            ) from None
    else:
        store = _local_store_dir(tracking_uri)
        if store is not None:
            try:
                store.mkdir(parents=True, exist_ok=True)
                if not os.access(store, os.W_OK):
                    raise PermissionError("not writable")
            except OSError as err:
                raise LightningSepError(
                    f"The MLflow store {shown} ({source}) cannot be written: its folder {store} "
                    f"{getattr(err, 'strerror', None) or err}. Point MLFLOW_TRACKING_URI at a writable place, "
                    "e.g. sqlite:///$PWD/mlruns/mlflow.db."
                ) from None
    _reachable.add(tracking_uri)


def default_artifact_location(tracking_uri: str) -> Optional[str]:
    """``<store folder>/artifacts`` for a local store (MLflow's own default would be relative to the
    current directory); None (the server's choice) otherwise."""
    store = _local_store_dir(tracking_uri)
    return (store / "artifacts").as_uri() if store is not None else None


def fresh_run_name() -> str:
    """MLflow's adjective-noun-number run name, drawn from the OS's entropy, leaving the (seeded) global
    ``random`` state as it was."""
    import random

    from mlflow.utils.name_utils import _generate_random_name

    state = random.getstate()
    try:
        random.seed()
        return _generate_random_name()
    finally:
        random.setstate(state)


class MLflowLogger(MLFlowLogger):
    """Lightning's MLflow logger with the platform's store, experiment and checkpoint folder.

    Args:
        experiment_name: the MLflow experiment (default ``lightning-sep``).
        tracking_uri: ``None`` = ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<repo>/mlruns/mlflow.db``.
        artifact_location: for a new experiment; ``None`` = ``<repo>/mlruns/artifacts`` for the
            default store, the server's choice otherwise.
        checkpoint_dir: checkpoints go to ``<checkpoint_dir>/<experiment_id>/<run_id>/checkpoints``;
            ``None`` = the store's folder for a local store (``mlruns/``), ``<repo>/mlruns/checkpoints``
            for a tracking server (run ids are unique, so runs of several stores never share a folder).
        Others as in :class:`lightning.pytorch.loggers.MLFlowLogger`.
    """

    def __init__(
        self,
        experiment_name: str = "lightning-sep",
        run_name: Optional[str] = None,
        tracking_uri: Optional[str] = None,
        tags: Optional[dict[str, Any]] = None,
        log_model: bool = False,
        prefix: str = "",
        artifact_location: Optional[str] = None,
        run_id: Optional[str] = None,
        checkpoint_dir: Optional[str] = None,
    ):
        tracking_uri = tracking_uri or default_tracking_uri()
        check_tracking_uri(tracking_uri)
        #: named here, not by MLflow (whose draw from the seeded global RNG names every run alike); the family is
        #: put in front when the config is saved (:class:`MLflowSaveConfig`)
        self.auto_name = run_name is None and run_id is None
        if self.auto_name:
            run_name = fresh_run_name()
        store = _local_store_dir(tracking_uri)
        if artifact_location is None:
            artifact_location = default_artifact_location(tracking_uri)
        with sqlite_lock(tracking_uri):  # ranks started together (torchrun, SLURM) create a new store once
            super().__init__(
                experiment_name=experiment_name,
                run_name=run_name,
                tracking_uri=tracking_uri,
                tags=redact(tags),
                log_model=log_model,
                prefix=prefix,
                artifact_location=artifact_location,
                run_id=run_id,
            )
        self._checkpoint_root = checkpoint_dir or str(store if store else REPO_ROOT / "mlruns" / "checkpoints")
        #: True when this logger continues an existing run (``RESUME=``): params already logged stay as they are
        self.resumed = run_id is not None
        #: how the run ends when Lightning finalizes it as "failed": FAILED (an error) or KILLED (a signal)
        self.end_status = "FAILED"

    def resume(self, run_id: str) -> None:
        """Continue the existing run ``run_id`` (``RESUME=``): metrics go on at the restored global step.
        The run is marked RUNNING again when training sets up (:meth:`mark_running`), inside Lightning's
        error handling, so that an interruption before that leaves its old status, not RUNNING."""
        self._run_id, self.resumed = run_id, True

    @rank_zero_only
    def mark_running(self) -> None:
        self.experiment.update_run(self.run_id, status="RUNNING")

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """End the run: FINISHED, or on an interruption ``end_status`` (FAILED / KILLED)."""
        super().finalize(self.end_status if status == "failed" else status)

    @property
    def save_dir(self) -> Optional[str]:
        return self._checkpoint_root

    @rank_zero_only
    def set_tags(self, tags: dict[str, Any]) -> None:
        for key, value in redact({k: str(v) for k, v in tags.items()}).items():
            self.experiment.set_tag(self.run_id, key, value)

    @rank_zero_only
    def log_text(self, text: str, artifact_file: str) -> None:
        self.experiment.log_text(self.run_id, redact(text), artifact_file)

    @property
    def ui_command(self) -> str:
        """How to open this run in the MLflow UI (bound to loopback)."""
        uri = redact(self._tracking_uri)
        if is_remote(uri):
            return f"open {uri}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return f"make ui   (or: mlflow ui --host 127.0.0.1 --backend-store-uri '{uri}')"


def git_commit() -> tuple[str, bool]:
    """The repository's HEAD commit and whether the work tree has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--verify", "-q", "HEAD"], capture_output=True, text=True, timeout=10
        )
        commit = head.stdout.strip() if head.returncode == 0 else ""
        dirty = bool(
            subprocess.run(
                ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True, text=True, timeout=10,
            ).stdout.strip()
        )
        return commit or "unknown", dirty
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}." if prefix or k else ""))
    else:
        out[prefix[:-1]] = d
    return out


#: options of ``fit`` that say how a run starts, not what it is: tags, not params (a resumed run changes them)
_RUN_CONTROL = {"ckpt_path", "resume", "weights_only"}


class MLflowSaveConfig(SaveConfigCallback):
    """Saves the resolved config to the run: params, ``config.yaml`` artifact, and tags."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("save_to_log_dir", False)
        super().__init__(*args, **kwargs)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        logger = trainer.logger
        if not isinstance(logger, MLflowLogger):
            return
        text = self.parser.dump(self.config, skip_none=False)
        config = yaml.safe_load(text)
        subcommand = getattr(self.config, "subcommand", None)
        resolved = config.get(subcommand, config) if subcommand else config
        params = {k: v for k, v in _flatten(resolved).items()
                  if not k.startswith("trainer.callbacks") and k not in _RUN_CONTROL}
        text = yaml.safe_dump(redact(resolved), sort_keys=False)
        if logger.resumed:  # MLflow refuses to change a logged param: keep the first, record what changed
            previous = logger.experiment.get_run(logger.run_id)
            run = previous.data
            before = run.params
            params = {k: v for k, v in redact(params).items() if k not in before}
            changed = sorted(k for k, v in _flatten(redact(resolved)).items() if k in before and str(v) != before[k])
            resumes = int(run.tags.get("resume.count", "0")) + 1
            ended = previous.info.status + (f": {run.tags['end.reason']}" if run.tags.get("end.reason") else "")
            logger.set_tags({"resume.count": resumes, f"resume.{resumes}.from": resolved.get("ckpt_path") or "",
                             f"resume.{resumes}.changed": ",".join(changed), f"resume.{resumes}.after": ended})
            if "end.reason" in run.tags:  # the reason of the previous ending; this training writes its own
                logger.experiment.delete_tag(logger.run_id, "end.reason")
            logger.mark_running()
            logger.log_text(text, f"resume/config-{resumes}.yaml")
        else:
            logger.log_text(text, "config.yaml")
        logger.log_hyperparams(redact(params))
        commit, dirty = git_commit()
        dm = trainer.datamodule
        family = getattr(pl_module, "family", type(pl_module).__name__)
        tags = {
            "mlflow.source.git.commit": commit,
            "git.dirty": dirty,
            "model.family": family,
            "model.class": f"{type(pl_module).__module__}.{type(pl_module).__name__}",
            "model.targets": ",".join(getattr(pl_module, "targets", [])),
            "lightning_sep.stage": getattr(stage, "value", stage),
            "process": process_tag(),
        }
        if dm is not None:
            tags["data.dataset"] = getattr(dm, "dataset_name", type(dm).__name__)
            if getattr(dm, "root", None) is not None:
                tags["data.root"] = str(dm.root)
        if logger.auto_name and not logger.resumed:  # "skipfilter-brave-owl-123": the UI's run list tells families apart
            tags["mlflow.runName"] = f"{family}-{logger._run_name}"
        logger.set_tags(tags)


def process_tag() -> str:
    """``<host>:<pid>:<start time>`` of this process (the tag ``process``): with it, a run left RUNNING by a
    SIGKILL can be told from one still training (:func:`run_status`)."""
    import socket

    return f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22), "" where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def run_status(run: Any) -> str:
    """The run's MLflow status; ``RUNNING (process gone)`` for a run marked RUNNING whose training process,
    on this machine, no longer exists (a SIGKILL or power loss: ``RESUME=last`` continues it)."""
    import socket

    status = run.info.status
    host, _, rest = run.data.tags.get("process", "").partition(":")
    pid, _, ticks = rest.partition(":")
    if status != "RUNNING" or host != socket.gethostname() or not pid.isdigit() or not ticks:
        return status
    return status if _start_ticks(int(pid)) == ticks else "RUNNING (process gone)"


def end_of(exception: BaseException) -> tuple[str, str]:
    """The MLflow status and the reason of a training stopped by ``exception``: ``KILLED`` for Ctrl-C
    (SIGINT) and SIGTERM, ``FAILED`` for an error."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if isinstance(exception, Interrupted):
        return "KILLED", f"stopped by {exception.signal_name}"
    if isinstance(exception, SIGTERMException):
        return "KILLED", "stopped by SIGTERM"
    if isinstance(exception, KeyboardInterrupt):
        return "KILLED", "stopped by SIGINT (Ctrl-C)"
    message = " ".join(str(exception).split())
    return "FAILED", f"{type(exception).__name__}: {message}"[:1000]


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised by the handler ``lightning-sep`` installs (:func:`lightning_sep.cli.main`):
    Lightning shuts down as for Ctrl-C, and the run ends ``KILLED``."""

    def __init__(self, signum: int):
        import signal

        super().__init__(signum)
        self.signum = signum
        self.signal_name = signal.Signals(signum).name + (" (Ctrl-C)" if signum == signal.SIGINT else "")


class RunSummary(Callback):
    """Tags where the checkpoints go when training starts (so ``RESUME=last`` finds a killed run's), and at
    the end of ``fit`` the best and last checkpoints; prints what the run did. On an interruption, tags
    why the run ended (``end.reason``) and makes it end ``KILLED`` (a signal) or ``FAILED`` (an error)."""

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        logger = trainer.logger
        if not isinstance(logger, MLflowLogger):
            return
        logger.end_status, reason = end_of(exception)
        if trainer.is_global_zero and logger._initialized:
            try:
                logger.set_tags({"end.reason": reason})
            except Exception:  # the store is what failed: the status is still set by finalize if it can be
                pass

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        ckpt = trainer.checkpoint_callback
        if trainer.is_global_zero and isinstance(trainer.logger, MLflowLogger) and getattr(ckpt, "dirpath", None):
            trainer.logger.set_tags({"checkpoint.dir": ckpt.dirpath})

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        ckpt = trainer.checkpoint_callback
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        best_path = getattr(ckpt, "best_model_path", "") or ""
        last_path = getattr(ckpt, "last_model_path", "") or ""
        best_score = getattr(ckpt, "best_model_score", None)
        logger = trainer.logger
        lines = ["", "=" * 72]
        if isinstance(logger, MLflowLogger):
            tags = {"checkpoint.best": best_path, "checkpoint.last": last_path, "checkpoint.dir": getattr(ckpt, "dirpath", "")}
            if best_score is not None:
                tags["checkpoint.best_score"] = f"{float(best_score):.4f}"
                tags["checkpoint.monitor"] = ckpt.monitor
            logger.set_tags(tags)
            lines.append(f"MLflow run:      {logger.run_id}  (experiment {logger._experiment_name!r}, store {redact(logger._tracking_uri)})")
        lines.append(f"best checkpoint: {best_path or '(none)'}")
        lines.append(f"last checkpoint: {last_path or '(none)'}")
        if "val/sdr" in metrics:
            best = f"{float(best_score):.2f} dB (best epoch)" if best_score is not None and ckpt.monitor == "val/sdr" else ""
            lines.append(
                f"validation SDR:  {metrics['val/sdr']:.2f} dB (last epoch) {best}; mixture baseline "
                f"{metrics.get('val/sdr_mixture', float('nan')):.2f} dB; improvement "
                f"{metrics.get('val/sdr_improvement', float('nan')):+.2f} dB"
            )
        if isinstance(logger, MLflowLogger):
            lines.append(f"open the UI:     {logger.ui_command}")
        lines.append("=" * 72)
        print("\n".join(lines), flush=True)
