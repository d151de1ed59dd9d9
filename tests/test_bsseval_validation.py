"""BSS Eval v4 of the full validation tracks during training (``--bsseval.every_n_epochs``,
:class:`lightning_sep.evaluation.validation.BSSEvalValidation`) and as an Optuna objective (``make tune
ARGS="--metric val/bss/sdr"``).

Real (tiny) skip-filter trainings on a MUSDB18-HQ-layout corpus of 3 s tracks written by conftest's
``make_wav_corpus`` (``train_tiny``): one training batch per epoch, 1-2 validation tracks. The logged
values are checked against an independent recomputation: each epoch's checkpoint loaded from disk, the
validation tracks read from their wav files, separated as ``make eval`` does, scored by ``score_track``,
written as museval JSON and aggregated by ``make eval``'s own SiSEC code.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch  # noqa: F401 - imported now: its log handler must not hold a test's closed capsys stream
import numpy as np
import pytest
import yaml
from conftest import STEM_ORDER, cli_error, config_args, metric_history, one_torch_thread, train_tiny
from lightning.pytorch import Callback

from lightning_sep.errors import LightningSepError
from lightning_sep.evaluation.bsseval import METRICS

RATE = 44100
BSS_ARGS = ("--bsseval.every_n_epochs", "1", "--example.seconds", "0",
            "--model.init_args.early_stopping_patience", "null")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from one_torch_thread()


def read_stems(corpus: Path, name: str) -> np.ndarray:
    """A training-folder track's stems ``(5, channels, samples)`` from its wav files (not the cache)."""
    import soundfile as sf

    return np.stack([sf.read(corpus / "train" / name / f"{stem}.wav", dtype="float32")[0].T for stem in STEM_ORDER])


def recompute(ckpt: Path, corpus: Path, names: list[str], out: Path) -> dict[str, float]:
    """``val/bss/<target>/<metric>`` of the checkpoint on the tracks ``names``, the ``make eval`` way."""
    from lightning_sep.evaluation import aggregate
    from lightning_sep.evaluation.bsseval import score_track
    from lightning_sep.models import SkipFilter
    from lightning_sep.separation import ModelSeparator, separate_track

    model = SkipFilter.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    separator = ModelSeparator(model)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        stems = read_stems(corpus, name)
        store = score_track(name, stems, separate_track(separator, stems[0], RATE), RATE, metrics="bsseval")
        paths.append(out / f"{name}.json")
        paths[-1].write_text(store.json)
    return aggregate.metric_dict(aggregate.sisec_medians(aggregate.load_scores(paths)), prefix="val/bss")


# -- (a) every epoch: logged, and the numbers of make eval's procedure ----------------------------------------------------
@pytest.mark.slow
def test_every_epoch_logs_the_bss_eval_of_the_checkpoint(tmp_path, data_home):
    from mlflow.tracking import MlflowClient

    valid = ["Tiny - Train 01", "Tiny - Train 02"]
    ns = train_tiny(tmp_path, data_home, "skipfilter", *BSS_ARGS, "--trainer.max_epochs", "2",
                    "--data.validation_tracks", f"[{', '.join(valid)}]", "--checkpoint.save_top_k", "-1")
    client = MlflowClient(ns.uri)
    logged = client.get_run(ns.run_id).data.metrics
    keys = ["val/bss/sdr"] + [f"val/bss/{t}/{m}" for t in ("vocals", "accompaniment") for m in METRICS]
    assert set(keys) <= set(logged), sorted(logged)
    history = {k: metric_history(client, ns.run_id, k) for k in keys}
    assert all(len(v) == 2 for v in history.values()), history  # each epoch
    assert len(metric_history(client, ns.run_id, "val/sdr")) == 2  # the segment SDR is still there
    steps = [m.step for m in sorted(client.get_metric_history(ns.run_id, "val/bss/sdr"), key=lambda m: m.step)]
    assert steps == [m.step for m in sorted(client.get_metric_history(ns.run_id, "val/sdr"), key=lambda m: m.step)]

    ckpts = ns.ckpt.parent
    for epoch in (0, 1):
        expected = recompute(ckpts / f"epoch{epoch:03d}.ckpt", ns.corpus, valid, tmp_path / f"recomputed{epoch}")
        assert set(expected) == set(keys) - {"val/bss/sdr"}
        for key, value in expected.items():
            assert math.isfinite(value) and history[key][epoch] == pytest.approx(value, abs=1e-6), (epoch, key)
        # a vocals model: the mean over its targets is the vocals' SDR (accompaniment = mixture - vocals is scored too)
        assert history["val/bss/sdr"][epoch] == pytest.approx(expected["val/bss/vocals/SDR"], abs=1e-6)


# -- (b) every N-th epoch, under DDP ---------------------------------------------------------------------------------------
class RankMetrics(Callback):
    """Added to the DDP run of (b) (``--trainer.callbacks+``): every rank appends what ``trainer.callback_metrics``
    holds under ``val/bss/`` after each validation (what checkpoints, early stopping and Optuna read) to
    ``$PROBE_DIR/bss-rank<r>.jsonl``."""

    def on_validation_end(self, trainer, pl_module):
        import json
        import os

        if trainer.sanity_checking:
            return
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/bss/")}
        out = Path(os.environ["PROBE_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        with open(out / f"bss-rank{trainer.global_rank}.jsonl", "a") as fh:
            fh.write(json.dumps({"epoch": trainer.current_epoch, "values": values}) + "\n")


@pytest.mark.slow
def test_every_second_epoch_under_ddp_logs_on_epochs_2_and_4_the_same_on_every_rank(tmp_path, data_home):
    """Two gloo ranks, three validation tracks (two on rank 0, one on rank 1): logged on epochs 2 and 4 only, every
    rank holds the same values, and they are the BSS Eval of the last checkpoint's weights on all three tracks."""
    import json
    import subprocess

    from conftest import fit_command, make_wav_corpus, store_runs

    corpus = tmp_path / "corpus"
    make_wav_corpus(corpus, n_train=5, n_test=1, seconds=3.0)
    valid = ["Tiny - Train 01", "Tiny - Train 02", "Tiny - Train 03"]
    args, env = fit_command(tmp_path, corpus, data_home, "probe", *BSS_ARGS, "--bsseval.every_n_epochs", "2",
                            "--data.validation_tracks", f"[{', '.join(valid)}]", "--trainer.callbacks+",
                            json.dumps({"class_path": "test_bsseval_validation.RankMetrics"}), epochs=4)
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [[json.loads(line) for line in (tmp_path / "probe" / f"bss-rank{r}.jsonl").read_text().splitlines()]
             for r in (0, 1)]
    assert ranks[0] == ranks[1]  # the same values on every rank, every epoch
    seen = [(row["epoch"], bool(row["values"])) for row in ranks[0]]
    assert seen == [(0, False), (1, True), (2, True), (3, True)]  # callback_metrics keeps epoch 2's until epoch 4
    assert ranks[0][1]["values"] == ranks[0][2]["values"] != ranks[0][3]["values"]

    client, runs = store_runs(tmp_path)
    (run,) = runs
    run_id = run.info.run_id
    val_steps = sorted(m.step for m in client.get_metric_history(run_id, "val/sdr"))
    assert len(val_steps) == 4
    for key in ("val/bss/sdr", "val/bss/vocals/SAR", "val/bss/accompaniment/SDR"):
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == [val_steps[1], val_steps[3]], key  # epochs 2 and 4 (1-based)
        assert [m.value for m in history] == [ranks[0][1]["values"][key], ranks[0][3]["values"][key]]
    expected = recompute(Path(run.data.tags["checkpoint.last"]), corpus, valid, tmp_path / "recomputed")
    for key, value in expected.items():
        assert ranks[0][3]["values"][key] == pytest.approx(value, abs=1e-6), key


def test_due_counts_validation_epochs():
    """``every_n_epochs`` counts validation epochs: with ``check_val_every_n_epoch=c`` every ``N * c`` epochs;
    never in the sanity check; every ``validate``."""
    from lightning.pytorch.trainer.states import TrainerFn

    from lightning_sep.evaluation.validation import BSSEvalValidation

    def scored(every: int, check_val: int, epochs: int = 12, fn=TrainerFn.FITTING) -> list[int]:
        cb = BSSEvalValidation(every_n_epochs=every)
        out = []
        for epoch in range(epochs):
            trainer = SimpleNamespace(sanity_checking=False, state=SimpleNamespace(fn=fn), current_epoch=epoch,
                                      check_val_every_n_epoch=check_val)
            if (epoch + 1) % check_val == 0 and cb.due(trainer):
                out.append(epoch + 1)
        return out

    assert scored(1, 1) == list(range(1, 13))
    assert scored(2, 1) == [2, 4, 6, 8, 10, 12]
    assert scored(3, 2) == [6, 12]
    assert scored(0, 1) == []
    assert scored(2, 1, fn=TrainerFn.VALIDATING) == list(range(1, 13))
    sanity = SimpleNamespace(sanity_checking=True, state=SimpleNamespace(fn=TrainerFn.FITTING), current_epoch=0,
                             check_val_every_n_epoch=1)
    assert not BSSEvalValidation(every_n_epochs=1).due(sanity)


def test_median_over_tracks_skips_nan_like_make_eval():
    """The in-memory SiSEC aggregation (per-track medians gathered from the ranks) is ``make eval``'s."""
    import pandas as pd

    from lightning_sep.evaluation import aggregate

    rng = np.random.default_rng(0)
    per_track = rng.normal(size=(5, 2, 4))
    per_track[1, 0, 0] = np.nan
    per_track[:, 1, 2] = np.nan
    rows = [{"track": f"t{i}", "target": f"x{j}", "metric": METRICS[m], "time": 0, "score": per_track[i, j, m]}
            for i in range(5) for j in range(2) for m in range(4)]
    expected = aggregate.sisec_medians(pd.DataFrame(rows))
    got = aggregate.sisec_median_array(per_track)
    for r in expected.itertuples():
        value = got[int(r.target[1]), METRICS.index(r.metric)]
        assert (math.isnan(value) and math.isnan(r.score)) or value == pytest.approx(r.score, abs=1e-12)
    assert np.isnan(got[1, 2]) and np.isfinite(got[0, 0])


# -- (c) an Optuna study with BSS Eval as its objective -----------------------------------------------------------------------
@pytest.mark.slow
def test_study_with_bss_sdr_objective_switches_the_callback_on(tmp_path, capsys):
    import optuna
    from mlflow.tracking import MlflowClient

    from conftest import make_wav_corpus
    from lightning_sep.cli import main

    corpus = tmp_path / "corpus"
    make_wav_corpus(corpus, n_train=3, n_test=1, seconds=3.0)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "trainer": {"max_epochs": 1, "limit_train_batches": 1},
        "data": {"root": str(corpus), "cache_dir": str(tmp_path / "cache"), "validation_tracks": ["Tiny - Train 01"],
                 "samples_per_track": 2, "val_segments_per_track": 1, "val_segment_frames": 64},
        "model": {"early_stopping_patience": None},
        "pruner": {"name": "none"},
        "space": {"lr": {"low": 1.0e-5, "high": 1.0e-3, "log": True}},
    }, sort_keys=False))
    assert main(["tune", "--model", "skipfilter", "--data", "musdb", "--n-trials", "2", "--study", "bss",
                 "--space", str(space), "--metric", "val/bss/sdr"]) == 0
    assert "val/bss/sdr" in capsys.readouterr().out
    study = optuna.load_study(study_name="bss", storage=f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}")
    assert study.user_attrs["metric"] == "val/bss/sdr"
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    for t in trials:
        run_id = t.user_attrs["mlflow_run_id"]
        logged = metric_history(client, run_id, "val/bss/sdr")
        assert len(logged) == 1 and math.isfinite(logged[0])
        assert t.value == logged[0]  # the objective is the logged BSS Eval SDR, not the segment SDR
        assert t.value != metric_history(client, run_id, "val/sdr")[0]
        assert t.user_attrs["config"]["bsseval"]["every_n_epochs"] == 1  # best.yaml retrains with it on
    assert trials[0].params["lr"] != trials[1].params["lr"]


# -- (d) bad input: one clear line ------------------------------------------------------------------------------------------
def test_bad_options_are_clear_errors(capsys):
    err = cli_error(capsys, "fit", *config_args(), "--bsseval.every_n_epochs", "-1")
    assert "--bsseval.every_n_epochs -1: give a whole number >= 0" in err
    err = cli_error(capsys, "fit", *config_args(), "--bsseval.every_n_epochs", "1", "--bsseval.max_seconds", "0.5")
    assert "--bsseval.max_seconds 0.5: give at least 1" in err
    err = cli_error(capsys, "fit", *config_args(), "--checkpoint.monitor", "val/bss/sdr")
    assert "--checkpoint.monitor val/bss/sdr: --bsseval.every_n_epochs 0 is off: use --bsseval.every_n_epochs 1" in err
    err = cli_error(capsys, "fit", *config_args(), "--bsseval.every_n_epochs", "2", "--checkpoint.monitor", "val/bss/sdr")
    assert "logs it only every 2 validation epochs" in err


def test_timit_data_with_bss_eval_is_refused_before_any_data_is_prepared(capsys, data_home):
    err = cli_error(capsys, "fit", *config_args("skipfilter", data="timit"), "--bsseval.every_n_epochs", "1")
    assert "--bsseval.every_n_epochs 1: BSS Eval v4 validation scores full MUSDB18-format validation tracks" in err
    assert "TIMITDataModule (timit-pairs)" in err and "DATA=musdb" in err
    assert not any(p.name.startswith("embedded-timit") for p in data_home.iterdir())  # nothing was generated
    # a study with the BSS Eval objective on TIMIT: refused before any trial
    err = cli_error(capsys, "tune", "--model", "skipfilter", "--data", "timit", "--metric", "val/bss/sdr")
    assert "BSS Eval v4 validation scores full MUSDB18-format validation tracks" in err


def test_unknown_bss_metrics_are_refused_before_any_trial(capsys, tmp_path):
    err = cli_error(capsys, "tune", "--model", "skipfilter", "--data", "musdb", "--metric", "val/bss/vocal/SDR")
    assert "--metric val/bss/vocal/SDR" in err and "val/bss/vocals/SDR" in err
    space = tmp_path / "space.yaml"
    space.write_text("metric: val/bss/SDR\nspace:\n  lr: {low: 1.0e-5, high: 1.0e-3, log: true}\n")
    err = cli_error(capsys, "tune", "--model", "skipfilter", "--data", "musdb", "--space", str(space))
    assert f"{space}: metric val/bss/SDR" in err
    assert not (tmp_path / "mlruns" / "tune").exists()


def test_check_bss_metric():
    from lightning_sep.evaluation.validation import check_bss_metric, is_bss_metric

    assert check_bss_metric("val/bss/sdr") == "val/bss/sdr"
    assert check_bss_metric("val/bss/drums/SIR") == "val/bss/drums/SIR"
    assert is_bss_metric("val/bss/sdr") and not is_bss_metric("val/sdr") and not is_bss_metric(None)
    with pytest.raises(LightningSepError, match="val/bss/<target>/<metric>"):
        check_bss_metric("val/bss/vocals/sdr")
