"""``make ui`` and ``make server``: the MLflow UI on the project's store, and a team tracking server.

* :func:`ui` -- ``mlflow ui`` on the store the runs are written to (``$MLFLOW_TRACKING_URI`` or
  ``sqlite:///<repo>/mlruns/mlflow.db``), bound to ``127.0.0.1`` unless told otherwise.
* :func:`server` -- ``mlflow server`` for a team: a database backend (SQLite under
  ``mlruns/server/`` by default, any SQLAlchemy URL such as PostgreSQL with ``--backend-store-uri``)
  and an artifact proxy (``--serve-artifacts``: clients upload config, audio examples and checkpoints
  over HTTP to ``mlruns/server/artifacts``), on loopback by default; trainings log to it with
  ``MLFLOW_TRACKING_URI=http://127.0.0.1:<port>``.

Both check the address first: a port already in use or a host that is not this machine's gives one
clear line instead of a server traceback, and a non-loopback host is announced as such. Passwords in
database URLs are never printed.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from lightning_sep.errors import LightningSepError
from lightning_sep.paths import REPO_ROOT, default_tracking_uri
from lightning_sep.tracking.mlflow import is_remote, redact


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_address(host: str, port: int, command: str) -> None:
    """``host:port`` must be free to listen on: else a message naming ``HOST=``/``PORT=`` and what to do."""
    if not 0 < port < 65536:
        raise LightningSepError(f"PORT={port}: a TCP port is 1-65535 (e.g. make {command} PORT=5001).")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise LightningSepError(f"HOST={host}: not a known address ({err.strerror}); the default is 127.0.0.1.") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # as the server will: connections of a stopped server left in TIME_WAIT do not make the port "in use"
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
            probe.listen(1)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise LightningSepError(
                    f"PORT={port}: {host}:{port} is already in use (another MLflow UI or server? `ss -ltnp "
                    f"'sport = :{port}'` shows which process): stop it, or pick another port: make {command} PORT={port + 1}."
                ) from None
            if err.errno == errno.EADDRNOTAVAIL:
                raise LightningSepError(
                    f"HOST={host}: not an address of this machine; the default is 127.0.0.1 (0.0.0.0 = every interface)."
                ) from None
            if err.errno == errno.EACCES:
                raise LightningSepError(f"PORT={port}: not allowed for this user (ports below 1024 need root): use e.g. PORT=5000.") from None
            raise


def _announce_exposure(host: str) -> None:
    if not is_loopback(host):
        print(
            f"lightning-sep: HOST={host}: listening beyond this machine, without authentication (MLflow's "
            "`--app-name basic-auth` adds logins; its --allowed-hosts decides which Host headers are answered).",
            file=sys.stderr, flush=True,
        )


def _exec_mlflow(args: list[str]) -> None:
    """Replace this process by ``python -m mlflow <args>`` (Ctrl-C then stops the server itself)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "mlflow", *args])


@dataclass
class UISettings:
    host: str = "127.0.0.1"
    port: int = 5000
    store: Optional[str] = None  # default: $MLFLOW_TRACKING_URI or the project's SQLite store
    extra: list[str] = field(default_factory=list)  # passed to `mlflow ui`


def ui(settings: UISettings) -> None:
    """``mlflow ui`` on the project's store (never returns when it starts)."""
    store = settings.store or default_tracking_uri()
    if is_remote(store):
        raise LightningSepError(
            f"MLFLOW_TRACKING_URI={redact(store)} is a tracking server: it serves its own UI, open {redact(store)} "
            "in a browser (make ui shows a local store: unset MLFLOW_TRACKING_URI for the project's)."
        )
    check_address(settings.host, settings.port, "ui")
    _announce_exposure(settings.host)
    print(f"MLflow UI on {redact(store)}: http://{settings.host}:{settings.port}  (Ctrl-C stops it)", flush=True)
    _exec_mlflow(["ui", "--backend-store-uri", store, "--host", settings.host, "--port", str(settings.port),
                  *settings.extra])


def default_server_dir() -> Path:
    return REPO_ROOT / "mlruns" / "server"


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 5000
    backend_store_uri: Optional[str] = None  # default: sqlite:///<repo>/mlruns/server/mlflow.db
    artifacts_destination: Optional[str] = None  # default: <repo>/mlruns/server/artifacts
    workers: Optional[int] = None
    extra: list[str] = field(default_factory=list)  # passed to `mlflow server`


def server(settings: ServerSettings) -> None:
    """``mlflow server`` with a database backend and an artifact proxy (never returns when it starts)."""
    folder = default_server_dir()
    backend = settings.backend_store_uri or f"sqlite:///{folder / 'mlflow.db'}"
    artifacts = settings.artifacts_destination or str(folder / "artifacts")
    if not backend.startswith(("sqlite:", "postgresql", "mysql", "mssql")):
        raise LightningSepError(
            f"SERVER_DB={redact(backend)}: a team server needs a database backend, a SQLAlchemy URL: "
            "sqlite:///path/mlflow.db, postgresql://user:password@host/db, mysql://..."
        )
    check_address(settings.host, settings.port, "server")
    if settings.backend_store_uri is None or settings.artifacts_destination is None:
        folder.mkdir(parents=True, exist_ok=True)
    _announce_exposure(settings.host)
    url = f"http://{settings.host if is_loopback(settings.host) else '<this machine>'}:{settings.port}"
    print(
        f"MLflow tracking server: {url}\n"
        f"  runs in {redact(backend)}, artifacts in {artifacts} (uploaded through the server)\n"
        f"  train to it:  MLFLOW_TRACKING_URI={url} make train MODEL=skipfilter\n"
        "  Ctrl-C stops it.",
        flush=True,
    )
    args = ["server", "--backend-store-uri", backend, "--serve-artifacts", "--artifacts-destination", artifacts,
            "--host", settings.host, "--port", str(settings.port)]
    if settings.workers:
        args += ["--workers", str(settings.workers)]
    _exec_mlflow([*args, *settings.extra])
