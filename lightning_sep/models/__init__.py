"""Separator families. Each model file holds one idea; the shared training logic lives in ``base``
(mixture-to-target families) and ``source_models`` (per-source families that separate by optimisation)."""

from lightning_sep.models.autoencoders import CCAE, NAE, RCAE
from lightning_sep.models.base import MixtureToTarget, SpectrogramSeparator
from lightning_sep.models.dae import DAE, MSSDAE
from lightning_sep.models.nmf import NMF
from lightning_sep.models.skipfilter import SkipFilter
from lightning_sep.models.source_models import SourceModels
from lightning_sep.models.vae import VAE, DeepVAE, SegmentAutoencoder

__all__ = [
    "SpectrogramSeparator", "MixtureToTarget", "SourceModels",
    "DAE", "MSSDAE", "SkipFilter", "NMF", "NAE", "CCAE", "RCAE", "VAE", "DeepVAE", "SegmentAutoencoder",
]
