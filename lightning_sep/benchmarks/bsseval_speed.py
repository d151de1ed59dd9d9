"""BSS Eval v4 speed: museval's ``evaluate`` against :func:`~lightning_sep.evaluation.bsseval_v4.bss_eval_v4`
on the same tracks -- wall time, peak memory and the largest score difference.

    python -m lightning_sep.benchmarks.bsseval_speed [--seconds 60 180] [--repeat N] [--skip-museval]

The tracks: for each ``--seconds``, one synthetic song of the embedded corpus' synthesiser
(:func:`datamodules.embedded_musdb.generate_track`: vocals, drums, bass, other; stereo, 44.1 kHz,
float32 like decoded audio), deterministic, with a white noise floor ``--noise-floor-db`` (default
-60 dB) under each stem's RMS, like a recording's.  The estimates are those of a mediocre separator:
each reference slightly low-passed (``[0.1, 0.8, 0.1]`` FIR) plus 5-20 % (-26 to -14 dB) of every
other source and white noise 30 dB under the reference's RMS, cast back to float32.

Why the noise floor: the synthesiser's stems have next to no energy above ~16 kHz (the bass none
above a few kHz), so the Gram matrix of their delayed copies is singular to rounding (eigenvalues
from ~1e-10 to ~1e6), and BSS Eval v4 itself is ill-posed on them: museval's ISR/SIR/SAR move by up
to ~10 dB when -140 dB of noise is added to the references, and the two implementations, which add
the same numbers in another order, differ by tens of dB.  With a -60 dB floor they agree to ~1e-9 dB
(museval moves by ~1e-6 dB under a 1e-9 perturbation); ``--noise-floor-db none`` shows the
ill-conditioned case.

Both implementations get the same float32 arrays (written once to ``.npy`` files) and convert them
inside the timed call as they need (museval: ``float64`` numpy, as ``make eval`` hands it; ours: to
float64 tensors on its device).  Scores: ``museval.evaluate(..., win=44100, hop=44100, mode="v4")``
stacked as ``(4 metrics, sources, frames)`` against ``bss_eval_v4(..., win=44100, hop=44100)``.

How: every measurement runs in a fresh Python process (``--worker``, hidden), which loads the
arrays, imports its implementation, reads its resident memory right before the call and its peak
after it: the table gives the peak RSS of the process (imports included) and the peak above that
baseline (what the evaluation itself added to the loaded inputs).  The peak is Linux's ``VmHWM``
(``/proc/self/status``), reset to the resident memory just before the call (``clear_refs``), not
``resource.getrusage(...).ru_maxrss``: on Linux a child's ``ru_maxrss`` starts at its parent's peak
(``exec`` records the peak of the address space it replaces), and the parent here holds the
synthesiser's buffers and torch.  museval runs once, single process, with its default (BLAS)
threading; ours runs ``--repeat`` times (best wall time counts) on the CPU with torch's default
thread count, and, when ``torch.cuda.is_available()``, on CUDA after one untimed warm-up call on the
same track, with ``torch.cuda.synchronize()`` before the clock is read and
``torch.cuda.max_memory_allocated()`` as GPU peak (reset after the warm-up; the CUDA row's host
figures include the CUDA libraries loaded during the warm-up).  Differences are taken over the
frames finite in both outputs; the NaN positions (silent frames) must agree.  Progress goes to
stderr, the table to stdout; museval needs about a minute for the 60 s track on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

SAMPLE_RATE = 44100
WIN = HOP = 44100
TRACK = "BSS Eval benchmark"
SEED = 2018


# -- the tracks ------------------------------------------------------------------------------------
def make_track(seconds: float, seed: int = SEED, noise_floor_db: Optional[float] = -60.0) -> tuple[np.ndarray, np.ndarray]:
    """``(references, estimates)``, each ``(4 sources, samples, 2)`` float32: a synthetic song's stems
    (plus white noise ``noise_floor_db`` under each stem's RMS; None: none) and a mediocre separator's
    estimates of them (leakage, a little filtering, noise)."""
    from scipy.signal import lfilter

    from datamodules.embedded_musdb import generate_track

    stems = generate_track(TRACK, seed, seconds, SAMPLE_RATE)
    refs = np.stack([stems[name] for name in ("vocals", "drums", "bass", "other")])  # (S, N, C) float32
    rng = np.random.default_rng(seed)
    if noise_floor_db is not None:
        rms = np.sqrt(np.mean(refs.astype(np.float64) ** 2, axis=(1, 2), keepdims=True))
        refs = (refs + rng.standard_normal(refs.shape) * rms * 10 ** (noise_floor_db / 20)).astype(np.float32)
    r = refs.astype(np.float64)
    n_src = r.shape[0]
    leak = rng.uniform(0.05, 0.2, size=(n_src, n_src))
    np.fill_diagonal(leak, 0.0)
    ests = lfilter([0.1, 0.8, 0.1], [1.0], r, axis=1)  # a little filtering of the target itself
    ests += np.einsum("jk,knc->jnc", leak, r)  # the other sources leak in
    rms = np.sqrt(np.mean(r**2, axis=(1, 2), keepdims=True))
    ests += rng.standard_normal(r.shape) * rms * 10 ** (-30 / 20)  # artefacts
    return refs, ests.astype(np.float32)


# -- one measurement per process -------------------------------------------------------------------
def _status_bytes(field: str) -> Optional[int]:
    """``/proc/self/status``'s ``VmRSS`` (resident now) or ``VmHWM`` (its peak) in bytes (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak() -> bool:
    """Reset ``VmHWM`` to the resident memory now (Linux >= 4.0: ``clear_refs`` 5); False if impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _ru_maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def measure(implementation: str, device: str, data: Path, repeat: int) -> dict:
    """Run one implementation on ``data/{refs,ests}.npy`` in this process: wall time (best of ``repeat``
    for ours, one run of museval), memory, and the scores (written to ``data/<implementation>-<device>.npy``)."""
    refs, ests = np.load(data / "refs.npy"), np.load(data / "ests.npy")
    info: dict = {"implementation": implementation, "device": device}
    if implementation == "museval":
        import museval
        from threadpoolctl import threadpool_info

        info["threads"] = ", ".join(sorted({f"{p['internal_api']} {p['num_threads']}" for p in threadpool_info()}))

        def call() -> np.ndarray:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # log10(0) in silent frames
                r, e = np.asarray(refs, dtype=np.float64), np.asarray(ests, dtype=np.float64)
                return np.array(museval.evaluate(r, e, win=WIN, hop=HOP, mode="v4"))

        repeat = 1
        sync = None
    else:
        import torch

        from lightning_sep.evaluation.bsseval_v4 import bss_eval_v4

        info["threads"] = f"torch {torch.get_num_threads()}"
        cuda = device.startswith("cuda")
        sync = torch.cuda.synchronize if cuda else None

        def call() -> np.ndarray:
            return bss_eval_v4(refs, ests, win=WIN, hop=HOP, device=device).numpy()

        if cuda:
            torch.zeros(1, device=device)  # the CUDA context belongs to the baseline
    # ru_maxrss would count the parent: exec records the (v)forked parent's peak in the child's, so the
    # peak is read from this process's own address space, VmHWM, reset to the resident memory here
    peak_imports = _status_bytes("VmHWM")
    rss_before = _status_bytes("VmRSS")
    reset = rss_before is not None and peak_imports is not None and _reset_peak()
    if sync is not None:
        call()  # warm-up: cuFFT plans, kernels, libraries
        sync()
        torch.cuda.reset_peak_memory_stats(device)
    best, scores = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        scores = call()
        if sync is not None:
            sync()
        best = min(best, time.perf_counter() - start)
    if reset:
        peak_call = _status_bytes("VmHWM")
        peak, above = max(peak_imports, peak_call), (peak_call - rss_before) / 2**20
    else:  # no /proc: ru_maxrss (which may include the parent's peak), and no baseline
        peak, above = _ru_maxrss_bytes(), None
    info.update(
        seconds=best,
        repeat=repeat,
        peak_rss_mb=peak / 2**20,
        baseline_rss_mb=None if rss_before is None else rss_before / 2**20,
        peak_above_inputs_mb=above,
        ru_maxrss_mb=_ru_maxrss_bytes() / 2**20,
        gpu_peak_mb=torch.cuda.max_memory_allocated(device) / 2**20 if sync is not None else None,
    )
    np.save(data / f"{implementation}-{device}.npy", scores)
    return info


def run_in_subprocess(implementation: str, device: str, data: Path, repeat: int) -> dict:
    """:func:`measure` in a fresh Python process (its peak memory is the implementation's own)."""
    result = data / f"{implementation}-{device}.json"
    argv = [sys.executable, "-m", "lightning_sep.benchmarks.bsseval_speed", "--worker", implementation,
            "--device", device, "--data", str(data), "--result", str(result), "--repeat", str(repeat)]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0 or not result.exists():
        sys.stderr.write(f"{implementation} ({device}) failed:\n{proc.stderr[-4000:]}\n")
        raise SystemExit(f"{implementation} ({device}) failed with exit status {proc.returncode}")
    info = json.loads(result.read_text())
    info["scores"] = np.load(data / f"{implementation}-{device}.npy")
    return info


# -- the table -------------------------------------------------------------------------------------
def compare(scores: np.ndarray, reference: np.ndarray) -> tuple[float, str]:
    """Max |difference| (dB) over the frames finite in both, and whether the NaN (and inf) positions agree."""
    if scores.shape != reference.shape:
        return float("nan"), f"no: shapes {scores.shape} vs {reference.shape}"
    finite = np.isfinite(scores) & np.isfinite(reference)
    diff = float(np.max(np.abs(scores[finite] - reference[finite]))) if finite.any() else float("nan")
    agree = "yes" if np.array_equal(np.isnan(scores), np.isnan(reference)) else "no"
    if not np.array_equal(np.isinf(scores), np.isinf(reference)):
        agree += " (inf positions differ)"
    return diff, agree


def _mb(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:,.0f}"


def row(seconds: float, info: dict, museval: Optional[dict]) -> str:
    ours = info["implementation"] != "museval"
    name = "museval" if not ours else "bss_eval_v4" + (f" (best of {info['repeat']})" if info["repeat"] > 1 else "")
    above = _mb(info["peak_above_inputs_mb"])
    if museval is None:
        speedup, diff, nan = "—", "—", "—"
    elif not ours:
        speedup, diff, nan = "1x", "(reference)", "(reference)"
    else:
        speedup = f"{museval['seconds'] / info['seconds']:.1f}x"
        d, nan = compare(info["scores"], museval["scores"])
        diff = f"{d:.1e}"
    cells = [f"{seconds:g} s", name, f"{info['device']} ({info['threads']})", f"{info['seconds']:.2f}",
             _mb(info["peak_rss_mb"]), above, _mb(info["gpu_peak_mb"]), speedup, diff, nan]
    return "| " + " | ".join(cells) + " |"


HEADER = ("| length | implementation | device (threads) | wall time (s) | peak RSS (MiB) | peak above inputs (MiB) "
          "| GPU peak (MiB) | speed-up vs museval | max \\|Δ\\| vs museval (dB) | NaN positions agree |\n"
          "|---|---|---|---:|---:|---:|---:|---:|---:|---|")


def _floor(text: str) -> Optional[float]:
    if text.lower() in ("none", "off"):
        return None
    value = float(text)
    if not value < 0:
        raise argparse.ArgumentTypeError(f"{text}: a level under the stems' RMS, in dB (negative), or 'none'")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[60.0, 180.0], help="track lengths (default 60 180)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of ours; the best wall time counts (default 1)")
    parser.add_argument("--skip-museval", action="store_true", help="time ours only (no speed-up or difference)")
    parser.add_argument("--noise-floor-db", type=_floor, default=-60.0, metavar="DB",
                        help="white noise added to each stem, in dB under its RMS (default -60; 'none': the bare "
                        "synthesiser stems, on which BSS Eval is ill-conditioned)")
    parser.add_argument("--worker", choices=("museval", "ours"), help=argparse.SUPPRESS)  # one measurement
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeat < 1 or min(args.seconds) <= 0:
        parser.error("--repeat must be at least 1 and --seconds positive")
    if args.worker:
        Path(args.result).write_text(json.dumps(measure(args.worker, args.device, Path(args.data), args.repeat)))
        return

    import torch

    from lightning_sep.benchmarks.eval_speed import machine

    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"# BSS Eval v4: museval vs bss_eval_v4, {time.strftime('%Y-%m-%d %H:%M')}\nmachine: {machine()}\n"
          f"load average (1/5/15 min) at the start: {load}\n"
          f"tracks: synthetic song {TRACK!r} (seed {SEED}), 4 sources, stereo, {SAMPLE_RATE} Hz, float32, "
          + ("no noise floor" if args.noise_floor_db is None else f"noise floor {args.noise_floor_db:g} dB re each stem")
          + f"; estimates = references low-passed + leakage of the others + noise; win = hop = {WIN}\n", flush=True)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    lines, notes = [HEADER], []
    for seconds in args.seconds:
        with tempfile.TemporaryDirectory(prefix="bench-bsseval-") as tmp:
            data = Path(tmp)
            began = time.perf_counter()
            refs, ests = make_track(seconds, noise_floor_db=args.noise_floor_db)
            np.save(data / "refs.npy", refs)
            np.save(data / "ests.npy", ests)
            del refs, ests
            print(f"#   {seconds:g} s track: {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
            museval = None
            if not args.skip_museval:
                museval = run_in_subprocess("museval", "cpu", data, 1)
                print(f"#   museval: {museval['seconds']:.1f} s", file=sys.stderr, flush=True)
                lines.append(row(seconds, museval, museval))
            for device in devices:
                info = run_in_subprocess("ours", device, data, args.repeat)
                print(f"#   bss_eval_v4 {device}: {info['seconds']:.2f} s", file=sys.stderr, flush=True)
                lines.append(row(seconds, info, museval))
            scores = (museval or info)["scores"]
            notes.append(f"{seconds:g} s: {scores.shape[2]} frames x {scores.shape[1]} sources, "
                         f"{int(np.isnan(scores[0]).any(axis=0).sum())} NaN (silent) frames, "
                         f"median SDR {np.nanmedian(scores[0]):.1f} dB")
    print("\n".join(lines), flush=True)
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print("\n" + "; ".join(notes) + f".\nload average at the end: {load}")


if __name__ == "__main__":
    main()
