"""``lightning-sep compare`` / ``make compare``: the MLflow runs side by side, from real runs.

One module-scoped store: a one-epoch skip-filter run scored by ``lightning-sep eval`` (with the ``mixture``
reference), and a two-epoch DAE run with another ``lr_patience`` and no test scores.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import subprocess
from types import SimpleNamespace

import pandas as pd
import pytest

from conftest import REPO, cli_error, metric_history, needs_ffmpeg, train_tiny
from lightning_sep.cli import main
from lightning_sep.tracking.compare import CompareSettings, compare

SCORED = ("vocals", "accompaniment")
METRICS = ("SDR", "SIR", "SAR")


@pytest.fixture(scope="module")
def store(tmp_path_factory, data_home):
    from mlflow.tracking import MlflowClient

    base = tmp_path_factory.mktemp("compare")
    skipfilter = train_tiny(base, data_home, "skipfilter")
    dae = train_tiny(base, data_home, "dae", "--trainer.max_epochs", "2", "--model.init_args.lr_patience", "3")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIGHTNING_SEP_DATA", str(data_home))
        mp.setenv("MLFLOW_TRACKING_URI", skipfilter.uri)
        mp.delenv("MUSDB_ROOT", raising=False)
        mp.chdir(base)
        common = ["--root", str(skipfilter.corpus), "--out", str(base / "eval"), "--no-progress"]
        assert main(["eval", "--model", "skipfilter", *common]) == 0
        assert main(["eval", "--model", "mixture", "--targets", *SCORED, *common]) == 0
    client = MlflowClient(skipfilter.uri)
    (mixture,) = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                    filter_string="tags.`model.family` = 'mixture'")
    return SimpleNamespace(base=base, uri=skipfilter.uri, client=client, skipfilter=skipfilter.run_id, dae=dae.run_id,
                           mixture=mixture.info.run_id)


def run_compare(capsys, *args: str) -> str:
    capsys.readouterr()
    assert main(["compare", *args]) == 0
    return capsys.readouterr().out


def compare_error(capsys, *args: str) -> str:
    return cli_error(capsys, "compare", *args)


def rows(tmp_path, **kwargs) -> pd.DataFrame:
    return compare(CompareSettings(out=str(tmp_path / "cmp"), **kwargs)).table


def ids_of(df: pd.DataFrame) -> list[str]:
    return list(df["run_id"])


def best_validation(client, run_id: str) -> tuple[float, float, int]:
    """The best ``val/sdr`` of the history, the mixture's at that step, and the number of epochs."""
    history = client.get_metric_history(run_id, "val/sdr")
    best = max(history, key=lambda m: m.value)
    mixture = {m.step: m.value for m in client.get_metric_history(run_id, "val/sdr_mixture")}
    return best.value, mixture[best.step], len(history)


@needs_ffmpeg
def test_table_csv_and_chart_hold_what_mlflow_holds(store, monkeypatch, capsys):
    from PIL import Image

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    printed = run_compare(capsys)
    folder = store.base / "mlruns" / "compare"  # the default: beside the store
    assert f"Wrote {folder / 'compare.csv'}" in printed and str(folder / "compare.png") in printed
    df = pd.read_csv(folder / "compare.csv", dtype={"run": str, "run_id": str, "lr": str, "lr_patience": str})
    # training runs newest first, then the reference run on the same data
    assert list(df["run_id"]) == [store.dae, store.skipfilter, store.mixture]
    assert list(df["run"]) == [r[:8] for r in df["run_id"]]
    assert list(df["model"]) == ["dae", "skipfilter", "mixture"]
    assert set(df["data"]) == {"musdb18hq"} and set(df["status"]) == {"FINISHED"}
    # key params: lr always, lr_patience because the two runs differ in it; nothing else differs
    columns = list(df.columns)
    assert columns[columns.index("targets") + 1: columns.index("epochs")] == ["lr", "lr_patience"]
    assert list(df["lr_patience"][:2]) == ["3", "2"] and pd.isna(df["lr_patience"][2])
    assert list(df["lr"][:2]) == ["0.0001", "0.0001"]
    # validation: the best epoch of the history and the mixture baseline at that epoch; epochs trained
    for i, run_id in enumerate([store.dae, store.skipfilter]):
        best, mixture, epochs = best_validation(store.client, run_id)
        assert df["val SDR"][i] == pytest.approx(best, abs=1e-4)
        assert df["val SDR mixture"][i] == pytest.approx(mixture, abs=1e-4)
        assert df["epochs"][i] == epochs
    assert list(df["epochs"][:2]) == [2, 1] and pd.isna(df["val SDR"][2]) and pd.isna(df["epochs"][2])
    assert max(metric_history(store.client, store.dae, "val/sdr")) == pytest.approx(df["val SDR"][0], abs=1e-4)
    # test scores: as logged by make eval for the scored runs, blank for the DAE
    test_columns = [c for c in columns if c.startswith("test ")]
    assert test_columns == [f"test {t} {m}" for t in SCORED for m in METRICS]
    for i, run_id in ((1, store.skipfilter), (2, store.mixture)):
        logged = store.client.get_run(run_id).data.metrics
        for t in SCORED:
            for m in METRICS:
                assert df[f"test {t} {m}"][i] == pytest.approx(logged[f"test/{t}/{m}"], abs=1e-4)
    assert df.loc[0, test_columns].isna().all()
    # the printed table: the same rows, two decimals, blank where missing
    lines = printed.splitlines()
    header = next(line for line in lines if line.startswith("run "))
    assert "test vocals SDR" in header and "val SDR" in header and "lr_patience" in header
    by_run = {r[:8]: next(line for line in lines if line.startswith(r[:8])) for r in df["run_id"]}
    assert by_run[store.dae[:8]].split()[2:4] == ["FINISHED", "dae"]
    assert f"{df['val SDR'][0]:.2f}" in by_run[store.dae[:8]]
    assert f"{df['test vocals SDR'][1]:.2f}" in by_run[store.skipfilter[:8]]
    assert f"{df['test accompaniment SAR'][2]:.2f}" in by_run[store.mixture[:8]]
    assert len(by_run[store.dae[:8]].split()) == len(by_run[store.skipfilter[:8]].split()) - 6  # no test scores
    # the chart: a real PNG of a plausible size
    with Image.open(folder / "compare.png") as image:
        assert image.format == "PNG"
        width, height = image.size
        image.verify()
    assert 800 <= width <= 2000 and 300 <= height <= 3000


@needs_ffmpeg
def test_filters(store, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    # one family: its runs and the references on their data; one training run, so only lr is a key param
    df = rows(tmp_path, model=["dae"])
    assert ids_of(df) == [store.dae, store.mixture] and "lr_patience" not in df and "lr" in df
    assert ids_of(rows(tmp_path, model=["dae"], references=False)) == [store.dae]
    assert ids_of(rows(tmp_path, model=["mixture"])) == [store.mixture]
    # DATA: a conf/data name (the runs' DataModule) or the data.dataset tag
    assert ids_of(rows(tmp_path, model=["skipfilter", "dae"], data="musdb")) == [store.dae, store.skipfilter, store.mixture]
    assert ids_of(rows(tmp_path, data="musdb18hq", references=False)) == [store.dae, store.skipfilter]
    # --limit: the newest training runs; --params: other columns
    printed = run_compare(capsys, "--limit", "1", "--params", "trainer.max_epochs", "batch_size", "--out", str(tmp_path / "l"))
    df = pd.read_csv(tmp_path / "l" / "compare.csv", dtype={"run_id": str})
    assert ids_of(df) == [store.dae, store.mixture] and "1 older training run(s) not shown" in printed
    assert list(df.columns[df.columns.get_loc("targets") + 1: df.columns.get_loc("epochs")]) == [
        "trainer.max_epochs", "data.batch_size"]
    assert df["trainer.max_epochs"][0] == 2


@needs_ffmpeg
def test_all_statuses_and_bad_input(store, monkeypatch, tmp_path, capsys):
    # a copy of the store with a failed run (no checkpoint: its best validation SDR is the history's maximum)
    shutil.copy(store.base / "mlruns" / "mlflow.db", tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("lightning-sep")
    failed = client.create_run(exp.experiment_id, run_name="broken", tags={
        "model.family": "vae", "data.dataset": "musdb18hq", "lightning_sep.stage": "fit"}).info.run_id
    client.log_batch(failed, metrics=[Metric("val/sdr", v, 0, step) for step, v in enumerate([1.0, 3.0, 2.0])])
    client.set_terminated(failed, "FAILED")
    out = ("--out", str(tmp_path / "out"))
    assert ids_of(rows(tmp_path)) == [store.dae, store.skipfilter, store.mixture]
    msg = compare_error(capsys, "--model", "vae", *out)
    assert "No finished runs of MODEL=vae" in msg and "1 matching run(s) did not finish" in msg and "--all" in msg
    df = rows(tmp_path, include_all=True)
    assert ids_of(df) == [failed, store.dae, store.skipfilter, store.mixture]
    assert df["status"][0] == "FAILED" and df["val SDR"][0] == 3.0 and pd.isna(df["epochs"][0])
    assert math.isnan(df["test vocals SDR"][0])

    # unknown names and values: one clear line each
    msg = compare_error(capsys, "--model", "nosuch", *out)
    assert "MODEL=nosuch" in msg and "dae, mixture, skipfilter, vae" in msg and "make train MODEL=nosuch" in msg
    msg = compare_error(capsys, "--data", "timit", *out)
    assert "DATA=timit" in msg and "musdb18hq" in msg and "make train MODEL=skipfilter DATA=timit" in msg
    msg = compare_error(capsys, "--experiment", "nope", *out)
    assert "--experiment nope: no such MLflow experiment" in msg and "lightning-sep" in msg
    assert "--limit -1" in compare_error(capsys, "--limit", "-1", *out)
    assert "--params nope" in compare_error(capsys, "--params", "nope", *out)
    (tmp_path / "a-file").write_text("")
    assert "--out" in compare_error(capsys, "--out", str(tmp_path / "a-file" / "sub"))
    # an empty store: no experiment yet, and how to get one
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    assert "make train MODEL=skipfilter" in compare_error(capsys, *out)


def make_compare_command(*variables: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL", "DATA", "ARGS", "MAKEFLAGS", "MFLAGS")}
    proc = subprocess.run(["make", "-n", "compare", *variables], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    (line,) = [line for line in proc.stdout.replace("\\\n", " ").splitlines() if "lightning-sep compare" in line]
    return shlex.split(line)


@pytest.mark.skipif(not shutil.which("make"), reason="make is not installed")
def test_make_compare_wiring():
    args = make_compare_command()  # MODEL and DATA have defaults in the Makefile: not passed unless given
    assert args[0].endswith(".venv/bin/lightning-sep") and args[1:] == ["compare"]
    args = make_compare_command("MODEL=dae skipfilter", "DATA=timit", "ARGS=--all")
    assert args[1:] == ["compare", "--model", "dae", "skipfilter", "--data", "timit", "--all"]
