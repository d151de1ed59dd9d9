"""``make eval DATA=timit``: BSS Eval v3 of reference methods and a trained model on the embedded
TIMIT-format corpus (lightning_sep/evaluation/speech.py through ``evaluate`` and the CLI).

The corpus is the session's embedded one (``LIGHTNING_SEP_DATA``); the reference evaluations and the
short training run are made once per module, each in its own MLflow store.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from conftest import config_args, eval_error
from datamodules import TIMITDataModule
from lightning_sep.cli import main
from lightning_sep.errors import LightningSepError, UnknownNameError
from lightning_sep.evaluation.evaluate import EvalSettings, evaluate
from lightning_sep.evaluation.speech_metrics import bss_eval_sources
from lightning_sep.separation import reference_separator, separate_track

DATASET = "embedded_timit-pairs"  # <corpus>-<protocol>: the results folder and the MLflow data.dataset tag
SOURCES = ["male", "female"]
METRICS = ("SDR", "SIR", "SAR", "SI-SDR")
REFERENCES = ("mixture", "oracle_irm2", "oracle_ibm")  # evaluated in this order


@pytest.fixture(autouse=True)
def _no_timit_root(monkeypatch):
    monkeypatch.delenv("TIMIT_ROOT", raising=False)


def store(base: Path) -> str:
    (base / "mlruns").mkdir()
    return f"sqlite:///{base / 'mlruns' / 'mlflow.db'}"


def environment(mp: pytest.MonkeyPatch, base: Path, uri: str, data_home: Path) -> None:
    mp.setenv("LIGHTNING_SEP_DATA", str(data_home))
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.delenv("TIMIT_ROOT", raising=False)
    mp.chdir(base)


@pytest.fixture(scope="module")
def refs(tmp_path_factory, data_home):
    """mixture, oracle_irm2, oracle_ibm evaluated (and logged) once, in their own MLflow store."""
    base = tmp_path_factory.mktemp("timit_refs")
    uri = store(base)
    out = base / "eval"
    with pytest.MonkeyPatch.context() as mp:
        environment(mp, base, uri, data_home)
        results = {m: evaluate(EvalSettings(model=m, data="timit", out=str(out), progress=False)) for m in REFERENCES}
        dm = TIMITDataModule()
        mixtures = dm.test_mixtures()
    return SimpleNamespace(uri=uri, out=out, results=results, dm=dm, mixtures=mixtures,
                           names=[m.name for m in mixtures])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_home):
    """A real, short ``lightning-sep fit`` of the skip-filter model on DATA=timit, in its own store.

    Two epochs of 16 segments per mixture at the conf's lr (1e-4) stay below the mixture's SDR; at
    3e-3 the model clearly separates the two voices.
    """
    from lightning_sep.cli import run

    base = tmp_path_factory.mktemp("timit_trained")
    uri = store(base)
    with pytest.MonkeyPatch.context() as mp:
        environment(mp, base, uri, data_home)
        cli = run(["fit", *config_args("skipfilter", "timit"), "--trainer.max_epochs", "2",
                   "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                   "--data.init_args.samples_per_mixture", "16", "--model.init_args.lr", "0.003"])
    run_id = cli.trainer.logger.run_id
    return SimpleNamespace(uri=uri, run_id=run_id, base=base, ckpt=Path(cli.trainer.checkpoint_callback.best_model_path))


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def stats_of(result, source: str = "all", stat: str = "mean") -> dict[str, float]:
    row = result.medians[(result.medians["source"] == source) & (result.medians["stat"] == stat)]
    assert len(row) == 1
    return {m: float(row.iloc[0][m]) for m in METRICS}


def mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


# -- the reference methods ----------------------------------------------------------------------------------
def test_reference_results_folders(refs):
    assert len(refs.names) == 5 and refs.dm.dataset_name == refs.dm.eval_name == DATASET
    for label in REFERENCES:
        res = refs.results[label]
        assert res.method == label
        assert res.folder == refs.out / DATASET / label
        assert sorted(res.evaluated) == sorted(refs.names) and res.reused == [] and res.skipped == {}
        assert sorted(p.name for p in (res.folder / "test").glob("*.json")) == sorted(f"{n}.json" for n in refs.names)
        for name in ("scores.csv", "mixtures.csv", "comparison.csv", "manifest.json"):
            assert (res.folder / name).is_file(), name
        for m in refs.mixtures:
            data = load_json(res.folder / "test" / f"{m.name}.json")
            assert data["mixture"] == m.name and data["pair"] == m.pair and data["snr_db"] == 0.0
            assert data["utterances"] == m.utterances and data["sample_rate"] == 16000
            assert data["samples"] == m.audio.shape[1]
            assert set(data["scores"]) == set(SOURCES)
            assert all(set(data["scores"][s]) == set(METRICS) for s in SOURCES)
            assert all(np.isfinite(v) for s in SOURCES for v in data["scores"][s].values())
        per_mixture = pd.read_csv(res.folder / "mixtures.csv")
        assert list(per_mixture.columns) == ["mixture", "pair", "source", *METRICS]
        assert len(per_mixture) == 10 and set(per_mixture["mixture"]) == set(refs.names)
        scores = pd.read_csv(res.folder / "scores.csv")
        assert list(zip(scores["source"], scores["stat"])) == [
            (s, t) for s in ("male", "female", "all") for t in ("mean", "median")]
        assert set(scores["mixtures"]) == {5}
        # the means are the means of the per-mixture table
        for source in SOURCES:
            block = per_mixture[per_mixture["source"] == source]
            assert stats_of(res, source)["SDR"] == pytest.approx(block["SDR"].mean(), abs=1e-4)
        assert stats_of(res)["SDR"] == pytest.approx(per_mixture["SDR"].mean(), abs=1e-4)
        assert stats_of(res, "all", "median")["SDR"] == pytest.approx(per_mixture["SDR"].median(), abs=1e-4)
        manifest = load_json(res.folder / "manifest.json")
        assert manifest["settings"]["dataset"] == DATASET and manifest["settings"]["method"] == label
        assert set(manifest["settings"]["data"]["test"]) == set(refs.names)


def test_oracles_beat_the_mixture_by_a_wide_margin(refs):
    mixture, irm2, ibm = (stats_of(refs.results[m]) for m in REFERENCES)
    assert abs(mixture["SDR"]) < 2.0  # 0 dB mixtures: the mixture as estimate scores about 0 dB
    assert irm2["SDR"] > mixture["SDR"] + 10.0, (irm2, mixture)
    assert ibm["SDR"] > mixture["SDR"] + 8.0, (ibm, mixture)
    for source in SOURCES:
        assert stats_of(refs.results["oracle_irm2"], source)["SDR"] > stats_of(refs.results["mixture"], source)["SDR"] + 10


def test_comparison_table_lists_every_method_on_the_same_mixtures(refs):
    last = refs.results["oracle_ibm"]
    table = last.table
    assert list(table.columns) == ["source", "method", *METRICS, "mixtures"]
    assert set(table["method"]) == set(REFERENCES) and set(table["mixtures"]) == {5}
    for source in ("male", "female", "all"):
        block = table[table["source"] == source]
        assert list(block["method"]) == ["oracle_irm2", "oracle_ibm", "mixture"]  # by SDR, best first
        for r in block.itertuples():
            assert r.SDR == pytest.approx(stats_of(refs.results[r.method], source)["SDR"], abs=1e-12)
    csv = pd.read_csv(last.folder / "comparison.csv")
    assert list(zip(csv["source"], csv["method"])) == list(zip(table["source"], table["method"]))
    np.testing.assert_allclose(csv["SDR"], table["SDR"], atol=5.1e-5)
    # the first evaluation saw no other method yet
    assert set(pd.read_csv(refs.results["mixture"].folder / "comparison.csv")["method"]) == {"mixture"}


def test_reference_scores_are_logged_to_their_own_runs(refs):
    client = mlflow_client(refs.uri)
    run_ids = {label: refs.results[label].run_id for label in REFERENCES}
    assert all(run_ids.values()) and len(set(run_ids.values())) == 3
    for label, run_id in run_ids.items():
        res = refs.results[label]
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["lightning_sep.stage"] == "reference"
        assert run.data.tags["model.family"] == label and run.data.tags["data.dataset"] == DATASET
        assert run.data.tags["test.dataset"] == DATASET and run.data.tags["test.tracks"] == "5"
        assert run.data.tags["test.results"] == str(res.folder)
        metrics = {k: v for k, v in run.data.metrics.items() if k.startswith("test/")}
        assert set(metrics) == ({f"test/{s}/{m}" for s in ("male", "female", "all") for m in METRICS}
                                | {f"test/all/{m}_median" for m in METRICS})
        scores = pd.read_csv(res.folder / "scores.csv").set_index(["source", "stat"])
        for source in ("male", "female", "all"):
            assert metrics[f"test/{source}/SDR"] == pytest.approx(scores.loc[(source, "mean"), "SDR"], abs=5.1e-5)
            assert metrics[f"test/{source}/SDR"] == stats_of(res, source)["SDR"]
        assert metrics["test/all/SDR_median"] == pytest.approx(scores.loc[("all", "median"), "SDR"], abs=5.1e-5)
        assert metrics["test/all/SI-SDR_median"] == stats_of(res, "all", "median")["SI-SDR"]

        files = {a.path for a in client.list_artifacts(run_id, f"bss_eval/{label}")}
        assert {f"bss_eval/{label}/{f}" for f in ("scores.csv", "mixtures.csv", "comparison.csv", "manifest.json",
                                                   "test")} <= files
        jsons = sorted(a.path for a in client.list_artifacts(run_id, f"bss_eval/{label}/test"))
        assert jsons == sorted(f"bss_eval/{label}/test/{n}.json" for n in refs.names)
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(run_id, f"bss_eval/{label}/test/{refs.names[0]}.json", tmp)
            assert Path(local).read_bytes() == (res.folder / "test" / f"{refs.names[0]}.json").read_bytes()


def estimates(refs, method: str, mixture) -> np.ndarray:
    sep = reference_separator(method, refs.dm.front_end, SOURCES, sources=SOURCES)
    est = separate_track(sep, mixture.audio[:1], 16000,
                         references=mixture.audio[1:, None, :] if sep.needs_references else None)
    assert sorted(est) == sorted(SOURCES)
    return np.stack([est[s][:, 0] for s in SOURCES])


@pytest.mark.parametrize("method", ["mixture", "oracle_irm2"])
def test_json_scores_are_bss_eval_sources_of_the_estimates(refs, method):
    folder = refs.results[method].folder
    for m in refs.mixtures:
        est = estimates(refs, method, m)
        if method == "mixture":
            np.testing.assert_array_equal(est, np.stack([m.audio[0], m.audio[0]]))
        s = bss_eval_sources(m.audio[1:], est)
        data = load_json(folder / "test" / f"{m.name}.json")
        for i, source in enumerate(SOURCES):
            got = data["scores"][source]
            expected = {"SDR": s.sdr[i], "SIR": s.sir[i], "SAR": s.sar[i], "SI-SDR": s.si_sdr[i]}
            for metric, value in expected.items():
                assert got[metric] == pytest.approx(float(value), abs=1e-9), (m.name, source, metric)
        if method == "oracle_irm2":
            assert data["permutation"] == {"male": "male", "female": "female"}
            assert min(data["scores"][s]["SDR"] for s in SOURCES) > 8.0


def test_mixture_json_equals_mir_eval(refs):
    import mir_eval

    m = refs.mixtures[0]
    data = load_json(refs.results["mixture"].folder / "test" / f"{m.name}.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mir_eval deprecates bss_eval_sources
        sdr, sir, sar, perm = mir_eval.separation.bss_eval_sources(
            m.audio[1:].astype(np.float64), np.stack([m.audio[0], m.audio[0]]).astype(np.float64))
    for i, source in enumerate(SOURCES):
        for metric, value in (("SDR", sdr[i]), ("SIR", sir[i]), ("SAR", sar[i])):
            assert abs(data["scores"][source][metric] - float(value)) < 0.01, (source, metric)


# -- resuming, settings -----------------------------------------------------------------------------------------------
def test_resume_recomputes_only_what_is_missing(tmp_path, capsys):
    out = tmp_path / "eval"

    def run(**kwargs):
        return evaluate(EvalSettings(model="mixture", data="timit", out=str(out), progress=False, log_mlflow=False,
                                     **kwargs))

    first = run()
    names = first.evaluated
    assert len(names) == 5 and first.reused == []
    folder = out / DATASET / "mixture"
    victim = folder / "test" / f"{names[2]}.json"
    before = victim.read_bytes()
    others = {n: stamp(folder / "test" / f"{n}.json") for n in names if n != names[2]}
    victim.unlink()
    capsys.readouterr()
    again = run()
    assert again.evaluated == [names[2]] and again.reused == [n for n in names if n != names[2]]
    assert "1 to do" in capsys.readouterr().out
    assert victim.read_bytes() == before
    assert {n: stamp(folder / "test" / f"{n}.json") for n in others} == others
    assert run().evaluated == []

    # other settings in the same folder: refused without --overwrite, nothing discarded
    with pytest.raises(LightningSepError) as err:
        run(chunk_seconds=1.5)
    msg = str(err.value)
    assert str(folder) in msg and "chunk_seconds changed" in msg and "--overwrite" in msg
    assert {n: stamp(folder / "test" / f"{n}.json") for n in others} == others
    redone = run(chunk_seconds=1.5, overwrite=True)
    assert sorted(redone.evaluated) == sorted(names) and redone.reused == []
    assert load_json(folder / "manifest.json")["settings"]["chunk_seconds"] == 1.5
    assert run(chunk_seconds=1.5).reused == names  # the same settings again: no --overwrite needed


def test_tracks_selects_mixtures(tmp_path):
    dm_names = [m.name for m in TIMITDataModule().test_mixtures()]
    res = evaluate(EvalSettings(model="oracle_ibm", data="timit", out=str(tmp_path / "eval"), progress=False,
                                log_mlflow=False, tracks=[dm_names[3], dm_names[1]]))
    assert res.evaluated == [dm_names[1], dm_names[3]]
    assert sorted(p.stem for p in (res.folder / "test").glob("*.json")) == sorted([dm_names[1], dm_names[3]])
    assert set(res.medians["mixtures"]) == {2}


# -- a trained model ---------------------------------------------------------------------------------------------------
def fake_run(client, family: str, dataset: str, ckpt: Path | None = None) -> str:
    """A finished training run of ``family`` on ``dataset`` (started now: the latest)."""
    exp = client.get_experiment_by_name("lightning-sep")
    tags = {"model.family": family, "data.dataset": dataset, "lightning_sep.stage": "fit"}
    if ckpt is not None:
        tags["checkpoint.best"] = str(ckpt)
    run = client.create_run(exp.experiment_id, tags=tags)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def test_trained_model_is_found_scored_and_logged(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained.uri)
    client = mlflow_client(trained.uri)
    run = client.get_run(trained.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["model.family"] == "skipfilter" and run.data.tags["data.dataset"] == DATASET
    assert trained.ckpt.is_file()
    # later runs of the same family on other data (other mixtures) are not the one to evaluate
    decoys = [fake_run(client, "skipfilter", "embedded_timit-ten_speakers", trained.ckpt),
              fake_run(client, "skipfilter", "embedded_musdb", trained.ckpt)]

    out = tmp_path / "eval"
    res = evaluate(EvalSettings(model="skipfilter", data="timit", out=str(out), progress=False))
    label = f"skipfilter-{trained.run_id[:8]}"
    assert res.run_id == trained.run_id and res.method == label
    assert res.folder == out / DATASET / label
    assert len(res.evaluated) == 5 and res.reused == []
    manifest = load_json(res.folder / "manifest.json")["settings"]
    assert manifest["checkpoint"] == str(trained.ckpt.resolve()) and manifest["method"] == "skipfilter"

    logged = client.get_run(trained.run_id).data
    assert logged.metrics["test/all/SDR"] == stats_of(res)["SDR"]
    assert logged.metrics["test/male/SDR"] == stats_of(res, "male")["SDR"]
    assert logged.metrics["test/all/SDR_median"] == stats_of(res, "all", "median")["SDR"]
    assert logged.tags["test.dataset"] == DATASET and logged.tags["test.results"] == str(res.folder)
    assert {a.path for a in client.list_artifacts(trained.run_id, f"bss_eval/{label}")} >= {
        f"bss_eval/{label}/scores.csv", f"bss_eval/{label}/test"}
    for decoy in decoys:
        assert not [k for k in client.get_run(decoy).data.metrics if k.startswith("test/")]

    mixture = evaluate(EvalSettings(model="mixture", data="timit", out=str(out), progress=False, log_mlflow=False))
    assert stats_of(res)["SDR"] > stats_of(mixture)["SDR"] + 1.0, (stats_of(res), stats_of(mixture))
    assert set(mixture.table["method"]) == {"mixture", label}


def test_model_without_a_run_on_this_data(trained, tmp_path, monkeypatch):
    out = str(tmp_path / "eval")
    # an empty store
    with pytest.raises(LightningSepError) as err:
        evaluate(EvalSettings(model="dae", data="timit", out=out, progress=False))
    assert "MODEL=dae" in str(err.value) and "make train MODEL=dae" in str(err.value)

    # a store whose only dae run was trained on MUSDB
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained.uri)
    fake_run(mlflow_client(trained.uri), "dae", "embedded_musdb")
    with pytest.raises(LightningSepError) as err:
        evaluate(EvalSettings(model="dae", data="timit", out=out, progress=False))
    msg = str(err.value)
    assert f"No finished training run of MODEL=dae trained on {DATASET}" in msg
    assert "embedded_musdb" in msg and "make train MODEL=dae" in msg
    assert not list((tmp_path / "eval").rglob("*.json"))


# -- bad input -----------------------------------------------------------------------------------------------------------
def test_bad_mixture_and_target_names(tmp_path, capsys):
    names = [m.name for m in TIMITDataModule().test_mixtures()]
    out = str(tmp_path / "out")
    msg = eval_error(capsys, "--model", "mixture", "--data", "timit", "--tracks", names[0], "DR9_NOPE0+FNOT0",
                     "--out", out)
    assert "Unknown test mixture 'DR9_NOPE0+FNOT0'" in msg and all(n in msg for n in names)
    with pytest.raises(UnknownNameError) as err:
        evaluate(EvalSettings(model="mixture", data="timit", tracks=["Nope"], out=out, progress=False))
    assert err.value.available == names

    msg = eval_error(capsys, "--model", "oracle_irm2", "--data", "timit", "--targets", "vocals", "--out", out)
    assert msg.endswith("Unknown target 'vocals'. Available: male, female.")
    msg = eval_error(capsys, "--model", "mixture", "--data", "timit", "--targets", "male", "accompaniment",
                     "--out", out)
    assert "Unknown target 'accompaniment'" in msg and "male, female" in msg
    msg = eval_error(capsys, "--model", "oracle_irm2", "--data", "timit", "--targets", "male", "--out", out)
    assert "needs every source (male, female)" in msg
    assert not list((tmp_path / "out").rglob("*.json"))


# -- the acceptance: make train then make eval, with the shipped configs --------------------------------
@pytest.mark.slow
def test_make_train_then_make_eval_beats_the_mixture(tmp_path, capsys):
    """``make train MODEL=skipfilter DATA=timit`` (the conf as shipped, fewer epochs) then
    ``make eval MODEL=skipfilter DATA=timit`` and ``make eval MODEL=mixture DATA=timit``, through
    the CLI: the model's mean SDR is above the mixture baseline on every source."""
    assert main(["fit", *config_args("skipfilter", "timit"), "--trainer.max_epochs", "5",
                 "--trainer.enable_progress_bar", "false"]) == 0
    out = str(tmp_path / "eval")
    assert main(["eval", "--model", "mixture", "--data", "timit", "--out", out, "--no-progress"]) == 0
    assert main(["eval", "--model", "skipfilter", "--data", "timit", "--out", out, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Logged to MLflow run" in printed and "* skipfilter-" in printed
    folder = next(p for p in (tmp_path / "eval" / DATASET).iterdir() if p.name.startswith("skipfilter-"))
    table = pd.read_csv(folder / "comparison.csv")
    for source in (*SOURCES, "all"):
        block = table[table["source"] == source].set_index("method")
        assert block.loc[folder.name, "SDR"] > block.loc["mixture", "SDR"] + 1.0, block


def test_a_per_source_family_trains_and_evaluates_through_the_cli(tmp_path, data_home, capsys):
    """``make train MODEL=nmf DATA=timit`` then ``make eval MODEL=nmf DATA=timit ARGS="--iterations 50"``:
    the separation by optimisation runs inside the same eval pipeline, its shorter setting is its own
    results folder and MLflow prefix, and ``--iterations`` is refused for a one-pass model."""
    import mlflow

    from lightning_sep.cli import run

    uri = os.environ["MLFLOW_TRACKING_URI"]  # this test's store (conftest), under tmp_path/mlruns
    cli = run(["fit", *config_args("nmf", "timit"), "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1",
               "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
               "--data.init_args.samples_per_mixture", "8", "--model.init_args.val_separation_iterations", "20"])
    run_id = cli.trainer.logger.run_id
    assert cli.model.targets == SOURCES
    assert main(["eval", "--model", "nmf", "--data", "timit", "--iterations", "50", "--no-progress"]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "mlruns" / "eval" / DATASET / f"nmf-{run_id[:8]}-it50"
    scores = pd.read_csv(folder / "scores.csv")
    mean = scores[(scores.source == "all") & (scores.stat == "mean")].iloc[0]
    assert mean["SDR"] > 3.0, out  # one epoch of NMF bases already separates the two voices (measured ~7 dB)
    record = json.loads(next((folder / "test").glob("*.json")).read_text())
    assert json.loads((folder / "manifest.json").read_text())["settings"]["separation_iterations"] == 50
    assert "kl" in record["separation_stats"]
    metrics = mlflow.MlflowClient(uri).get_run(run_id).data.metrics
    assert metrics["test_it50/all/SDR"] == pytest.approx(mean["SDR"], abs=1e-3)
    assert "test/all/SDR" not in metrics  # the model's default setting is not overwritten
    assert main(["eval", "--model", "nmf", "--data", "timit", "--iterations", "0", "--no-progress"]) == 2
    assert "--iterations 0: must be at least 1" in capsys.readouterr().err
    assert main(["eval", "--model", "mixture", "--data", "timit", "--iterations", "10", "--no-progress"]) == 2
    ckpt = cli.trainer.checkpoint_callback.best_model_path
    capsys.readouterr()
    assert main(["eval", "--ckpt", ckpt, "--data", "musdb", "--no-progress"]) == 2  # male/female on MUSDB18
    assert "was trained for the sources ['male', 'female'] (2); DATA=musdb has vocals" in capsys.readouterr().err
