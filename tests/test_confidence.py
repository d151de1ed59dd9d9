"""The VAE's confidence score (paper vae-separation-pandey Sec. 4.3, Fig. 5) through the platform:

* :meth:`ModelSeparator.take_stats` (the model's ``separation_stats``, frame-weighted over chunks);
* ``make eval DATA=timit_ten_speakers`` records it per mixture and logs ``test/posterior_variance``;
* ``lightning-sep separate`` prints it;
* ``lightning-sep confidence`` (``make confidence``): the curve against the input SNR, its files
  and MLflow metrics, and its clear errors.

A VAE and a skip-filter are trained for one tiny epoch on the embedded corpus (a few seconds each),
once per module, in their own MLflow store.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import config_args
from lightning_sep.cli import main
from lightning_sep.errors import LightningSepError
from lightning_sep.evaluation.confidence import parse_snrs, snr_key
from lightning_sep.evaluation.evaluate import load_datamodule
from lightning_sep.separation import ModelSeparator, separate_track
from lightning_sep.transforms import ISTFT, STFT, FrontEnd

DATA = "timit_ten_speakers"
DATASET = "embedded_timit-ten_speakers"
SOURCES = ["male", "female"]
SNRS = [-5.0, 0.0, 5.0]
TINY = ["--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--data.init_args.samples_per_mixture", "2", "--data.init_args.val_segments_per_mixture", "1"]


@pytest.fixture(autouse=True)
def _no_timit_root(monkeypatch):
    monkeypatch.delenv("TIMIT_ROOT", raising=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_home):
    """One tiny epoch of MODEL=vae and of MODEL=skipfilter on DATA=timit_ten_speakers, in one store."""
    from mlflow.tracking import MlflowClient

    base = tmp_path_factory.mktemp("confidence_trained")
    (base / "mlruns").mkdir()
    uri = f"sqlite:///{base / 'mlruns' / 'mlflow.db'}"
    run_ids = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIGHTNING_SEP_DATA", str(data_home))
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("TIMIT_ROOT", raising=False)
        mp.chdir(base)
        for model in ("vae", "skipfilter"):
            assert main(["fit", *config_args(model, DATA), *TINY]) == 0
            client = MlflowClient(uri)
            runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                      filter_string=f"tags.`model.family` = '{model}'")
            assert len(runs) == 1 and runs[0].data.tags["data.dataset"] == DATASET
            run_ids[model] = runs[0].info.run_id
        mixtures = [m.name for m in load_datamodule(DATA).test_mixtures()]
    # two of the five test mixtures keep the BSS Eval time down
    return SimpleNamespace(uri=uri, base=base, run_ids=run_ids, mixtures=mixtures[:2], all_mixtures=mixtures)


def errors(capsys, *args: str) -> str:
    """``lightning-sep ARGS`` must exit 2 with one ``lightning-sep: error:`` line and no traceback."""
    capsys.readouterr()
    assert main([*args, "--no-progress"]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("lightning-sep: error: ")]
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


# -- take_stats ------------------------------------------------------------------------------------------------
class _StubModel(torch.nn.Module):
    """Halves the mixture for two targets; records ``{"frames": T, "const": 2}`` per call (or nothing)."""

    family = "stub"

    def __init__(self, records: bool = True):
        super().__init__()
        self.front_end = FrontEnd(sample_rate=8000, n_fft=256, win_length=256, hop_length=64, window="hann",
                                  retained_bins=129)
        self.stft, self.istft = STFT(self.front_end), ISTFT(self.front_end)
        self.targets = SOURCES
        self.register_buffer("dummy", torch.zeros(1))
        self.records = records
        self.frames: list[int] = []
        if records:
            self.separation_stats: dict[str, float] = {}

    def estimate_magnitudes(self, mag):
        self.frames.append(mag.shape[-1])
        if self.records:
            self.separation_stats = {"frames": float(mag.shape[-1]), "const": 2.0}
        return 0.5 * mag.unsqueeze(1).expand(-1, 2, -1, -1)


def test_take_stats_is_a_frame_weighted_mean_and_clears():
    model = _StubModel()
    sep = ModelSeparator(model)
    assert sep.take_stats() == {}
    audio = np.random.default_rng(0).standard_normal((1, 8000 * 3 + 123)).astype(np.float32)
    separate_track(sep, audio, 8000, chunk_seconds=1.0, overlap_seconds=0.25)
    frames = np.array(model.frames, dtype=float)
    assert len(frames) >= 4 and len(set(frames)) > 1  # chunks of unequal length
    stats = sep.take_stats()
    assert stats["frames"] == pytest.approx((frames ** 2).sum() / frames.sum())
    assert stats["const"] == pytest.approx(2.0)
    assert sep.take_stats() == {}  # cleared
    # a model that records nothing
    quiet = ModelSeparator(_StubModel(records=False))
    separate_track(quiet, audio, 8000, chunk_seconds=1.0, overlap_seconds=0.25)
    assert quiet.take_stats() == {}


def test_snr_parsing():
    assert parse_snrs(None) == [-10.0, -5.0, -2.5, 0.0, 2.5, 5.0, 10.0]
    assert parse_snrs(["5", "-10,-2.5", "0dB", "-0", "5"]) == [-10.0, -2.5, 0.0, 5.0]
    with pytest.raises(LightningSepError, match="No input SNR"):
        parse_snrs([])
    with pytest.raises(LightningSepError, match="'loud' is not a number"):
        parse_snrs(["-5", "loud"])
    with pytest.raises(LightningSepError, match="finite"):
        parse_snrs(["nan"])
    from mlflow.utils.validation import _validate_metric_name

    for snr in (-10.0, -2.5, 0.0, 10.0):
        _validate_metric_name(f"confidence/{snr_key(snr)}/posterior_variance")
    assert snr_key(-2.5) == "snr_-2.5dB" and snr_key(10.0) == "snr_10dB"


# -- the curve -----------------------------------------------------------------------------------------------------
def test_confidence_curve(trained, tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained.uri)
    out = tmp_path / "curve"
    capsys.readouterr()
    assert main(["confidence", "--model", "vae", "--data", DATA, "--snrs", *[f"{s:g}" for s in SNRS],
                 "--mixtures", *trained.mixtures, "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Average posterior variance" in printed and "var female" in printed

    table = pd.read_csv(out / "confidence.csv")
    assert list(table.columns) == ["snr_db", "mixture", "source", "posterior_variance", "SDR"]
    mixtures = sorted(set(table["mixture"]))
    assert mixtures == sorted(trained.mixtures)
    assert len(table) == len(SNRS) * 2 * 2
    assert sorted(set(zip(table["snr_db"], table["mixture"], table["source"]))) == sorted(
        (s, m, src) for s in SNRS for m in mixtures for src in SOURCES)
    assert (table["posterior_variance"] > 0).all() and np.isfinite(table["SDR"]).all()

    summary = pd.read_csv(out / "confidence_summary.csv")
    assert list(summary["snr_db"]) == SNRS and set(summary["mixtures"]) == {2}
    for snr, block in table.groupby("snr_db"):
        row = summary[summary["snr_db"] == snr].iloc[0]
        assert row["posterior_variance"] == pytest.approx(block["posterior_variance"].mean(), rel=1e-4)
        assert row["posterior_variance/male"] == pytest.approx(
            block.loc[block["source"] == "male", "posterior_variance"].mean(), rel=1e-4)
        assert row["SDR"] == pytest.approx(block["SDR"].mean(), rel=1e-4, abs=1e-4)
    # the mixtures really are remixed: the SDR changes with the SNR
    assert summary["SDR/male"].iloc[0] != pytest.approx(summary["SDR/male"].iloc[-1], abs=1e-3)

    png = (out / "confidence.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    manifest = json.loads((out / "manifest.json").read_text())["settings"]
    assert manifest["snrs_db"] == SNRS and manifest["dataset"] == DATASET and manifest["method"] == "vae"
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]

    run_id = trained.run_ids["vae"]
    client = MlflowClient(trained.uri)
    metrics = client.get_run(run_id).data.metrics
    for snr in SNRS:
        row = summary[summary["snr_db"] == snr].iloc[0]
        key = f"confidence/{snr_key(snr)}"
        assert metrics[f"{key}/posterior_variance"] == pytest.approx(row["posterior_variance"], rel=1e-4)
        assert metrics[f"{key}/posterior_variance/female"] == pytest.approx(row["posterior_variance/female"], rel=1e-4)
        assert metrics[f"{key}/SDR"] == pytest.approx(row["SDR"], rel=1e-4, abs=1e-4)
    artifacts = {a.path for a in client.list_artifacts(run_id, "confidence")}
    assert artifacts == {f"confidence/{n}" for n in
                         ("confidence.csv", "confidence_summary.csv", "confidence.png", "manifest.json")}
    tags = client.get_run(run_id).data.tags
    assert tags["confidence.dataset"] == DATASET and tags["confidence.snrs_db"] == "-5 0 5"


def test_default_folder_and_no_mlflow(trained, tmp_path, monkeypatch):
    from lightning_sep.evaluation.confidence import ConfidenceSettings, confidence_curve

    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained.uri)
    res = confidence_curve(ConfidenceSettings(model="vae", data=DATA, snrs=["0"], mixtures=trained.mixtures[:1],
                                              log_mlflow=False, progress=False))
    label = f"vae-{trained.run_ids['vae'][:8]}"
    # beside the store: <mlruns>/eval/<dataset>/<label>/confidence
    assert res.folder == trained.base / "mlruns" / "eval" / DATASET / label / "confidence"
    assert res.method == label and res.run_id == trained.run_ids["vae"]
    assert (res.folder / "confidence.png").is_file() and len(res.table) == 2
    assert list(res.summary["snr_db"]) == [0.0]


# -- the speech evaluation and separate record the statistics -----------------------------------------------------
def test_eval_records_posterior_variance(trained, tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained.uri)
    out = tmp_path / "eval"
    capsys.readouterr()
    args = ["eval", "--model", "vae", "--data", DATA, "--tracks", *trained.mixtures, "--out", str(out), "--no-progress"]
    assert main(args) == 0
    assert "Separation statistics of vae-" in capsys.readouterr().out
    folder = out / DATASET / f"vae-{trained.run_ids['vae'][:8]}"
    values = []
    for path in sorted((folder / "test").glob("*.json")):
        stats = json.loads(path.read_text())["separation_stats"]
        assert set(stats) == {"posterior_variance", "posterior_variance/male", "posterior_variance/female"}
        assert stats["posterior_variance"] == pytest.approx(
            (stats["posterior_variance/male"] + stats["posterior_variance/female"]) / 2, rel=1e-5)
        values.append(stats["posterior_variance"])
    assert len(values) == 2
    per_mixture = pd.read_csv(folder / "separation_stats.csv")
    assert len(per_mixture) == 6
    metrics = MlflowClient(trained.uri).get_run(trained.run_ids["vae"]).data.metrics
    assert metrics["test/posterior_variance"] == pytest.approx(np.mean(values), rel=1e-5)
    assert "test/posterior_variance/male" in metrics and "test/all/SDR" in metrics

    # a resumed evaluation reads older JSONs without the statistics
    for path in (folder / "test").glob("*.json"):
        data = json.loads(path.read_text())
        data.pop("separation_stats")
        path.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "0 to do" in printed and "Separation statistics" not in printed
    assert not (folder / "separation_stats.csv").exists()


def test_separate_prints_the_statistics(trained, tmp_path, monkeypatch, capsys):
    import soundfile as sf

    from lightning_sep.evaluation.evaluate import load_datamodule

    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained.uri)
    mixture = load_datamodule(DATA).test_mixtures()[0].audio[0]
    sf.write(tmp_path / "mix.wav", mixture, 16000)
    capsys.readouterr()
    assert main(["separate", str(tmp_path / "mix.wav"), "--out", str(tmp_path / "sep"), "--model", "vae",
                 "--no-progress"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "separation stats:" in line]
    assert len(lines) == 1 and "posterior_variance=" in lines[0] and "posterior_variance/male=" in lines[0]
    # a model that records nothing prints no such line
    capsys.readouterr()
    assert main(["separate", str(tmp_path / "mix.wav"), "--out", str(tmp_path / "sep2"), "--model", "skipfilter",
                 "--no-progress"]) == 0
    assert "separation stats" not in capsys.readouterr().out


# -- clear errors ----------------------------------------------------------------------------------------------------
def test_model_without_posterior_variance(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained.uri)
    out = tmp_path / "curve"
    msg = errors(capsys, "confidence", "--model", "skipfilter", "--data", DATA, "--snrs", "0", "--mixtures",
                 trained.mixtures[0], "--out", str(out))
    assert "MODEL=skipfilter" in msg and "MODEL=vae" in msg and "MODEL=deep_vae" in msg
    assert "posterior variance" in msg
    assert not (out / "confidence.csv").exists()
    msg = errors(capsys, "confidence", "--model", "oracle_irm2", "--data", DATA, "--snrs", "0", "--out", str(out))
    assert "MODEL=vae" in msg and "MODEL=deep_vae" in msg
    msg = errors(capsys, "confidence", "--model", "vae", "--data", DATA, "--snrs", "0", "--mixtures", "NOPE0+FNOT0",
                 "--out", str(out))
    assert "NOPE0+FNOT0" in msg and all(n in msg for n in trained.all_mixtures)


def test_data_without_a_settable_snr(capsys, tmp_path):
    msg = errors(capsys, "confidence", "--model", "vae", "--data", "musdb", "--snrs", "0", "--out", str(tmp_path / "c"))
    assert "DATA=musdb" in msg and "settable SNR" in msg
    assert "DATA=timit_ten_speakers" in msg and "DATA=timit" in msg


def test_bad_snrs(capsys, tmp_path):
    msg = errors(capsys, "confidence", "--model", "vae", "--data", DATA, "--snrs", "--out", str(tmp_path / "c"))
    assert "No input SNR" in msg
    msg = errors(capsys, "confidence", "--model", "vae", "--data", DATA, "--snrs", "-5", "abc", "--out", str(tmp_path / "c"))
    assert "'abc' is not a number of dB" in msg
    assert not (tmp_path / "c").exists()


def test_load_datamodule_overrides():
    from lightning_sep.evaluation.evaluate import load_datamodule

    assert load_datamodule(DATA, overrides={"test_snr_db": -2.5}).test_snr_db == -2.5
    with pytest.raises(LightningSepError, match="has no argument 'test_snr_db'"):
        load_datamodule("musdb", overrides={"test_snr_db": 0.0})
