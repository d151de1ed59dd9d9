"""``MixtureToTarget``: the LightningModule every mixture-to-target family shares.

A family (DAE, MSS-DAE, skip-filter, ...) only says how to build its network, in
:meth:`MixtureToTarget.build_network`; this class holds what they have in common (asteroid's
``System`` idea): the front end (STFT, per-band normalisation, resynthesis with the mixture
phase), one network per target source, the common train/validation step, the MSE loss on
normalised magnitudes, Adam with LR-halving on plateau and early stopping (paper
``dae-skipfilter-nca-mimilakis`` Sec. 4.1), and the validation SDR next to the mixture baseline.

Every hyperparameter is a plain Python value, saved with :meth:`save_hyperparameters`, so a
checkpoint loads with ``weights_only=True``.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch import Tensor, nn

from lightning_sep.errors import LightningSepError
from lightning_sep.evaluation.metrics import active, signal_to_distortion_ratio
from lightning_sep.transforms import (
    ISTFT,
    STFT,
    BandNormalization,
    FrontEnd,
    magphase,
    stack_context,
    with_phase,
)


class MixtureToTarget(L.LightningModule):
    """Maps mixture magnitude frames to each target's magnitude.

    Args:
        front_end: STFT parameters (:class:`~lightning_sep.transforms.FrontEnd` fields). Under
            ``lightning-sep`` it is linked from the DataModule, so data and model agree.
        targets: target source names, one network each (linked from the DataModule).
        context_frames: neighbouring frames each side given to the network with every frame
            (0 = frame-wise, as in the paper).
        lr, betas: Adam (paper: 1e-4, (0.9, 0.999)).
        lr_factor, lr_patience: LR multiplied by ``lr_factor`` after ``lr_patience`` validation
            epochs without improvement of ``monitor`` (paper: halved after 2).
        early_stopping_patience: stop after this many epochs without improvement (paper: 4);
            ``None`` disables it.
        monitor: the validation quantity for plateau and stopping (``val/loss``, minimised).
    """

    #: the family name, as in ``MODEL=`` (set by subclasses)
    family: str = "mixture_to_target"

    def __init__(
        self,
        front_end: Optional[dict] = None,
        targets: Optional[list[str]] = None,
        context_frames: int = 0,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        lr_factor: float = 0.5,
        lr_patience: int = 2,
        early_stopping_patience: Optional[int] = 4,
        monitor: str = "val/loss",
    ):
        super().__init__()
        if context_frames < 0:
            raise LightningSepError(f"context_frames={context_frames} must be >= 0.")
        self.front_end = FrontEnd.from_dict(front_end)
        self.targets = list(targets or ["vocals"])
        self.save_hyperparameters(ignore=["front_end", "targets"])
        self.hparams["front_end"] = self.front_end.to_dict()
        self.hparams["targets"] = self.targets
        self.stft = STFT(self.front_end)
        self.istft = ISTFT(self.front_end)
        n = self.front_end.n_bins
        self.normalize = BandNormalization(n)
        self.networks = nn.ModuleDict(
            {t: self.build_network(n * (2 * context_frames + 1), n) for t in self.targets}
        )

    # -- what a family defines ------------------------------------------------------------
    def build_network(self, n_in: int, n_bins: int) -> nn.Module:
        """The network of one target: ``(..., n_in)`` mixture features to ``(..., n_bins)``.

        ``n_in = (2 * context_frames + 1) * n_bins``; the centre frame is the last ``n_bins``
        block's middle one (see :func:`~lightning_sep.transforms.stack_context`).
        """
        raise NotImplementedError

    # -- the front end ----------------------------------------------------------------------
    def spectrogram(self, wave: Tensor) -> tuple[Tensor, Tensor]:
        """Waveforms ``(batch, samples)`` to magnitude and phase ``(batch, bins, frames)``."""
        return magphase(self.stft(wave))

    def estimate_magnitudes(self, mixture_magnitude: Tensor) -> Tensor:
        """Mixture magnitudes ``(batch, bins, frames)`` to target magnitudes ``(batch, targets, bins, frames)``.

        Works in the normalised domain and returns unnormalised magnitudes.
        """
        return self.normalize.inverse(self._estimate_normalized(self.normalize(mixture_magnitude)))

    def _estimate_normalized(self, x: Tensor) -> Tensor:
        features = stack_context(x, self.hparams.context_frames)  # (B, T, (2c+1)F)
        outs = [self.networks[t](features).transpose(1, 2) for t in self.targets]  # (B, F, T)
        return torch.stack(outs, dim=1)

    def forward(self, mixture: Tensor) -> Tensor:
        """Separate waveforms ``(batch, samples)`` into ``(batch, targets, samples)``.

        Each estimated magnitude is combined with the mixture phase and inverted.
        """
        mag, phase = self.spectrogram(mixture)
        est = self.estimate_magnitudes(mag)
        return self.istft(with_phase(est, phase.unsqueeze(1)), length=mixture.shape[-1])

    # -- normalisation statistics from the training data -------------------------------------
    def setup(self, stage: str) -> None:
        if stage != "fit" or bool(self.normalize.fitted):
            return
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "train_mixtures"):
            raise LightningSepError(
                "The model needs the training mixtures to compute its per-band normalisation: "
                "train it with a lightning-sep DataModule (one that has train_mixtures())."
            )
        self.normalize.fit(self._training_magnitudes(dm.train_mixtures()))

    @torch.no_grad()
    def _training_magnitudes(self, mixtures: Iterator[np.ndarray]) -> Iterator[Tensor]:
        chunk = self.front_end.frames_to_samples(2048)
        for audio in mixtures:
            audio = torch.as_tensor(np.asarray(audio, dtype=np.float32))
            for start in range(0, audio.shape[-1], chunk):
                yield self.spectrogram(audio[..., start : start + chunk])[0]

    # -- training ------------------------------------------------------------------------------
    def common_step(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        mixture, targets = batch  # (B, L), (B, S, L)
        mix_mag, mix_phase = self.spectrogram(mixture)
        tgt_mag, _ = self.spectrogram(targets)
        x = self.normalize(mix_mag)
        est = self._estimate_normalized(x)
        loss = nn.functional.mse_loss(est, self.normalize(tgt_mag))
        return {"loss": loss, "estimate": est, "mix_phase": mix_phase}

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self.common_step(batch)["loss"]
        if not torch.isfinite(loss):
            raise LightningSepError(
                f"The training loss became {loss.item()} at step {self.global_step}: "
                f"lower the learning rate (lr={self.hparams.lr})."
            )
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch[0]))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch: tuple[Tensor, Tensor], prefix: str) -> None:
        """Loss, and the SDR of the resynthesised estimates next to the mixture's (baseline)."""
        mixture, targets = batch
        out = self.common_step(batch)
        n = len(mixture)
        self.log(f"{prefix}/loss", out["loss"], batch_size=n, sync_dist=True, prog_bar=True)
        est_mag = self.normalize.inverse(out["estimate"])
        est_wave = self.istft(with_phase(est_mag, out["mix_phase"].unsqueeze(1)), length=mixture.shape[-1])
        sdr = signal_to_distortion_ratio(est_wave, targets)  # (B, S)
        base = signal_to_distortion_ratio(mixture.unsqueeze(1).expand_as(targets), targets)
        keep = active(targets)
        count = int(keep.sum())
        if count == 0:
            return
        mean_sdr, mean_base = sdr[keep].mean(), base[keep].mean()
        self.log(f"{prefix}/sdr", mean_sdr, batch_size=count, sync_dist=True, prog_bar=True)
        self.log(f"{prefix}/sdr_mixture", mean_base, batch_size=count, sync_dist=True)
        self.log(f"{prefix}/sdr_improvement", mean_sdr - mean_base, batch_size=count, sync_dist=True)
        if len(self.targets) > 1:
            for j, name in enumerate(self.targets):
                k = keep[:, j]
                if k.any():
                    self.log(f"{prefix}/sdr/{name}", sdr[k, j].mean(), batch_size=int(k.sum()), sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        opt = torch.optim.Adam(self.parameters(), lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min" if hp.monitor.endswith("loss") else "max", factor=hp.lr_factor, patience=hp.lr_patience
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": hp.monitor, "interval": "epoch"}}

    def configure_callbacks(self) -> list:
        hp = self.hparams
        if hp.early_stopping_patience is None:
            return []
        return [
            EarlyStopping(
                monitor=hp.monitor,
                mode="min" if hp.monitor.endswith("loss") else "max",
                patience=hp.early_stopping_patience,
            )
        ]


def xavier_init(module: nn.Module) -> None:
    """Xavier-normal weights and zero biases for every Linear layer (paper Sec. 4.1)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
