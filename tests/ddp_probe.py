"""A callback the DDP tests add to a real ``lightning-sep fit`` (``--trainer.callbacks``): what each rank saw.

Every rank writes ``$PROBE_DIR/rank<r>.json`` at each epoch's end: the hashes of the training mixtures
it drew, a hash of the model's weights after each epoch, and per validation item the hash, the SDR of the model's separation and whether the reference
is active (as :meth:`SpectrogramSeparator.log_scores` counts it). With ``PROBE_INTERRUPT_EPOCH=n`` every
rank raises ``KeyboardInterrupt`` when epoch ``n`` starts (Ctrl-C), after epoch ``n - 1``'s checkpoint;
``PROBE_RAISE_EPOCH=n`` raises a ``RuntimeError`` there instead; ``PROBE_HOLD_EPOCH=n`` (``PROBE_HOLD_SETUP=1``)
writes ``holding-epoch<n>`` (``holding-setup``; ``...-rank<r>`` on rank r) and waits there for a signal the test sends.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from lightning.pytorch import Callback

from lightning_sep.evaluation.metrics import active, signal_to_distortion_ratio


def _hashes(mixtures: torch.Tensor) -> list[str]:
    return [hashlib.sha1(m.detach().cpu().numpy().tobytes()).hexdigest()[:16] for m in mixtures]


class Probe(Callback):
    def __init__(self):
        self.out = Path(os.environ["PROBE_DIR"])
        self.record: dict = {"train": {}, "val": {}}

    def setup(self, trainer, pl_module, stage):
        if os.environ.get("PROBE_HOLD_SETUP"):
            self.hold("setup", trainer.global_rank)

    def on_train_epoch_start(self, trainer, pl_module):
        stop = os.environ.get("PROBE_INTERRUPT_EPOCH")
        if stop is not None and trainer.current_epoch == int(stop):
            raise KeyboardInterrupt
        if os.environ.get("PROBE_RAISE_EPOCH") == str(trainer.current_epoch):
            raise RuntimeError(f"probe: an error in epoch {trainer.current_epoch}")
        if os.environ.get("PROBE_HOLD_EPOCH") == str(trainer.current_epoch):
            self.hold(f"epoch{trainer.current_epoch}", trainer.global_rank)

    def hold(self, where: str, rank: int) -> None:
        """Write this process's pid to ``$PROBE_DIR/holding-<where>`` (rank 0; ``...-rank<r>`` for rank r) and wait
        there (for a signal the test sends) for up to 5 minutes."""
        import time

        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / (f"holding-{where}" + (f"-rank{rank}" if rank else ""))).write_text(str(os.getpid()))
        time.sleep(300)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.record["train"].setdefault(str(trainer.current_epoch), []).extend(_hashes(batch[0]))

    @torch.no_grad()
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if trainer.sanity_checking:
            return
        mixture, targets = batch
        estimates = pl_module.validation_estimates(mixture)[:, : targets.shape[1]]
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
