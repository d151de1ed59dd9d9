"""BSS Eval v4 scores of one track, as ``museval.eval_mus_track`` computes them.

:func:`score_track` takes the reference stems from the decoded-audio cache (no musdb ``Track``
and no second decode) and returns museval's own :class:`museval.TrackStore`, so the JSON written
is museval's format and ``museval``'s tools read it.  The metrics come from
:func:`~lightning_sep.evaluation.bsseval_v4.bss_eval_v4` (``metrics="bsseval"``, the default: the
same numbers within 1e-9 dB, an order of magnitude faster, on CPU or GPU) or from museval itself
(``metrics="museval"``, the reference implementation).  It follows ``eval_mus_track`` step by step
(SiSEC 2018, Stöter, Liutkus & Ito 2018):

* the references are musdb's targets (``accompaniment = bass + drums + other``,
  ``linear_mixture`` = the sum of the four sources, summed in musdb's order, float64);
* the estimated targets other than ``accompaniment`` are evaluated together (``museval.evaluate``,
  1 s windows and hop); when both ``vocals`` and ``accompaniment`` are estimated, those two are
  evaluated as a separate two-source scenario and ``vocals`` is taken from it;
* frames where a reference or an estimate is silent are NaN (museval's rule).

Two differences, on purpose: museval raises (``ValueError`` from ``museval.metrics.validate``)
when a reference or an estimate is silent over the *whole* track; here that scenario's frames
are all NaN instead -- what museval's own frame rule gives -- so one silent stem (a track without
bass, a model that outputs silence) does not stop a whole evaluation, and the NaN frames are left
out of the medians.  And an estimate of another length or channel count than its reference, or
with NaN/inf samples, is an error naming the track and target (museval pads or cuts the length
silently, and scores NaN audio as NaN frames).
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from datamodules._musdb import STEMS  # the rows of a decoded-audio cache entry
from lightning_sep.errors import LightningSepError

#: musdb's ``track.targets`` order (``mus.yaml``), which ``eval_mus_track`` follows.
MUSDB_TARGETS: tuple[str, ...] = ("vocals", "drums", "bass", "other", "accompaniment", "linear_mixture")
METRICS: tuple[str, ...] = ("SDR", "SIR", "ISR", "SAR")
#: museval's (SiSEC 2018's) frame length and hop, seconds
WIN = HOP = 1.0
#: the implementations of BSS Eval v4 a track can be scored with (``make eval ARGS="--metrics museval"``)
IMPLEMENTATIONS: tuple[str, ...] = ("bsseval", "museval")


def reference_targets(stems: np.ndarray) -> dict[str, np.ndarray]:
    """musdb's targets from cached stems ``(5, channels, samples)``: ``{name: (samples, channels)}`` float64."""
    src = {name: np.asarray(stems[row], dtype=np.float64).T for row, name in enumerate(STEMS) if name != "mixture"}
    out = {name: src[name] for name in ("vocals", "drums", "bass", "other")}
    out["accompaniment"] = np.sum(np.array([src["bass"], src["drums"], src["other"]]), axis=0)
    out["linear_mixture"] = np.sum(np.array([src["vocals"], src["bass"], src["drums"], src["other"]]), axis=0)
    return out


def n_frames(n_samples: int, rate: int, win: float = 1.0, hop: float = 1.0) -> int:
    """How many BSS Eval frames museval gives a track of ``n_samples`` (``museval.metrics.Framing``)."""
    from lightning_sep.evaluation.bsseval_v4 import n_frames as frames

    return frames(n_samples, int(win * rate), int(hop * rate))


def check_implementation(metrics: str) -> str:
    if metrics not in IMPLEMENTATIONS:
        from lightning_sep.errors import UnknownNameError

        raise UnknownNameError("--metrics", metrics, list(IMPLEMENTATIONS))
    return metrics


def _evaluate(references: list[np.ndarray], estimates: list[np.ndarray], names: list[str], track: str, rate: int,
              win: float, hop: float, metrics: str = "bsseval", device: Optional[str] = None) -> np.ndarray:
    """``museval.evaluate`` (v4) as ``(4 metrics [SDR, ISR, SIR, SAR], sources, frames)``; all NaN when
    a source is silent over the whole track (museval would raise)."""
    from lightning_sep.evaluation.bsseval_v4 import bss_eval_v4, check_inputs

    for target, ref, est in zip(names, references, estimates):
        try:
            check_inputs(torch.as_tensor(ref)[None], torch.as_tensor(np.asarray(est))[None], [target],
                         finite=metrics == "museval")  # (bss_eval_v4 checks the values itself, naming the target)
        except LightningSepError as err:
            raise LightningSepError(f"Track {track!r}, target {target!r}: {err}") from None
    refs, ests = np.stack(references), np.stack(estimates)
    if metrics == "bsseval":
        return bss_eval_v4(refs, ests, win=int(win * rate), hop=int(hop * rate), device=device, names=names).numpy()
    import museval

    if any(_silent(r) for r in refs) or any(_silent(e) for e in ests):
        nwin = n_frames(refs.shape[1], rate, win, hop)
        return np.full((4, len(references), nwin), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # log10(0) in silent frames -> NaN anyway
        return np.array(museval.evaluate(refs, ests, win=int(win * rate), hop=int(hop * rate), mode="v4"))


def _silent(x: np.ndarray) -> bool:
    """museval's ``_any_source_silent`` for one source ``(samples, channels)``."""
    return bool(np.all(np.sum(x, axis=tuple(range(1, x.ndim))) == 0))


def score_track(
    name: str,
    stems: np.ndarray,
    estimates: dict[str, np.ndarray],
    rate: int,
    win: float = 1.0,
    hop: float = 1.0,
    metrics: str = "bsseval",
    device: Optional[str] = None,
):
    """museval's :class:`~museval.TrackStore` for one track.

    Args:
        name: the track's name (as in musdb).
        stems: the track's cache entry, ``(5, channels, samples)`` (mixture, drums, bass, other, vocals).
        estimates: ``{target: (samples, channels)}`` for any of :data:`MUSDB_TARGETS`.
        rate: the sample rate; ``win``/``hop`` in seconds (museval: 1 s and 1 s).
        metrics: ``bsseval`` (:mod:`~lightning_sep.evaluation.bsseval_v4`, on ``device``) or ``museval``.
    """
    import museval

    check_implementation(metrics)
    unknown = sorted(set(estimates) - set(MUSDB_TARGETS))
    if unknown:
        raise LightningSepError(f"Track {name!r}: estimates for unknown targets {unknown}; museval knows {list(MUSDB_TARGETS)}.")
    refs = reference_targets(stems)
    eval_targets = [t for t in MUSDB_TARGETS if t in estimates]
    data = museval.TrackStore(win=win, hop=hop, track_name=name)
    has_acc = "vocals" in eval_targets and "accompaniment" in eval_targets
    if has_acc:
        eval_targets.remove("accompaniment")

    def scenario(targets: list[str]) -> np.ndarray:
        return _evaluate([refs[t] for t in targets], [estimates[t] for t in targets], targets, name, rate, win, hop,
                         metrics, device)

    if len(eval_targets) >= 2:
        scores = scenario(eval_targets)
        for i, target in enumerate(eval_targets):
            if target == "vocals" and has_acc:
                continue
            data.add_target(target_name=target, values=_values(scores, i))
    elif not has_acc:
        raise LightningSepError(
            f"Track {name!r}: BSS Eval needs at least two estimated targets (got {eval_targets}); "
            "a vocals model is evaluated with accompaniment = mixture - vocals."
        )
    if has_acc:
        pair = ["vocals", "accompaniment"]
        scores = scenario(pair)
        for i, target in enumerate(pair):
            data.add_target(target_name=target, values=_values(scores, i))
    data.validate()
    return data


def _values(scores: np.ndarray, i: int) -> dict[str, list[float]]:
    sdr, isr, sir, sar = scores[:, i]
    return {"SDR": sdr.tolist(), "SIR": sir.tolist(), "ISR": isr.tolist(), "SAR": sar.tolist()}


def json_is_complete(path: Path, targets: list[str], frames: int) -> bool:
    """Whether ``path`` is a finished museval JSON for these targets and this many frames."""
    import simplejson

    try:
        data = simplejson.loads(Path(path).read_text(), allow_nan=True)
        got = {t["name"]: len(t["frames"]) for t in data["targets"]}
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return all(got.get(t) == frames for t in targets)


def write_track_json(name: str, stems: np.ndarray, estimates: dict[str, np.ndarray], out_json: str | Path,
                     rate: int, win: float = 1.0, hop: float = 1.0, metrics: str = "bsseval",
                     device: Optional[str] = None) -> None:
    """Score a track (:func:`score_track`) and write its museval JSON atomically."""
    from threadpoolctl import threadpool_limits

    from lightning_sep.utils.atomic import atomic_write_text

    # museval: one BLAS thread, in the main process as in the workers: the same sums in the same
    # order, so the scores do not depend on the number of workers
    with threadpool_limits(limits=1) if metrics == "museval" else contextlib.nullcontext():
        data = score_track(name, stems, estimates, rate, win, hop, metrics, device)
    atomic_write_text(out_json, data.json)


def score_track_to_json(
    name: str, stems_path: str, estimates_path: str, out_json: str, rate: int, win: float = 1.0, hop: float = 1.0,
    metrics: str = "museval",
) -> str:
    """Worker entry point: :func:`write_track_json` from files; returns the JSON's path.

    ``estimates_path`` is an ``.npz`` of ``{target: (samples, channels)}``, deleted when done.
    """
    from datamodules.audio_cache import AudioCache

    with np.load(estimates_path) as npz:
        estimates = {k: npz[k] for k in npz.files}
    write_track_json(name, AudioCache.load(stems_path), estimates, out_json, rate, win, hop, metrics)
    Path(estimates_path).unlink(missing_ok=True)
    return out_json
