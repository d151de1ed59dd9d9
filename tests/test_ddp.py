"""Real DDP on CPU: two processes on the gloo backend, started by Lightning as ``make train TRAINER=ddp_cpu``.

Each run is the real command line (``python -m lightning_sep.cli fit --config conf/trainer/ddp_cpu.yaml
...``) in a subprocess: Lightning's DDP launcher re-runs it for rank 1.  A probe callback
(``tests/ddp_probe.py``) records what each rank saw; the tests check that the ranks drew different
training segments, that the validation items are split between them with none counted twice, that
the logged validation SDR is the mean over both ranks' shards, that rank 0 alone wrote one MLflow run
and one set of checkpoints, and that a run interrupted after epoch 1 and resumed with ``--resume last``
gives the same epoch-2 metrics as the run that was never interrupted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import (REPO, config_args, fit_command, fit_in_subprocess, free_port, make_wav_corpus, metric_history,
                      store_runs, wait_for_file)

pytestmark = pytest.mark.slow

EPOCHS = 2


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp_corpus")
    make_wav_corpus(root, n_train=4, n_test=1, seconds=3.0)
    return root


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, corpus, data_home):
    base = tmp_path_factory.mktemp("ddp_run")
    proc = fit_in_subprocess(base, corpus, data_home, "probe")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return base, proc


def test_ddp_training_runs_on_two_gloo_processes(ddp_run):
    base, proc = ddp_run
    ranks = [json.loads((base / "probe" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert "gloo" in proc.stderr + proc.stdout or "distributed_backend=gloo" in proc.stderr + proc.stdout


def test_ranks_draw_different_training_segments(ddp_run):
    base, _ = ddp_run
    ranks = [json.loads((base / "probe" / f"rank{r}.json").read_text()) for r in (0, 1)]
    for epoch in map(str, range(EPOCHS)):
        a, b = (set(r["train"][epoch]) for r in ranks)
        # 3 training tracks x 4 segments = 12 items: 6 per rank, none on both
        assert len(ranks[0]["train"][epoch]) == len(ranks[1]["train"][epoch]) == 6
        assert len(a) == len(b) == 6 and not a & b
    # and new segments every epoch
    assert set(ranks[0]["train"]["0"]) != set(ranks[0]["train"]["1"])


def test_validation_sdr_is_the_mean_over_both_ranks_shards(ddp_run):
    base, _ = ddp_run
    ranks = [json.loads((base / "probe" / f"rank{r}.json").read_text()) for r in (0, 1)]
    client, runs = store_runs(base)
    logged = metric_history(client, runs[0].info.run_id, "val/sdr")
    assert len(logged) == EPOCHS
    for epoch in range(EPOCHS):
        shards = [r["val"][str(epoch)] for r in ranks]
        # 3 validation segments: 2 on rank 0, 1 on rank 1, none twice (no padding by repetition)
        assert sorted(len(s) for s in shards) == [1, 2]
        hashes = [item["hash"] for s in shards for item in s]
        assert len(set(hashes)) == 3
        # one target (vocals): an SDR per item and target, averaged over the active ones
        values = [v for s in shards for item in s for v, a in zip(item["sdr"], item["active"]) if a]
        assert len(values) == 3
        assert logged[epoch] == pytest.approx(sum(values) / len(values), abs=1e-4)
        # not just one rank's mean
        per_rank = [sum(i["sdr"][0] for i in s) / len(s) for s in shards]
        assert abs(per_rank[0] - per_rank[1]) > 1e-3


def test_rank_zero_alone_writes_one_run_and_one_set_of_checkpoints(ddp_run):
    base, _ = ddp_run
    client, runs = store_runs(base)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.strategy"] == "ddp" and run.data.params["trainer.devices"] == "2"
    ckpt_dirs = [p for p in (base / "mlruns").rglob("checkpoints") if p.is_dir()]
    assert ckpt_dirs == [Path(run.data.tags["checkpoint.dir"])]
    names = sorted(p.name for p in ckpt_dirs[0].iterdir())
    assert "last.ckpt" in names and len([n for n in names if n.startswith("epoch")]) == 1, names
    assert not [p for p in ckpt_dirs[0].iterdir() if p.name.startswith(".") or p.suffix != ".ckpt"]
    # the training steps of both epochs, counted once (3 batches per rank per epoch)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/sdr")] == [2, 5]


def test_interrupted_then_resumed_matches_the_uninterrupted_run(ddp_run, tmp_path, corpus, data_home):
    base, _ = ddp_run
    client, runs = store_runs(base)
    reference = runs[0].info.run_id

    stopped = fit_in_subprocess(tmp_path, corpus, data_home, "probe-a", interrupt_at=1)
    assert stopped.returncode != 0  # Ctrl-C at the start of epoch 2
    c2, runs2 = store_runs(tmp_path)
    assert len(runs2) == 1 and len(metric_history(c2, runs2[0].info.run_id, "val/sdr")) == 1
    assert runs2[0].info.status == "KILLED" and runs2[0].data.tags["end.reason"] == "stopped by SIGINT (Ctrl-C)"

    resumed = fit_in_subprocess(tmp_path, corpus, data_home, "probe-b", "--resume", "last")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    c2, runs2 = store_runs(tmp_path)
    assert len(runs2) == 1, "the resumed training continues the same MLflow run"
    run = runs2[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["resume.count"] == "1" and run.data.tags["resume.1.from"].endswith("last.ckpt")
    for key in ("val/sdr", "val/loss", "val/sdr_mixture", "train/loss_epoch"):
        ref = client.get_metric_history(reference, key)
        got = c2.get_metric_history(run.info.run_id, key)
        assert [m.step for m in sorted(got, key=lambda m: m.step)] == [m.step for m in sorted(ref, key=lambda m: m.step)]
        assert metric_history(c2, run.info.run_id, key) == pytest.approx(metric_history(client, reference, key), rel=1e-6, abs=1e-7), key
    # the resumed ranks drew epoch 2's segments, as the uninterrupted ranks did
    for r in (0, 1):
        ref_probe = json.loads((base / "probe" / f"rank{r}.json").read_text())
        new_probe = json.loads((tmp_path / "probe-b" / f"rank{r}.json").read_text())
        assert new_probe["train"]["1"] == ref_probe["train"]["1"]


def test_sigterm_stops_every_rank_and_the_run_ends_killed(tmp_path, corpus, data_home):
    """SIGTERM to the launching process (a scheduler's time limit, ``kill``) while both ranks train epoch 2:
    Lightning passes it to rank 1, rank 0 stops cleanly, the run ends KILLED (not RUNNING), exit 143."""
    import signal
    import time

    args, env = fit_command(tmp_path, corpus, data_home, "probe", probe_env={"PROBE_HOLD_EPOCH": "1"})
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_file(tmp_path / "probe" / "holding-epoch1", proc)
    wait_for_file(tmp_path / "probe" / "holding-epoch1-rank1", proc)
    rank1 = int((tmp_path / "probe" / "holding-epoch1-rank1").read_text())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-4000:]

    def running(pid: int) -> bool:
        try:
            return "zombie" not in Path(f"/proc/{pid}/status").read_text(errors="replace")
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 60
    while running(rank1):
        assert time.monotonic() < deadline, "rank 1 outlived the SIGTERM"
        time.sleep(0.5)
    client, runs = store_runs(tmp_path)
    assert len(runs) == 1 and runs[0].info.status == "KILLED" and runs[0].data.tags["end.reason"] == "stopped by SIGTERM"
    assert len(metric_history(client, runs[0].info.run_id, "val/sdr")) == 1  # epoch 1's, kept


def test_multinode_through_torchrun_two_nodes_on_loopback(tmp_path, corpus, data_home):
    """``make train TRAINER=multinode``'s launch: torchrun on each of two "nodes" (here two torchrun agents on
    this machine, rendezvous on 127.0.0.1), one process each; Lightning takes rank and world size from
    torchrun's environment."""
    port = str(free_port())
    procs = []
    for node_rank in (0, 1):
        base = tmp_path
        env = {
            **os.environ, "LIGHTNING_SEP_DATA": str(data_home),
            "MLFLOW_TRACKING_URI": f"sqlite:///{base / 'mlruns' / 'mlflow.db'}",
            "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)]), "PROBE_DIR": str(base / "probe"),
            "OMP_NUM_THREADS": "1",
        }
        (base / "mlruns").mkdir(exist_ok=True)
        args = [
            str(Path(sys.executable).parent / "torchrun"), "--nnodes", "2", "--nproc-per-node", "1",
            "--node-rank", str(node_rank), "--master-addr", "127.0.0.1", "--master-port", port,
            "-m", "lightning_sep.cli", "fit", *config_args("skipfilter", trainer="multinode"),
            "--trainer.accelerator", "cpu", "--trainer.num_nodes", "2", "--trainer.devices", "1",
            "--data.root", str(corpus), "--data.cache_dir", str(base / "cache"),
            "--data.validation_tracks", "[Tiny - Train 04]", "--data.samples_per_track", "4", "--data.batch_size", "2",
            "--data.val_segments_per_track", "3", "--data.val_segment_frames", "64", "--trainer.max_epochs", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.callbacks", json.dumps([{"class_path": "ddp_probe.Probe"}]),
        ]
        procs.append(subprocess.Popen(args, cwd=base, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    import time

    deadline = time.monotonic() + 900
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        if any(p.poll() not in (None, 0) for p in procs):  # one node failed: the other would wait for it
            break
        time.sleep(0.5)
    for p in procs:
        if p.poll() is None:
            p.kill()
    outputs = [p.communicate()[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    ranks = [json.loads((tmp_path / "probe" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert not set(ranks[0]["train"]["0"]) & set(ranks[1]["train"]["0"])
    client, runs = store_runs(tmp_path)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["trainer.num_nodes"] == "2"


FAMILIES = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml"))


@pytest.mark.parametrize("model", FAMILIES)
def test_every_family_trains_under_ddp(model, tmp_path, corpus, data_home):
    """Each family, one epoch on two gloo processes: the ranks end with the same weights (gradients are
    averaged; NMF sums its multiplicative updates' statistics over the ranks), and the logged validation SDR
    is the mean over both shards (the input-optimising families validate every epoch here)."""
    proc = fit_in_subprocess(tmp_path, corpus, data_home, "probe", "--trainer.check_val_every_n_epoch", "1",
                             model=model, epochs=1)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / "probe" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["weights"]["0"] == ranks[1]["weights"]["0"]
    assert not set(ranks[0]["train"]["0"]) & set(ranks[1]["train"]["0"])
    client, runs = store_runs(tmp_path)
    (logged,) = metric_history(client, runs[0].info.run_id, "val/sdr")
    values = [v for r in ranks for item in r["val"]["0"] for v, a in zip(item["sdr"], item["active"]) if a]
    assert logged == pytest.approx(sum(values) / len(values), abs=1e-3)
