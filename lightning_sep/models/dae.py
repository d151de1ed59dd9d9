"""The denoising autoencoder (DAE) and its multi-layer version (MSS-DAE).

Paper ``dae-skipfilter-nca-mimilakis`` Sec. 2, Eqs. (5)-(8): both map the mixture magnitude
spectrum directly to the target's (spectral approximation), with square layers (``N -> N``) so
that the neural couplings analysis can compose them.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from lightning_sep.models.base import MixtureToTarget, xavier_init


class DenoisingAutoencoderNet(nn.Module):
    """``y = ReLU(W_dec ReLU(W_enc x + b_enc) + b_dec)``, paper Eqs. (5)-(6).

    Args:
        n_in: input size ((2c+1) N with c context frames).
        n_bins: output size N (retained frequency bins).
        n_encoder_layers: 1 for the DAE, 3 for the MSS-DAE (Eq. (8)); the first maps
            ``n_in -> hidden``, the others ``hidden -> hidden``.
        hidden_size: defaults to N (square layers, as the paper and the NCA require).
    Shapes: ``(..., n_in) -> (..., n_bins)``.
    """

    def __init__(self, n_in: int, n_bins: int, n_encoder_layers: int = 1, hidden_size: Optional[int] = None):
        super().__init__()
        hidden = hidden_size or n_bins
        layers: list[nn.Module] = []
        for i in range(n_encoder_layers):
            layers += [nn.Linear(n_in if i == 0 else hidden, hidden), nn.ReLU()]
        self.encoder = nn.Sequential(*layers)
        self.decoder = nn.Sequential(nn.Linear(hidden, n_bins), nn.ReLU())
        xavier_init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


class DAE(MixtureToTarget):
    """Denoising autoencoder: one encoder and one decoder layer (paper Sec. 2.1, ``MODEL=dae``)."""

    family = "dae"

    def __init__(self, hidden_size: Optional[int] = None, **kwargs):
        self.hidden_size = hidden_size
        super().__init__(**kwargs)

    def build_network(self, n_in: int, n_bins: int) -> nn.Module:
        return DenoisingAutoencoderNet(n_in, n_bins, n_encoder_layers=1, hidden_size=self.hidden_size)


class MSSDAE(MixtureToTarget):
    """Multi-layer DAE for music source separation: three encoder layers, one decoder layer
    (paper Sec. 2.2, Eq. (8), ``MODEL=mss_dae``)."""

    family = "mss_dae"

    def __init__(self, n_encoder_layers: int = 3, hidden_size: Optional[int] = None, **kwargs):
        self.n_encoder_layers, self.hidden_size = n_encoder_layers, hidden_size
        super().__init__(**kwargs)

    def build_network(self, n_in: int, n_bins: int) -> nn.Module:
        return DenoisingAutoencoderNet(n_in, n_bins, self.n_encoder_layers, self.hidden_size)
