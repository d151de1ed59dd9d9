"""DataModules: every one yields ``(mixture, targets)`` waveform batches and says its front end."""

from datamodules.musdb import MUSDBDataModule

__all__ = ["MUSDBDataModule"]
