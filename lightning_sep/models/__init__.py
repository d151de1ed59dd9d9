"""Separator families. Each model file holds one model; training logic lives in ``base``."""

from lightning_sep.models.base import MixtureToTarget
from lightning_sep.models.dae import DAE, MSSDAE
from lightning_sep.models.skipfilter import SkipFilter

__all__ = ["MixtureToTarget", "DAE", "MSSDAE", "SkipFilter"]
