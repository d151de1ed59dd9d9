"""Search spaces of ``make tune``: ``conf/tune/<model>.yaml``, checked before any trial runs.

A tuning config says what one trial is and what Optuna may vary::

    metric: val/sdr            # maximised: the validation SDR of training (SpectrogramSeparator.log_scores)
    trainer:                   # each trial's budget, over conf/trainer/<TRAINER>.yaml
      max_epochs: 8
    data:                      # fixed DataModule arguments for every trial (optional), e.g.
      validation_holdout: 1    # select on held-out mixtures, not the training ones
    model: {}                  # fixed model arguments (optional)
    sampler:                   # optuna.samplers.TPESampler options
      n_startup_trials: 5
    pruner:                    # median | percentile | hyperband | successive_halving | none, and its options
      name: median
      n_warmup_steps: 2
    space:
      latent_size: {low: 16, high: 256, log: true}     # a model argument (init_args)
      segment_frames: {low: 1, high: 33, step: 2}      # ints when low, high (and step) are ints
      lr: {low: 1.0e-4, high: 1.0e-2, log: true}       # floats otherwise
      hidden_sizes: {choices: [[128], [256, 128]]}     # categorical
      data.batch_size: {choices: [8, 16, 32]}          # a DataModule argument

A name without a prefix is an argument of the model's class (``conf/model/<model>.yaml``);
``data.<name>`` one of the DataModule's (``conf/data/<DATA>.yaml``) and ``trainer.<name>`` one of
Lightning's ``Trainer``.  Every name is checked against the class's signature, every range for
being non-empty, before the study opens.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from lightning_sep.errors import LightningSepError
from lightning_sep.registry import available, config_path

#: Sections of a tuning config.
SECTIONS = ("metric", "direction", "trainer", "data", "model", "sampler", "pruner", "space")
#: Pruners a config may name.
PRUNERS = ("median", "percentile", "hyperband", "successive_halving", "none")
#: Model arguments that come from the DataModule (linked by the CLI); not tunable as model arguments.
LINKED = ("front_end", "targets")


@dataclass(frozen=True)
class Param:
    """One searched parameter: ``kind`` is ``int``, ``float`` or ``categorical``.

    ``section`` is ``model``, ``data`` or ``trainer``; ``arg`` the argument's name in that section.
    """

    name: str
    section: str
    arg: str
    kind: str
    low: Any = None
    high: Any = None
    step: Any = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial: Any) -> Any:
        """The value Optuna picks for ``trial`` (categorical choices that are lists come back as lists)."""
        if self.kind == "categorical":
            # Optuna stores categorical values as None/bool/int/float/str: lists travel as JSON
            picked = trial.suggest_categorical(self.name, [_encode(c) for c in self.choices])
            return _decode(picked)
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a point of this parameter's range (the default's check)."""
        if self.kind == "categorical":
            return _encode(value) in [_encode(c) for c in self.choices]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not self.low <= value <= self.high:
            return False
        if self.kind == "int":
            return float(value).is_integer() and (int(value) - self.low) % (self.step or 1) == 0
        return self.step is None or _whole((value - self.low) / self.step)

    def encode(self, value: Any) -> Any:
        """``value`` as Optuna stores it for this parameter (for ``enqueue_trial``)."""
        return _encode(value) if self.kind == "categorical" else value


def _whole(x: float) -> bool:
    return abs(x - round(x)) <= 1e-9 * max(1.0, abs(x))


def _encode(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else value


def _decode(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


@dataclass
class TuneConfig:
    """A loaded, checked tuning config for one model on one dataset."""

    model: str
    data: str
    trainer: str
    path: Path
    params: list[Param]
    metric: str = "val/sdr"
    direction: str = "maximize"
    trainer_overrides: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, dict[str, Any]] = field(default_factory=dict)
    sampler: dict[str, Any] = field(default_factory=dict)
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "median"})
    defaults: dict[str, Any] = field(default_factory=dict)

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Every parameter's value for ``trial``, by name."""
        return {p.name: p.suggest(trial) for p in self.params}

    def overrides(self, values: dict[str, Any]) -> dict[str, Any]:
        """The config (``model``/``data``/``trainer`` sections) that sets ``values`` over the defaults.

        Model and data arguments go under ``init_args`` (the class stays the one of
        ``conf/model/<model>.yaml`` / ``conf/data/<DATA>.yaml``); the trial budget is included.
        """
        out: dict[str, Any] = {"trainer": dict(self.trainer_overrides)} if self.trainer_overrides else {}
        for section, values_ in self.fixed.items():
            if values_:
                out[section] = {"init_args": dict(values_)}
        by_name = {p.name: p for p in self.params}
        for name, value in values.items():
            p = by_name[name]
            if p.section == "trainer":
                out.setdefault("trainer", {})[p.arg] = value
            else:
                out.setdefault(p.section, {}).setdefault("init_args", {})[p.arg] = value
        return out

    def baseline(self) -> Optional[dict[str, Any]]:
        """The defaults as Optuna's parameter values (for the study's first trial), or None when a
        default lies outside its range (then the study has no baseline trial)."""
        by_name = {p.name: p for p in self.params}
        if any(not by_name[n].contains(v) for n, v in self.defaults.items()) or len(self.defaults) < len(self.params):
            return None
        return {n: by_name[n].encode(v) for n, v in self.defaults.items()}


def _class_of(kind: str, name: str) -> tuple[type, dict[str, Any]]:
    """The class named in ``conf/<kind>/<name>.yaml`` and the init_args set there."""
    section = yaml.safe_load(config_path(kind, name).read_text()) or {}
    block = section.get(kind, {})
    class_path = block.get("class_path", "")
    module, _, attr = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        raise LightningSepError(f"conf/{kind}/{name}.yaml: class_path {class_path!r} cannot be imported.") from None
    return cls, dict(block.get("init_args") or {})


def init_defaults(cls: type) -> dict[str, Any]:
    """Every ``__init__`` argument of ``cls`` with its default, following ``**kwargs`` up the MRO
    (the families pass their shared arguments on to their base class)."""
    out: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters
        for pname, p in params.items():
            if pname == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            out.setdefault(pname, None if p.default is p.empty else p.default)
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break
    return out


def _trainer_defaults(trainer: str) -> dict[str, Any]:
    from lightning.pytorch import Trainer

    out = init_defaults(Trainer)
    out.update((yaml.safe_load(config_path("trainer", trainer).read_text()) or {}).get("trainer", {}) or {})
    return out


def tune_config_path(model: str) -> Path:
    from lightning_sep.paths import CONF_DIR

    path = CONF_DIR / "tune" / f"{model}.yaml"
    if not path.is_file():
        config_path("model", model)  # an unknown model gets the list of models
        have = sorted(p.stem for p in (CONF_DIR / "tune").glob("*.yaml"))
        raise LightningSepError(
            f"MODEL={model}: no search space (conf/tune/{model}.yaml). Models with one: {', '.join(have)}; "
            "write one (see conf/tune/vae.yaml) or pass --space FILE."
        )
    return path


def _number(where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        hint = ""
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                float(value)
                hint = f" (YAML reads {value} as text: write it with a dot, e.g. 1.0e-4)"
        raise LightningSepError(f"{where}: {key}={value!r} must be a finite number{hint}.")
    return value


def _param(where: str, name: str, spec: Any, section: str, arg: str) -> Param:
    if not isinstance(spec, dict):
        raise LightningSepError(
            f"{where}: give a range {{low: .., high: .. [, step: .., log: true]}} or {{choices: [...]}}, not {spec!r}."
        )
    unknown = set(spec) - {"low", "high", "step", "log", "choices", "type"}
    if unknown:
        raise LightningSepError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; use low, high, step, log or choices.")
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise LightningSepError(f"{where}: choices is empty; list at least one value.")
        if set(spec) - {"choices", "type"}:
            raise LightningSepError(f"{where}: choices cannot be combined with low/high/step/log.")
        encoded = [_encode(c) for c in choices]
        if len(set(map(repr, encoded))) < len(encoded):
            raise LightningSepError(f"{where}: choices {choices} repeat a value.")
        return Param(name, section, arg, "categorical", choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        raise LightningSepError(f"{where}: a range needs both low and high (or give choices).")
    low, high = _number(where, "low", spec["low"]), _number(where, "high", spec["high"])
    step = spec.get("step")
    log = bool(spec.get("log", False))
    if step is not None and _number(where, "step", step) <= 0:
        raise LightningSepError(f"{where}: step={step} must be > 0.")
    kind = spec.get("type") or ("int" if all(isinstance(v, int) for v in (low, high, step or 1)) else "float")
    if kind not in ("int", "float"):
        raise LightningSepError(f"{where}: type={kind!r}; use int or float (or choices for a categorical).")
    if low > high:
        raise LightningSepError(f"{where}: the range [{low}, {high}] is empty (low > high).")
    if log and low <= 0:
        raise LightningSepError(f"{where}: a log range needs low > 0 (got low={low}).")
    if log and step is not None:
        raise LightningSepError(f"{where}: a log range cannot have a step.")
    if step is not None and not _whole((high - low) / step):
        raise LightningSepError(
            f"{where}: high - low = {high - low:g} is not a whole number of steps of {step}; make it a multiple of step."
        )
    if kind == "int":
        if not all(float(v).is_integer() for v in (low, high, step or 1)):
            raise LightningSepError(f"{where}: an int range needs whole low, high and step.")
        low, high, step = int(low), int(high), int(step) if step is not None else None
    return Param(name, section, arg, kind, low=low, high=high, step=step, log=log)


def load_tune_config(model: str, data: str, trainer: str = "cpu", path: Optional[str | Path] = None) -> TuneConfig:
    """Read and check the search space of ``model`` (``conf/tune/<model>.yaml``, or ``path``).

    Raises :class:`LightningSepError` naming the file and the parameter for: an unknown section, a
    parameter the model, DataModule or Trainer does not have, an empty or malformed range, a default
    trial budget that never validates.
    """
    config_path("data", data)
    config_path("trainer", trainer)
    path = Path(path) if path is not None else tune_config_path(model)
    if not path.is_file():
        raise LightningSepError(f"--space {path}: no such file.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise LightningSepError(f"{path}: not valid YAML ({str(err).splitlines()[0]}).") from None
    if not isinstance(raw, dict):
        raise LightningSepError(f"{path}: expected a mapping with the sections {', '.join(SECTIONS)}.")
    unknown = set(raw) - set(SECTIONS)
    if unknown:
        raise LightningSepError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}; expected {', '.join(SECTIONS)}.")
    space = raw.get("space") or {}
    if not isinstance(space, dict) or not space:
        raise LightningSepError(f"{path}: the space section is empty; name at least one parameter to search.")

    model_cls, model_conf = _class_of("model", model)
    data_cls, data_conf = _class_of("data", data)
    model_args = {**init_defaults(model_cls), **model_conf}
    data_args = {**init_defaults(data_cls), **data_conf}
    trainer_args = _trainer_defaults(trainer)
    trainer_overrides = dict(raw.get("trainer") or {})
    for key in trainer_overrides:
        if key not in trainer_args:
            raise LightningSepError(f"{path}: trainer.{key} is not an argument of lightning's Trainer.")
    model_trainer = (yaml.safe_load(config_path("model", model).read_text()) or {}).get("trainer") or {}
    trainer_args.update(model_trainer)
    trainer_args.update(trainer_overrides)
    fixed: dict[str, dict[str, Any]] = {}
    for section, have, what in (("model", model_args, f"MODEL={model} ({model_cls.__name__})"),
                                ("data", data_args, f"DATA={data} ({data_cls.__name__})")):
        block = raw.get(section) or {}
        if not isinstance(block, dict):
            raise LightningSepError(f"{path}: {section} must be a mapping of {section} arguments to fixed values.")
        for key in block:
            if key not in have or (section == "model" and key in LINKED):
                raise LightningSepError(f"{path}: {section}.{key}: {what} has no argument {key!r}.")
        fixed[section] = dict(block)
        have.update(block)  # the defaults every trial starts from (and the baseline's)

    params, defaults = [], {}
    for name, spec in space.items():
        name = str(name)
        section, _, arg = name.partition(".") if "." in name else ("model", "", name)
        where = f"{path} space.{name}"
        if section == "model":
            have, what = model_args, f"MODEL={model} ({model_cls.__name__})"
        elif section == "data":
            have, what = data_args, f"DATA={data} ({data_cls.__name__})"
        elif section == "trainer":
            have, what = trainer_args, "lightning's Trainer"
        else:
            raise LightningSepError(f"{where}: prefix {section!r} unknown; write <model argument>, data.<argument> or trainer.<argument>.")
        if arg not in have or (section == "model" and arg in LINKED):
            names = ", ".join(sorted(k for k in have if not (section == "model" and k in LINKED)))
            raise LightningSepError(f"{where}: {what} has no argument {arg!r}. Its arguments: {names}.")
        params.append(_param(where, name, spec, section, arg))
        defaults[name] = copy.deepcopy(have[arg])

    metric = str(raw.get("metric", "val/sdr"))
    direction = str(raw.get("direction", "maximize"))
    if direction not in ("maximize", "minimize"):
        raise LightningSepError(f"{path}: direction={direction!r}; use maximize or minimize.")
    pruner = raw.get("pruner") or {"name": "median"}
    if not isinstance(pruner, dict) or pruner.get("name", "median") not in PRUNERS:
        raise LightningSepError(f"{path}: pruner.name must be one of {', '.join(PRUNERS)}.")
    sampler = dict(raw.get("sampler") or {})
    every = trainer_args.get("check_val_every_n_epoch") or 1
    epochs = trainer_args.get("max_epochs")
    if epochs is not None and epochs > 0 and epochs < every:
        raise LightningSepError(
            f"{path}: trainer.max_epochs={epochs} is below check_val_every_n_epoch={every}: no trial would "
            f"ever measure {metric}. Raise max_epochs."
        )
    return TuneConfig(
        model=model, data=data, trainer=trainer, path=path, params=params, metric=metric, direction=direction,
        trainer_overrides=trainer_overrides, fixed=fixed, sampler=sampler, pruner=dict(pruner), defaults=defaults,
    )


def tunable_models() -> list[str]:
    """Models that have a search space in ``conf/tune/``."""
    from lightning_sep.paths import CONF_DIR

    return [m for m in available("model") if (CONF_DIR / "tune" / f"{m}.yaml").is_file()]
