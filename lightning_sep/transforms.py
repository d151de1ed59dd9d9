"""The audio front end, written once and used by every separator family.

Spectrograms are computed on the model's device, inside the model (as in open-unmix): the data
pipeline hands waveforms to the model and the model turns them into magnitudes, estimates the
target magnitudes, and resynthesises with the mixture phase.

Shapes follow ``(batch, [sources,] bins, frames)`` for spectrograms and ``(batch, [sources,]
samples)`` for waveforms.  ``retained_bins`` keeps the first bins of the ``n_fft // 2 + 1``
(paper ``dae-skipfilter-nca-mimilakis`` Sec. 4.1 keeps the first 744 of 2049 bins, i.e. up to about
8 kHz at 44.1 kHz); the discarded bins are zero in every estimate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from lightning_sep.errors import LightningSepError, UnknownNameError

_EPS = 1e-8


def make_window(name: str, win_length: int) -> Tensor:
    """An analysis window by name: ``hann``, ``sqrt_hann`` (periodic), ``hamming``, ``blackman``, ``rect``."""
    windows = {
        "hann": lambda n: torch.hann_window(n, periodic=True),
        "sqrt_hann": lambda n: torch.hann_window(n, periodic=True).sqrt(),
        "hamming": lambda n: torch.hamming_window(n, periodic=True),
        "blackman": lambda n: torch.blackman_window(n, periodic=True),
        "rect": lambda n: torch.ones(n),
    }
    if name not in windows:
        raise UnknownNameError("window", name, sorted(windows))
    return windows[name](win_length)


@dataclass(frozen=True)
class FrontEnd:
    """STFT parameters shared by a DataModule (segment lengths in frames) and a model.

    Defaults are the paper's (``dae-skipfilter-nca-mimilakis`` Sec. 4.1): 44.1 kHz, Hamming window
    of 2049 samples zero-padded to a 4096-point DFT, hop 384 samples (8.7 ms), first 744 bins kept.
    """

    sample_rate: int = 44100
    n_fft: int = 4096
    win_length: int = 2049
    hop_length: int = 384
    window: str = "hamming"
    retained_bins: int = 744

    def __post_init__(self) -> None:
        n_bins = self.n_fft // 2 + 1
        if not 0 < self.win_length <= self.n_fft:
            raise LightningSepError(f"win_length={self.win_length} must be in 1..n_fft={self.n_fft}.")
        if not 0 < self.hop_length <= self.win_length:
            raise LightningSepError(
                f"hop_length={self.hop_length} must be in 1..win_length={self.win_length}."
            )
        if not 0 < self.retained_bins <= n_bins:
            raise LightningSepError(
                f"retained_bins={self.retained_bins} must be in 1..n_fft // 2 + 1 = {n_bins}."
            )
        make_window(self.window, 4)  # validates the name

    @classmethod
    def from_dict(cls, d: dict[str, Any] | "FrontEnd" | None) -> "FrontEnd":
        if d is None:
            return cls()
        if isinstance(d, FrontEnd):
            return d
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def n_bins(self) -> int:
        return self.retained_bins

    def frames_to_samples(self, frames: int) -> int:
        """Samples whose centred STFT has exactly ``frames`` frames."""
        return (frames - 1) * self.hop_length

    def samples_to_frames(self, samples: int) -> int:
        return samples // self.hop_length + 1


class STFT(nn.Module):
    """Waveform ``(..., samples)`` to complex spectrogram ``(..., retained_bins, frames)``."""

    def __init__(self, front_end: FrontEnd):
        super().__init__()
        self.front_end = front_end
        self.register_buffer("window", make_window(front_end.window, front_end.win_length), persistent=False)

    def forward(self, wave: Tensor) -> Tensor:
        fe = self.front_end
        shape = wave.shape
        spec = torch.stft(
            wave.reshape(-1, shape[-1]),
            n_fft=fe.n_fft,
            hop_length=fe.hop_length,
            win_length=fe.win_length,
            window=self.window,
            center=True,
            pad_mode="reflect" if shape[-1] > fe.n_fft // 2 else "constant",
            return_complex=True,
        )
        spec = spec[..., : fe.retained_bins, :]
        return spec.reshape(*shape[:-1], *spec.shape[-2:])


class ISTFT(nn.Module):
    """Complex spectrogram ``(..., retained_bins, frames)`` to waveform ``(..., length)``.

    The bins above ``retained_bins`` are taken as zero.
    """

    def __init__(self, front_end: FrontEnd):
        super().__init__()
        self.front_end = front_end
        self.register_buffer("window", make_window(front_end.window, front_end.win_length), persistent=False)

    def forward(self, spec: Tensor, length: int) -> Tensor:
        fe = self.front_end
        shape = spec.shape
        spec = spec.reshape(-1, *shape[-2:])
        full_bins = fe.n_fft // 2 + 1
        if spec.shape[-2] < full_bins:
            spec = torch.nn.functional.pad(spec, (0, 0, 0, full_bins - spec.shape[-2]))
        wave = torch.istft(
            spec,
            n_fft=fe.n_fft,
            hop_length=fe.hop_length,
            win_length=fe.win_length,
            window=self.window,
            center=True,
            length=length,
        )
        return wave.reshape(*shape[:-2], length)


def magphase(spec: Tensor) -> tuple[Tensor, Tensor]:
    """Magnitude and phase (radians) of a complex spectrogram."""
    return spec.abs(), spec.angle()


def with_phase(magnitude: Tensor, phase: Tensor) -> Tensor:
    """Complex spectrogram from a magnitude and a phase: the estimate gets the mixture's phase."""
    return torch.polar(magnitude.clamp_min(0), phase)


def ratio_mask(estimates: Tensor, power: float = 1.0, dim: int = 1, eps: float = _EPS) -> Tensor:
    """Soft mask of each estimate's share: ``|Y_j|^p / sum_k |Y_k|^p`` along ``dim``.

    ``power=1`` is the magnitude ratio mask (IRM1), ``power=2`` the power ratio (Wiener-like, IRM2).
    """
    e = estimates.clamp_min(0) ** power
    return e / (e.sum(dim=dim, keepdim=True) + eps)


def binary_mask(estimates: Tensor, dim: int = 1) -> Tensor:
    """Ideal-binary-style mask: 1 where an estimate is the largest along ``dim``."""
    winner = estimates.argmax(dim=dim, keepdim=True)
    return torch.zeros_like(estimates).scatter_(dim, winner, 1.0)


def apply_mask(mask: Tensor, mixture_spec: Tensor) -> Tensor:
    """Mask a (complex or magnitude) mixture spectrogram; ``mask`` may carry an extra source dim."""
    if mask.dim() == mixture_spec.dim() + 1:
        mixture_spec = mixture_spec.unsqueeze(1)
    return mask * mixture_spec


def stack_context(frames: Tensor, context: int) -> Tensor:
    """Frames ``(batch, bins, T)`` with ``context`` neighbours each side: ``(batch, T, (2c+1)*bins)``.

    Edges are replicated.  ``context=0`` gives ``(batch, T, bins)``: one vector per frame.
    """
    x = frames.transpose(1, 2)  # (B, T, F)
    if context == 0:
        return x
    padded = torch.nn.functional.pad(frames, (context, context), mode="replicate")  # (B, F, T+2c)
    windows = padded.unfold(-1, 2 * context + 1, 1)  # (B, F, T, 2c+1)
    return windows.permute(0, 2, 3, 1).reshape(x.shape[0], x.shape[1], -1)


class BandNormalization(nn.Module):
    """Scales each frequency band to unit variance over time (paper Sec. 4.1).

    The per-band standard deviations are statistics of the training mixtures' magnitudes,
    estimated once before training with :meth:`fit` and kept as buffers, so they travel in the
    checkpoint.  Only a scale is applied (no mean removal) so that magnitudes stay non-negative.
    """

    def __init__(self, n_bins: int):
        super().__init__()
        self.register_buffer("scale", torch.ones(n_bins))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def forward(self, magnitude: Tensor) -> Tensor:  # (..., bins, frames)
        return magnitude * self.scale[:, None]

    def inverse(self, magnitude: Tensor) -> Tensor:
        return magnitude / self.scale[:, None]

    @torch.no_grad()
    def fit(self, magnitudes: Iterable[Tensor]) -> None:
        """Accumulate per-band mean and variance over all frames of ``(..., bins, frames)`` tensors."""
        count, total, total_sq = 0, None, None
        for mag in magnitudes:
            m = mag.to(torch.float64).transpose(-1, -2).reshape(-1, mag.shape[-2])
            total = m.sum(0) if total is None else total + m.sum(0)
            total_sq = (m * m).sum(0) if total_sq is None else total_sq + (m * m).sum(0)
            count += m.shape[0]
        if not count:
            raise LightningSepError("No training audio to compute the band normalisation from.")
        mean = total / count
        var = (total_sq / count - mean * mean).clamp_min(0)
        std = var.sqrt()
        floor = max(float(std.max()) * 1e-4, 1e-8)  # silent bands must not explode
        self.scale.copy_((1.0 / std.clamp_min(floor)).to(self.scale))
        self.fitted.fill_(True)



def frame_segments(frames: Tensor, size: int, hop: int) -> Tensor:
    """Segments of ``size`` adjacent frames every ``hop`` frames: ``(B, F, T) -> (B, N, F * size)``
    (each flattened frame-major, ``[frame 0 bins, frame 1 bins, ...]``).

    The end is zero-padded so the segments cover every frame: ``N = ceil((T - size) / hop) + 1``
    (one segment when ``T <= size``).  :func:`overlap_average` is the inverse.
    """
    b, f, t = frames.shape
    n = max(0, -(-(t - size) // hop)) + 1
    padded = torch.nn.functional.pad(frames, (0, (n - 1) * hop + size - t))
    segs = padded.unfold(-1, size, hop)  # (B, F, N, size)
    return segs.permute(0, 2, 3, 1).reshape(b, n, size * f)


def overlap_average(segments: Tensor, n_bins: int, size: int, hop: int, frames: int) -> Tensor:
    """Inverse of :func:`frame_segments`: ``(B, N, F * size) -> (B, F, frames)``, each frame the
    mean of the segments that contain it."""
    b, n, _ = segments.shape
    total = (n - 1) * hop + size
    x = segments.reshape(b, n, size, n_bins).permute(0, 3, 2, 1).reshape(b, n_bins * size, n)
    summed = torch.nn.functional.fold(x, (1, total), (1, size), stride=(1, hop))  # (B, F, 1, total)
    ones = torch.ones(1, size, n, dtype=segments.dtype, device=segments.device)
    count = torch.nn.functional.fold(ones, (1, total), (1, size), stride=(1, hop))
    return (summed / count).reshape(b, n_bins, total)[..., :frames]
