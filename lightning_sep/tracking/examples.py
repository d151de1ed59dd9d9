"""Listen to a run: a few seconds of one validation example, logged to its MLflow run.

At the end of ``fit``, :class:`ValidationExample` takes the validation item where every target is
most active, separates an excerpt of it with the best checkpoint's weights (the model ``make eval``
scores), exactly as validation does (:meth:`SpectrogramSeparator.validation_estimates`), and logs
under ``examples/``:

* ``mixture.wav``, ``<target>_reference.wav``, ``<target>_estimate.wav`` (float wav at the model's
  sample rate: the MLflow UI plays them);
* ``spectrograms.png``: the magnitude spectrograms (dB) the model sees -- mixture, and per target
  the reference next to the estimate, with the excerpt's SDR;
* ``example.json``: which validation item and samples, the checkpoint, and the SDR per target.

``--example.seconds 0`` turns it off.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from lightning_sep.errors import LightningSepError
from lightning_sep.evaluation.metrics import signal_to_distortion_ratio
from lightning_sep.tracking.mlflow import MLflowLogger


def pick_item(dataset: Any, candidates: int) -> tuple[int, Tensor, Tensor]:
    """``(index, mixture (L,), references (S, L))`` of the first ``candidates`` items whose least
    active target is the loudest (so every target is heard)."""
    best = None
    for i in range(min(len(dataset), candidates)):
        mixture, references = dataset[i]
        loudness = float(references.pow(2).mean(-1).min())
        if best is None or loudness > best[0]:
            best = (loudness, i, mixture, references)
    assert best is not None
    return best[1], best[2], best[3]


def loudest_window(references: Tensor, length: int, hop: int) -> int:
    """Start of the ``length``-sample window whose least active target is the loudest."""
    total = references.shape[-1]
    if total <= length:
        return 0
    starts = range(0, total - length + 1, max(1, hop))
    energy = references.pow(2).cumsum(-1)
    energy = torch.cat([energy.new_zeros(energy.shape[0], 1), energy], dim=-1)
    scores = [float((energy[:, s + length] - energy[:, s]).min()) for s in starts]
    return list(starts)[int(np.argmax(scores))]


def _wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, audio.astype(np.float32), sample_rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def spectrogram_png(model: LightningModule, mixture: Tensor, references: Tensor, estimates: Tensor,
                    targets: list[str], sdr: list[float], title: str) -> bytes:
    """The mixture's, each reference's and each estimate's magnitude spectrogram in dB, one colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = model.front_end
    with torch.no_grad():
        mags = model.spectrogram(torch.cat([mixture[None], references, estimates]).float())[0]
    db = 20 * torch.log10(mags.clamp_min(1e-8))
    top = float(db.max())
    rows = 1 + len(targets)
    fig, axes = plt.subplots(rows, 2, figsize=(11, 2.6 * rows), squeeze=False, sharex=True, sharey=True)
    extent = (0, mixture.shape[-1] / front.sample_rate, 0, front.retained_bins * front.sample_rate / front.n_fft / 1000)
    panels = [(axes[0][0], db[0], "mixture")]
    axes[0][1].axis("off")
    for j, target in enumerate(targets):
        panels.append((axes[1 + j][0], db[1 + j], f"{target}: reference"))
        panels.append((axes[1 + j][1], db[1 + len(targets) + j], f"{target}: estimate (SDR {sdr[j]:.1f} dB)"))
    image = None
    for ax, values, name in panels:
        image = ax.imshow(values.numpy(), origin="lower", aspect="auto", extent=extent, vmin=top - 80, vmax=top,
                          cmap="magma")
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("kHz")
    for ax in axes[-1]:
        ax.set_xlabel("seconds")
    fig.colorbar(image, ax=axes.ravel().tolist(), label="dB", shrink=0.8)
    fig.suptitle(title, fontsize=11)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


class ValidationExample(Callback):
    """Logs ``seconds`` of one validation example (audio and spectrograms) to the run at the end of ``fit``.

    Args:
        seconds: length of the excerpt (0 = log nothing).
        candidates: the example is the first ``candidates`` validation items' one where the least active
            target is the loudest.
    """

    def __init__(self, seconds: float = 4.0, candidates: int = 32):
        if seconds < 0 or candidates < 1:
            raise LightningSepError(f"--example.seconds={seconds} must be >= 0 and --example.candidates={candidates} >= 1.")
        self.seconds = float(seconds)
        self.candidates = int(candidates)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        logger = trainer.logger
        dataset = getattr(trainer.datamodule, "valid_set", None)
        if (not self.seconds or not trainer.is_global_zero or not isinstance(logger, MLflowLogger)
                or dataset is None or len(dataset) == 0 or not hasattr(pl_module, "validation_estimates")):
            return
        with tempfile.TemporaryDirectory() as tmp:
            self.write(trainer, trainer.lightning_module, dataset, Path(tmp))
            logger.experiment.log_artifacts(logger.run_id, tmp, "examples")

    def write(self, trainer: Trainer, model: LightningModule, dataset: Any, folder: Path) -> dict[str, Any]:
        """Write the example's files into ``folder``; returns what ``example.json`` holds."""
        sample_rate = model.front_end.sample_rate
        index, mixture, references = pick_item(dataset, self.candidates)
        length = min(mixture.shape[-1], max(1, int(round(self.seconds * sample_rate))))
        start = loudest_window(references, length, sample_rate // 2)
        mixture, references = mixture[start : start + length].float(), references[:, start : start + length].float()
        targets = list(model.data_targets)
        ckpt = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
        with best_weights(model, ckpt), torch.no_grad():
            was_training = model.training
            model.eval()
            estimates = model.validation_estimates(mixture[None].to(model.device))[0, : len(targets)].float().cpu()
            model.train(was_training)
        sdr = signal_to_distortion_ratio(estimates, references).tolist()
        files = {"mixture.wav": _wav_bytes(mixture.numpy(), sample_rate)}
        for j, target in enumerate(targets):
            files[f"{target}_reference.wav"] = _wav_bytes(references[j].numpy(), sample_rate)
            files[f"{target}_estimate.wav"] = _wav_bytes(estimates[j].numpy(), sample_rate)
        files["spectrograms.png"] = spectrogram_png(
            model, mixture, references, estimates, targets, sdr,
            f"{model.family}: validation item {index}, {start / sample_rate:.1f}-{(start + length) / sample_rate:.1f} s"
            + (f", {Path(ckpt).name}" if ckpt else ", last weights"),
        )
        record = {"validation_item": index, "start_sample": start, "samples": length, "sample_rate": sample_rate,
                  "checkpoint": ckpt or None, "targets": targets, "sdr_db": dict(zip(targets, sdr))}
        files["example.json"] = json.dumps(record, indent=2).encode()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        return record


@contextlib.contextmanager
def best_weights(model: LightningModule, path: Optional[str]) -> Iterator[None]:
    """Within the block, ``model`` holds the weights of checkpoint ``path`` (read weights-only); its own
    weights come back afterwards. A missing ``path`` keeps the current weights."""
    if not path or not Path(path).is_file():
        yield
        return
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(torch.load(path, map_location=model.device, weights_only=True)["state_dict"])
    try:
        yield
    finally:
        model.load_state_dict(saved)
