"""A callback the DDP tests add to a real ``lightning-sep fit`` (``--trainer.callbacks``): what each rank saw.

Every rank writes ``$PROBE_DIR/rank<r>.json`` at each epoch's end: the hashes of the training mixtures
it drew, a hash of the model's weights after each epoch, and per validation item the hash, the SDR of the model's separation and whether the reference
is active (as :meth:`SpectrogramSeparator.log_scores` counts it). With ``PROBE_INTERRUPT_EPOCH=n`` every
rank raises ``KeyboardInterrupt`` when epoch ``n`` starts (Ctrl-C), after epoch ``n - 1``'s checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from lightning.pytorch import Callback

from lightning_sep.evaluation.metrics import active, signal_to_distortion_ratio
from lightning_sep.transforms import with_phase


def _hashes(mixtures: torch.Tensor) -> list[str]:
    return [hashlib.sha1(m.detach().cpu().numpy().tobytes()).hexdigest()[:16] for m in mixtures]


class Probe(Callback):
    def __init__(self):
        self.out = Path(os.environ["PROBE_DIR"])
        self.record: dict = {"train": {}, "val": {}}

    def on_train_epoch_start(self, trainer, pl_module):
        stop = os.environ.get("PROBE_INTERRUPT_EPOCH")
        if stop is not None and trainer.current_epoch == int(stop):
            raise KeyboardInterrupt

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.record["train"].setdefault(str(trainer.current_epoch), []).extend(_hashes(batch[0]))

    @torch.no_grad()
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if trainer.sanity_checking:
            return
        mixture, targets = batch
        if "val_separation_iterations" in pl_module.hparams:  # the families that separate by optimisation
            mag, phase = pl_module.spectrogram(mixture)
            est = pl_module.estimate_magnitudes(mag, pl_module.hparams.val_separation_iterations)
            estimates = pl_module.istft(with_phase(est, phase.unsqueeze(1)), length=mixture.shape[-1])
        else:
            estimates = pl_module(mixture)
        estimates = estimates[:, : targets.shape[1]]
        sdr = signal_to_distortion_ratio(estimates, targets)
        keep = active(targets)
        items = self.record["val"].setdefault(str(trainer.current_epoch), [])
        for h, s, k in zip(_hashes(mixture), sdr.tolist(), keep.tolist()):
            items.append({"hash": h, "sdr": s, "active": k})

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        rank = trainer.global_rank
        self.record["world_size"] = trainer.world_size
        digest = hashlib.sha1()
        for name, tensor in sorted(pl_module.state_dict().items()):
            digest.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
        self.record.setdefault("weights", {})[str(trainer.current_epoch)] = digest.hexdigest()
        (self.out / f"rank{rank}.json").write_text(json.dumps(self.record))
