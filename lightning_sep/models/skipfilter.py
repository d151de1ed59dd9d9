"""The skip-filtering model (SF).

Paper ``dae-skipfilter-nca-mimilakis`` Sec. 2.3, Eq. (9): a single-layer encoder/decoder predicts
a mask from the mixture, and the skip-filtering connection applies it to the mixture itself,
``y = x * ReLU(W_dec ReLU(W_enc x + b_enc) + b_dec)``; the loss is on ``y`` (signal
approximation), so no pre-computed mask is needed.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from lightning_sep.models.base import MixtureToTarget
from lightning_sep.models.dae import DenoisingAutoencoderNet


class SkipFilterNet(nn.Module):
    """``mask = ReLU(W_dec ReLU(W_enc x + b_enc) + b_dec)``; ``y = x_centre * mask``.

    With context frames the mask is computed from the stacked frames and applied to the centre
    frame.  Shapes: ``(..., n_in) -> (..., n_bins)``; :meth:`mask` gives the mask alone (what the
    neural couplings analysis approximates).
    """

    def __init__(self, n_in: int, n_bins: int, hidden_size: Optional[int] = None):
        super().__init__()
        self.n_bins, self.centre = n_bins, (n_in // n_bins) // 2
        self.masker = DenoisingAutoencoderNet(n_in, n_bins, n_encoder_layers=1, hidden_size=hidden_size)

    def mask(self, x: Tensor) -> Tensor:
        return self.masker(x)

    def forward(self, x: Tensor) -> Tensor:
        centre = x[..., self.centre * self.n_bins : (self.centre + 1) * self.n_bins]
        return centre * self.mask(x)


class SkipFilter(MixtureToTarget):
    """Skip-filtering connections (``MODEL=skipfilter``)."""

    family = "skipfilter"

    def __init__(self, hidden_size: Optional[int] = None, **kwargs):
        self.hidden_size = hidden_size
        super().__init__(**kwargs)

    def build_network(self, n_in: int, n_bins: int) -> nn.Module:
        return SkipFilterNet(n_in, n_bins, self.hidden_size)
