"""The neural couplings analysis (``make analyze``): TOD-R, the NCA strategies, the job on trained models."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import cli_error, train_tiny
from lightning_sep.analysis.couplings import (
    CompositionalCouplings,
    CoupledLayers,
    StudentCouplings,
    coupled_layers,
    fit_couplings,
    linear_composition,
    snr_db,
    tod_ratio,
)
from lightning_sep.analysis.nca import active_segments, analyze_batch, paper_tables, spread, summarize
from lightning_sep.errors import LightningSepError
from lightning_sep.models.dae import DenoisingAutoencoderNet
from lightning_sep.models.skipfilter import SkipFilterNet


# -- TOD-R (paper Eq. (22)) against hand values -------------------------------------------------------------
def test_tod_ratio_of_known_matrices():
    assert tod_ratio(torch.eye(5)) == math.inf  # a scalar filter: nothing off the diagonal
    assert tod_ratio(torch.diag(torch.tensor([3.0, -1.0, 0.5]))) == math.inf
    for n in (2, 4, 10):  # all-ones: trace n, off-diagonal n(n-1), scaled by 1/n -> n / (n - 1)
        assert tod_ratio(torch.ones(n, n)) == pytest.approx(n / (n - 1))
    # |[[1, 2], [3, 4]]|: trace 5, off-diagonal 5 / 2 -> 2; signs do not matter (|C| before the trace)
    assert tod_ratio(torch.tensor([[1.0, 2.0], [3.0, 4.0]])) == pytest.approx(2.0)
    assert tod_ratio(torch.tensor([[-1.0, 2.0], [-3.0, -4.0]])) == pytest.approx(2.0)
    # no diagonal at all: 0; a zero matrix: undefined
    assert tod_ratio(torch.ones(3, 3) - torch.eye(3)) == 0.0
    assert math.isnan(tod_ratio(torch.zeros(3, 3)))
    with pytest.raises(LightningSepError, match="square"):
        tod_ratio(torch.ones(2, 3))


def test_snr_db():
    ref = torch.tensor([3.0, 4.0])
    assert snr_db(ref, ref) == math.inf
    assert snr_db(ref, torch.zeros(2)) == pytest.approx(0.0)
    assert snr_db(ref, ref * 0.9) == pytest.approx(20.0)


# -- the strategies ------------------------------------------------------------------------------------------
def test_student_recovers_an_exactly_linear_models_matrix():
    torch.manual_seed(0)
    n, t = 12, 300
    true = torch.randn(n, n)
    x = torch.rand(t, n)
    fit = fit_couplings(StudentCouplings(n), x, x @ true.T, iterations=3000, lr=1e-2)
    assert torch.allclose(fit.matrix, true, atol=5e-3), (fit.matrix - true).abs().max()
    assert fit.l1 / (x @ true.T).abs().sum() < 1e-2
    assert snr_db(x @ true.T, x @ fit.matrix.T) > 35


def test_compositional_equals_the_linear_composition_with_unit_scaling_and_no_bias():
    torch.manual_seed(1)
    n = 8
    # rows summing to one: with S all ones and zero biases, D = ReLU(W 1 1^T) is all ones, so C = W2 W1
    weights = [torch.rand(n, n) for _ in range(3)]
    weights = [w / w.sum(1, keepdim=True) for w in weights]
    layers = CoupledLayers(weights, [torch.zeros(n)] * 3, masks=False)
    comp = CompositionalCouplings(layers, scalings=[torch.ones(n, n)] * 3)
    plain = weights[2] @ weights[1] @ weights[0]
    assert torch.allclose(comp.matrix(), plain, atol=1e-6)
    assert torch.allclose(linear_composition(weights), plain)
    assert torch.allclose(linear_composition(weights, [torch.ones(n, n)] * 3), plain)
    x = torch.rand(5, n)
    assert torch.allclose(comp(x), x @ plain.T, atol=1e-6)  # the forward pass applies the same map
    # a bias changes the scaling (Eq. (19): b_j is added to row j of W before the scaling)
    biased = CompositionalCouplings(CoupledLayers(weights, [torch.full((n,), -2.0)] * 3, masks=False),
                                    scalings=[torch.ones(n, n)] * 3)
    assert torch.count_nonzero(biased.matrix()) == 0  # ReLU(rowsum - 2 n) = 0 everywhere


def test_compositional_trains_only_the_scalings():
    torch.manual_seed(2)
    n = 6
    w = [torch.randn(n, n), torch.randn(n, n)]
    layers = CoupledLayers([a.clone() for a in w], [torch.randn(n), torch.randn(n)], masks=False)
    comp = CompositionalCouplings(layers)
    assert [p.shape for p in comp.parameters()] == [(n, n), (n, n)]
    x = torch.rand(40, n)
    fit_couplings(comp, x, torch.rand(40, n), iterations=20, lr=1e-2)
    assert torch.equal(comp.weight0, w[0]) and torch.equal(comp.weight1, w[1])


def _linear_dae(n: int, seed: int = 3) -> DenoisingAutoencoderNet:
    """A DAE whose ReLUs never clip (non-negative weights, zero biases, non-negative input): exactly linear."""
    torch.manual_seed(seed)
    net = DenoisingAutoencoderNet(n, n)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.rand(n, n) * 2 / n**0.5)  # the product's entries are about 1
                m.bias.zero_()
    return net


def test_analyze_batch_on_an_exactly_linear_model():
    n, t = 10, 400
    net = _linear_dae(n)
    layers = coupled_layers(net, "dae")
    linear = linear_composition(layers.weights)
    torch.manual_seed(4)
    x = torch.rand(t, n)
    target = torch.rand(t, n)
    rows, matrices = analyze_batch(layers, net, x, target, iterations=3000, lr=1e-2, linear=linear, seed=0)
    by = {r["method"]: r for r in rows}
    # the model *is* its linear composition: that baseline is exact, and the student finds the same matrix
    assert by["linear_composition"]["snr_model_db"] > 100
    assert torch.allclose(matrices["student"], linear, atol=5e-3), (matrices["student"] - linear).abs().max()
    assert by["student"]["snr_model_db"] > 40
    assert by["student"]["snr_model_db"] > by["identity"]["snr_model_db"]
    assert by["compositional"]["snr_model_db"] > by["identity"]["snr_model_db"]
    assert by["model"]["snr_source_db"] == pytest.approx(snr_db(target, net(x)))
    assert by["student"]["tod_r"] == pytest.approx(tod_ratio(linear), rel=1e-2)
    assert math.isnan(by["identity"]["tod_r"])


def test_skipfilter_couplings_approximate_the_mask_and_snr_is_after_masking():
    torch.manual_seed(5)
    n, t = 8, 200
    net = SkipFilterNet(n, n)
    layers = coupled_layers(net, "skipfilter")
    assert layers.masks
    x = torch.rand(t, n) + 0.1
    rows, _ = analyze_batch(layers, net, x, torch.rand(t, n), iterations=5, lr=1e-3,
                            linear=linear_composition(layers.weights), seed=0)
    by = {r["method"]: r for r in rows}
    # identity = the mixture stands for the output: a mask of ones
    assert by["identity"]["snr_model_db"] == pytest.approx(snr_db(net(x), x))


def test_layers_that_are_not_square_or_not_covered():
    with pytest.raises(LightningSepError, match="not square.*hidden_size: null"):
        coupled_layers(DenoisingAutoencoderNet(8, 8, hidden_size=4), "dae")
    with pytest.raises(LightningSepError, match="context_frames: 0"):
        coupled_layers(DenoisingAutoencoderNet(24, 8), "dae")  # 1 context frame each side: 3 x 8 inputs
    with pytest.raises(LightningSepError, match="MODEL=dae, mss_dae or skipfilter"):
        coupled_layers(torch.nn.Sequential(torch.nn.Linear(4, 4)), "vae")
    layers = coupled_layers(DenoisingAutoencoderNet(6, 6, n_encoder_layers=3), "mss_dae")
    assert len(layers.weights) == 4 and not layers.masks


# -- active batches -----------------------------------------------------------------------------------------
def test_active_segments_keep_batches_where_every_stem_plays():
    rng = np.random.default_rng(0)
    mags = rng.uniform(0.5, 1.0, size=(4, 6, 100))
    mags[3, :, 20:40] = 0  # vocals rest for the whole second batch
    mags[1, :, 65:70] = 1e-4  # bass 80 dB down for 5 of the fourth batch's 20 frames
    starts = active_segments(mags, 20, threshold_db=40, active_fraction=0.9)
    assert starts == [0, 40, 80]  # 60 is 75 % active, 20 not at all; the last partial batch is dropped
    assert active_segments(mags, 20, threshold_db=40, active_fraction=0.7) == [0, 40, 60, 80]
    mags[2] = 0  # a stem silent in the whole track
    assert active_segments(mags, 20) == []
    assert spread([0, 1, 2, 3, 4], 2) == [0, 4] and spread([0, 1], None) == [0, 1]


def test_paper_tables_layout():
    rows = []
    for fam, label, tod in (("skipfilter", "skipfilter-aaaa", 0.5), ("dae", "dae-bbbb", 6.0)):
        for method in ("student", "compositional", "linear_composition", "identity", "model"):
            for k in range(3):
                rows.append({"track": "t", "start_s": k, "target": "vocals", "method": method,
                             "tod_r": tod + k if method in ("student", "compositional", "linear_composition") else np.nan,
                             "snr_model_db": 10.0 + k, "snr_source_db": 1.0, "l1": 0.0})
    seg = pd.DataFrame(rows)
    summary = pd.concat([summarize(seg[seg.index < 15], "skipfilter", "skipfilter-aaaa"),
                         summarize(seg[seg.index >= 15], "dae", "dae-bbbb")])
    tables = paper_tables(summary)
    t1 = tables["table1_todr"]
    assert list(t1.columns) == ["DAE", "SF"]  # the paper's column order
    assert list(t1.index) == ["NCA student", "NCA compositional", "linear composition"]
    assert t1.loc["NCA student", "SF"] == f"1.50 ({np.std([0.5, 1.5, 2.5]):.2f})"
    assert t1.loc["NCA student", "DAE"] == f"7.00 ({np.std([6.0, 7.0, 8.0]):.2f})"
    assert "model output" in tables["table3_snr_source"].index
    assert "model output" not in tables["table2_snr_model"].index


# -- the job, on really trained models --------------------------------------------------------------------
TINY = ("--data.retained_bins", "24", "--data.n_fft", "256", "--data.win_length", "256", "--data.hop_length", "128")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_home):
    base = tmp_path_factory.mktemp("nca")
    runs = {m: train_tiny(base, data_home, m, *TINY, n_test=2) for m in ("dae", "skipfilter")}
    return base, runs


def _analyze(capsys, *args: str) -> tuple[int, str, str]:
    from lightning_sep.cli import main

    capsys.readouterr()
    rc = main(["analyze", *args, "--no-progress"])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


NCA_ARGS = ("--segment-seconds", "0.5", "--iterations", "300", "--lr", "1e-2", "--zoom-bins", "8")


def test_make_analyze_writes_tables_heatmaps_and_logs_to_the_runs(trained, capsys, monkeypatch):
    from mlflow.tracking import MlflowClient

    base, runs = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", runs["dae"].uri)
    rc, out, err = _analyze(capsys, "--model", "dae", "skipfilter", "--root", str(runs["dae"].corpus), *NCA_ARGS,
                            "--out", str(base / "analysis"))
    assert rc == 0, err
    dataset_folder = base / "analysis" / "musdb18hq"
    tables = (dataset_folder / "tables.md").read_text()
    assert "Table 1: TOD-R" in tables and "| approximation | DAE | SF |" in tables
    assert "Table 1: TOD-R" in out
    for name in ("table1_todr", "table2_snr_model", "table3_snr_source"):
        assert list(pd.read_csv(dataset_folder / f"{name}.csv", index_col=0).columns) == ["DAE", "SF"]
    client = MlflowClient(runs["dae"].uri)
    for family, run in runs.items():
        folder = dataset_folder / f"{family}-{run.run_id[:8]}" / "nca"
        seg = pd.read_csv(folder / "segments.csv")
        manifest = json.loads((folder / "manifest.json").read_text())
        # both test tracks, every active 0.5 s batch up to 2 per track, every method plus the model's own row
        assert sorted(seg["track"].unique()) == ["Tiny - Test 01", "Tiny - Test 02"]
        assert manifest["batches"] == {"vocals": 4}
        assert sorted(seg["method"].unique()) == sorted(["student", "compositional", "linear_composition", "identity",
                                                         "model"])
        by = seg.groupby("method")["snr_model_db"].mean()
        assert by["student"] > by["identity"] and by["student"] > by["linear_composition"], by
        assert np.isfinite(seg.loc[seg["method"] == "compositional", "tod_r"]).all()
        with np.load(folder / "couplings.npz") as z:
            assert z["vocals/student"].shape == (24, 24) and z["vocals/compositional"].shape == (24, 24)
        for method in ("student", "compositional", "linear_composition"):
            png = (folder / f"couplings-vocals-{method}.png").read_bytes()
            assert png[:8] == b"\x89PNG\r\n\x1a\n"
        r = client.get_run(run.run_id)
        summary = pd.read_csv(folder / "summary.csv").set_index("method")
        assert r.data.metrics["nca/vocals/student/tod_r"] == pytest.approx(summary.loc["student", "tod_r_mean"], rel=1e-5)
        assert r.data.metrics["nca/vocals/compositional/snr_model_db"] == pytest.approx(
            summary.loc["compositional", "snr_model_db_mean"], rel=1e-5)
        assert r.data.tags["nca.results"] == str(folder)
        logged = {a.path for a in client.list_artifacts(run.run_id, "nca")}
        assert {"nca/segments.csv", "nca/tables.md", "nca/couplings-vocals-student.png", "nca/couplings.npz"} <= logged

    # a rerun with the same settings reuses the finished tracks (same numbers, nothing refitted)
    before = pd.read_csv(dataset_folder / f"dae-{runs['dae'].run_id[:8]}" / "nca" / "segments.csv")
    rc, out, err = _analyze(capsys, "--model", "dae", "--root", str(runs["dae"].corpus), *NCA_ARGS,
                            "--out", str(base / "analysis"), "--no-mlflow")
    assert rc == 0, err
    dae_folder = dataset_folder / f"dae-{runs['dae'].run_id[:8]}" / "nca"
    pd.testing.assert_frame_equal(before, pd.read_csv(dae_folder / "segments.csv"))
    # an interrupted analysis (one track's results missing) computes only that track again
    done, lost = dae_folder / "tracks" / "Tiny - Test 01.npz", dae_folder / "tracks" / "Tiny - Test 02.npz"
    stamp = done.stat().st_mtime_ns
    lost.unlink()
    rc, out, err = _analyze(capsys, "--model", "dae", "--root", str(runs["dae"].corpus), *NCA_ARGS,
                            "--out", str(base / "analysis"), "--no-mlflow")
    assert rc == 0, err
    assert done.stat().st_mtime_ns == stamp and lost.is_file()
    assert "Tiny - Test 02: 2 active batch(es)" in out and "Tiny - Test 01:" not in out
    pd.testing.assert_frame_equal(before, pd.read_csv(dae_folder / "segments.csv"), rtol=1e-4)
    # other settings: refused without --overwrite
    rc, out, err = _analyze(capsys, "--model", "dae", "--root", str(runs["dae"].corpus), *NCA_ARGS, "--iterations", "2",
                            "--out", str(base / "analysis"), "--no-mlflow")
    assert rc == 2 and "other settings (iterations changed)" in err and "--overwrite" in err and "Traceback" not in err


def _error(capsys, *args: str) -> str:
    return cli_error(capsys, "analyze", *args, "--no-progress")


def test_bad_input(trained, capsys, monkeypatch, tmp_path):
    base, runs = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", runs["dae"].uri)
    root = ("--root", str(runs["dae"].corpus), "--out", str(tmp_path))
    assert "MODEL=vae: the neural couplings analysis" in _error(capsys, "--model", "vae", *root)
    assert "Unknown MODEL 'nope'" in _error(capsys, "--model", "nope", *root)
    assert "MODEL=mss_dae" in _error(capsys, "--model", "mss_dae", *root)  # none trained: says how to get one
    assert "pass a single MODEL" in _error(capsys, "--model", "dae", "skipfilter", "--ckpt", str(runs["dae"].ckpt), *root)
    assert "belongs to MODEL=skipfilter" in _error(capsys, "--model", "dae", "--ckpt", str(runs["skipfilter"].ckpt), *root)
    assert "--iterations 0" in _error(capsys, "--model", "dae", "--iterations", "0", *root)
    assert "--active-fraction 1.5" in _error(capsys, "--model", "dae", "--active-fraction", "1.5", *root)
    assert "No batch of" in _error(capsys, "--model", "dae", "--segment-seconds", "60", *root)
    assert "DATA=timit" in _error(capsys, "--model", "dae", "--data", "timit", "--out", str(tmp_path))


def test_models_with_square_layers_only(tmp_path_factory, data_home, capsys, monkeypatch, tmp_path):
    run = train_tiny(tmp_path_factory.mktemp("nca_wide"), data_home, "dae", *TINY,
                     "--model.init_args.hidden_size", "12")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", run.uri)
    msg = _error(capsys, "--model", "dae", "--root", str(run.corpus), "--out", str(tmp_path))
    assert "24 -> 12 -> 24 units, not square" in msg and "hidden_size: null" in msg
