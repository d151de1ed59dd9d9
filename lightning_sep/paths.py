"""Where the platform keeps its files (all overridable by environment variables)."""

from __future__ import annotations

import os
from pathlib import Path

#: The repository root (the package is installed editable by ``make setup``).
REPO_ROOT = Path(__file__).resolve().parents[1]
#: Configs: ``conf/model``, ``conf/data``, ``conf/trainer``.
CONF_DIR = REPO_ROOT / "conf"


def data_home() -> Path:
    """Generated corpora and decoded-audio caches: ``$LIGHTNING_SEP_DATA`` or ``<repo>/data``."""
    return Path(os.environ.get("LIGHTNING_SEP_DATA") or REPO_ROOT / "data").expanduser()


def _env_or_mlruns_sqlite(variable: str, filename: str) -> str:
    uri = os.environ.get(variable)
    if uri:
        return uri
    (REPO_ROOT / "mlruns").mkdir(exist_ok=True)
    return f"sqlite:///{REPO_ROOT / 'mlruns' / filename}"


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` or the SQLite store ``sqlite:///<repo>/mlruns/mlflow.db``."""
    return _env_or_mlruns_sqlite("MLFLOW_TRACKING_URI", "mlflow.db")


def default_optuna_storage() -> str:
    """``$OPTUNA_STORAGE`` or the SQLite database ``sqlite:///<repo>/mlruns/optuna.db`` (``make tune``)."""
    return _env_or_mlruns_sqlite("OPTUNA_STORAGE", "optuna.db")
