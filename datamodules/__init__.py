"""DataModules: every one yields ``(mixture, targets)`` waveform batches and says its front end."""

from datamodules.musdb import MUSDBDataModule
from datamodules.timit import TIMITDataModule

__all__ = ["MUSDBDataModule", "TIMITDataModule"]
