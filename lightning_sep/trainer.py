"""What ``conf/trainer/`` configures beyond Lightning's own options: the checks, resuming, compiling.

Distribution is Lightning's: ``conf/trainer/{cpu,gpu,ddp,ddp_cpu,ddp_spawn,multinode}.yaml`` name its
accelerators and strategies, and nothing here starts processes or reduces tensors.  This module
holds what the platform adds around them:

* :func:`check_trainer_settings` -- a strategy name Lightning does not know, more GPUs (or CPU
  processes) than the machine has, a GPU trainer on a machine without one: one clear line naming
  the option, before Lightning would fail deep inside its connector.
* :class:`RandomState` -- the global random generators (torch, CUDA, NumPy, Python) saved in every
  checkpoint and restored on resume, so a resumed run draws the same random numbers (a VAE's
  sampling, dropout) as one that was never interrupted.  Stored as tensors and plain lists: the
  checkpoint still loads weights-only.
* :func:`compile_model` -- ``COMPILE=1``: ``torch.compile`` on the LightningModule, as Lightning
  documents it (``trainer.fit(torch.compile(model))``).
"""

from __future__ import annotations

import os
import random
from typing import Any, Optional

import numpy as np
import torch
from lightning.pytorch import Callback

from lightning_sep.errors import LightningSepError


def _device_count(devices: Any) -> Optional[int]:
    """How many devices a ``devices`` setting asks for (None: "auto" or -1, i.e. all there are)."""
    if devices is None or devices == "auto":
        return None
    if isinstance(devices, (list, tuple)):
        return len(devices)
    text = str(devices).strip()
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    try:
        n = int(text)
    except ValueError:
        return None
    return None if n == -1 else n


def _largest_index(devices: Any) -> Optional[int]:
    """The largest device index of an explicit list (``[0, 3]`` or ``"0,3"``)."""
    if isinstance(devices, (list, tuple)):
        return max(int(d) for d in devices) if devices else None
    if isinstance(devices, str) and "," in devices:
        return max(int(d) for d in devices.split(",") if d.strip())
    return None


def check_trainer_settings(config: dict[str, Any]) -> None:
    """Refuse, with one clear line, trainer settings that Lightning would reject with a traceback.

    ``config`` is the ``trainer`` section (``accelerator``, ``devices``, ``strategy``, ``num_nodes``).
    """
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    strategy = config.get("strategy", "auto")
    if isinstance(strategy, str) and strategy != "auto" and strategy not in StrategyRegistry.available_strategies():
        known = sorted(s for s in StrategyRegistry.available_strategies() if not s.startswith(("deepspeed", "xla")))
        raise LightningSepError(
            f"STRATEGY={strategy} (--trainer.strategy): not a strategy Lightning knows. Use one of: auto, "
            f"{', '.join(known)} -- or TRAINER=ddp / ddp_spawn / multinode (conf/trainer/)."
        )
    accelerator = str(config.get("accelerator", "auto"))
    if accelerator not in ("auto", "cpu", "gpu", "cuda", "mps", "tpu") and accelerator not in AcceleratorRegistry:
        raise LightningSepError(
            f"ACCELERATOR={accelerator} (--trainer.accelerator): not an accelerator Lightning knows. "
            "Use auto, cpu or gpu."
        )
    devices = config.get("devices", "auto")
    wanted = _device_count(devices)
    if wanted is not None and wanted < 1:
        raise LightningSepError(f"DEVICES={devices} (--trainer.devices): give at least 1 (or -1 for all).")
    gpus = torch.cuda.device_count()
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and gpus > 0):
        if gpus == 0:
            raise LightningSepError(
                f"--trainer.accelerator={accelerator}: this machine has no GPU that PyTorch can use "
                f"(torch {torch.__version__}, CUDA {torch.version.cuda or 'not built'}). Train on the CPU: "
                "TRAINER=cpu, or TRAINER=ddp_cpu DEVICES=2 for DDP on CPU processes."
            )
        index = _largest_index(devices)
        if (wanted is not None and wanted > gpus) or (index is not None and index >= gpus):
            raise LightningSepError(
                f"DEVICES={devices} (--trainer.devices): this machine has {gpus} GPU(s) "
                f"(indices 0..{gpus - 1}). Ask for at most {gpus}, or DEVICES=-1 for all of them; more GPUs per "
                "run come from more nodes (TRAINER=multinode NODES=...)."
            )
    elif accelerator in ("cpu", "auto"):
        cores = os.cpu_count() or 1
        if wanted is not None and wanted > cores:
            raise LightningSepError(
                f"DEVICES={devices} (--trainer.devices) with accelerator={accelerator}: {wanted} CPU processes, but "
                f"this machine has {cores} core(s). Use DEVICES={cores} or fewer (more processes than cores "
                "only wait on each other)."
            )


class RandomState(Callback):
    """The global random generators in the checkpoint (``callbacks.RandomState``), restored on resume.

    Lightning saves the model, optimiser, schedulers, loops and callbacks, but not the generators
    that ``torch.randn`` and friends draw from; without them a resumed VAE would sample other noise
    than the run it continues.  Under DDP every rank starts from the same seed and draws in step, so
    rank 0's state (the one in the checkpoint) is every rank's.
    """

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
        p = state["python"]
        random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])


def compile_model(model: Any, mode: Optional[str] = None) -> Any:
    """``torch.compile(model)`` (``COMPILE=1``; ``mode`` e.g. ``max-autotune``). Lightning trains the
    compiled module and saves the original's weights, so checkpoints are the same as without it."""
    try:
        return torch.compile(model, mode=mode)
    except Exception as err:  # e.g. an unsupported Python, or no C++ compiler for the CPU backend
        raise LightningSepError(f"COMPILE=1: torch.compile failed ({str(err).splitlines()[0][:200]}). "
                                "Train without COMPILE.") from None
