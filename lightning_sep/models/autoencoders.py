"""The non-negative (NAE), convolutional (CCAE) and recurrent-convolutional (RCAE) autoencoders.

Paper ``cae-nae-rcae-venkataramani-2017`` and its code (``../shared/notes/reference-models.md``).
Each is a model of *one* source's magnitude spectrogram ``X`` (bins ``F`` x frames ``T``) with a
rank-``K`` non-negative code ``H``; :class:`~lightning_sep.models.source_models.SourceModels`
trains one per source with the generalised KL and separates by optimising their inputs.
``g = softplus`` (the paper's ``ln(1 + e^x)``) keeps codes and reconstructions non-negative.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from lightning_sep.errors import LightningSepError
from lightning_sep.models.source_models import SourceModels


class CausalConv(nn.Module):
    """A 1-D convolution over frames whose output at ``t`` sees frames ``t - taps + 1 .. t``
    (left zero-padding): ``(B, C_in, T) -> (B, C_out, T)``."""

    def __init__(self, channels_in: int, channels_out: int, taps: int):
        super().__init__()
        self.taps = int(taps)
        self.conv = nn.Conv1d(channels_in, channels_out, self.taps)

    @property
    def weight(self) -> Tensor:
        return self.conv.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (self.taps - 1, 0)))


class NAENet(nn.Module):
    """NAE, the NMF read as a network (slide "Non-negative Auto-encoder"):
    ``H = g(V_enc X + b)``, ``X^ = g(V_dec H + b)``, frame by frame; ``V_enc`` is ``K x F``,
    ``V_dec`` ``F x K`` (its columns, the bases, may be negative).  ``(B, F, T) -> ((B, F, T), (B, K, T))``."""

    def __init__(self, n_bins: int, rank: int):
        super().__init__()
        self.encoder = nn.Linear(n_bins, rank)
        self.decoder = nn.Linear(rank, n_bins)

    def bases(self) -> list[Tensor]:
        return [self.decoder.weight]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = F.softplus(self.encoder(x.transpose(1, 2)))  # (B, T, K)
        return F.softplus(self.decoder(h)).transpose(1, 2), h.transpose(1, 2)


class CCAENet(nn.Module):
    """CCAE, the CNN-CNN autoencoder (slide "Convolutive models"): causal convolutions over time of
    ``taps`` frames and the full frequency height, ``F -> K`` channels then ``K -> F``, ``g`` after
    each (authors' code: 8 taps, K = 80): the encoder acts as a matched filter and each decoder
    channel is a spectro-temporal basis of ``F x taps``."""

    def __init__(self, n_bins: int, rank: int, taps: int = 8):
        super().__init__()
        self.encoder = CausalConv(n_bins, rank, taps)
        self.decoder = CausalConv(rank, n_bins, taps)

    def bases(self) -> list[Tensor]:
        return [self.decoder.weight]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = F.softplus(self.encoder(x))
        return F.softplus(self.decoder(h)), h


class RCAENet(nn.Module):
    """RCAE, the RNN-CNN autoencoder (slide "Extensions": the inverse of an FIR filter is IIR, so a
    recurrent encoder): an LSTM over frames (``rnn_size`` units), a linear read-out to ``K`` channels
    and ``g``, then the CCAE's convolutional decoder.

    The authors' code sums the outputs of K separate 9-unit LSTMs (a block-diagonal recurrence with
    a summing read-out); one LSTM of ``rnn_size`` units with a learned read-out contains that model
    (``rnn_size = 9 K``) and runs as one fused cuDNN/oneDNN kernel, so it is the default here."""

    def __init__(self, n_bins: int, rank: int, taps: int = 8, rnn_size: int = 128):
        super().__init__()
        self.rnn = nn.LSTM(n_bins, rnn_size, batch_first=True)
        self.readout = nn.Linear(rnn_size, rank)
        self.decoder = CausalConv(rank, n_bins, taps)

    def bases(self) -> list[Tensor]:
        return [self.decoder.weight]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        states, _ = self.rnn(x.transpose(1, 2))  # (B, T, rnn_size)
        h = F.softplus(self.readout(states)).transpose(1, 2)  # (B, K, T)
        return F.softplus(self.decoder(h)), h


def _check_taps(taps: int) -> int:
    if int(taps) < 1:
        raise LightningSepError(f"taps={taps} must be at least 1 frame.")
    return int(taps)


class NAE(SourceModels):
    """Non-negative autoencoder per source (``MODEL=nae``)."""

    family = "nae"

    def build_model(self, n_bins: int) -> nn.Module:
        return NAENet(n_bins, self.hparams.rank)


class CCAE(SourceModels):
    """Convolutional autoencoder per source (``MODEL=ccae``).

    Args:
        taps: filter width in frames of both convolutions (paper: 8).
    """

    family = "ccae"

    def __init__(self, taps: int = 8, **kwargs):
        self.taps = _check_taps(taps)
        super().__init__(**kwargs)

    def build_model(self, n_bins: int) -> nn.Module:
        return CCAENet(n_bins, self.hparams.rank, self.taps)


class RCAE(SourceModels):
    """Recurrent-convolutional autoencoder per source (``MODEL=rcae``).

    Args:
        taps: filter width in frames of the convolutional decoder (paper: 8).
        rnn_size: LSTM units of the encoder.
    """

    family = "rcae"

    def __init__(self, taps: int = 8, rnn_size: int = 128, **kwargs):
        self.taps = _check_taps(taps)
        if int(rnn_size) < 1:
            raise LightningSepError(f"rnn_size={rnn_size} must be at least 1.")
        self.rnn_size = int(rnn_size)
        super().__init__(**kwargs)

    def build_model(self, n_bins: int) -> nn.Module:
        return RCAENet(n_bins, self.hparams.rank, self.taps, self.rnn_size)
