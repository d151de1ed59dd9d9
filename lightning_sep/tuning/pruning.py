"""The pruner's feed: a Lightning callback that reports each validation's metric to the Optuna trial.

Optuna's pruners (median, percentile, Hyperband, ...) decide from a trial's intermediate values
whether it is hopeless next to the trials before it; :class:`OptunaPruning` gives them the
validation SDR after every validation (step = epoch), and when the pruner says so it asks the
Trainer to stop at the end of the epoch.  The run then ends cleanly (checkpoints, MLflow run
closed) and the objective raises :class:`optuna.TrialPruned`, so the study records the trial as
pruned with the epoch it reached.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from lightning.pytorch import Callback, LightningModule, Trainer


class OptunaPruning(Callback):
    """Report ``monitor`` to ``trial`` after each validation; stop the fit when it should be pruned.

    Attributes:
        history: ``{epoch: value}`` of every finite value reported.
        pruned_at: the epoch at which the pruner stopped the trial, else None.
    """

    def __init__(self, trial: Any, monitor: str = "val/sdr", prune: bool = True):
        self.trial = trial
        self.monitor = monitor
        self.prune = prune
        self.history: dict[int, float] = {}
        self.pruned_at: Optional[int] = None

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        value = float(value)
        if not math.isfinite(value):
            return
        epoch = trainer.current_epoch
        self.history[epoch] = value
        self.trial.report(value, step=epoch)
        if self.prune and self.pruned_at is None and self.trial.should_prune():
            self.pruned_at = epoch
            trainer.should_stop = True

    def best(self, direction: str = "maximize") -> Optional[float]:
        """The best reported value (the best epoch's, as the checkpoint keeps), or None."""
        if not self.history:
            return None
        return max(self.history.values()) if direction == "maximize" else min(self.history.values())
