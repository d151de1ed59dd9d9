"""``make tune`` with several workers on one study, and ``make tune-dashboard``.

* Two ``lightning-sep tune`` processes on one SQLite study (the default storage), then on a real
  PostgreSQL server (found under ``/usr/lib/postgresql``, installed from Debian's package when we
  are root and it is missing, else skipped): every trial is run once, by one worker; the study's
  best value is its best complete trial's; MLflow has one parent run (made by the worker that
  created the study) and one child run per trial, linked both ways; the
  PostgreSQL password is in no MLflow param, tag, artifact nor worker output.
* ``make tune-dashboard``: optuna-dashboard on the study storage, bound to 127.0.0.1 only.
* The documented ``postgresql://user:password@host/db`` URL opens a storage with the driver
  lightning-sep installs (psycopg 3, SQLAlchemy 2.1's default for ``postgresql://``).
* Workers starting together on fresh stores: the MLflow store, the Optuna storage and the embedded
  corpus are each created once, by whichever worker comes first, and the others use them.

The search space is tiny (two parameters, one epoch of two batches): the trials train for real
but take seconds.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest

from conftest import REPO, free_port, kill_group

EXPERIMENT = "lightning-sep-tune"
#: the tiny study: 2 parameters, one epoch of two training batches and one validation batch
SPACE = """\
trainer: {max_epochs: 1, limit_train_batches: 2, limit_val_batches: 1}
sampler: {n_startup_trials: 2}
pruner: {name: none}
space:
  latent_size: {low: 16, high: 128, log: true}
  lr: {low: 1.0e-4, high: 1.0e-2, log: true}
"""
N_TRIALS = 4
WORKER_TIMEOUT = 360  # seconds, for both workers together (about 40 s on an idle 2-core machine)
PG_USER, PG_PASSWORD, PG_DB = "tuner", "s3cret-pw", "optuna"
#: the documented form: SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3, which lightning-sep installs
PG_SCHEME = "postgresql"


# -- helpers ----------------------------------------------------------------------------------------------------------
@dataclass
class Worker:
    index: int
    proc: subprocess.Popen
    out_path: Path
    err_path: Path
    rc: Optional[int] = None

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def tail(self, n: int = 3000) -> str:
        return f"--- worker {self.index} (rc {self.rc}) stdout:\n{self.stdout[-n:]}\n--- stderr:\n{self.stderr[-n:]}"


def worker_env(extra: Optional[dict[str, str]] = None, drop: tuple[str, ...] = ()) -> dict[str, str]:
    """The test's environment (conftest's MLflow store, Optuna storage and data home) for a worker:
    one torch thread each (the two workers share a small machine), unbuffered output."""
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update(extra or {})
    return env


def run_workers(folder: Path, args_per_worker: list[list[str]], envs: list[dict[str, str]],
                timeout: float = WORKER_TIMEOUT) -> list[Worker]:
    """Start one ``python -m lightning_sep.cli tune ARGS`` per entry, together; wait for all of them."""
    workers: list[Worker] = []
    try:
        for i, (args, env) in enumerate(zip(args_per_worker, envs)):
            out, err = folder / f"worker{i}.out", folder / f"worker{i}.err"
            with open(out, "wb") as fo, open(err, "wb") as fe:
                proc = subprocess.Popen([sys.executable, "-m", "lightning_sep.cli", "tune", *args], cwd=folder, env=env,
                                        stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, start_new_session=True)
            workers.append(Worker(i, proc, out, err))
        deadline = time.monotonic() + timeout
        for w in workers:
            try:
                w.rc = w.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"the tune workers did not finish in {timeout:.0f} s\n" + "\n".join(x.tail() for x in workers))
    finally:
        for w in workers:
            kill_group(w.proc)
    return workers


def tune_args(study: str, space: Path, storage: Optional[str] = None, seed: int = 7) -> list[str]:
    args = ["--model", "vae", "--data", "timit", "--n-trials", str(N_TRIALS), "--study", study, "--space", str(space),
            "--pruner", "none", "--seed", str(seed)]
    return args + (["--storage", storage] if storage else [])


def prime_stores(tracking_uri: str, storage: str) -> None:
    """Create the MLflow store's and the Optuna storage's tables before the workers start (workers
    that start together on fresh stores are the subject of :func:`test_workers_starting_together_on_fresh_stores`)."""
    import optuna
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri).search_experiments()
    storage_obj = optuna.storages.RDBStorage(storage)
    storage_obj.engine.dispose()


def finished_trials(stdout: str, study: str) -> dict[int, str]:
    """``{trial number: state}`` from a worker's ``[tune STUDY] trial K STATE`` lines."""
    pattern = re.compile(rf"^\[tune {re.escape(study)}\] trial (\d+) (COMPLETE|PRUNED|FAIL)\b", re.M)
    return {int(k): state for k, state in pattern.findall(stdout)}


@dataclass
class StudyCheck:
    trials: list
    parent: object
    children: dict  # trial number -> child run
    deleted_parents: int
    overshoot: int
    per_worker: list[dict[int, str]]


def check_shared_study(study_name: str, storage: str, tracking_uri: str, workers: list[Worker],
                       expected_storage_tag: str) -> StudyCheck:
    """The checks common to every storage: see the module docstring."""
    import optuna
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    logs = "\n".join(w.tail() for w in workers)
    for w in workers:
        assert w.rc == 0, f"worker {w.index} exited with {w.rc}\n{logs}"
        assert "Traceback" not in w.stderr, logs

    # -- Optuna: every trial once, none left running or waiting ------------------------------------------------------
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials))), numbers
    # --n-trials is the study's total; a worker may start one more trial while the other's last one is
    # being created (MaxTrialsCallback counts after each trial), so at most one extra with two workers
    assert N_TRIALS <= len(trials) <= N_TRIALS + len(workers) - 1, [(t.number, t.state.name) for t in trials]
    states = {t.number: t.state.name for t in trials}
    assert set(states.values()) <= {"COMPLETE", "PRUNED", "FAIL"}, states
    fails = {t.number: t.system_attrs.get("fail_reason") for t in trials if t.state.name == "FAIL"}
    assert not fails, f"trials failed: {fails}\n{logs}"
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert complete
    pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    assert study.best_value == pick(t.value for t in complete)
    assert study.best_trial.number in {t.number for t in complete if t.value == study.best_value}
    baseline = [t.number for t in trials if t.user_attrs.get("baseline")]
    assert len(baseline) == 1, f"{len(baseline)} baseline (default configuration) trials: {baseline}"

    # -- each trial was run by exactly one worker -------------------------------------------------------------------------
    per_worker = [finished_trials(w.stdout, study_name) for w in workers]
    seen: dict[int, int] = {}
    for w, done in zip(workers, per_worker):
        for k in done:
            assert k not in seen, f"trial {k} reported by workers {seen[k]} and {w.index}\n{logs}"
            seen[k] = w.index
    assert seen.keys() == states.keys(), (seen, states)
    assert all(per_worker[seen[k]][k] == states[k] for k in states)

    # -- MLflow: one parent, one child per trial ----------------------------------------------------------------------------
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    mine = [r for r in runs if r.data.tags.get("optuna.study_name") == study_name]
    parents = [r for r in mine if r.data.tags.get("tune.role") == "study"]
    active_parents = [r for r in parents if r.info.lifecycle_stage == "active"]
    assert len(parents) == 1 and len(active_parents) == 1, (
        "the workers did not share one MLflow parent run (id, stage, start time; children's parents: "
        f"{sorted({r.data.tags.get('mlflow.parentRunId') for r in mine if r.data.tags.get('tune.role') == 'trial'})}): "
        f"{[(r.info.run_id, r.info.lifecycle_stage, r.info.start_time) for r in parents]}")
    parent = active_parents[0]
    assert study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
    assert parent.data.tags["optuna.storage"] == expected_storage_tag
    assert parent.data.tags.get("tune.role") == "study"
    for w in workers:  # every worker logged to that parent
        assert f"MLflow parent run {parent.info.run_id}" in w.stdout, w.tail()

    children = [r for r in mine if r.data.tags.get("tune.role") == "trial"]
    assert all(r.info.lifecycle_stage == "active" for r in children)
    child_numbers = sorted(int(r.data.tags["optuna.trial_number"]) for r in children)
    assert child_numbers == sorted(numbers), (child_numbers, numbers)
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in children}
    for t in trials:
        child = by_number[t.number]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert t.user_attrs["mlflow_run_id"] == child.info.run_id
        assert child.data.tags["optuna.trial_state"] == t.state.name
        assert child.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(t.state.name, "FAILED")
        assert {k: child.data.params[k] for k in t.params} == {k: str(v) for k, v in t.params.items()}
    # nothing else in the experiment: no stray run of a worker (the preflight, a lost parent) is left active
    stray = [r.info.run_id for r in runs if r.info.lifecycle_stage == "active"
             and r.info.run_id not in {parent.info.run_id, *(c.info.run_id for c in children)}
             and r.data.tags.get("optuna.study_name", study_name) == study_name]
    assert not stray, stray
    if parent.data.tags.get("optuna.best_trial") != str(study.best_trial.number):
        # each worker writes the study's results to the parent when it stops: a worker whose report runs
        # while the other's last trial finishes could leave an older best behind (not seen so far)
        warnings.warn(f"study {study_name}: the parent's optuna.best_trial is {parent.data.tags.get('optuna.best_trial')}, "
                      f"the study's best trial {study.best_trial.number}")

    result = StudyCheck(trials=trials, parent=parent, children=by_number, deleted_parents=len(parents) - 1,
                        overshoot=len(trials) - N_TRIALS, per_worker=per_worker)
    idle = [w.index for w, done in zip(workers, per_worker) if not done]
    print(f"\n[{study_name}] {len(trials)} trials for --n-trials {N_TRIALS} (overshoot {result.overshoot}); "
          f"trials per worker {[sorted(d) for d in per_worker]}; parent runs created {len(parents)} "
          f"(deleted {result.deleted_parents}); baseline trials {baseline}")
    if idle:  # possible (one worker may take every trial while the other starts up), not a failure
        warnings.warn(f"study {study_name}: worker(s) {idle} ran no trial: {[sorted(d) for d in per_worker]}")
    return result


def two_worker_study(tmp_path: Path, study: str, envs: list[dict[str, str]],
                     storage_flags: list[Optional[str]]) -> list[Worker]:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    return run_workers(tmp_path, [tune_args(study, space, flag) for flag in storage_flags], envs)


@pytest.fixture
def timit_corpus():
    """The embedded TIMIT corpus of the session's data home, generated here once, not by the racing workers."""
    from datamodules.embedded_timit import ensure_embedded_timit

    return ensure_embedded_timit(progress=False)


# -- 1. SQLite --------------------------------------------------------------------------------------------------------
def test_two_workers_share_one_sqlite_study(tmp_path, timit_corpus):
    storage, tracking = os.environ["OPTUNA_STORAGE"], os.environ["MLFLOW_TRACKING_URI"]
    assert storage.startswith("sqlite:///") and str(tmp_path) in storage
    prime_stores(tracking, storage)
    study = "shared-sqlite"
    workers = two_worker_study(tmp_path, study, [worker_env(), worker_env()], [storage, storage])
    check = check_shared_study(study, storage, tracking, workers, expected_storage_tag=storage)

    # the parent run got the study's results (the last worker to finish wrote them)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking)
    names = {a.path for a in client.list_artifacts(check.parent.info.run_id)}
    assert {"best.yaml", "trials.csv", "space.yaml"} <= names, names


# -- 2. PostgreSQL ----------------------------------------------------------------------------------------------------
def _pg_bindir() -> Optional[Path]:
    def version(path: str) -> tuple:
        return tuple(int(x) if x.isdigit() else 0 for x in re.findall(r"\d+", Path(path).parent.name))

    needed = ("initdb", "pg_ctl", "postgres", "psql")
    import glob

    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if all((Path(folder) / n).is_file() for n in needed):
            return Path(folder)
    initdb = shutil.which("initdb")
    if initdb and all((Path(initdb).parent / n).is_file() for n in needed):
        return Path(initdb).parent
    return None


def _install_postgresql() -> Optional[str]:
    """Install Debian's ``postgresql``; None when done, else why not."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        return "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin) and not root with apt-get to install them"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"]
    try:
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True, timeout=600)
            done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return "apt-get install postgresql timed out"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"apt-get install postgresql failed: {last}"
    return None


@dataclass
class PostgresServer:
    bindir: Path
    base: Path
    port: int
    as_user: Callable[[list[str]], list[str]]  # a command run as the server's owner

    def url(self, database: str = PG_DB, password: str = PG_PASSWORD, scheme: str = PG_SCHEME) -> str:
        return f"{scheme}://{PG_USER}:{password}@127.0.0.1:{self.port}/{database}"

    def psql(self, *sql: str) -> None:
        cmd = [str(self.bindir / "psql"), "-X", "-q", "-h", str(self.base), "-p", str(self.port),
               "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1"]
        for statement in sql:
            cmd += ["-c", statement]
        done = subprocess.run(self.as_user(cmd), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr

    def new_database(self, name: str) -> str:
        self.psql(f"CREATE DATABASE {name} OWNER {PG_USER}")
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_server():
    """A throw-away PostgreSQL server on 127.0.0.1 (a free port), with role ``tuner`` (password
    ``s3cret-pw``, scram-sha-256 on loopback) owning database ``optuna``; stopped and deleted at the end."""
    bindir = _pg_bindir()
    if bindir is None:
        reason = _install_postgresql()
        bindir = _pg_bindir()
        if bindir is None:
            pytest.skip(reason or "postgresql installed but its server binaries are not under /usr/lib/postgresql/*/bin")
    as_pg: Optional[list[str]] = []
    owner = None
    if os.geteuid() == 0:  # the server refuses to run as root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' system user to run the PostgreSQL server as")
        as_pg = ["runuser", "-u", "postgres", "--"] if shutil.which("runuser") else None
    base = Path(tempfile.mkdtemp(prefix="lsep-pg-", dir="/tmp" if Path("/tmp").is_dir() else None))
    base.chmod(0o755)
    if owner is not None:
        os.chown(base, owner.pw_uid, owner.pw_gid)

    def as_user(cmd: list[str]) -> list[str]:
        if as_pg is None:  # no runuser: su
            return ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(cmd)]
        return [*as_pg, *cmd]

    data = base / "data"
    server = None
    try:
        done = subprocess.run(as_user([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8",
                                       "--no-locale", "--auth-local=trust", "--auth-host=scram-sha-256"]),
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"initdb failed: {done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        # only the socket (trust, for the set-up below) and the loopback with a password
        (data / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
        )
        for attempt in range(3):
            port = free_port()
            options = (f"-k {base} -c listen_addresses=127.0.0.1 -p {port} -c password_encryption=scram-sha-256 "
                       "-c fsync=off -c max_connections=50")
            done = subprocess.run(as_user([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"),
                                           "-w", "-t", "60", "-o", options, "start"]),
                                  capture_output=True, text=True, timeout=120)
            if done.returncode == 0:
                break
        else:
            log = (base / "server.log").read_text(errors="replace")[-2000:] if (base / "server.log").exists() else ""
            pytest.fail(f"pg_ctl start failed: {done.stderr[-1000:]}\n{log}")
        server = PostgresServer(bindir, base, port, as_user)
        server.psql(f"CREATE ROLE {PG_USER} LOGIN PASSWORD '{PG_PASSWORD}'", f"CREATE DATABASE {PG_DB} OWNER {PG_USER}")
        yield server
    finally:
        if (data / "postmaster.pid").exists():
            stop = as_user([str(bindir / "pg_ctl"), "-D", str(data), "-w", "-t", "30", "-m", "fast", "stop"])
            if subprocess.run(stop, capture_output=True, timeout=90).returncode != 0:
                subprocess.run(stop[:-3] + ["-m", "immediate", "stop"], capture_output=True, timeout=90)
        shutil.rmtree(base, ignore_errors=True)


def test_postgres_server_requires_the_password(postgres_server):
    """The fixture's server is real and checks passwords (so the study below runs on password auth)."""
    psycopg = pytest.importorskip("psycopg", reason="psycopg not installed: make setup installs it")
    with psycopg.connect(host="127.0.0.1", port=postgres_server.port, user=PG_USER, password=PG_PASSWORD,
                          dbname=PG_DB, connect_timeout=10) as conn:
        with conn.cursor() as cur:
            cur.execute("select current_user, inet_server_addr()::text")
            assert cur.fetchone() == (PG_USER, "127.0.0.1/32")
    conn.close()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host="127.0.0.1", port=postgres_server.port, user=PG_USER, password="wrong",
                         dbname=PG_DB, connect_timeout=10)


def scan_for(secret: str, folder: Path) -> list[str]:
    """Files under ``folder`` whose bytes contain ``secret``."""
    needle = secret.encode()
    return [str(p) for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_two_workers_share_one_postgres_study(tmp_path, timit_corpus, postgres_server):
    pytest.importorskip("psycopg", reason="psycopg not installed: make setup installs it")
    from mlflow.tracking import MlflowClient

    storage, tracking = postgres_server.url(), os.environ["MLFLOW_TRACKING_URI"]
    shown = f"{PG_SCHEME}://{PG_USER}:***@127.0.0.1:{postgres_server.port}/{PG_DB}"
    prime_stores(tracking, storage)
    study = "shared-postgres"
    # one worker is given the URL with --storage, the other through $OPTUNA_STORAGE: the same study and parent run
    workers = two_worker_study(tmp_path, study, [worker_env(), worker_env({"OPTUNA_STORAGE": storage})],
                               [storage, None])
    check = check_shared_study(study, storage, tracking, workers, expected_storage_tag=shown)

    # the password is nowhere in MLflow: params, tags, artifacts of the parent and every child ...
    client = MlflowClient(tracking)
    run_ids = [check.parent.info.run_id, *(c.info.run_id for c in check.children.values())]
    artifacts = tmp_path / "downloaded"
    for run_id in run_ids:
        run = client.get_run(run_id)
        for kind, values in (("param", run.data.params), ("tag", run.data.tags)):
            for key, value in values.items():
                assert PG_PASSWORD not in key and PG_PASSWORD not in str(value), f"{kind} {key} of run {run_id}: {value}"
        client.download_artifacts(run_id, "", str(artifacts / run_id))
    parent_files = {p.name for p in (artifacts / check.parent.info.run_id).rglob("*") if p.is_file()}
    assert {"best.yaml", "trials.csv", "space.yaml"} <= parent_files, parent_files
    for child in check.children.values():
        files = {p.name for p in (artifacts / child.info.run_id).rglob("*") if p.is_file()}
        assert "trial_config.yaml" in files, files
    assert not scan_for(PG_PASSWORD, artifacts)
    # ... nor in the MLflow store, the study folder (mlruns/tune/<study>) or the checkpoints
    assert not scan_for(PG_PASSWORD, tmp_path / "mlruns")
    # ... nor in what the workers printed (which does name the storage, redacted)
    for w in workers:
        assert PG_PASSWORD not in w.stdout and PG_PASSWORD not in w.stderr, w.tail()
        assert f"storage {shown}" in w.stdout, w.tail()


# -- 3. make tune-dashboard -------------------------------------------------------------------------------------------
def listening_addresses(port: int) -> list[str]:
    """Local addresses of the TCP sockets listening on ``port`` (Linux ``/proc/net/tcp*``), e.g. ``['127.0.0.1']``."""
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, hexport = fields[1].split(":")
            if fields[3] != "0A" or int(hexport, 16) != port:
                continue
            raw = bytes.fromhex(address)
            if width == 8:
                found.append(socket.inet_ntop(socket.AF_INET, raw[::-1]))
            else:  # four little-endian 32-bit words
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                found.append(socket.inet_ntop(socket.AF_INET6, words))
    return found


def test_make_tune_dashboard_serves_the_studies_on_loopback(tmp_path):
    import optuna

    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    # the recipe, without running `setup` (-o setup: take it as up to date)
    dry = subprocess.run([make, "-s", "-C", str(REPO), "-n", "-o", "setup", "tune-dashboard", "DASHBOARD_PORT=8123"],
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    recipe = dry.stdout.strip()
    assert "optuna-dashboard" in recipe and "--host 127.0.0.1" in recipe and "--port 8123" in recipe, recipe
    assert "0.0.0.0" not in recipe

    storage = os.environ["OPTUNA_STORAGE"]  # the recipe's storage is $OPTUNA_STORAGE when set
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="dashboard-study", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    del study

    port = free_port()
    log = tmp_path / "dashboard.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([make, "-s", "-C", str(REPO), "-o", "setup", "tune-dashboard", f"DASHBOARD_PORT={port}"],
                                cwd=tmp_path, env={**os.environ}, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline, body, last = time.monotonic() + 40, None, None
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"make tune-dashboard exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                    body = json.loads(response.read().decode())
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as err:
                last = err
                time.sleep(0.5)
        assert body is not None, f"no answer on port {port} ({last}):\n{log.read_text()[-3000:]}"
        names = [s["study_name"] for s in body["study_summaries"]]
        assert names == ["dashboard-study"], body
        study_id = body["study_summaries"][0]["study_id"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study_id}", timeout=10) as response:
            detail = json.loads(response.read().decode())
        assert len(detail["trials"]) == 3
        if Path("/proc/net/tcp").exists():
            assert set(listening_addresses(port)) == {"127.0.0.1"}, listening_addresses(port)
    finally:
        kill_group(proc)


# -- 4. the documented PostgreSQL URL ---------------------------------------------------------------------------------
def test_plain_postgresql_url_opens_the_storage(postgres_server):
    """``postgresql://user:password@host/db`` -- the form the docs, the Makefile help and the error
    messages give -- works with the driver lightning-sep installs (psycopg 3)."""
    pytest.importorskip("psycopg", reason="psycopg not installed: make setup installs it")
    from lightning_sep.tuning.study import open_storage

    storage = open_storage(postgres_server.url(scheme="postgresql"))
    assert isinstance(storage.get_all_studies(), list)
    storage.engine.dispose()


# -- 5. workers starting together on fresh stores ---------------------------------------------------------------------
STARTUP = textwrap.dedent("""
    import json, os, sys, time, traceback
    from pathlib import Path
    import optuna
    from lightning_sep.tuning.study import EXPERIMENT, _mlflow_client, open_storage
    from datamodules.embedded_timit import ensure_embedded_timit
    go, me = Path(sys.argv[1]), sys.argv[2]
    Path(go.parent / f"ready-{me}").touch()
    while not go.exists():
        time.sleep(0.01)
    out = {}
    def step(name, fn):
        try:
            out[name] = ["ok", fn()]
        except BaseException as err:
            out[name] = ["error", f"{type(err).__name__}: {err}"[:600]]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # what every `lightning-sep tune` does first (lightning_sep.tuning.study.tune): the Optuna storage and
    # study, the MLflow store and experiment, then the data (its preflight instantiates the DataModule)
    step("optuna", lambda: optuna.create_study(study_name="cold", storage=open_storage(os.environ["OPTUNA_STORAGE"]),
                                               direction="maximize", load_if_exists=True).study_name)
    step("mlflow", lambda: _mlflow_client(EXPERIMENT)[1])
    step("corpus", lambda: str(ensure_embedded_timit(progress=False)))
    print(json.dumps(out))
""")


def start_together(tmp_path: Path, n: int, env: dict[str, str], timeout: float = 240) -> list[dict]:
    """Run :data:`STARTUP` in ``n`` processes released at the same moment; their JSON results."""
    sync = tmp_path / "sync"
    sync.mkdir()
    go = sync / "go"
    procs = []
    try:
        for i in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", STARTUP, str(go), str(i)], cwd=tmp_path, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          start_new_session=True))
        deadline = time.monotonic() + timeout
        while len(list(sync.glob("ready-*"))) < n:
            assert time.monotonic() < deadline, "the start-up processes did not get ready"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs if p.poll() is not None]
            time.sleep(0.05)
        go.touch()
        results = []
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert p.returncode == 0, err[-3000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results
    finally:
        for p in procs:
            kill_group(p)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_workers_starting_together_on_fresh_stores(tmp_path, backend, request):
    """Three workers released at once on fresh stores: each store is created once and every worker
    gets on with it (the others wait or load it).  sqlite: a fresh MLflow store, Optuna storage and
    data home (the embedded corpus generated under its lock); postgresql: a fresh database for the
    Optuna storage (the MLflow store and the corpus exist already)."""
    tracking = os.environ["MLFLOW_TRACKING_URI"]
    if backend == "postgresql":
        pytest.importorskip("psycopg", reason="psycopg not installed: make setup installs it")
        from datamodules.embedded_timit import ensure_embedded_timit
        from mlflow.tracking import MlflowClient

        storage = request.getfixturevalue("postgres_server").new_database("cold_start")
        MlflowClient(tracking).search_experiments()
        data = Path(ensure_embedded_timit(progress=False)).parent
    else:
        storage = os.environ["OPTUNA_STORAGE"]
        assert not Path(tracking[len("sqlite:///"):]).exists()
        data = tmp_path / "data"  # not the session's: the workers generate this corpus together
    env = worker_env({"OPTUNA_STORAGE": storage, "LIGHTNING_SEP_DATA": str(data)})
    results = start_together(tmp_path, 3, env)

    from datamodules.embedded_timit import is_complete
    from mlflow.tracking import MlflowClient

    # the corpus: generated once under its lock, the same complete folder for everyone, no leftovers
    corpus = [r["corpus"] for r in results]
    assert all(state == "ok" for state, _ in corpus), corpus
    roots = {value for _, value in corpus}
    assert len(roots) == 1, roots
    root = Path(roots.pop())
    assert root.parent == data and is_complete(root)
    assert not [p.name for p in data.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    # the stores: every worker opened the Optuna storage and study and the MLflow store and experiment
    problems = {f"worker {i} {step}": value for i, r in enumerate(results) for step, (state, value) in r.items()
                if state != "ok"}
    assert not problems, json.dumps(problems, indent=1)
    assert len({r["mlflow"][1] for r in results}) == 1  # one experiment
    assert [e.name for e in MlflowClient(tracking).search_experiments() if e.name == EXPERIMENT] == [EXPERIMENT]


# -- 6. workers joining one new study at the same moment ---------------------------------------------------------------
def test_workers_joining_a_new_study_together_share_one_parent_and_one_baseline(tmp_path):
    """Four threads run what every worker does first (:func:`join_study`) on one new study at once:
    exactly one creates it, makes the MLflow parent run and enqueues the default configuration; the
    others wait for the parent's id and use it."""
    import threading

    import optuna
    from mlflow.entities import ViewType

    from lightning_sep.tuning.space import load_tune_config
    from lightning_sep.tuning.study import (
        TuneSettings, _mlflow_client, join_study, make_pruner, make_sampler, open_storage,
    )

    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    settings = TuneSettings(model="vae", data="timit", study="race", space=str(space))
    config = load_tune_config("vae", "timit", "cpu", space)
    url = os.environ["OPTUNA_STORAGE"]
    client, experiment_id, _ = _mlflow_client(EXPERIMENT)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = threading.Barrier(4)
    parents, errors = [], []

    def worker():
        try:
            storage = open_storage(url)
            start.wait(30)
            _, parent = join_study(settings, config, storage, make_sampler(config, 0), make_pruner(config), client,
                                   experiment_id, url)
            parents.append(parent)
        except BaseException as err:  # reported below
            errors.append(f"{type(err).__name__}: {err}")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    runs = client.search_runs([experiment_id], "tags.`tune.role` = 'study'", run_view_type=ViewType.ALL)
    assert len(runs) == 1 and runs[0].info.lifecycle_stage == "active"
    assert parents == [runs[0].info.run_id] * 4
    study = optuna.load_study(study_name="race", storage=url)
    assert study.user_attrs["mlflow_parent_run_id"] == runs[0].info.run_id
    waiting = study.get_trials(deepcopy=False)
    assert len(waiting) == 1 and waiting[0].state.name == "WAITING" and waiting[0].user_attrs["baseline"]
