"""``conf/trainer``'s options on one process: bad settings get one clear line, the random state travels in
the checkpoint, precision / accumulation / compile train for real, and a VAE resumed after an
interruption continues exactly as the run that was never interrupted (its sampling draws from the
restored generator)."""

from __future__ import annotations

import math
import os
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, config_args, fit_in_subprocess, make_wav_corpus, metric_history, store_runs
from lightning_sep.cli import main, run
from lightning_sep.trainer import RandomState

TRAINERS = sorted(p.stem for p in (REPO / "conf" / "trainer").glob("*.yaml"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trainer_corpus")
    make_wav_corpus(root, n_train=4, n_test=1, seconds=3.0)
    return root


def tiny(corpus: Path, *extra: str) -> list[str]:
    return ["--data.root", str(corpus), "--data.cache_dir", str(corpus / "cache"), "--data.validation_tracks", "[Tiny - Train 04]",
            "--data.samples_per_track", "4", "--data.batch_size", "4", "--data.val_segments_per_track", "2",
            "--data.val_segment_frames", "64", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", *extra]


def error_line(capsys, args: list[str]) -> str:
    """``lightning-sep ARGS`` exits 2 with one ``lightning-sep: error:`` line and no traceback; returns it."""
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("lightning-sep: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_every_trainer_file_parses_and_names_its_strategy():
    import yaml

    assert {"cpu", "gpu", "ddp", "ddp_cpu", "ddp_spawn", "multinode"} <= set(TRAINERS)
    for name in TRAINERS:
        trainer = yaml.safe_load((REPO / "conf" / "trainer" / f"{name}.yaml").read_text())["trainer"]
        assert trainer["max_epochs"] == 12, name  # every trainer trains the same schedule
    multinode = yaml.safe_load((REPO / "conf" / "trainer" / "multinode.yaml").read_text())["trainer"]
    assert multinode["strategy"] == "ddp" and multinode["num_nodes"] == 2


@pytest.mark.parametrize("extra, expected", [
    (["--trainer.strategy", "ddp_turbo"], "STRATEGY=ddp_turbo (--trainer.strategy): not a strategy Lightning knows. Use one of: auto,"),
    (["--trainer.devices", "64"], "DEVICES=64 (--trainer.devices) with accelerator=cpu: 64 CPU processes, but this machine has"),
    (["--trainer.devices", "0"], "DEVICES=0 (--trainer.devices): give at least 1"),
    (["--trainer.accelerator", "quantum"], "ACCELERATOR=quantum (--trainer.accelerator): not an accelerator Lightning knows"),
])
def test_bad_trainer_settings_are_named(capsys, corpus, extra, expected):
    line = error_line(capsys, ["fit", *config_args("skipfilter"), *tiny(corpus, *extra)])
    assert expected in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_gpu_trainer_without_a_gpu_says_what_to_use(capsys, corpus):
    line = error_line(capsys, ["fit", *config_args("skipfilter", trainer="gpu"), *tiny(corpus)])
    assert "this machine has no GPU" in line and "TRAINER=cpu" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_more_gpus_than_the_machine_has(capsys, corpus, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # a machine with 2 GPUs, asked for 4
    line = error_line(capsys, ["fit", *config_args("skipfilter", trainer="ddp"), *tiny(corpus, "--trainer.devices", "4")])
    assert "DEVICES=4 (--trainer.devices): this machine has 2 GPU(s)" in line


def test_resume_last_without_a_checkpoint(capsys, corpus):
    line = error_line(capsys, ["fit", *config_args("skipfilter"), *tiny(corpus, "--resume", "last")])
    assert "RESUME=last: no training run of MODEL=skipfilter with a last checkpoint" in line
    assert "make train MODEL=skipfilter" in line


def test_resume_from_a_missing_file(capsys, corpus, tmp_path):
    line = error_line(capsys, ["fit", *config_args("skipfilter"), *tiny(corpus, "--resume", str(tmp_path / "no.ckpt"))])
    assert f"RESUME={tmp_path / 'no.ckpt'}: no such checkpoint file" in line


def test_resume_from_another_familys_checkpoint(capsys, corpus):
    run(["fit", *config_args("dae"), *tiny(corpus)])
    line = error_line(capsys, ["fit", *config_args("skipfilter"), *tiny(corpus, "--resume", "last")])
    assert "no training run of MODEL=skipfilter" in line  # the dae run is not taken
    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    (dae_run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    last = Path(dae_run.data.tags["checkpoint.dir"]) / "last.ckpt"
    line = error_line(capsys, ["fit", *config_args("skipfilter"), *tiny(corpus, "--resume", str(last))])
    assert "the checkpoint is of MODEL=dae, not MODEL=skipfilter" in line


def test_make_train_passes_the_scale_options():
    proc = subprocess.run(
        ["make", "-n", "--no-print-directory", "train", "TRAINER=multinode", "NODES=2", "DEVICES=4", "NODE_RANK=1",
         "MASTER_ADDR=10.1.2.3", "PRECISION=bf16-mixed", "ACCUMULATE=2", "COMPILE=1", "RESUME=last"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    cmd = " ".join(proc.stdout.split())
    assert ("torchrun --nnodes 2 --nproc-per-node 4 --node-rank 1 --master-addr 10.1.2.3 --master-port 29500 "
            "-m lightning_sep.cli fit --config conf/trainer/multinode.yaml") in cmd
    for arg in ("--trainer.devices 4", "--trainer.num_nodes 2", "--trainer.precision bf16-mixed",
                "--trainer.accumulate_grad_batches 2", "--compile true", "--resume 'last'"):
        assert arg in cmd


def test_random_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    torch.randn(5), np.random.randn(3), random.random()  # somewhere in the streams
    state = RandomState().state_dict()
    expected = (torch.randn(4), np.random.randn(4), [random.random() for _ in range(4)])
    torch.save(state, tmp_path / "s.pt")
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    RandomState().load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert torch.equal(torch.randn(4), expected[0])
    assert np.array_equal(np.random.randn(4), expected[1])
    assert [random.random() for _ in range(4)] == expected[2]


@pytest.mark.parametrize("extra", [
    ["--trainer.precision", "bf16-mixed"],
    ["--trainer.accumulate_grad_batches", "2"],
])
def test_precision_and_accumulation_train(corpus, extra):
    cli = run(["fit", *config_args("skipfilter"), *tiny(corpus, *extra)])
    m = cli.trainer.callback_metrics
    assert math.isfinite(float(m["val/sdr"])) and math.isfinite(float(m["train/loss_epoch"]))
    # 3 tracks x 4 segments / batch 4 = 3 batches: one optimiser step each, or 2 with accumulation over 2
    assert cli.trainer.global_step == (2 if "accumulate_grad_batches" in " ".join(extra) else 3)


@pytest.mark.slow
def test_compiled_model_trains_like_the_eager_one(corpus):
    eager = run(["fit", *config_args("skipfilter"), *tiny(corpus)]).trainer.callback_metrics
    compiled = run(["fit", *config_args("skipfilter"), *tiny(corpus, "--compile", "true")]).trainer.callback_metrics
    for key in ("train/loss_epoch", "val/loss", "val/sdr"):
        assert float(compiled[key]) == pytest.approx(float(eager[key]), rel=1e-3, abs=1e-3), key


@pytest.mark.slow
def test_vae_resumed_after_an_interruption_matches_the_uninterrupted_run(tmp_path, corpus, data_home):
    """The VAE samples its latent code from the global generator in training: only the restored random
    state makes epoch 2 of a resumed run the epoch 2 of the run that went on."""
    common = dict(model="vae", trainer="cpu")
    full = fit_in_subprocess(tmp_path / "full", corpus, data_home, "probe", **common)
    assert full.returncode == 0, full.stderr[-3000:]
    stopped = fit_in_subprocess(tmp_path / "cut", corpus, data_home, "probe", interrupt_at=1, **common)
    assert stopped.returncode != 0
    resumed = fit_in_subprocess(tmp_path / "cut", corpus, data_home, "probe", "--resume", "last", **common)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (c1, (r1,)), (c2, (r2,)) = store_runs(tmp_path / "full"), store_runs(tmp_path / "cut")
    for key in ("train/loss_epoch", "val/loss", "val/sdr"):
        assert metric_history(c2, r2.info.run_id, key) == pytest.approx(metric_history(c1, r1.info.run_id, key), rel=1e-6), key
