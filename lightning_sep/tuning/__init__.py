"""Hyperparameter studies (``make tune``): search spaces, the pruning callback, the study and its report."""

from lightning_sep.tuning.pruning import OptunaPruning
from lightning_sep.tuning.space import TuneConfig, load_tune_config
from lightning_sep.tuning.study import TuneResult, TuneSettings, default_storage, open_storage, tune

__all__ = ["OptunaPruning", "TuneConfig", "TuneResult", "TuneSettings", "default_storage", "load_tune_config", "open_storage", "tune"]
