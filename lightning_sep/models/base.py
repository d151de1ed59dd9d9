"""The LightningModules every separator family shares.

* :class:`SpectrogramSeparator` -- what every family has (asteroid's ``System`` idea): the front
  end (STFT, resynthesis with the mixture phase), the target sources, the check that a batch
  carries the sources the model was built for, and the validation SDR of the resynthesised
  estimates next to the mixture baseline.  A family says how it estimates magnitudes
  (:meth:`SpectrogramSeparator.estimate_magnitudes`) and how it trains.
* :class:`MixtureToTarget` -- the mixture-to-target families (DAE, MSS-DAE, skip-filter, VAE): one
  network per target maps per-band normalised mixture magnitudes to the target's, trained with
  the MSE (or the family's own loss) by Adam with LR-halving on plateau and early stopping
  (paper ``dae-skipfilter-nca-mimilakis`` Sec. 4.1).
* The per-source families that separate by optimisation (NMF, NAE, CCAE, RCAE) are in
  :mod:`lightning_sep.models.source_models`.

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


class SpectrogramSeparator(L.LightningModule):
    """Front end, targets, batch checks and the validation SDR of every family.

    Args:
        front_end: STFT parameters (:class:`~lightning_sep.transforms.FrontEnd` fields). Under
            ``lightning-sep`` it is linked from the DataModule, so data and model agree.
        targets: the DataModule's target sources (linked from it); a batch carries one clean
            signal per target, in this order.
    """

    #: the family name, as in ``MODEL=`` (set by subclasses)
    family: str = "separator"

    def __init__(self, front_end: Optional[dict] = None, targets: Optional[list[str]] = None):
        super().__init__()
        self.front_end = FrontEnd.from_dict(front_end)
        #: the data's targets: what every batch carries, in this order
        self.data_targets = list(targets or ["vocals"])
        #: the estimates the model returns, in order (a family may complete them, see ``source_models``)
        self.targets = list(self.data_targets)
        self.stft = STFT(self.front_end)
        self.istft = ISTFT(self.front_end)
        #: statistics of the last separation (e.g. the VAE's posterior variance), for logging
        self.separation_stats: dict[str, float] = {}

    # -- what a family defines -------------------------------------------------------------------
    def estimate_magnitudes(self, mixture_magnitude: Tensor) -> Tensor:
        """Mixture magnitudes ``(batch, bins, frames)`` to target magnitudes ``(batch, targets, bins, frames)``."""
        raise NotImplementedError

    def log(self, name: str, value: Any, *args: Any, batch_size: Optional[int] = None, **kwargs: Any) -> None:
        """Lightning's ``log``, with the batch size given as a float.

        An epoch value is ``sum(value * batch_size) / sum(batch_size)``; under DDP Lightning reduces both
        sums with a *mean* over the ranks, and the running count is an integer tensor, so the mean of
        the counts is floor-divided (ranks with 2 and 1 items give 1, not 1.5) and the epoch value is
        wrong whenever the ranks' shards differ in size.  A float count keeps the division exact.
        """
        super().log(name, value, *args, batch_size=None if batch_size is None else float(batch_size), **kwargs)

    # -- the front end -------------------------------------------------------------------------
    def spectrogram(self, wave: Tensor) -> tuple[Tensor, Tensor]:
        """Waveforms ``(batch, samples)`` to magnitude and phase ``(batch, bins, frames)``."""
        return magphase(self.stft(wave))

    def forward(self, mixture: Tensor) -> Tensor:
        """Separate waveforms ``(batch, samples)`` into ``(batch, targets, samples)``.

        Each estimated magnitude is combined with the mixture phase and inverted.
        """
        mag, phase = self.spectrogram(mixture)
        est = self.estimate_magnitudes(mag)
        return self.istft(with_phase(est, phase.unsqueeze(1)), length=mixture.shape[-1])

    def validation_estimates(self, mixture: Tensor) -> Tensor:
        """The separation validation scores, ``(batch, samples)`` to ``(batch, targets, samples)`` (by
        default :meth:`forward`; the families that separate by optimisation use their validation budget)."""
        return self(mixture)

    @torch.no_grad()
    def training_magnitudes(self, mixtures: Iterator[np.ndarray]) -> Iterator[Tensor]:
        """Magnitudes of whole training recordings, 2048 frames at a time (normalisation statistics)."""
        chunk = self.front_end.frames_to_samples(2048)
        for audio in mixtures:
            audio = torch.as_tensor(np.asarray(audio, dtype=np.float32))
            for start in range(0, audio.shape[-1], chunk):
                yield self.spectrogram(audio[..., start : start + chunk])[0]

    def training_mixtures(self) -> Iterator[np.ndarray]:
        """The DataModule's training mixtures (for statistics fitted before training)."""
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "train_mixtures"):
            raise LightningSepError(
                f"MODEL={self.family} needs the training mixtures to compute its normalisation: "
                "train it with a lightning-sep DataModule (one that has train_mixtures())."
            )
        return dm.train_mixtures()

    # -- batches -------------------------------------------------------------------------------
    def check_batch(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """``(mixture (B, L), targets (B, S, L))``; a batch with another number of sources than the
        model was built for is refused, clearly."""
        mixture, targets = batch
        if targets.dim() != 3 or targets.shape[1] != len(self.data_targets):
            got = targets.shape[1] if targets.dim() == 3 else "no per-source"
            raise LightningSepError(
                f"MODEL={self.family} was built for {len(self.data_targets)} source(s) "
                f"({', '.join(self.data_targets)}) but the data gives batches with {got} source signals: use data "
                f"with the targets {self.data_targets} (--data.init_args.targets), or train a new model for these data."
            )
        return mixture, targets

    def check_datamodule_targets(self) -> None:
        """At ``fit``: the DataModule's targets must be the model's (e.g. a checkpoint resumed on other data)."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        dm_targets = getattr(dm, "targets", None)
        if dm_targets is not None and list(dm_targets) != self.data_targets:
            raise LightningSepError(
                f"MODEL={self.family} was built for {len(self.data_targets)} source(s) ({', '.join(self.data_targets)}); "
                f"the data has the targets {list(dm_targets)} ({len(dm_targets)}): use data with the model's targets, "
                "or train a new model."
            )

    def check_finite(self, loss: Tensor, hint: str) -> None:
        if not torch.isfinite(loss):
            raise LightningSepError(f"The training loss became {loss.item()} at step {self.global_step}: {hint}.")

    def log_scores(self, prefix: str, estimates: Tensor, mixture: Tensor, targets: Tensor) -> None:
        """SDR of the resynthesised ``estimates`` ``(B, S', L)`` against ``targets`` ``(B, S, L)`` (the
        first ``S`` estimates), next to the mixture's SDR (the baseline) and the improvement.

        Each value is a mean over the active (non-silent) references, weighted by their count, so the
        epoch value is the mean over every active segment of the epoch -- under DDP over every rank's
        shard (``sync_dist`` sums the weighted values and the counts). Every key is logged on every
        batch, with weight 0 when nothing is active: ranks must log the same keys, or the epoch-end
        reduction would wait forever for a key one rank never logged.
        """
        estimates = estimates[:, : targets.shape[1]]
        sdr = signal_to_distortion_ratio(estimates, targets)  # (B, S)
        base = signal_to_distortion_ratio(mixture.unsqueeze(1).expand_as(targets), targets)
        keep = active(targets)

        def log_mean(name: str, values: Tensor, where: Tensor, **kwargs) -> None:
            count = int(where.sum())
            mean = values[where].mean() if count else values.new_zeros(())
            self.log(name, mean, batch_size=count, sync_dist=True, **kwargs)

        log_mean(f"{prefix}/sdr", sdr, keep, prog_bar=True)
        log_mean(f"{prefix}/sdr_mixture", base, keep)
        log_mean(f"{prefix}/sdr_improvement", sdr - base, keep)
        if targets.shape[1] > 1:
            for j in range(targets.shape[1]):
                log_mean(f"{prefix}/sdr/{self.targets[j]}", sdr[:, j], keep[:, j])


class MixtureToTarget(SpectrogramSeparator):
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
        super().__init__(front_end, targets)
        if context_frames < 0:
            raise LightningSepError(f"context_frames={context_frames} must be >= 0.")
        self.save_hyperparameters(ignore=["front_end", "targets"])
        self.hparams["front_end"] = self.front_end.to_dict()
        self.hparams["targets"] = self.targets
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

    def estimate_magnitudes(self, mixture_magnitude: Tensor) -> Tensor:
        """Mixture magnitudes ``(batch, bins, frames)`` to target magnitudes ``(batch, targets, bins, frames)``.

        Works in the normalised domain and returns unnormalised magnitudes.
        """
        return self.normalize.inverse(self._estimate_normalized(self.normalize(mixture_magnitude)))

    def _estimate_normalized(self, x: Tensor) -> Tensor:
        features = stack_context(x, self.hparams.context_frames)  # (B, T, (2c+1)F)
        outs = [self.networks[t](features).transpose(1, 2) for t in self.targets]  # (B, F, T)
        return torch.stack(outs, dim=1)

    # -- normalisation statistics from the training data -------------------------------------
    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.check_datamodule_targets()
        if stage != "fit" or bool(self.normalize.fitted):
            return
        self.normalize.fit(self.training_magnitudes(self.training_mixtures()))

    # -- training ------------------------------------------------------------------------------
    def common_step(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        mixture, targets = self.check_batch(batch)  # (B, L), (B, S, L)
        mix_mag, mix_phase = self.spectrogram(mixture)
        tgt_mag, _ = self.spectrogram(targets)
        x = self.normalize(mix_mag)
        est = self._estimate_normalized(x)
        loss = nn.functional.mse_loss(est, self.normalize(tgt_mag))
        return {"loss": loss, "estimate": est, "mix_phase": mix_phase}

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self.common_step(batch)["loss"]
        self.check_finite(loss, f"lower the learning rate (lr={self.hparams.lr})")
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch[0]))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch: tuple[Tensor, Tensor], prefix: str) -> None:
        """Loss, and the SDR of the resynthesised estimates next to the mixture's (baseline)."""
        mixture, targets = self.check_batch(batch)
        out = self.common_step(batch)
        n = len(mixture)
        self.log(f"{prefix}/loss", out["loss"], batch_size=n, sync_dist=True, prog_bar=True)
        est_mag = self.normalize.inverse(out["estimate"])
        est_wave = self.istft(with_phase(est_mag, out["mix_phase"].unsqueeze(1)), length=mixture.shape[-1])
        self.log_scores(prefix, est_wave, mixture, targets)
        for key, value in out.items():  # a family's extra statistics (the VAE's posterior variance)
            if key not in ("loss", "estimate", "mix_phase"):
                self.log(f"{prefix}/{key}", value, batch_size=n, sync_dist=True)

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
