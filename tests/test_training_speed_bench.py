"""The training-speed benchmark of ``make bench`` (lightning_sep.benchmarks.training_speed) on a tiny
MUSDB18-HQ corpus: real values from its functions, never a timed assertion (numbers go to BENCHMARKS.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import make_wav_corpus
from lightning_sep.benchmarks import training_speed as ts

WARMUP, STEPS, REPEATS = 1, 2, 2


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """A tiny MUSDB18-HQ corpus (3 training tracks of 4 s, one held out for validation) and its cache."""
    base = tmp_path_factory.mktemp("training_speed")
    make_wav_corpus(base / "corpus", n_train=3, n_test=1, seconds=4.0)
    return {"root": str(base / "corpus"), "cache_dir": str(base / "cache")}


def settings(corpus: dict, **kw) -> ts.Settings:
    # the test process's thread count, so that measuring does not change it for later tests
    kw = {"families": ["skipfilter"], "warmup": WARMUP, "steps": STEPS, "repeats": REPEATS,
          "threads": torch.get_num_threads(), "data": corpus, **kw}
    return ts.Settings(**kw)


def test_three_loops_train_on_the_same_batches_and_the_table_reports_them(corpus):
    s = settings(corpus, fingerprints=True)
    result = ts.measure_family("skipfilter", s)

    frames = STEPS * 16 * 128  # batches x batch size x segment frames (conf/data/musdb.yaml)
    assert (result["batch_size"], result["segment_frames"]) == (16, 128)
    seen = [result["counts"][loop]["fingerprints"] for loop in ts.LOOPS]
    assert len(seen[0]) == STEPS and len(set(seen[0])) == STEPS  # distinct batches ...
    assert seen[0] == seen[1] == seen[2]  # ... the same ones, in the same order, in all three loops
    for loop in ts.LOOPS:
        assert result["counts"][loop]["batches"] == STEPS
        assert result["counts"][loop]["frames"] == frames
        assert [len(run) for run in result["step_seconds"][loop]] == [STEPS] * REPEATS
        assert all(t > 0 for run in result["step_seconds"][loop] for t in run)
        assert all(share > 0 for run in result["cpu_shares"][loop] for share in run)
        assert result["fps"][loop] > 0
        assert result["fps"][loop] == pytest.approx(frames / result["seconds"][loop])
        assert result["weights_changed"][loop], f"{loop}: the weights did not change: nothing was trained"
    assert result["ratio"] == pytest.approx(result["fps"]["datamodule"] / result["fps"]["memory"])
    assert result["overhead"] == pytest.approx(result["fps"]["bare"] / result["fps"]["memory"] - 1)
    assert result["threads"] == torch.get_num_threads()
    assert result["peak_rss_mb"] > 100  # torch alone is more
    assert result["loader_ms"] > 0
    assert 0 <= result["undisturbed"] <= 1

    table = ts.format_table([result, {"family": "nmf", "error": "RuntimeError: boom"}], s)
    lines = table.splitlines()
    assert lines[0].startswith("| family | batch | frames/s real DM | frames/s in memory | ratio |")
    cells = {line.split(" | ")[0].strip("| "): [c.strip() for c in line.strip("|").split("|")] for line in lines[2:]}
    row = cells["skipfilter"]
    assert len(row) == len(lines[0].strip("|").split("|"))
    assert row[1] == "16" and row[4] == f"{result['ratio']:.2f}"
    assert float(row[2].replace(",", "")) == pytest.approx(result["fps"]["datamodule"], abs=0.5)
    assert row[6] == f"{100 * result['overhead']:+.1f} %"
    assert row[-2] == f"{result['loader_ms']:.1f}"
    assert row[-1].startswith(f"{100 * result['undisturbed']:.0f} %")
    assert "failed: RuntimeError: boom" in cells["nmf"][1]


@pytest.mark.parametrize("family", ["skipfilter", "nmf"])
def test_bare_loop_does_the_lightning_loops_updates(corpus, family):
    """From the same state on the same batches, the bare loop ends where Lightning's does (NMF: the
    multiplicative updates written out by nmf_step), so the overhead compares identical work."""
    s = settings(corpus, families=[family])
    dm = ts.make_datamodule(s.data)
    state = ts.prepared_state(family, dm, s)
    batches = ts.cache_batches(dm, WARMUP + STEPS)
    models = []
    for run in ("lightning", "bare"):
        model = ts.fresh_model(family, dm, state, s)
        timer = ts.StepTimer(WARMUP, STEPS, dm.segment_frames)
        if run == "lightning":
            ts.lightning_run(model, s, timer, batches=batches)
        else:
            ts.bare_run(model, batches, s, timer)
        assert timer.batches == STEPS and timer.seconds > 0
        models.append(model)
    lightning, bare = (dict(m.named_parameters()) for m in models)
    assert ts.changed(models[1], state)
    for name, p in lightning.items():
        torch.testing.assert_close(bare[name].detach(), p.detach(), msg=f"{family}: {name} differs")
    if family == "nmf":  # NMF.training_step runs without autograd; so must its bare step (the same work)
        model = models[1]
        loss = ts.nmf_step(model, batches[0], ts.first_optimizer(model.configure_optimizers()))
        assert loss.grad_fn is None and not loss.requires_grad


def test_command_writes_the_table(corpus, tmp_path, capsys):
    """The command: one fresh process per family, the table printed and written to --out."""
    out = tmp_path / "speed.md"
    ts.main(["--families", "skipfilter", "--warmup", "1", "--steps", "1", "--repeats", "1",
             "--threads", str(torch.get_num_threads()), "--data", json.dumps(corpus), "--out", str(out),
             "--json", str(tmp_path / "speed.json")])
    text = Path(out).read_text()
    assert "| skipfilter | 16 |" in text and "failed" not in text
    assert "| skipfilter | 16 |" in capsys.readouterr().out
    (result,) = json.loads((tmp_path / "speed.json").read_text())["results"]
    assert result["family"] == "skipfilter" and result["counts"]["bare"]["frames"] == 16 * 128


def test_run_time_counts_the_fastest_undisturbed_run():
    runs = [[1.0, 1.0, 1.2, 1.0], [0.5, 0.6, 0.5, 0.5], [0.8, 0.8, 0.8, 0.8]]
    calm = [[0.9] * 4, [0.9, 0.3, 0.3, 0.3], [0.95] * 4]  # the fast run got too little CPU: disturbed
    assert ts.run_time(runs, calm) == (0.8, True)
    assert ts.run_time(runs, None) == (0.5, True)
    assert ts.run_time(runs, [[0.1] * 4] * 3) == (0.5, False)  # nothing undisturbed: all count, flagged
