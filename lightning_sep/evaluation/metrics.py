"""Signal-level metrics computed on the model's device during training.

``signal_to_distortion_ratio`` is the plain SDR, ``10 log10(|s|^2 / |s - s_hat|^2)``: no projection
onto the reference (that is BSS Eval's SDR, computed by ``make eval`` with museval).  It is cheap
and differentiable, so validation can report it every epoch next to the same number for the
mixture used as the estimate (the baseline every model must beat).
"""

from __future__ import annotations

import torch
from torch import Tensor


def signal_to_distortion_ratio(estimate: Tensor, reference: Tensor, eps: float = 1e-8) -> Tensor:
    """SDR in dB over the last dimension: ``10 log10(sum s^2 / sum (s - s_hat)^2)``."""
    num = reference.pow(2).sum(-1)
    den = (reference - estimate).pow(2).sum(-1)
    return 10 * torch.log10((num + eps) / (den + eps))


def active(reference: Tensor, threshold_db: float = -60.0) -> Tensor:
    """True where a reference segment is not silent (energy above ``threshold_db`` re. full scale).

    Silent references make the SDR undefined (museval skips such frames likewise).
    """
    power = reference.pow(2).mean(-1)
    return power > 10 ** (threshold_db / 10)
