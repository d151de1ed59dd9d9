"""The experiment record: what a run carries, runs that never lie after a crash, the UI, the team server.

* Every run: tags (family, dataset and root, git commit), the resolved config as params and
  ``config.yaml``, per-epoch metrics, the checkpoint paths, and a validation example (audio and
  spectrograms) separated with the best checkpoint -- checked against a recomputation.
* Crash truth, on the real command line in a subprocess: an error ends the run FAILED, SIGINT and
  SIGTERM (also while setting up) end it KILLED, with the reason tagged; a SIGKILLed run (left
  RUNNING: nothing can be done at SIGKILL) is continued by ``--resume last`` in the same run.
* ``lightning-sep ui`` / ``make ui``: serves the project's store; a port in use, a foreign host and a
  tracking server as store are refused clearly.
* The team server (``lightning-sep server``): a training logs to it through
  ``MLFLOW_TRACKING_URI=http://127.0.0.1:<port>`` (params, metrics, artifacts and checkpoints uploaded
  through the server's proxy), and ``eval`` on a machine without the checkpoint downloads it and logs
  the test scores to the same run.
* A tracking server that cannot be reached, or a store that cannot be written, stops training before
  any work, with one clear line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from lightning_sep.tracking.mlflow import run_status

from conftest import (REPO, cli_error, config_args, fit_command, free_port, http_server, make_wav_corpus, metric_history,
                      store_runs, train_tiny, wait_for_file)

pytestmark = pytest.mark.slow


def external_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback."""
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except socket.gaierror:
        return []
    return sorted({i[4][0] for i in infos if not i[4][0].startswith("127.")})


# -- what every run carries ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_home):
    return train_tiny(tmp_path_factory.mktemp("record"), data_home, "skipfilter", "--example.seconds", "1.0")


def test_a_run_carries_tags_params_metrics_and_config(tiny_run):
    from mlflow.tracking import MlflowClient

    from lightning_sep.tracking.mlflow import git_commit

    c = MlflowClient(tiny_run.uri)
    run = c.get_run(tiny_run.run_id)
    tags, params = run.data.tags, run.data.params
    assert run.info.status == "FINISHED" and "end.reason" not in tags
    assert run.info.run_name.startswith("skipfilter-")
    assert tags["model.family"] == "skipfilter" and tags["data.dataset"] == "musdb18hq"
    assert tags["data.root"] == str(tiny_run.corpus) and tags["mlflow.source.git.commit"] == git_commit()[0]
    assert Path(tags["checkpoint.best"]).is_file() and Path(tags["checkpoint.last"]).is_file()
    assert params["model.init_args.lr"] == "0.0001" and params["model.init_args.context_frames"] == "0"
    assert params["example.seconds"] == "1.0"
    for key in ("train/loss_epoch", "val/loss", "val/sdr", "val/sdr_mixture", "val/sdr_improvement"):
        assert len(metric_history(c, tiny_run.run_id, key)) == 1, key
    config = Path(c.download_artifacts(tiny_run.run_id, "config.yaml"))
    assert "  class_path: lightning_sep.models.SkipFilter\n" in config.read_text()


def test_the_validation_example_is_the_best_checkpoints_separation(tiny_run):
    """``examples/``: the wavs are the validation item's excerpt and the best checkpoint's estimate of it."""
    from mlflow.tracking import MlflowClient

    from lightning_sep.cli import run as cli_run
    from lightning_sep.evaluation.metrics import signal_to_distortion_ratio
    from lightning_sep.tracking.runs import describe_checkpoint, load_model

    c = MlflowClient(tiny_run.uri)
    names = sorted(a.path.split("/")[-1] for a in c.list_artifacts(tiny_run.run_id, "examples"))
    assert names == ["example.json", "mixture.wav", "spectrograms.png", "vocals_estimate.wav", "vocals_reference.wav"]
    folder = Path(c.download_artifacts(tiny_run.run_id, "examples"))
    record = json.loads((folder / "example.json").read_text())
    assert record["checkpoint"] == str(tiny_run.ckpt) and record["samples"] == 44100
    audio = {n: sf.read(folder / f"{n}.wav", dtype="float32") for n in ("mixture", "vocals_reference", "vocals_estimate")}
    assert all(sr == 44100 and len(x) == 44100 for x, sr in audio.values())

    # the same excerpt, from the validation set the run used
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tiny_run.base)
        cli = cli_run([*config_args("skipfilter"), "--data.root", str(tiny_run.corpus), "--data.cache_dir",
                       str(tiny_run.base / "cache"), "--data.samples_per_track", "2", "--data.val_segments_per_track", "1",
                       "--data.val_segment_frames", "128", "--trainer.logger", "false"], subcommand=False)
    cli.datamodule.setup("fit")
    mixture, references = cli.datamodule.valid_set[record["validation_item"]]
    window = slice(record["start_sample"], record["start_sample"] + record["samples"])
    np.testing.assert_allclose(audio["mixture"][0], mixture[window].numpy(), atol=1e-6)
    np.testing.assert_allclose(audio["vocals_reference"][0], references[0, window].numpy(), atol=1e-6)
    model = load_model(describe_checkpoint(tiny_run.ckpt))
    with torch.no_grad():
        estimate = model.validation_estimates(mixture[window][None])[0, 0]
    np.testing.assert_allclose(audio["vocals_estimate"][0], estimate.numpy(), atol=1e-5)
    sdr = float(signal_to_distortion_ratio(estimate, references[0, window]))
    assert record["sdr_db"]["vocals"] == pytest.approx(sdr, abs=1e-3)
    png = (folder / "spectrograms.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


# -- crash truth --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crash_corpus")
    make_wav_corpus(root, n_train=4, n_test=1, seconds=3.0)
    return root


def crashing_fit(base: Path, corpus: Path, data_home: Path, probe_env: dict[str, str], *extra: str,
                 epochs: int = 3) -> subprocess.Popen:
    args, env = fit_command(base, corpus, data_home, "probe", *extra, trainer="cpu", epochs=epochs, probe_env=probe_env)
    return subprocess.Popen(args, cwd=base, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def env_of(base: Path) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{base / 'mlruns' / 'mlflow.db'}"}


def only_run(base: Path):
    client, runs = store_runs(base)
    assert len(runs) == 1
    return client, runs[0]


@pytest.mark.parametrize(
    "probe_env, sig, status, reason, returncode",
    [
        ({"PROBE_RAISE_EPOCH": "1"}, None, "FAILED", "RuntimeError: probe: an error in epoch 1", 1),
        ({"PROBE_HOLD_EPOCH": "1"}, signal.SIGINT, "KILLED", "stopped by SIGINT (Ctrl-C)", 130),
        ({"PROBE_HOLD_EPOCH": "1"}, signal.SIGTERM, "KILLED", "stopped by SIGTERM", 143),
        ({"PROBE_HOLD_SETUP": "1"}, signal.SIGTERM, "KILLED", "stopped by SIGTERM", 143),
    ],
    ids=["raises", "sigint", "sigterm", "sigterm-in-setup"],
)
def test_a_stopped_training_never_stays_running(tmp_path, corpus, data_home, probe_env, sig, status, reason, returncode):
    proc = crashing_fit(tmp_path, corpus, data_home, probe_env)
    if "PROBE_HOLD_EPOCH" in probe_env:
        wait_for_file(tmp_path / "probe" / "holding-epoch1", proc)
        assert run_status(only_run(tmp_path)[1]) == "RUNNING"  # a live training is not "gone"
    if sig is not None:
        wait_for_file(tmp_path / "probe" / ("holding-setup" if "PROBE_HOLD_SETUP" in probe_env else "holding-epoch1"), proc)
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == returncode, err[-4000:]
    client, run = only_run(tmp_path)
    assert run.info.status == status and run.data.tags["end.reason"] == reason
    if sig is not None:
        assert f"stopped by {signal.Signals(sig).name}" in err and "RESUME=last" in err
    if "PROBE_HOLD_SETUP" not in probe_env:  # epoch 0 finished: its metrics and checkpoint are kept
        assert len(metric_history(client, run.info.run_id, "val/sdr")) == 1
        last = Path(run.data.tags["checkpoint.dir"]) / "last.ckpt"
        assert torch.load(last, weights_only=True)["epoch"] == 0


def test_sigkill_then_resume_last_continues_the_same_run(tmp_path, corpus, data_home):
    proc = crashing_fit(tmp_path, corpus, data_home, {"PROBE_HOLD_EPOCH": "1"}, epochs=2)
    wait_for_file(tmp_path / "probe" / "holding-epoch1", proc)
    proc.kill()
    proc.communicate(timeout=60)
    client, killed = only_run(tmp_path)
    assert killed.info.status == "RUNNING"  # SIGKILL cannot be caught: RESUME=last is the way on
    assert run_status(killed) == "RUNNING (process gone)"  # ... but the record tells it from a live training
    compared = subprocess.run([sys.executable, "-m", "lightning_sep.cli", "compare", "--all", "--out", str(tmp_path / "cmp")],
                              cwd=tmp_path, env=env_of(tmp_path), capture_output=True, text=True, timeout=300)
    assert compared.returncode == 0 and "RUNNING (process gone)" in compared.stdout, compared.stderr[-3000:]

    args, env = fit_command(tmp_path, corpus, data_home, "probe-resumed", "--resume", "last", trainer="cpu", epochs=2)
    resumed = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    client, run = only_run(tmp_path)
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["resume.count"] == "1" and tags["resume.1.after"] == "RUNNING" and "end.reason" not in tags
    assert tags["resume.1.from"] == str(Path(killed.data.tags["checkpoint.dir"]) / "last.ckpt")
    history = sorted(client.get_metric_history(run.info.run_id, "val/sdr"), key=lambda m: m.step)
    assert len(history) == 2 and history[0].step < history[1].step  # epoch 0 from the first process, epoch 1 resumed
    assert "examples/example.json" in [a.path for a in client.list_artifacts(run.info.run_id, "examples")]


def test_a_resumed_killed_run_records_how_it_ended(tmp_path, corpus, data_home):
    proc = crashing_fit(tmp_path, corpus, data_home, {"PROBE_HOLD_EPOCH": "1"}, epochs=2)
    wait_for_file(tmp_path / "probe" / "holding-epoch1", proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=300)
    args, env = fit_command(tmp_path, corpus, data_home, "probe-resumed", "--resume", "last", trainer="cpu", epochs=2)
    assert subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600).returncode == 0
    _, run = only_run(tmp_path)
    assert run.info.status == "FINISHED" and "end.reason" not in run.data.tags
    assert run.data.tags["resume.1.after"] == "KILLED: stopped by SIGTERM"


# -- the tracking store must be usable before any work ----------------------------------------------------------------
class _NotMLflow(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def not_mlflow():
    server = HTTPServer(("127.0.0.1", 0), _NotMLflow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_an_unusable_tracking_store_stops_training_at_once(capsys, monkeypatch, tmp_path, not_mlflow):
    empty = tmp_path / "data-home"
    empty.mkdir()
    monkeypatch.setenv("LIGHTNING_SEP_DATA", str(empty))
    fit = ["fit", *config_args("skipfilter"), "--trainer.max_epochs", "1"]
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    line = cli_error(capsys, *fit)
    assert f"The MLflow tracking server {url} (MLFLOW_TRACKING_URI) cannot be reached" in line and "make server" in line
    assert list(empty.iterdir()) == []  # said before any data was generated or loaded
    line = cli_error(capsys, "eval", "--model", "skipfilter", "--no-progress")
    assert "cannot be reached" in line

    monkeypatch.setenv("MLFLOW_TRACKING_URI", not_mlflow)
    assert "answers HTTP 404 on /health: it is not an MLflow tracking server" in cli_error(capsys, *fit)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////proc/lightning-sep/mlflow.db")
    assert "cannot be written: its folder /proc/lightning-sep" in cli_error(capsys, *fit)
    assert list(empty.iterdir()) == []

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:secret@127.0.0.1:9/")
    assert "secret" not in cli_error(capsys, *fit)


# -- make ui ---------------------------------------------------------------------------------------------------------------
def test_ui_serves_the_projects_store(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    c = MlflowClient(uri)
    run = c.create_run(c.create_experiment("lightning-sep"), run_name="the-run")
    c.log_metric(run.info.run_id, "val/sdr", 4.25)
    port = free_port()
    log = tmp_path / "ui.log"
    with http_server([sys.executable, "-m", "lightning_sep.cli", "ui", "--port", str(port), "--workers", "1"], log, port,
                     {**os.environ, "MLFLOW_TRACKING_URI": uri}) as url:
        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/runs/get?run_id={run.info.run_id}", timeout=10) as r:
            got = json.load(r)["run"]
        assert got["info"]["run_name"] == "the-run" and got["data"]["metrics"][0]["value"] == 4.25
        for address in external_addresses():  # bound to loopback only
            with socket.socket() as s:
                s.settimeout(2)
                assert s.connect_ex((address, port)) != 0, address
    assert "MLflow UI on" in log.read_text()


def test_ui_bad_input(capsys, monkeypatch):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        line = cli_error(capsys, "ui", "--port", str(port))
    assert f"PORT={port}: 127.0.0.1:{port} is already in use" in line and f"make ui PORT={port + 1}" in line
    assert "HOST=10.255.255.1: not an address of this machine" in cli_error(capsys, "ui", "--host", "10.255.255.1",
                                                                          "--port", str(free_port()))
    assert "PORT=70000" in cli_error(capsys, "ui", "--port", "70000")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert "is a tracking server: it serves its own UI" in cli_error(capsys, "ui")


def test_make_ui_and_server_wiring():
    def dry(*args: str, env: dict | None = None) -> str:
        out = subprocess.run(["make", "-n", *args], cwd=REPO, capture_output=True, text=True, check=True,
                             env={**os.environ, **(env or {})}).stdout
        return next(line for line in out.splitlines() if "lightning-sep " in line)

    assert "lightning-sep ui --host 127.0.0.1 --port 5000" in dry("ui")
    assert "lightning-sep ui --host 0.0.0.0 --port 5005" in dry("ui", "PORT=5005", "HOST=0.0.0.0")
    assert "--host 127.0.0.1" in dry("ui", env={"HOST": "0.0.0.0"})  # a shell's $HOST never exposes the UI
    assert "--port 5002" in dry("ui", "UI_PORT=5002")
    line = dry("server", "PORT=5010", "SERVER_DB=postgresql://u:p@db/mlflow")
    assert "lightning-sep server --host 127.0.0.1 --port 5010 --backend-store-uri 'postgresql://u:p@db/mlflow'" in line


# -- the team server ----------------------------------------------------------------------------------------------------
def test_training_and_eval_log_to_a_team_server(tmp_path, data_home, capsys):
    from mlflow.tracking import MlflowClient

    from lightning_sep.cli import main

    port = free_port()
    server_dir = tmp_path / "server"
    log = tmp_path / "server.log"
    with http_server([sys.executable, "-m", "lightning_sep.cli", "server", "--port", str(port), "--workers", "1",
                      "--backend-store-uri", f"sqlite:///{server_dir / 'mlflow.db'}",
                      "--artifacts-destination", str(server_dir / "artifacts")], log, port) as url:
        trained = train_tiny(tmp_path, data_home, "skipfilter", "--trainer.logger.init_args.checkpoint_dir",
                             str(tmp_path / "checkpoints"), "--trainer.logger.init_args.log_model", "true", tracking_uri=url)
        c = MlflowClient(url)
        run = c.get_run(trained.run_id)
        assert run.info.status == "FINISHED" and run.data.tags["model.family"] == "skipfilter"
        assert run.data.params["model.init_args.lr"] == "0.0001"
        assert len(metric_history(c, trained.run_id, "val/sdr")) == 1
        assert str(trained.ckpt).startswith(str(tmp_path / "checkpoints"))
        # the artifacts went through the server's proxy into its artifact store
        stored = {p.name for p in (server_dir / "artifacts").rglob("*") if p.is_file()}
        assert {"config.yaml", "mixture.wav", "vocals_estimate.wav", "spectrograms.png"} <= stored
        # the server's own database holds the run
        assert MlflowClient(f"sqlite:///{server_dir / 'mlflow.db'}").get_run(trained.run_id).info.status == "FINISHED"

        # a teammate without the training machine's disk: eval downloads the uploaded best checkpoint
        best = trained.ckpt.read_bytes()
        shutil.rmtree(tmp_path / "checkpoints")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", url)
            mp.setattr("lightning_sep.tracking.mlflow.REPO_ROOT", tmp_path / "teammate")
            assert main(["eval", "--run-id", trained.run_id, "--root", str(trained.corpus), "--out",
                         str(tmp_path / "eval"), "--workers", "1", "--no-progress"]) == 0
        downloaded = tmp_path / "teammate" / "mlruns" / "downloaded" / trained.run_id / trained.ckpt.stem / trained.ckpt.name
        assert downloaded.read_bytes() == best
        metrics = c.get_run(trained.run_id).data.metrics
        assert "test/vocals/SDR" in metrics and np.isfinite(metrics["test/vocals/SDR"])
    assert f"MLFLOW_TRACKING_URI={url} make train" in log.read_text()


def test_server_bad_input(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert f"make server PORT={port + 1}" in cli_error(capsys, "server", "--port", str(port))
    line = cli_error(capsys, "server", "--port", str(free_port()), "--backend-store-uri", "file:///tmp/x")
    assert "needs a database backend" in line
