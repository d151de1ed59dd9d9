"""Training speed of every family: Lightning on the real DataModule, Lightning on the same batches in
memory, and a bare PyTorch loop on them -- frames per second, the loader's share, Lightning's overhead,
peak memory.

    python -m lightning_sep.benchmarks.training_speed [--families skipfilter nae ...] [--warmup 2]
        [--steps 8] [--repeats 5] [--device cpu|cuda] [--precision 32-true|bf16-mixed] [--threads N]
        [--out FILE]

What is measured, per family (``conf/model/<family>.yaml``) on ``DATA=musdb`` (``conf/data/musdb.yaml``:
the embedded corpus unless ``MUSDB_ROOT`` is set; target vocals, batches of 16 segments of 128 frames,
``num_workers=0``; the per-source families add the accompaniment = mixture - vocals themselves, so their
sources add up to the mixture):

1. **real DataModule**: ``Trainer.fit(model, datamodule=MUSDBDataModule(...))``.
2. **in memory**: ``Trainer.fit`` on the *same* batches, drawn once from that DataModule's
   ``train_dataloader()`` (:func:`cache_batches`) and handed back as they are by a ``DataLoader`` over
   the list.  ``ratio = fps(real DataModule) / fps(in memory)``: below 1 by the loader's cost (target
   >= 0.9: the loader must not be the bottleneck).  The column "loader alone" is the median time to
   fetch one batch from ``train_dataloader()`` without training.
3. **bare loop**: the same batches, without Lightning: ``loss = model.training_step(batch, i);
   opt.zero_grad(); loss.backward(); opt.step()`` with the optimiser of ``configure_optimizers``
   (NMF, which trains by multiplicative updates under manual optimisation, runs the same updates:
   :func:`nmf_step`).  ``Lightning overhead = time(in memory) / time(bare) - 1`` (target <= 10 %).

How: each run starts from the same state -- the family's initial weights with the normalisation
statistics (``setup("fit")``) already fitted by a zero-step ``Trainer.fit`` on the DataModule, which
is not timed -- and processes ``warmup + steps`` batches.  One :class:`StepTimer` (a Lightning
callback, called by hand in the bare loop) times each step after the warm-up from the end of the
previous batch to the end of its own (so a step includes fetching the next batch; the clock is read
after ``torch.cuda.synchronize`` on CUDA); set-up, normalisation fitting and the warm-up steps are
not timed, and validation is off (``limit_val_batches=0``), as are the logger, checkpointing and the
progress bar.  Each family runs ``--repeats`` times, the three loops in turn each time (so that they
share the machine's slow and fast spells); a loop's time is ``steps`` x the median step time of its
fastest run (best of ``--repeats``), and frames per second = batches x batch size x segment frames /
that time.  On a CPU shared with other work the timer also reads the process's CPU time: steps in
which this process got under 80 % of its threads' CPU time were disturbed and do not count, nor do
runs with fewer than half their steps undisturbed (the table gives the share of undisturbed steps,
and says "disturbed" where no run was left, and all counted).  Every family
runs in its own fresh process, so that its peak memory is its own: peak RSS
(``resource.getrusage``), on CUDA also ``torch.cuda.max_memory_allocated``.  ``torch.set_num_threads``
is set to ``--threads`` (default: the cores this process may use) in every process.  The defaults
(2 + 8 steps, 5 repeats, all ten families) take about 8 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback, EarlyStopping
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_sep.benchmarks.eval_speed import machine
from lightning_sep.registry import available, config_path
from lightning_sep.utils.atomic import atomic_write_text

Batch = tuple[Tensor, Tensor]
LOOPS = ("datamodule", "memory", "bare")
PRECISIONS = ("32-true", "bf16-mixed")


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass
class Settings:
    """One benchmark's settings (the command-line options)."""

    families: list[str] = field(default_factory=lambda: available("model"))
    warmup: int = 2
    steps: int = 8
    repeats: int = 5
    device: str = "cpu"
    precision: str = "32-true"
    threads: int = field(default_factory=default_threads)
    seed: int = 0
    #: ``conf/data/musdb.yaml`` init args to override (e.g. ``{"root": ..., "batch_size": 8}``)
    data: dict = field(default_factory=dict)
    #: keep a checksum of every timed batch (shows that the loops saw the same batches; costs a sync per batch)
    fingerprints: bool = False


# -- building the data and the models from the configs -------------------------------------------
def instantiate(config: dict, **extra: Any) -> Any:
    module, _, name = config["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**{**config.get("init_args", {}), **extra})


def make_datamodule(overrides: Optional[dict] = None) -> L.LightningDataModule:
    """``conf/data/musdb.yaml``'s DataModule, with ``overrides`` of its init args."""
    config = yaml.safe_load(config_path("data", "musdb").read_text())["data"]
    return instantiate(config, **(overrides or {}))


def make_model(family: str, dm: L.LightningDataModule) -> L.LightningModule:
    """``conf/model/<family>.yaml``'s model with the DataModule's front end and targets (as the CLI links them)."""
    config = yaml.safe_load(config_path("model", family).read_text())["model"]
    return instantiate(config, front_end=dm.front_end, targets=list(dm.targets))


def without_validation(model: L.LightningModule) -> L.LightningModule:
    """Let the family's epoch-end machinery run without validation metrics: its ``ReduceLROnPlateau``
    scheduler and ``EarlyStopping`` monitor ``val/loss``, which a run without validation never logs,
    and both stop the run when the metric is missing (``strict``).  Here they skip their update
    instead; the optimiser, the scheduler and the callbacks are the family's own."""
    configure_optimizers, configure_callbacks = model.configure_optimizers, model.configure_callbacks

    def optimizers() -> Any:
        config = configure_optimizers()
        if isinstance(config, dict) and isinstance(config.get("lr_scheduler"), dict):
            config = {**config, "lr_scheduler": {**config["lr_scheduler"], "strict": False}}
        return config

    def callbacks() -> Any:
        found = configure_callbacks()
        for cb in found if isinstance(found, (list, tuple)) else [found]:
            if isinstance(cb, EarlyStopping):
                cb.strict, cb.verbose = False, False
        return found

    model.configure_optimizers, model.configure_callbacks = optimizers, callbacks
    return model


def first_optimizer(config: Any) -> torch.optim.Optimizer:
    """The optimiser of a ``configure_optimizers`` return value (an optimiser, a list, or a dict)."""
    if isinstance(config, torch.optim.Optimizer):
        return config
    if isinstance(config, dict):
        return config["optimizer"]
    if isinstance(config, (list, tuple)) and config:
        return first_optimizer(config[0])
    raise TypeError(f"configure_optimizers returned {type(config).__name__}: no optimiser found")


# -- the shared machinery: one timer, one batch cache ----------------------------------------------
def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


class StepTimer(Callback):
    """Wall time of ``steps`` training steps after ``warmup`` others, step by step.

    A step is timed from the end of the previous batch to the end of its own (``on_train_batch_end``),
    so each interval holds everything the loop does per batch: fetching the next batch, moving it to
    the device, the hooks, forward, backward and the optimiser step.  The clock is read after
    ``torch.cuda.synchronize`` on CUDA (the families' finiteness check of the loss waits for the
    device every step anyway).  Counts the timed batches and their STFT frames (items x
    ``frames_per_item``).  A Lightning callback; the bare loop calls :meth:`batch_end` itself.
    """

    def __init__(self, warmup: int, steps: int, frames_per_item: int, device: str = "cpu", fingerprints: bool = False):
        if warmup < 1 or steps < 1:
            raise ValueError(f"warmup={warmup} and steps={steps} must be >= 1 (the first timed step starts where a "
                             "warm-up step ends)")
        self.warmup, self.steps, self.frames_per_item, self.device = int(warmup), int(steps), int(frames_per_item), device
        self.keep_fingerprints = fingerprints
        self.seen = self.batches = self.frames = 0
        self.stamps: list[float] = []
        self.cpu: list[float] = []  # the process's CPU time at each stamp
        self.fingerprints: list[float] = []

    def batch_end(self, batch: Batch) -> None:
        self.seen += 1
        if not self.warmup <= self.seen <= self.warmup + self.steps:
            return
        if self.seen > self.warmup:
            self.batches += 1
            self.frames += len(batch[0]) * self.frames_per_item
            if self.keep_fingerprints:  # which batch it was (a test's check that the loops saw the same batches)
                self.fingerprints.append(float(batch[0].double().sum() + batch[1].double().sum()))
        synchronize(self.device)
        self.stamps.append(time.perf_counter())
        self.cpu.append(time.process_time())

    @property
    def step_seconds(self) -> list[float]:
        if len(self.stamps) != self.steps + 1:
            raise RuntimeError(f"the timed steps did not all run: {self.seen} of {self.warmup + self.steps} batches")
        return [b - a for a, b in zip(self.stamps, self.stamps[1:])]

    @property
    def seconds(self) -> float:
        return sum(self.step_seconds)

    def cpu_shares(self, threads: int) -> list[float]:
        """Per step, the CPU time this process got / (wall time x ``threads``): near 1 when its threads
        had the cores to themselves (waiting threads spin first, so they count), about 0.5 when other
        processes took half the cores."""
        return [(c1 - c0) / (t * threads) for c0, c1, t in zip(self.cpu, self.cpu[1:], self.step_seconds)]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.batch_end(batch)


def set_sampler_epoch(loader: DataLoader, epoch: int) -> None:
    """What Lightning does at the start of each epoch (the DataModule's sampler draws per epoch)."""
    for sampler in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)


def cache_batches(dm: L.LightningDataModule, n: int, pin: bool = False) -> list[Batch]:
    """The first ``n`` training batches of ``dm`` as Lightning sees them (epoch 0, 1, ... in turn)."""
    loader = dm.train_dataloader()
    batches: list[Batch] = []
    epoch = 0
    while len(batches) < n:
        set_sampler_epoch(loader, epoch)
        before = len(batches)
        for batch in loader:
            batches.append(tuple(t.pin_memory() if pin else t for t in batch))
            if len(batches) == n:
                break
        if len(batches) == before:
            raise RuntimeError("the DataModule's train_dataloader() gives no batches")
        epoch += 1
    return batches


def loader_seconds(dm: L.LightningDataModule, n: int) -> list[float]:
    """Seconds to fetch each of the first ``n`` batches (within epoch 0) from ``dm.train_dataloader()``
    alone, without training: the loader's own cost per batch."""
    loader = dm.train_dataloader()
    set_sampler_epoch(loader, 0)
    batches = iter(loader)
    out = []
    for _ in range(min(n, len(loader))):
        start = time.perf_counter()
        next(batches)
        out.append(time.perf_counter() - start)
    return out


def _as_is(batch: Batch) -> Batch:
    return batch


def in_memory_loader(batches: Sequence[Batch]) -> DataLoader:
    """A DataLoader that hands the cached batches back as they are, in order."""
    return DataLoader(list(batches), batch_size=None, shuffle=False, collate_fn=_as_is)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Lightning's start-up messages and the warnings of a run without validation or a trainer."""
    loggers = [logging.getLogger(n) for n in ("lightning", "lightning.pytorch", "lightning.fabric", "datamodules")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# -- the three loops -------------------------------------------------------------------------------
def trainer(settings: Settings, max_steps: int, callbacks: Sequence[Callback] = ()) -> L.Trainer:
    device = torch.device(settings.device)
    if device.type == "cuda":
        accelerator, devices = "gpu", [torch.cuda.current_device() if device.index is None else device.index]
    else:
        accelerator, devices = "cpu", 1
    return L.Trainer(
        accelerator=accelerator, devices=devices, precision=settings.precision,
        max_steps=max_steps, max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
    )


def prepared_state(family: str, dm: L.LightningDataModule, settings: Settings) -> dict[str, Tensor]:
    """The family's initial weights with the normalisation statistics fitted by its own ``setup("fit")``
    on the DataModule (a zero-step ``Trainer.fit``): where every timed run starts."""
    torch.manual_seed(settings.seed)
    model = without_validation(make_model(family, dm))
    with quiet():
        trainer(settings, max_steps=0).fit(model, datamodule=dm)
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def fresh_model(family: str, dm: L.LightningDataModule, state: dict[str, Tensor], settings: Settings) -> L.LightningModule:
    torch.manual_seed(settings.seed)
    model = make_model(family, dm)
    model.load_state_dict(state)
    torch.manual_seed(settings.seed)  # the same random draws (the VAE's sampling) in every loop
    return without_validation(model)


def lightning_run(model: L.LightningModule, settings: Settings, timer: StepTimer, dm: Optional[L.LightningDataModule] = None,
                  batches: Optional[Sequence[Batch]] = None) -> None:
    """``Trainer.fit`` over ``warmup + steps`` batches of ``dm`` (or of the in-memory ``batches``)."""
    with quiet():
        t = trainer(settings, settings.warmup + settings.steps, [timer])
        if dm is not None:
            t.fit(model, datamodule=dm)
        else:
            t.fit(model, train_dataloaders=in_memory_loader(batches))


def autocast(settings: Settings) -> contextlib.AbstractContextManager:
    if settings.precision == "bf16-mixed":
        return torch.autocast("cuda" if settings.device.startswith("cuda") else "cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def nmf_step(model: L.LightningModule, batch: Batch, opt: torch.optim.Optimizer) -> Tensor:
    """:meth:`lightning_sep.models.nmf.NMF.training_step` without Lightning: without autograd, per
    source, fit the activations and take one multiplicative update of the bases (one process: no sum
    over DDP ranks); step the (no-op) optimiser."""
    from lightning_sep.models.losses import generalized_kl

    _, sources = model.source_signals(batch)
    mags = model.source_magnitudes(sources)
    total = mags.new_zeros(())
    for j, s in enumerate(model.sources):
        x = mags[:, j]
        recon, h = model.models[s](x)
        total = total + generalized_kl(x, recon)
        model.models[s].update_bases(x, h)
    opt.step()
    model.check_finite(total, "the magnitudes may hold NaN or inf")
    return total


def bare_run(model: L.LightningModule, batches: Sequence[Batch], settings: Settings, timer: StepTimer) -> None:
    """The plain PyTorch loop on the cached batches, with the family's optimiser."""
    from lightning_sep.models.nmf import NMF

    device = torch.device(settings.device)
    model.to(device).train()
    opt = first_optimizer(model.configure_optimizers())
    if not model.automatic_optimization and not isinstance(model, NMF):
        raise NotImplementedError(f"{type(model).__name__} optimises manually: its bare loop is not written yet")
    with quiet():  # self.log without a trainer warns and does nothing
        for i, batch in enumerate(batches[: settings.warmup + settings.steps]):
            batch = tuple(t.to(device, non_blocking=True) for t in batch)
            if model.automatic_optimization:
                with autocast(settings):
                    loss = model.training_step(batch, i)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            else:
                with autocast(settings):
                    nmf_step(model, batch, opt)
            timer.batch_end(batch)


def changed(model: L.LightningModule, state: dict[str, Tensor]) -> bool:
    """Whether any parameter of ``model`` differs from ``state``."""
    return any(not torch.equal(p.detach().cpu(), state[name]) for name, p in model.named_parameters())


#: a CPU step in which this process got less than this share of its threads' cores was disturbed by other work
UNDISTURBED_SHARE = 0.8


def undisturbed_steps(seconds: Sequence[float], shares: Sequence[float]) -> list[float]:
    """The step times whose CPU share (:meth:`StepTimer.cpu_shares`) shows no other process took the cores."""
    return [t for t, share in zip(seconds, shares) if share >= UNDISTURBED_SHARE]


def run_time(runs: Sequence[Sequence[float]], shares: Optional[Sequence[Sequence[float]]]) -> tuple[float, bool]:
    """A loop's step time from its runs (step times, and their CPU shares; ``None`` = all undisturbed):
    the fastest run's median step, over the runs of which at least half the steps were undisturbed,
    and of those steps only.  Returns it and whether such a run existed (else all runs and steps count)."""
    medians = []
    for i, steps in enumerate(runs):
        calm = list(steps) if shares is None else undisturbed_steps(steps, shares[i])
        if 2 * len(calm) >= len(steps):
            medians.append(statistics.median(calm))
    if medians:
        return min(medians), True
    return min(statistics.median(steps) for steps in runs), False


def measure_family(family: str, settings: Settings, dm: Optional[L.LightningDataModule] = None) -> dict:
    """The three loops for one family, ``settings.repeats`` times in turn (module docstring).

    A loop's time is ``steps`` x its median step time in its fastest run (:func:`run_time`), counting
    only the steps that other processes did not disturb (on CPU: those in which this process got at
    least :data:`UNDISTURBED_SHARE` of its threads' CPU time), and only runs in which at least half
    the steps were undisturbed; when no run qualifies, all count and the result says ``disturbed``.
    """
    torch.set_num_threads(settings.threads)
    cuda = settings.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats(torch.device(settings.device))
    dm = dm if dm is not None else make_datamodule(settings.data)
    with quiet():
        dm.prepare_data()
        state = prepared_state(family, dm, settings)
    n = settings.warmup + settings.steps
    batches = cache_batches(dm, n, pin=cuda)
    epoch = len(dm.train_dataloader())
    if n > epoch:
        warnings.warn(f"warmup + steps = {n} is more than one epoch of the DataModule ({epoch} batches): the real "
                      "DataModule's run then crosses an epoch boundary inside the timed steps, the in-memory one does not")
    frames_per_item = int(dm.segment_frames)
    steps: dict[str, list[list[float]]] = {loop: [] for loop in LOOPS}
    counts: dict[str, dict] = {}
    weights_changed: dict[str, bool] = {}
    loader: list[float] = []
    shares: dict[str, list[list[float]]] = {loop: [] for loop in LOOPS}
    for _ in range(settings.repeats):
        loader += loader_seconds(dm, n)
        for loop in LOOPS:
            model = fresh_model(family, dm, state, settings)
            timer = StepTimer(settings.warmup, settings.steps, frames_per_item, settings.device, settings.fingerprints)
            if loop == "datamodule":
                lightning_run(model, settings, timer, dm=dm)
            elif loop == "memory":
                lightning_run(model, settings, timer, batches=batches)
            else:
                bare_run(model, batches, settings, timer)
            steps[loop].append(timer.step_seconds)
            shares[loop].append(timer.cpu_shares(settings.threads))
            counts[loop] = {"batches": timer.batches, "frames": timer.frames, "fingerprints": timer.fingerprints}
            weights_changed[loop] = changed(model, state)
            del model
    timed = {loop: run_time(steps[loop], None if cuda else shares[loop]) for loop in LOOPS}
    seconds = {loop: timed[loop][0] * settings.steps for loop in LOOPS}
    disturbed = not all(ok for _, ok in timed.values())
    all_shares = [x for loop in LOOPS for run in shares[loop] for x in run]
    undisturbed = 1.0 if cuda else sum(x >= UNDISTURBED_SHARE for x in all_shares) / len(all_shares)
    fps = {loop: counts[loop]["frames"] / seconds[loop] for loop in LOOPS}
    return {
        "family": family, "batch_size": int(dm.batch_size), "segment_frames": frames_per_item,
        "warmup": settings.warmup, "steps": settings.steps, "repeats": settings.repeats,
        "device": settings.device, "precision": settings.precision, "threads": torch.get_num_threads(),
        "seconds": seconds, "fps": fps, "step_seconds": steps,
        "counts": counts, "weights_changed": weights_changed, "loader_ms": 1000 * statistics.median(loader),
        "cpu_shares": shares,
        "undisturbed": undisturbed, "disturbed": disturbed,
        "ratio": fps["datamodule"] / fps["memory"], "overhead": seconds["memory"] / seconds["bare"] - 1,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mb": torch.cuda.max_memory_allocated(torch.device(settings.device)) / 2**20 if cuda else None,
    }


# -- the report ------------------------------------------------------------------------------------
def format_table(results: Sequence[dict], settings: Settings) -> str:
    """The Markdown table (one row per family; a family that failed says so).  The last columns say
    what the loader alone costs per batch and which share of the timed steps no other process
    disturbed (the steps the times come from; "disturbed" when too few were, see :func:`measure_family`)."""
    cuda = settings.device.startswith("cuda")
    head = ["family", "batch", "frames/s real DM", "frames/s in memory", "ratio", "frames/s bare loop",
            "Lightning overhead", "peak RSS MB"] + (["peak CUDA MB"] if cuda else []) + ["loader alone ms/batch", "undisturbed steps"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(head) - 2)]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['family']} | failed: {r['error']} |" + " |" * (len(head) - 2))
            continue
        fps = r["fps"]
        row = [r["family"], str(r["batch_size"]), f"{fps['datamodule']:,.0f}", f"{fps['memory']:,.0f}", f"{r['ratio']:.2f}",
               f"{fps['bare']:,.0f}", f"{100 * r['overhead']:+.1f} %", f"{r['peak_rss_mb']:,.0f}"]
        if cuda:
            row.append(f"{r['peak_cuda_mb']:,.0f}" if r.get("peak_cuda_mb") is not None else "-")
        row += [f"{r['loader_ms']:.1f}", f"{100 * r['undisturbed']:.0f} %" + (" (disturbed)" if r["disturbed"] else "")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def describe(settings: Settings) -> str:
    try:
        ram = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM"
    except (ValueError, OSError, AttributeError):
        ram = ""
    return (f"Training speed on DATA=musdb, {time.strftime('%Y-%m-%d %H:%M')}: {settings.warmup} warm-up + "
            f"{settings.steps} timed steps, best of {settings.repeats} runs (median step), device {settings.device}, "
            f"precision {settings.precision}, {settings.threads} threads; {machine()}{ram}")


# -- one process per family ------------------------------------------------------------------------
def worker_argv(settings: Settings, family: str, result: Path) -> list[str]:
    return [sys.executable, "-m", "lightning_sep.benchmarks.training_speed", "--worker", family, "--result", str(result),
            "--warmup", str(settings.warmup), "--steps", str(settings.steps), "--repeats", str(settings.repeats),
            "--device", settings.device, "--precision", settings.precision, "--threads", str(settings.threads),
            "--seed", str(settings.seed), "--data", json.dumps(settings.data)]


def run_in_subprocess(family: str, settings: Settings) -> dict:
    """:func:`measure_family` in a fresh Python process (its peak memory is the family's own)."""
    with tempfile.TemporaryDirectory(prefix="training-speed-") as tmp:
        result = Path(tmp) / "result.json"
        proc = subprocess.run(worker_argv(settings, family, result), capture_output=True, text=True)
        if proc.returncode != 0 or not result.exists():
            lines = (proc.stderr or proc.stdout).strip().splitlines() or [f"exit status {proc.returncode}"]
            sys.stderr.write(f"{family} failed:\n{proc.stderr[-4000:]}\n")
            return {"family": family, "error": lines[-1][:200].replace("|", "/")}
        return json.loads(result.read_text())


def parse_args(argv: Optional[list[str]] = None) -> tuple[Settings, argparse.Namespace]:
    families = available("model")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=families, choices=families, metavar="FAMILY",
                        help=f"model families (default: all of conf/model: {' '.join(families)})")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first, at least 1 (default 2)")
    parser.add_argument("--steps", type=int, default=8,
                        help="timed steps (default 8; keep warmup + steps within one epoch: 40 batches on DATA=musdb)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="runs of each loop; the fastest run's median step counts (default 5)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--precision", default="32-true", choices=PRECISIONS)
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="torch.set_num_threads in every process (default: the usable cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default="{}", help="JSON object of conf/data/musdb.yaml init args to override")
    parser.add_argument("--out", help="also write the table here (atomically)")
    parser.add_argument("--json", help="also write every family's result, step times included, here (atomically)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one family in this process
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.warmup, args.steps, args.repeats, args.threads) < 1:
        parser.error("--warmup, --steps, --repeats and --threads must be at least 1")
    if args.device != "cpu" and not args.device.startswith("cuda"):
        parser.error(f"--device {args.device}: cpu or cuda[:N]")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    try:
        data = json.loads(args.data)
    except json.JSONDecodeError as err:
        parser.error(f"--data {args.data!r} is not JSON: {err}")
    if not isinstance(data, dict):
        parser.error("--data must be a JSON object, e.g. '{\"batch_size\": 8}'")
    settings = Settings(families=list(args.families), warmup=args.warmup, steps=args.steps, repeats=args.repeats,
                        device=args.device, precision=args.precision, threads=args.threads, seed=args.seed, data=data)
    return settings, args


def main(argv: Optional[list[str]] = None) -> None:
    settings, args = parse_args(argv)
    torch.set_num_threads(settings.threads)
    if args.worker:
        result = measure_family(args.worker, settings)
        atomic_write_text(args.result, json.dumps(result))
        return
    with quiet(), contextlib.redirect_stdout(sys.stderr):
        make_datamodule(settings.data).prepare_data()  # the embedded corpus and its decode cache, once, before timing
    header = f"{describe(settings)}; load average (1/5/15 min) at the start {load_average()}"
    print(f"# {header}", flush=True)
    start = time.perf_counter()
    results = []
    for family in settings.families:
        began = time.perf_counter()
        results.append(run_in_subprocess(family, settings))
        print(f"#   {family}: {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    footer = f"Wall time {(time.perf_counter() - start) / 60:.1f} min; load average at the end {load_average()}."
    table = format_table(results, settings)
    print(f"{table}# {footer}", flush=True)
    if args.out:
        atomic_write_text(args.out, f"{header}.\n\n{table}\n{footer}\n")
    if args.json:
        atomic_write_text(args.json, json.dumps({"settings": header, "results": results}, indent=1))


if __name__ == "__main__":
    main()
