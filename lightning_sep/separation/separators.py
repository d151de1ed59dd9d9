"""Separators: anything that turns a mixture chunk into target estimates, behind one interface.

* :class:`ModelSeparator` -- a trained monaural family (DAE, MSS-DAE, skip-filter, ...).  Stereo
  tracks are separated per channel (the channels are a batch for the monaural model); the
  estimated magnitudes get the mixture phase, or go through the multichannel Wiener post-filter
  (:func:`~lightning_sep.separation.wiener.wiener`, ``wiener_iterations > 0``).  A model with a
  ``vocals`` target but no ``accompaniment`` target also returns ``accompaniment = mixture -
  vocals`` (likewise ``female = mixture - male`` for a TIMIT model of one speaker).  It collects
  the model's ``separation_stats`` of every chunk (e.g. the VAE's average posterior variance),
  weighted by the chunk's frame count: :meth:`ModelSeparator.take_stats`.
* :class:`MixtureSeparator` -- the mixture as every estimate (the lower reference, ``MODEL=mixture``).
* :class:`OracleSeparator` -- masks computed from the reference stems (the upper references of
  SiSEC 2018, as in sigsep's ``sigsep-mus-oracle``): ``oracle_ibm`` keeps the bins where
  ``|S_j| / |X| >= 0.5``, ``oracle_irm1`` is ``|S_j| / sum_k |S_k|`` and ``oracle_irm2`` is
  ``|S_j|^2 / sum_k |S_k|^2`` (the oracle Wiener filter), ``k`` over the dataset's sources (MUSDB18:
  drums, bass, other, vocals -- ``accompaniment`` is the sum of the drums, bass and other
  estimates; TIMIT: male, female).  They use the data's STFT with every frequency bin.

:func:`separate_track` runs any of them over a whole track in overlapping chunks.
"""

from __future__ import annotations

from typing import Optional, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from datamodules._musdb import SOURCES  # the order of the reference stems an oracle receives (cache order)
from datamodules.musdb import TARGETS
from datamodules.timit import SOURCES as SPEAKER_SOURCES
from lightning_sep.errors import LightningSepError, UnknownNameError
from lightning_sep.separation.overlap_add import overlap_add
from lightning_sep.separation.wiener import wiener
from lightning_sep.transforms import ISTFT, STFT, FrontEnd, magphase, with_phase

#: Every target a reference method can produce on MUSDB18 (the MUSDB DataModule's targets).
ALL_TARGETS: tuple[str, ...] = TARGETS
#: ``MODEL=`` names of the reference methods (not trained; evaluated through the same pipeline).
REFERENCE_METHODS: tuple[str, ...] = ("mixture", "oracle_ibm", "oracle_irm1", "oracle_irm2")
#: The target sets that add up to the mixture (no residual source is needed for Wiener filtering).
PARTITIONS = ({"vocals", "drums", "bass", "other"}, {"vocals", "accompaniment"}, set(SPEAKER_SOURCES))
#: A model of one of these targets also returns its complement, ``mixture - estimate``.
COMPLEMENTS = {"vocals": "accompaniment", "male": "female", "female": "male"}


class Separator(Protocol):
    """What :func:`separate_track` and ``make eval`` need from a separation method."""

    #: the method's name in tables (``skipfilter``, ``oracle_irm2``, ...)
    name: str
    #: the sample rate it works at
    sample_rate: int
    #: the estimates it returns, in order
    targets: list[str]
    #: whether :meth:`separate` needs the reference stems (an oracle)
    needs_references: bool

    def separate(self, mixture: Tensor, references: Optional[Tensor] = None) -> Tensor:
        """One chunk: mixture ``(C, n)`` (references ``(n_sources, C, n)`` in the dataset's source
        order, :data:`SOURCES` for MUSDB18) to ``(len(targets), C, n)``."""
        ...


class ModelSeparator:
    """A trained :class:`~lightning_sep.models.base.SpectrogramSeparator` family as a separator.

    Args:
        model: the LightningModule (its ``front_end`` and ``targets`` say what it does).
        wiener_iterations: 0 = estimated magnitudes with the mixture phase (the paper's
            resynthesis); ``n > 0`` = ``n`` EM iterations of the multichannel Wiener post-filter
            over all estimated targets (plus a residual when they do not add up to the mixture).
        device: where the model runs (``None`` = where it is).
        separation_iterations: for a family that separates by optimisation (``nmf``, ``nae``,
            ``ccae``, ``rcae``): the iterations of that optimisation (``None`` = the model's own).
    """

    needs_references = False

    def __init__(self, model: torch.nn.Module, wiener_iterations: int = 0, device: Optional[str | torch.device] = None,
                 separation_iterations: Optional[int] = None):
        if wiener_iterations < 0:
            raise LightningSepError(f"wiener_iterations={wiener_iterations} must be >= 0.")
        if separation_iterations is not None:
            family = getattr(model, "family", type(model).__name__)
            if "separation_iterations" not in getattr(model, "hparams", {}):
                raise LightningSepError(
                    f"--iterations is for the families that separate by optimisation (nmf, nae, ccae, rcae); "
                    f"MODEL={family} separates in one pass: drop it.")
            if int(separation_iterations) < 1:
                raise LightningSepError(f"--iterations {separation_iterations}: must be at least 1.")
            model.hparams.separation_iterations = int(separation_iterations)
        self.model = model.eval()
        if device is not None:
            self.model.to(device)
        self.device = next(iter(self.model.buffers())).device
        self.name = getattr(model, "family", type(model).__name__)
        self.sample_rate = int(model.front_end.sample_rate)
        self.model_targets = list(model.targets)
        #: (estimated target, its complement = mixture - estimate), when the model lacks the complement
        self.complement = next(((t, c) for t in self.model_targets
                                if (c := COMPLEMENTS.get(t)) and c not in self.model_targets), None)
        self.targets = self.model_targets + ([self.complement[1]] if self.complement else [])
        self.wiener_iterations = int(wiener_iterations)
        self.residual = set(self.model_targets) not in PARTITIONS
        #: frame-weighted sums of the model's ``separation_stats`` since the last :meth:`take_stats`
        self._stat_sums: dict[str, float] = {}
        self._stat_weights: dict[str, float] = {}

    def take_stats(self) -> dict[str, float]:
        """The model's separation statistics (``separation_stats``, e.g. the VAE's average posterior
        variance) since the last call, each the mean over the chunks separated weighted by their
        frame counts; clears them.  Empty when the model records nothing."""
        out = {k: self._stat_sums[k] / w for k, w in self._stat_weights.items() if w > 0}
        self._stat_sums, self._stat_weights = {}, {}
        return out

    def _collect_stats(self, frames: int) -> None:
        for key, value in (getattr(self.model, "separation_stats", None) or {}).items():
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue
            self._stat_sums[key] = self._stat_sums.get(key, 0.0) + value * frames
            self._stat_weights[key] = self._stat_weights.get(key, 0.0) + frames

    @torch.no_grad()
    def separate(self, mixture: Tensor, references: Optional[Tensor] = None) -> Tensor:
        mixture = mixture.to(self.device, torch.float32)
        model = self.model
        spec = model.stft(mixture)  # (C, F, T) complex: the channels are a batch
        mag, phase = magphase(spec)
        if hasattr(model, "separation_stats"):
            model.separation_stats = {}  # nothing stale from an earlier call is counted for this chunk
        est = model.estimate_magnitudes(mag).transpose(0, 1)  # (S, C, F, T)
        self._collect_stats(int(mag.shape[-1]))
        if self.wiener_iterations:
            est_spec = wiener(est, spec, self.wiener_iterations, residual=self.residual)[: len(self.model_targets)]
        else:
            est_spec = with_phase(est, phase.unsqueeze(0))
        waves = model.istft(est_spec, length=mixture.shape[-1])  # (S, C, n)
        if self.complement:
            estimate = waves[self.model_targets.index(self.complement[0])]
            waves = torch.cat([waves, (mixture - estimate).unsqueeze(0)])
        return waves


class MixtureSeparator:
    """The mixture as the estimate of every target (``MODEL=mixture``)."""

    needs_references = False
    name = "mixture"

    def __init__(self, sample_rate: int, targets: Sequence[str] = ALL_TARGETS, available: Sequence[str] = ALL_TARGETS):
        self.sample_rate = int(sample_rate)
        self.targets = _check_targets(targets, available)

    def separate(self, mixture: Tensor, references: Optional[Tensor] = None) -> Tensor:
        return mixture.float().unsqueeze(0).expand(len(self.targets), *mixture.shape).clone()


class OracleSeparator:
    """Oracle time-frequency masks from the reference stems (``oracle_ibm|irm1|irm2``).

    Args:
        kind: ``ibm`` (binary: ``|S_j| / |X| >= theta``), ``irm1`` (``|S_j| / sum_k |S_k|``) or
            ``irm2`` (``|S_j|^2 / sum_k |S_k|^2``).
        front_end: the STFT (every bin is used, whatever its ``retained_bins``).
        targets: estimates to return (``accompaniment`` = drums + bass + other estimates).
        sources: the reference rows :meth:`separate` receives, in order (MUSDB18's by default).
        theta: the IBM threshold (sigsep-mus-oracle: 0.5).
    """

    needs_references = True

    def __init__(self, kind: str, front_end: FrontEnd | dict, targets: Sequence[str] = ALL_TARGETS,
                 theta: float = 0.5, sources: Sequence[str] = SOURCES):
        if kind not in ("ibm", "irm1", "irm2"):
            raise UnknownNameError("oracle", kind, ["ibm", "irm1", "irm2"])
        fe = FrontEnd.from_dict(front_end)
        fe = FrontEnd(**{**fe.to_dict(), "retained_bins": fe.n_fft // 2 + 1})
        self.kind, self.theta, self.name = kind, float(theta), f"oracle_{kind}"
        self.sample_rate = int(fe.sample_rate)
        self.sources = list(sources)
        self.targets = _check_targets(targets, available_targets(self.sources))
        self.stft, self.istft = STFT(fe), ISTFT(fe)

    @torch.no_grad()
    def separate(self, mixture: Tensor, references: Optional[Tensor] = None) -> Tensor:
        if references is None or references.shape[0] != len(self.sources):
            raise LightningSepError(f"{self.name} needs the {len(self.sources)} reference sources {self.sources}.")
        x = self.stft(mixture.float())  # (C, F, T)
        s = self.stft(references.float()).abs()  # (4, C, F, T)
        eps = torch.finfo(torch.float32).eps
        if self.kind == "ibm":
            mask = (s / (x.abs() + eps) >= self.theta).float()
        else:
            p = s ** (1 if self.kind == "irm1" else 2)
            mask = p / (p.sum(0, keepdim=True) + eps)
        est = self.istft(mask * x.unsqueeze(0), length=mixture.shape[-1])  # (sources, C, n)
        by_name = dict(zip(self.sources, est))
        if "accompaniment" in self.targets:
            by_name["accompaniment"] = sum(e for name, e in by_name.items() if name != "vocals")
        return torch.stack([by_name[t] for t in self.targets])


def available_targets(sources: Sequence[str]) -> list[str]:
    """What a reference method can estimate from ``sources``: each of them, and MUSDB18's
    ``accompaniment`` (the sum of the non-vocals stems) when they are MUSDB18's stems."""
    return list(sources) + (["accompaniment"] if set(SOURCES) <= set(sources) else [])


def _check_targets(targets: Sequence[str], available: Sequence[str]) -> list[str]:
    targets = list(targets)
    for t in targets:
        if t not in available:
            raise UnknownNameError("target", t, list(available))
    if not targets:
        raise LightningSepError(f"No targets given: choose from {', '.join(available)}.")
    return targets


def reference_separator(name: str, front_end: FrontEnd | dict, targets: Sequence[str] = ALL_TARGETS,
                        sources: Sequence[str] = SOURCES) -> Separator:
    """``mixture``, ``oracle_ibm``, ``oracle_irm1`` or ``oracle_irm2`` at the data's front end, for a
    dataset whose reference rows are ``sources`` (MUSDB18's by default)."""
    if name == "mixture":
        return MixtureSeparator(FrontEnd.from_dict(front_end).sample_rate, targets, available_targets(sources))
    if name in REFERENCE_METHODS:
        return OracleSeparator(name.removeprefix("oracle_"), front_end, targets, sources=sources)
    raise UnknownNameError("reference method", name, list(REFERENCE_METHODS))


@torch.no_grad()
def separate_track(
    separator: Separator,
    mixture: np.ndarray,
    sample_rate: int,
    references: Optional[np.ndarray] = None,
    chunk_seconds: float = 20.0,
    overlap_seconds: float = 1.0,
    device: Optional[str | torch.device] = None,
    progress: bool | str = False,
) -> dict[str, np.ndarray]:
    """Separate a whole track, chunk by chunk (:func:`~lightning_sep.separation.overlap_add.overlap_add`).

    Args:
        mixture: ``(channels, samples)`` at ``sample_rate``; each channel is separated by the
            monaural model (channels are a batch).
        references: ``(n_sources, channels, samples)`` in the dataset's source order (MUSDB18:
            :data:`SOURCES`), for an oracle.
        chunk_seconds, overlap_seconds: chunk length and cross-fade, in seconds.

    Returns:
        ``{target: (samples, channels) float32}`` at ``sample_rate`` (the museval layout), with
        as many samples as the mixture.  Audio at another rate than the separator's is resampled
        to it and back.
    """
    if separator.needs_references and references is None:
        raise LightningSepError(f"{separator.name} needs the reference stems of the track.")
    if chunk_seconds <= 0 or not 0 <= overlap_seconds < chunk_seconds:
        raise LightningSepError(
            f"chunk_seconds={chunk_seconds} must be > 0 and overlap_seconds={overlap_seconds} in [0, chunk_seconds)."
        )
    device = torch.device(device) if device is not None else torch.device("cpu")
    length = mixture.shape[-1]
    x = torch.tensor(np.asarray(mixture), dtype=torch.float32, device=device)  # a copy (the input may be a read-only map)
    refs = None if references is None else torch.tensor(np.asarray(references), dtype=torch.float32, device=device)
    rate = int(separator.sample_rate)
    if rate != sample_rate:
        import torchaudio.functional as AF

        x = AF.resample(x, sample_rate, rate)
        if refs is not None:
            refs = AF.resample(refs, sample_rate, rate)
    chunk = max(1, int(round(chunk_seconds * rate)))
    overlap = int(round(overlap_seconds * rate))
    est = overlap_add(separator.separate, x, chunk, overlap, extra=refs, progress=progress)
    if rate != sample_rate:
        import torchaudio.functional as AF

        est = AF.resample(est, rate, sample_rate)
        if est.shape[-1] < length:
            est = torch.nn.functional.pad(est, (0, length - est.shape[-1]))
        est = est[..., :length]
        complement = getattr(separator, "complement", None)
        if complement:
            # mixture - estimate at the model's rate does not survive the round trip (resampling is not
            # invertible): take the difference again at the input's rate, so the two add up to the input
            original = torch.tensor(np.asarray(mixture), dtype=torch.float32, device=est.device)
            est[separator.targets.index(complement[1])] = original - est[separator.targets.index(complement[0])]
    est = est.cpu().numpy()
    return {t: np.ascontiguousarray(est[j].T) for j, t in enumerate(separator.targets)}
