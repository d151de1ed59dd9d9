"""Real BSS Eval v4 on the full validation tracks during training (``--bsseval.every_n_epochs N``).

Validation logs a cheap SDR on fixed segments (``val/sdr``, :meth:`SpectrogramSeparator.log_scores`).
Every ``every_n_epochs`` validations, :class:`BSSEvalValidation` also separates each *full* validation
track (``--bsseval.max_seconds``: its middle seconds only) with the model being trained -- eval mode, no
gradients, the way ``make eval`` separates (:class:`~lightning_sep.separation.ModelSeparator`, chunked
overlap-add :func:`~lightning_sep.separation.separate_track`, the model's own inference: the
families that separate by optimisation use their validation iterations, ``val_separation_iterations``,
as validation does), scores it with museval's procedure (:func:`~lightning_sep.evaluation.bsseval.score_track`,
``metrics="bsseval"``: :mod:`~lightning_sep.evaluation.bsseval_v4`, on the model's device) and logs
the SiSEC aggregation (median over 1 s frames, then over tracks, NaN skipped) as epoch metrics:

* ``val/bss/<target>/<SDR|SIR|SAR|ISR>`` for every scored target (a ``vocals`` model also gets
  ``accompaniment = mixture - vocals``, as in ``make eval``);
* ``val/bss/sdr``: the mean over the model's own targets (the data's, ``model.data_targets``) of
  their SiSEC median SDR.

They are logged from ``on_validation_epoch_end``, so they are in ``trainer.callback_metrics`` (and in
MLflow) before ``ModelCheckpoint``, ``EarlyStopping``, the LR scheduler and Optuna's pruner read them at
the end of the validation: ``--checkpoint.monitor val/bss/sdr`` and ``make tune ARGS="--metric
val/bss/sdr"`` work (the study then switches this callback on in every trial).

Under DDP the tracks are sharded over the ranks (track ``i`` on rank ``i % world_size``), each rank
sends its per-track medians to every other (one ``all_gather``), and every rank aggregates the same
numbers, so every rank logs the same values; an error on one rank is gathered too and raised on all
of them (no rank is left waiting in a collective).

Needs full MUSDB18-format validation tracks (``DATA=musdb``: mixture, drums, bass, other, vocals);
other data (the TIMIT speech mixtures) is refused with a clear error when the callback is on.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from lightning_sep.errors import LightningSepError
from lightning_sep.evaluation.bsseval import HOP, METRICS, MUSDB_TARGETS, WIN

#: the prefix of every metric this callback logs
PREFIX = "val/bss/"
#: the headline metric: mean over the model's targets of their SiSEC median SDR
HEADLINE = PREFIX + "sdr"
OPTION = "--bsseval.every_n_epochs"


def is_bss_metric(metric: Optional[str]) -> bool:
    """Whether ``metric`` is one this callback logs (``val/bss/...``)."""
    return bool(metric) and str(metric).startswith(PREFIX)


def check_bss_metric(metric: str, where: str = "--metric") -> str:
    """``val/bss/sdr`` or ``val/bss/<target>/<SDR|SIR|SAR|ISR>`` (a MUSDB18 target); anything else under
    ``val/bss/`` is an error naming ``where`` and the valid names."""
    if metric == HEADLINE:
        return metric
    target, _, name = metric[len(PREFIX):].partition("/")
    if target in MUSDB_TARGETS and name in METRICS:
        return metric
    raise LightningSepError(
        f"{where} {metric}: BSS Eval validation logs {HEADLINE} and {PREFIX}<target>/<metric> with target one of "
        f"{', '.join(t for t in MUSDB_TARGETS if t != 'linear_mixture')} and metric one of {', '.join(METRICS)} "
        f"(e.g. {PREFIX}vocals/SDR)."
    )


def has_full_tracks(datamodule: Any) -> bool:
    """Whether ``datamodule`` has full MUSDB18-format tracks (stems mixture, drums, bass, other, vocals)."""
    return datamodule is not None and callable(getattr(datamodule, "full_tracks", None))


def check_datamodule(datamodule: Any, option: str = OPTION, value: Any = None) -> None:
    """Refuse data without full MUSDB18-format validation tracks (checked without loading any data)."""
    if has_full_tracks(datamodule):
        return
    what = "no DataModule" if datamodule is None else (
        f"{type(datamodule).__name__} ({getattr(datamodule, 'dataset_name', 'unknown data')})")
    shown = f"{option} {value}" if value is not None else option
    raise LightningSepError(
        f"{shown}: BSS Eval v4 validation scores full MUSDB18-format validation tracks (stems mixture, drums, "
        f"bass, other, vocals); the data is {what}, which has none. Train on MUSDB18 data (DATA=musdb) or drop "
        f"{option} (0 = off)."
    )


def scored_targets(model: Any) -> list[str]:
    """The estimates ``make eval`` scores for ``model``: its targets, plus the complement of a single
    ``vocals`` target (``accompaniment = mixture - vocals``), as :class:`ModelSeparator` returns them."""
    from lightning_sep.separation.separators import COMPLEMENTS

    targets = list(model.targets)
    complement = next((c for t in targets if (c := COMPLEMENTS.get(t)) and c not in targets), None)
    return targets + ([complement] if complement else [])


def _scorable(targets: Sequence[str]) -> bool:
    """Whether museval's ``eval_mus_track`` procedure can score these estimates (two targets or more
    besides ``accompaniment``, or the ``vocals``/``accompaniment`` pair)."""
    if "vocals" in targets and "accompaniment" in targets:
        return True
    return len([t for t in targets if t != "accompaniment"]) >= 2


@contextlib.contextmanager
def validation_inference(model: torch.nn.Module) -> Iterator[None]:
    """Within the block the model separates as validation does: eval mode, and for the families that
    separate by optimisation, ``val_separation_iterations`` (else ``separation_iterations``) iterations.
    Every submodule's training flag and the hyperparameter come back afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    hparams = getattr(model, "hparams", None)
    missing = object()
    saved = hparams.get("separation_iterations", missing) if hparams is not None else missing
    if saved is not missing:
        hparams["separation_iterations"] = hparams.get("val_separation_iterations") or saved
    try:
        yield
    finally:
        if saved is not missing:
            hparams["separation_iterations"] = saved
        for module, training in modes:
            module.training = training


class BSSEvalValidation(Callback):
    """BSS Eval v4 (museval's numbers) of the full validation tracks, every ``every_n_epochs`` validations.

    Args:
        every_n_epochs: score at every ``N``-th validation epoch (``N`` = 1: every validation; 2: the 2nd,
            4th, ... -- with ``check_val_every_n_epoch=c``, every ``N * c`` epochs); 0 = off (the default:
            training speed unchanged).
        max_seconds: score only the middle ``max_seconds`` of longer tracks (at least 1 s, a BSS Eval
            frame); None = full tracks.
        chunk_seconds: chunk length of the overlap-add separation, seconds (``make eval``'s default).
        overlap_seconds: cross-fade between chunks, seconds (``make eval``'s default).

    Logged (epoch metrics): ``val/bss/sdr`` and ``val/bss/<target>/<SDR|SIR|SAR|ISR>``; see the module
    docstring.
    """

    def __init__(self, every_n_epochs: int = 0, max_seconds: Optional[float] = None, chunk_seconds: float = 20.0,
                 overlap_seconds: float = 1.0):
        if isinstance(every_n_epochs, bool) or int(every_n_epochs) != every_n_epochs or every_n_epochs < 0:
            raise LightningSepError(
                f"{OPTION} {every_n_epochs}: give a whole number >= 0 (N = score every N-th validation epoch, 0 = off).")
        if max_seconds is not None and not (math.isfinite(max_seconds) and max_seconds >= WIN):
            raise LightningSepError(
                f"--bsseval.max_seconds {max_seconds}: give at least {WIN:g} (one BSS Eval frame), or null for full tracks.")
        if not (chunk_seconds > 0 and 0 <= overlap_seconds < chunk_seconds):
            raise LightningSepError(
                f"--bsseval.chunk_seconds {chunk_seconds} must be > 0 and --bsseval.overlap_seconds {overlap_seconds} "
                "in [0, chunk_seconds).")
        self.every_n_epochs = int(every_n_epochs)
        self.max_seconds = None if max_seconds is None else float(max_seconds)
        self.chunk_seconds = float(chunk_seconds)
        self.overlap_seconds = float(overlap_seconds)
        #: ``{epoch: {metric: value}}`` of every scoring (every rank holds the same)
        self.history: dict[int, dict[str, float]] = {}
        self._count, self._targets = 0, []

    @property
    def enabled(self) -> bool:
        return self.every_n_epochs > 0

    # -- checks before any work -----------------------------------------------------------------------
    def check_datamodule(self, datamodule: Any) -> None:
        """The data must have full MUSDB18-format tracks (called by the CLI before the data is prepared)."""
        if self.enabled:
            check_datamodule(datamodule, OPTION, self.every_n_epochs)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage not in ("fit", "validate"):
            return
        self.check_monitors(trainer, pl_module)
        if not self.enabled:
            return
        self.check_datamodule(trainer.datamodule)
        shown = f"{OPTION} {self.every_n_epochs}"
        targets = scored_targets(pl_module)
        foreign = [t for t in targets if t not in MUSDB_TARGETS]
        if foreign or not _scorable(targets):
            raise LightningSepError(
                f"{shown}: BSS Eval v4 (museval's eval_mus_track) scores at least two MUSDB18 targets, or vocals "
                f"with accompaniment = mixture - vocals; this model estimates {targets}. Train on targets such as "
                "[vocals], [vocals, accompaniment] or [drums, bass, other, vocals], or drop the option.")
        if len(self._tracks(trainer)) == 0:
            raise LightningSepError(f"{shown}: the data has no validation tracks to score.")

    def check_monitors(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """A checkpoint, early stopping or the LR schedule that monitors a ``val/bss/`` metric needs it at every
        validation: refused unless ``every_n_epochs`` is 1."""
        from lightning.pytorch.callbacks import ModelCheckpoint

        monitors = [("--checkpoint.monitor" if isinstance(cb, ModelCheckpoint) else type(cb).__name__,
                     getattr(cb, "monitor", None)) for cb in trainer.callbacks]
        hparams = getattr(pl_module, "hparams", None)
        if hparams is not None:
            monitors.append((f"--model.init_args.monitor (MODEL={getattr(pl_module, 'family', type(pl_module).__name__)})",
                             hparams.get("monitor")))
        for who, monitor in monitors:
            if is_bss_metric(monitor) and self.every_n_epochs != 1:
                when = "is off" if not self.enabled else f"logs it only every {self.every_n_epochs} validation epochs"
                raise LightningSepError(
                    f"{who} {monitor}: {OPTION} {self.every_n_epochs} {when}: use {OPTION} 1 to monitor it.")

    # -- when ----------------------------------------------------------------------------------------
    def due(self, trainer: Trainer) -> bool:
        """Whether this validation is scored: every ``every_n_epochs``-th validation epoch while fitting
        (counted from the epoch number, so the same after a resume), every ``validate``."""
        if not self.enabled or trainer.sanity_checking:
            return False
        if trainer.state.fn == TrainerFn.VALIDATING:
            return True
        if trainer.state.fn != TrainerFn.FITTING:
            return False
        every = trainer.check_val_every_n_epoch or 1
        validation_epoch = (trainer.current_epoch + 1) // every
        return validation_epoch > 0 and validation_epoch % self.every_n_epochs == 0

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.due(trainer):
            return
        started = time.perf_counter()
        metrics = self.evaluate(trainer, pl_module)
        # float64 on the module's device (MPS has no float64); the ranks hold the same values, so the
        # "max" over them (sync_dist) is each of them, exactly
        dtype = torch.float32 if pl_module.device.type == "mps" else torch.float64
        for name, value in metrics.items():
            pl_module.log(name, torch.tensor(value, dtype=dtype, device=pl_module.device), on_step=False,
                          on_epoch=True, batch_size=1, sync_dist=True, reduce_fx="max", prog_bar=name == HEADLINE)
        self.history[trainer.current_epoch] = metrics
        crop = f", middle {self.max_seconds:g} s" if self.max_seconds else ""
        rank_zero_info(
            f"Epoch {trainer.current_epoch}: BSS Eval v4 of {self._count} full validation track(s){crop}: "
            f"{HEADLINE} {metrics[HEADLINE]:.3f} dB ("
            + ", ".join(f"{t} {metrics[f'{PREFIX}{t}/SDR']:.2f}" for t in self._targets)
            + f") in {time.perf_counter() - started:.1f} s"
        )

    # -- the work -------------------------------------------------------------------------------------
    def _tracks(self, trainer: Trainer) -> Any:
        """The DataModule's full validation tracks (:class:`datamodules.musdb.CachedTracks`)."""
        dm = trainer.datamodule
        tracks = getattr(getattr(dm, "valid_set", None), "tracks", None)
        if tracks is None or not callable(getattr(tracks, "array", None)):
            raise LightningSepError(
                f"{OPTION} {self.every_n_epochs}: {type(dm).__name__} has no full validation tracks (valid_set.tracks).")
        return tracks

    def _window(self, length: int, rate: int) -> tuple[int, int]:
        """``(start, samples)`` of the part of a track that is scored (its middle ``max_seconds``)."""
        n = length if self.max_seconds is None else min(length, int(round(self.max_seconds * rate)))
        return (length - n) // 2, n

    def evaluate(self, trainer: Trainer, model: LightningModule) -> dict[str, float]:
        """Separate and score this rank's share of the validation tracks, gather every rank's, and
        return the metrics (the same on every rank)."""
        from lightning_sep.evaluation.aggregate import sisec_median_array

        dm = trainer.datamodule
        tracks = self._tracks(trainer)
        rate = int(getattr(dm, "sample_rate", model.front_end.sample_rate))
        targets = scored_targets(model)
        eligible = [i for i in range(len(tracks)) if self._window(tracks.lengths[i], rate)[1] >= int(WIN * rate)]
        for i in sorted(set(range(len(tracks))) - set(eligible)):
            warnings.warn(f"Validation track {tracks.names[i]!r} is shorter than one {WIN:g} s BSS Eval frame: "
                          "not scored.", stacklevel=2)
        if not eligible:
            raise LightningSepError(f"{OPTION}: no validation track is at least {WIN:g} s long: nothing to score.")
        world, rank = max(1, int(trainer.world_size)), int(trainer.global_rank)
        per_track = np.full((len(eligible), len(targets), len(METRICS)), np.nan)
        failure: Optional[BaseException] = None
        try:
            with validation_inference(model):
                for k, i in enumerate(eligible):
                    if k % world == rank:
                        per_track[k] = self._score(model, tracks, i, rate, targets)
        except Exception as err:  # every rank must reach the gather below, or the others would wait forever
            failure = err
        if world > 1:
            packed = torch.from_numpy(np.append(per_track.ravel(), float(failure is not None))).to(model.device)
            gathered = model.all_gather(packed).reshape(world, -1).double().cpu().numpy()
            failed = [r for r in range(world) if gathered[r, -1]]
            if failed:
                if failure is not None:
                    raise failure
                raise LightningSepError(f"BSS Eval validation failed on rank(s) {failed} (see their error).")
            shares = gathered[:, :-1].reshape(world, *per_track.shape)
            per_track = np.stack([shares[k % world, k] for k in range(len(eligible))])
        elif failure is not None:
            raise failure
        medians = sisec_median_array(per_track)  # (targets, metrics)
        out: dict[str, float] = {}
        own = [targets.index(t) for t in getattr(model, "data_targets", model.targets) if t in targets]
        sdr = medians[own, METRICS.index("SDR")]
        out[HEADLINE] = float(np.mean(sdr[np.isfinite(sdr)])) if np.isfinite(sdr).any() else float("nan")
        for j, target in enumerate(targets):
            for m, metric in enumerate(METRICS):
                out[f"{PREFIX}{target}/{metric}"] = float(medians[j, m])
        self._count, self._targets = len(eligible), targets
        return out

    def _score(self, model: LightningModule, tracks: Any, i: int, rate: int, targets: list[str]) -> np.ndarray:
        """One track's frame medians ``(targets, METRICS)``."""
        from lightning_sep.evaluation.aggregate import track_median_array
        from lightning_sep.evaluation.bsseval import score_track
        from lightning_sep.separation import ModelSeparator, separate_track

        stems = tracks.array(i)
        start, n = self._window(stems.shape[-1], rate)
        stems = np.ascontiguousarray(stems[..., start : start + n], dtype=np.float32)
        separator = ModelSeparator(model)
        estimates = separate_track(separator, stems[0], rate, chunk_seconds=self.chunk_seconds,
                                   overlap_seconds=self.overlap_seconds, device=model.device)
        store = score_track(tracks.names[i], stems, estimates, rate, WIN, HOP, metrics="bsseval",
                            device=str(model.device))
        return track_median_array(store, targets)
