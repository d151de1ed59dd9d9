"""The registry: ``MODEL=name`` / ``DATA=name`` / ``TRAINER=name`` map to ``conf/<kind>/<name>.yaml``.

Adding a family is one model file plus one YAML in ``conf/model/``; every command then finds it.
"""

from __future__ import annotations

from pathlib import Path

from lightning_sep.errors import LightningSepError, UnknownNameError
from lightning_sep.paths import CONF_DIR

KINDS = {"model": "MODEL", "data": "DATA", "trainer": "TRAINER"}


def available(kind: str) -> list[str]:
    """Names available for ``kind`` (``model``, ``data`` or ``trainer``)."""
    return sorted(p.stem for p in (CONF_DIR / kind).glob("*.yaml"))


def config_path(kind: str, name: str) -> Path:
    """The config file of ``name``; an unknown name stops with the list of available ones."""
    path = CONF_DIR / kind / f"{name}.yaml"
    if not path.is_file():
        raise UnknownNameError(KINDS.get(kind, kind), name, available(kind))
    return path


def check_config_args(args: list[str]) -> None:
    """Give a registry error for a ``--config conf/<kind>/<name>.yaml`` that does not exist.

    Without this, jsonargparse would report an unreadable file; users of ``make train MODEL=x``
    need to hear that ``x`` is not a model, and which models there are.
    """
    for i, arg in enumerate(args):
        value = None
        if arg == "--config" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        if value is None or Path(value).exists():
            continue
        path = Path(value)
        if path.suffix in (".yaml", ".yml") and path.parent.name in KINDS:
            config_path(path.parent.name, path.stem)
        raise LightningSepError(f"--config {value}: no such file.")

