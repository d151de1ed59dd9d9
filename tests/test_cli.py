"""The real entry point (``lightning-sep fit``, as ``make train`` runs it) on the embedded corpus."""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from conftest import REPO, config_args, make_stems_corpus, needs_ffmpeg
from lightning_sep.cli import main, run
from lightning_sep.models import SkipFilter

# small epochs: a few segments per track, a few validation segments
QUICK = [
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--data.init_args.samples_per_track", "4",
    "--data.init_args.val_segments_per_track", "2",
]


def mlflow_runs():
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exps = client.search_experiments()
    return client, client.search_runs([e.experiment_id for e in exps])


@pytest.mark.parametrize("model", ["dae", "mss_dae", "skipfilter"])
def test_fast_dev_run_of_each_model(model):
    cli = run(["fit", *config_args(model), *QUICK, "--trainer.fast_dev_run", "true"])
    metrics = cli.trainer.callback_metrics
    assert math.isfinite(float(metrics["val/loss"]))
    assert math.isfinite(float(metrics["val/sdr"]))
    assert float(metrics["val/sdr_mixture"]) < 3.0  # the vocals are far from the mixture
    assert cli.model.family == model
    assert cli.model.front_end.to_dict() == cli.datamodule.front_end  # linked from the data
    assert bool(cli.model.normalize.fitted)


def test_training_without_a_logger(tmp_path):
    """``--trainer.logger=false`` trains (no learning-rate monitor to feed) and writes nothing to MLflow."""
    cli = run(["fit", *config_args("skipfilter"), *QUICK, "--trainer.max_epochs", "1", "--trainer.logger", "false",
               "--trainer.default_root_dir", str(tmp_path / "runs")])
    assert not cli.trainer.loggers
    assert cli.trainer.current_epoch == 1 and math.isfinite(float(cli.trainer.callback_metrics["val/sdr"]))
    assert Path(cli.trainer.checkpoint_callback.best_model_path).is_file()
    assert mlflow_runs()[1] == []


def test_training_run_is_tracked_in_mlflow():
    cli = run(["fit", *config_args("skipfilter"), *QUICK, "--trainer.max_epochs", "2"])
    client, runs = mlflow_runs()
    assert len(runs) == 1
    r = runs[0]
    assert r.info.status == "FINISHED"
    assert r.info.run_id == cli.trainer.logger.run_id
    # the resolved config as params ...
    p = r.data.params
    assert p["model.class_path"] == "lightning_sep.models.SkipFilter"
    assert p["data.class_path"] == "datamodules.MUSDBDataModule"
    assert p["data.init_args.hop_length"] == "384"
    assert p["trainer.max_epochs"] == "2"
    assert p["model.init_args.lr"] == "0.0001"
    # ... per-epoch metrics ...
    for key in ("val/loss", "val/sdr", "val/sdr_mixture", "val/sdr_improvement", "train/loss_epoch"):
        assert len(client.get_metric_history(r.info.run_id, key)) == 2, key
    # ... tags: commit, family, dataset, checkpoints
    t = r.data.tags
    assert t["model.family"] == "skipfilter"
    assert t["data.dataset"] == "embedded_musdb"
    assert len(t["mlflow.source.git.commit"]) in (40, len("unknown"))
    best, last = Path(t["checkpoint.best"]), Path(t["checkpoint.last"])
    assert best.is_file() and last.is_file() and last.name == "last.ckpt"
    assert best.parent.parts[-2:] == (r.info.run_id, "checkpoints")
    # ... and config.yaml, which trains again as it is
    local = client.download_artifacts(r.info.run_id, "config.yaml")
    config = yaml.safe_load(Path(local).read_text())
    assert config["model"]["class_path"] == "lightning_sep.models.SkipFilter"
    assert config["data"]["init_args"]["targets"] == ["vocals"]
    # the checkpoint loads weights-only and separates
    model = SkipFilter.load_from_checkpoint(best, weights_only=True)
    assert model.targets == ["vocals"] and bool(model.normalize.fitted)
    mixture, targets = next(iter(cli.datamodule.val_dataloader()))
    with torch.no_grad():
        est = model(mixture)
    assert est.shape == targets.shape
    # `lightning-sep test` scores the checkpoint on the test tracks' fixed segments
    tested = run(["test", *config_args("skipfilter"), *QUICK, "--ckpt_path", str(best)])
    m = tested.trainer.callback_metrics
    assert math.isfinite(float(m["test/sdr"])) and math.isfinite(float(m["test/sdr_mixture"]))
    assert torch.equal(tested.model.normalize.scale, model.normalize.scale)  # from the checkpoint


def test_print_config_reproduces_the_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run(["fit", *config_args("dae"), "--trainer.max_epochs", "3", "--print_config"])
    assert exit_.value.code in (0, None)
    printed = capsys.readouterr().out
    config = yaml.safe_load(printed)
    assert config["model"]["class_path"] == "lightning_sep.models.DAE"
    assert config["trainer"]["max_epochs"] == 3
    assert config["data"]["init_args"]["n_fft"] == 4096
    path = tmp_path / "run.yaml"
    path.write_text(printed)
    cli = run(["fit", "--config", str(path), *QUICK, "--trainer.fast_dev_run", "true"])
    assert cli.model.family == "dae" and cli.config.fit.trainer.max_epochs == 3


def test_password_in_a_url_is_never_written_to_mlflow():
    secret = "s3cret-pw"
    url = f"postgresql://alice:{secret}@db.example:5432/optuna"
    run([
        "fit", *config_args("skipfilter"), *QUICK, "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "2",
        "--trainer.logger.init_args.tags", f"{{storage: '{url}'}}",
    ])
    client, (r,) = mlflow_runs()
    everything = [*r.data.params.values(), *r.data.tags.values()]
    everything.append(Path(client.download_artifacts(r.info.run_id, "config.yaml")).read_text())
    assert not any(secret in str(v) for v in everything)
    assert r.data.tags["storage"] == "postgresql://alice:***@db.example:5432/optuna"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data.init_args.targets", "[voice]"], "Unknown target 'voice'. Available: vocals, drums, bass, other, accompaniment"),
        (["--config", str(REPO / "conf" / "model" / "nope.yaml")], "Unknown MODEL 'nope'. Available: ae, ccae, dae, deep_vae, mss_dae, nae, nmf, rcae, skipfilter, vae"),
        (["--config", str(REPO / "conf" / "data" / "mnist.yaml")], "Unknown DATA 'mnist'. Available: musdb"),
    ],
)
def test_bad_input_stops_with_a_clear_message(args, message, capsys):
    assert main(["fit", *config_args("skipfilter"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_missing_musdb_root_is_named(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MUSDB_ROOT", str(tmp_path / "not-here"))
    assert main(["fit", *config_args(), *QUICK]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "not-here") in err and "MUSDB_ROOT" in err


def test_make_train_with_an_unknown_model_lists_the_models():
    proc = subprocess.run(
        ["make", "--no-print-directory", "train", "MODEL=transformer"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode != 0
    assert "Unknown MODEL 'transformer'. Available: ae, ccae, dae, deep_vae, mss_dae, nae, nmf, rcae, skipfilter, vae" in proc.stderr
    assert "Traceback" not in proc.stderr


@needs_ffmpeg
def test_training_on_a_stem_mp4_folder(monkeypatch, tmp_path):
    """The same run against a MUSDB18 folder of ``.stem.mp4`` files (written with stempeg)."""
    root = tmp_path / "musdb18"
    make_stems_corpus(root, n_train=3, n_test=1, seconds=6.0)
    monkeypatch.setenv("MUSDB_ROOT", str(root))
    cli = run([
        "fit", *config_args("skipfilter"), *QUICK, "--trainer.max_epochs", "1",
        "--data.init_args.val_segment_frames", "256",
        "--data.init_args.cache_dir", str(tmp_path / "cache"),
    ])
    assert cli.datamodule.dataset_name == "musdb18"
    assert cli.datamodule.is_wav is False
    assert len(cli.datamodule.train_tracks) == 2 and len(cli.datamodule.valid_tracks) == 1
    assert math.isfinite(float(cli.trainer.callback_metrics["val/sdr"]))
    _, (r,) = mlflow_runs()
    assert r.data.tags["data.dataset"] == "musdb18" and r.data.tags["data.root"] == str(root)
