"""``lightning-sep separate``: one wav per target for each input file.

``lightning-sep separate --model skipfilter song.wav other.flac --out separated/`` writes
``separated/song/vocals.wav``, ``separated/song/accompaniment.wav``, ... .  Inputs may be wav,
flac, ogg or mp3 (and mp4 / ``.stem.mp4`` where ffmpeg is installed), at any sample rate (resampled
to the model's and back) and mono or stereo (each channel is separated by the monaural model).
Every input is checked before anything is separated, and each output folder appears only when
all its files are written.  A model that records statistics of its separation (the VAE's average
posterior variance: its confidence) has them printed on one line per file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from lightning_sep.errors import LightningSepError
from lightning_sep.separation.audio import check_writable_folder, probe, read_audio, write_wav
from lightning_sep.separation.separators import ModelSeparator, separate_track
from lightning_sep.utils.atomic import atomic_directory


@dataclass
class SeparateReport:
    outputs: dict[str, Path]  # input -> its output folder
    audio_seconds: float
    wall_seconds: float

    @property
    def real_time_factor(self) -> float:
        """Seconds of audio separated per second of wall time."""
        return self.audio_seconds / max(self.wall_seconds, 1e-9)


def output_name(path: Path) -> str:
    """``song.wav`` -> ``song``; ``track.stem.mp4`` -> ``track``."""
    name = path.name
    for suffix in (".stem.mp4",):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def format_stats(stats: dict[str, float]) -> str:
    """``posterior_variance=0.0123, posterior_variance/male=0.011, ...`` (one line)."""
    return ", ".join(f"{k}={v:.4g}" for k, v in stats.items())


def separate_files(
    inputs: Sequence[str | Path],
    out: str | Path,
    model: Optional[str] = None,
    ckpt: Optional[str] = None,
    run_id: Optional[str] = None,
    wiener_iterations: int = 0,
    separation_iterations: Optional[int] = None,
    chunk_seconds: float = 20.0,
    overlap_seconds: float = 1.0,
    device: str = "auto",
    subtype: str = "FLOAT",
    trust_checkpoint: bool = False,
    progress: bool = True,
) -> SeparateReport:
    """Separate every input with a trained model; see the module docstring."""
    from lightning_sep.evaluation.evaluate import resolve_device
    from lightning_sep.tracking.runs import load_model, resolve_checkpoint

    if not inputs:
        raise LightningSepError("No input files: pass one or more audio files (make separate IN=song.wav).")
    paths = [Path(p).expanduser() for p in inputs]
    for p in paths:  # every input readable before any work is done
        probe(p)
    names = [output_name(p) for p in paths]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise LightningSepError(f"Several inputs would write to the same output folder(s) {dupes}: rename them.")
    device = resolve_device(device)
    resolved = resolve_checkpoint(model, ckpt, run_id)
    out = check_writable_folder(out, "--out")
    separator = ModelSeparator(load_model(resolved, device=device, trust_checkpoint=trust_checkpoint),
                               wiener_iterations=wiener_iterations, separation_iterations=separation_iterations)
    print(f"Separating {len(paths)} file(s) with {resolved.path} (MODEL={resolved.family}) on {device} "
          f"into {', '.join(separator.targets)} -> {out}", flush=True)
    started = time.perf_counter()
    outputs: dict[str, Path] = {}
    total = 0.0
    separator.take_stats()  # nothing left over from before
    for path, name in zip(paths, names):
        audio, rate = read_audio(path)
        total += audio.shape[-1] / rate
        estimates = separate_track(
            separator, audio, rate, chunk_seconds=chunk_seconds, overlap_seconds=overlap_seconds, device=device,
            progress=f"{path.name}" if progress else False,
        )
        with atomic_directory(out / name) as tmp:
            for target, est in estimates.items():
                write_wav(tmp / f"{target}.wav", est, rate, subtype)
        outputs[str(path)] = out / name
        print(f"  {path} -> {out / name}/ ({', '.join(t + '.wav' for t in estimates)})", flush=True)
        stats = separator.take_stats()  # e.g. the VAE's average posterior variance (its confidence)
        if stats:
            print(f"    separation stats: {format_stats(stats)}", flush=True)
    report = SeparateReport(outputs, total, time.perf_counter() - started)
    print(f"Separated {total:.1f} s of audio in {report.wall_seconds:.1f} s ({report.real_time_factor:.1f}x real time).",
          flush=True)
    return report
