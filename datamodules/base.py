"""``SeparationDataModule``: what every lightning-sep DataModule shares.

A DataModule of this platform yields ``(mixture, targets)`` waveform batches (``(batch, samples)``
and ``(batch, n_targets, samples)``), says its STFT front end (:attr:`front_end`, linked into the
model by the CLI), its targets, and hands the model its training mixtures for the per-band
normalisation (``train_mixtures()``).  This base class holds the common settings and their
checks, the segment lengths in frames, the dataloaders (training through the
:class:`~datamodules.segments.EpochSampler`), and a one-time announcement of the data used.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, Dataset, Sampler

from datamodules.segments import EpochSampler
from lightning_sep.errors import LightningSepError, UnknownNameError
from lightning_sep.transforms import FrontEnd

log = logging.getLogger(__name__)


def check_targets(targets: Sequence[str] | str, available: Sequence[str]) -> list[str]:
    """``targets`` as a list: non-empty, each in ``available``, none twice."""
    targets = [targets] if isinstance(targets, str) else list(targets)
    if not targets:
        raise LightningSepError(f"targets is empty: give one or more of {', '.join(available)}.")
    for t in targets:
        if t not in available:
            raise UnknownNameError("target", t, available)
    dupes = sorted({t for t in targets if targets.count(t) > 1})
    if dupes:
        raise LightningSepError(f"targets={targets} names {', '.join(dupes)} more than once; list each target once.")
    return targets


def check_at_least(minimum: int, **values: int) -> None:
    """Each ``name=value`` must be an integer >= ``minimum``."""
    for name, value in values.items():
        if int(value) < minimum:
            unit = " frames" if name.endswith("frames") else ""
            raise LightningSepError(f"{name}={value} must be at least {minimum}{unit}.")


class SeparationDataModule(L.LightningDataModule):
    """Front end, segment lengths and dataloaders (subclasses set the datasets in ``setup``)."""

    dataset_name = "separation"

    def __init__(
        self, *, sample_rate: int, n_fft: int, win_length: int, hop_length: int, window: str, retained_bins: int,
        segment_frames: int, val_segment_frames: int, batch_size: int, num_workers: int, seed: int,
    ):
        super().__init__()
        self._front_end = FrontEnd(  # validates the STFT settings
            sample_rate=int(sample_rate), n_fft=int(n_fft), win_length=int(win_length),
            hop_length=int(hop_length), window=str(window), retained_bins=int(retained_bins),
        )
        if sample_rate <= 0:
            raise LightningSepError(f"sample_rate={sample_rate} must be positive.")
        check_at_least(2, segment_frames=segment_frames, val_segment_frames=val_segment_frames)
        check_at_least(1, batch_size=batch_size)
        check_at_least(0, num_workers=num_workers, seed=seed)
        self.sample_rate = int(sample_rate)
        self.segment_frames, self.val_segment_frames = int(segment_frames), int(val_segment_frames)
        self.batch_size, self.num_workers, self.seed = int(batch_size), int(num_workers), int(seed)
        self.train_set: Optional[Dataset] = None
        self.valid_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None
        self._sampler: Optional[EpochSampler] = None
        self._announced = False

    # -- the front end and segment lengths ---------------------------------------------------------
    @property
    def front_end(self) -> dict:
        """STFT settings for the model: plain ints and a str."""
        return self._front_end.to_dict()

    @property
    def segment_samples(self) -> int:
        return self._front_end.frames_to_samples(self.segment_frames)

    @property
    def val_segment_samples(self) -> int:
        return self._front_end.frames_to_samples(self.val_segment_frames)

    @rank_zero_only
    def _announce(self, message: str) -> None:
        """Say once (on rank 0) which data this run uses."""
        if self._announced:
            return
        self._announced = True
        log.info(message)
        print(message, flush=True)

    def _set_train_set(self, dataset: Dataset) -> None:
        self.train_set = dataset
        self._sampler = EpochSampler(len(dataset), self.seed)

    # -- data ------------------------------------------------------------------------------------------
    #: batch size of the test loader (``None``: ``batch_size``; 1 where test items are whole recordings)
    test_batch_size: Optional[int] = None

    def _loader(self, dataset: Optional[Dataset], stage: str, sampler: Optional[Sampler] = None) -> DataLoader:
        if dataset is None:
            self.setup(stage)
            dataset = {"fit": self.train_set, "validate": self.valid_set, "test": self.test_set}[stage]
            sampler = self._sampler if stage == "fit" else None
        if stage != "fit" and sampler is None:
            sampler = self._evaluation_shard(dataset, stage)
        return DataLoader(
            dataset,
            batch_size=(self.test_batch_size or self.batch_size) if stage == "test" else self.batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(self.seed),  # worker base seeds: not the global RNG
        )

    def _evaluation_shard(self, dataset: Dataset, stage: str) -> Optional[Sampler]:
        """Under DDP, this rank's share of the validation/test items, each item on exactly one rank.

        Lightning's default distributed sampler pads the shards to equal length by repeating items,
        which would count them twice in the epoch's SDR; :class:`UnrepeatedDistributedSampler` gives
        shards that differ by at most one item instead (safe here: evaluation has no gradient sync,
        and every rank gets at least one item).  ``None`` (no sampler) on one process.
        """
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        if world <= 1:
            return None
        from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

        if len(dataset) < world:
            what = {"validate": "validation", "test": "test"}.get(stage, stage)
            raise LightningSepError(
                f"The {what} set has {len(dataset)} segment(s), fewer than the {world} training processes "
                f"(DEVICES x NODES): every process needs one. Use fewer devices, or more {what} segments "
                "(--data.init_args.val_segments_per_track)."
            )
        return UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=trainer.global_rank, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, "fit", self._sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.valid_set, "validate")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "test")
