"""``lightning-sep eval`` / ``make eval``: museval scores, SiSEC medians, resuming, MLflow, errors.

Every corpus here is a tiny MUSDB18-HQ folder (2-3 s tracks, written by :func:`make_wav_corpus` or
:func:`write_track`) except in the slow acceptance test, which uses the embedded corpus.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import simplejson

from conftest import (REPO, STEM_ORDER, config_args, eval_error, make_wav_corpus, needs_ffmpeg, synth_track, track_names,
                      train_tiny_skipfilter)
from lightning_sep.cli import main
from lightning_sep.errors import LightningSepError
from lightning_sep.evaluation import aggregate
from lightning_sep.evaluation.bsseval import json_is_complete
from lightning_sep.evaluation.evaluate import EvalSettings, evaluate

RATE = 44100
METRICS = ("SDR", "SIR", "ISR", "SAR")
SOURCES = ("drums", "bass", "other", "vocals")
#: museval's order of the targets in a JSON when all five are estimated: the four-source
#: scenario without vocals, then the vocals/accompaniment scenario
FIVE = ["drums", "bass", "other", "vocals", "accompaniment"]
VA = ["vocals", "accompaniment"]


# -- helpers -------------------------------------------------------------------------------------------
def run_eval(**kwargs):
    """:func:`evaluate` without progress bars and (unless asked) without MLflow."""
    kwargs.setdefault("progress", False)
    kwargs.setdefault("log_mlflow", False)
    return evaluate(EvalSettings(**kwargs))


def load_json(path_or_text) -> dict:
    text = path_or_text if isinstance(path_or_text, str) else Path(path_or_text).read_text()
    return simplejson.loads(text, allow_nan=True)


def same_value(x, y, tol: float = 0.0) -> bool:
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    return x == y or (tol > 0 and math.isfinite(x) and math.isfinite(y) and abs(x - y) <= tol)


def assert_same_scores(ours: dict, theirs: dict, tol: float = 0.0) -> int:
    """The parsed museval JSONs are equal (within ``tol`` dB), NaN where NaN; returns how many NaN values
    there were."""
    assert ours.keys() == theirs.keys()
    assert ours["museval_version"] == theirs["museval_version"]
    assert [t["name"] for t in ours["targets"]] == [t["name"] for t in theirs["targets"]]
    nans = 0
    for a, b in zip(ours["targets"], theirs["targets"]):
        assert a.keys() == b.keys()
        assert len(a["frames"]) == len(b["frames"]), a["name"]
        for i, (fa, fb) in enumerate(zip(a["frames"], b["frames"])):
            assert (fa["time"], fa["duration"]) == (fb["time"], fb["duration"])
            assert fa["metrics"].keys() == fb["metrics"].keys() == set(METRICS)
            for m in METRICS:
                x, y = fa["metrics"][m], fb["metrics"][m]
                assert same_value(x, y, tol), f"{a['name']} frame {i} {m}: ours {x!r}, museval {y!r}"
                nans += isinstance(x, float) and math.isnan(x)
    return nans


def frame_values(data: dict, target: str, metric: str = "SDR") -> list[float]:
    (t,) = [t for t in data["targets"] if t["name"] == target]
    return [float(f["metrics"][metric]) for f in t["frames"]]


def read_estimates(folder: Path, track: str) -> dict[str, np.ndarray]:
    """The estimates ``--save-estimates`` wrote, as museval reads them (float32 here)."""
    import soundfile as sf

    out = {}
    for path in sorted((folder / "estimates" / "test" / track).glob("*.wav")):
        audio, rate = sf.read(path, always_2d=True, dtype="float32")
        assert rate == RATE
        out[path.stem] = audio
    return out


def mus_tracks(root: Path) -> dict:
    import musdb

    return {t.name: t for t in musdb.DB(root=str(root), is_wav=True, subsets="test")}


def write_track(root: Path, subset: str, name: str, sources: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A MUSDB18-HQ track folder from ``{drums, bass, other, vocals: (samples, channels)}``: 16-bit
    stems and ``mixture.wav`` exactly their sum (both are multiples of 2**-15)."""
    import soundfile as sf

    folder = Path(root) / subset / name
    folder.mkdir(parents=True, exist_ok=True)
    q = {k: (np.round(np.asarray(sources[k], np.float64) * 32768).clip(-32768, 32767) / 32768) for k in SOURCES}
    q["mixture"] = q["drums"] + q["bass"] + q["other"] + q["vocals"]
    assert np.abs(q["mixture"]).max() < 1.0
    for k in STEM_ORDER:
        sf.write(folder / f"{k}.wav", q[k].astype(np.float32), RATE, subtype="PCM_16")
    return q


def synth_sources(rng: np.random.Generator, seconds: float) -> dict[str, np.ndarray]:
    stems = synth_track(rng, int(round(seconds * RATE)), RATE, 2)
    return {name: stems[STEM_ORDER.index(name)].astype(np.float64) for name in SOURCES}


def medians_of(result) -> dict[tuple[str, str], float]:
    return {(r.target, r.metric): float(r.score) for r in result.medians.itertuples()}


def stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


# -- 1. equal to museval.eval_mus_track ---------------------------------------------------------------
#: the JSON's values are museval's, rounded to 1e-5 dB by its TrackStore: the torch implementation
#: (1e-9 dB from museval before rounding) may land on the other side of a rounding boundary
TOLERANCE = {"museval": 0.0, "bsseval": 1.1e-5}


@needs_ffmpeg
@pytest.mark.parametrize("metrics", ["bsseval", "museval"])
def test_json_equals_museval_eval_mus_track(tmp_path, metrics):
    import museval

    root = tmp_path / "corpus"
    make_wav_corpus(root, n_train=0, n_test=2, seconds=3, subtype="PCM_16")
    names = track_names("test", 2)
    tracks = mus_tracks(root)
    assert sorted(tracks) == names
    tol, suffix = TOLERANCE[metrics], "-museval" if metrics == "museval" else ""

    # all five targets
    res = run_eval(model="oracle_irm1", root=str(root), out=str(tmp_path / "out"), save_estimates=True, metrics=metrics)
    assert res.method == "oracle_irm1" + suffix
    assert res.folder == tmp_path / "out" / "musdb18hq" / ("oracle_irm1" + suffix)
    assert sorted(res.evaluated) == names and res.reused == [] and res.skipped == {}
    store = museval.EvalStore()
    for name in names:
        est = read_estimates(res.folder, name)
        assert sorted(est) == sorted(FIVE)
        assert all(a.shape == (3 * RATE, 2) and a.dtype == np.float32 for a in est.values())
        theirs = museval.eval_mus_track(tracks[name], est)
        ours = load_json(res.folder / "test" / f"{name}.json")
        assert [t["name"] for t in ours["targets"]] == FIVE
        assert all(len(t["frames"]) == 3 for t in ours["targets"])
        # every frame's SDR/SIR/ISR/SAR: museval's exactly (to its rounding, for ours)
        assert assert_same_scores(ours, load_json(theirs.json), tol) == 0
        assert all(math.isfinite(v) for t in FIVE for m in METRICS for v in frame_values(ours, t, m))
        store.add_track(theirs)
    # the medians are museval's own aggregation of museval's scores
    expected = store.agg_frames_tracks_scores()
    got = medians_of(res)
    assert set(got) == {(t, m) for t in FIVE for m in METRICS}
    for (target, metric), value in got.items():
        assert value == pytest.approx(float(expected[(target, metric)]), abs=1e-12 + tol)
    assert set(res.medians["tracks"]) == {2}
    assert got[("vocals", "SDR")] > 5.0  # an oracle mask separates the sines well

    # vocals only: museval's vocals/accompaniment scenario
    res = run_eval(model="mixture", targets=VA, root=str(root), out=str(tmp_path / "out"), save_estimates=True,
                   metrics=metrics)
    assert res.method == "mixture-vocals+accompaniment" + suffix
    assert res.folder == tmp_path / "out" / "musdb18hq" / ("mixture-vocals+accompaniment" + suffix)
    for name in names:
        est = read_estimates(res.folder, name)
        assert sorted(est) == sorted(VA)
        np.testing.assert_array_equal(est["vocals"], tracks[name].audio.astype(np.float32))  # the mixture
        ours = load_json(res.folder / "test" / f"{name}.json")
        assert [t["name"] for t in ours["targets"]] == VA
        assert assert_same_scores(ours, load_json(museval.eval_mus_track(tracks[name], est).json), tol) == 0
    # the comparison table holds both methods evaluated on these tracks
    assert set(res.table["method"]) == {"mixture-vocals+accompaniment" + suffix, "oracle_irm1" + suffix}
    row = res.table.set_index(["method", "target"]).loc[("oracle_irm1" + suffix, "vocals")]
    assert row["SDR"] == pytest.approx(got[("vocals", "SDR")])
    assert medians_of(res)[("vocals", "SDR")] < row["SDR"]


# -- 2. SiSEC aggregation ----------------------------------------------------------------------------
def frames_df(spec: dict[tuple[str, str, str], list[float]]) -> pd.DataFrame:
    rows = [
        {"time": float(i), "target": target, "metric": metric, "score": float(v), "track": track}
        for (track, target, metric), values in spec.items() for i, v in enumerate(values)
    ]
    return pd.DataFrame(rows, columns=["time", "target", "metric", "score", "track"])


def sisec_by_hand(df: pd.DataFrame) -> dict[tuple[str, str], tuple[float, int]]:
    """median over tracks of np.nanmedian over frames, all-NaN tracks left out."""
    out = {}
    for (target, metric), block in df.groupby(["target", "metric"]):
        per_track = []
        for _, frames in block.groupby("track"):
            v = frames["score"].to_numpy(float)
            if np.isfinite(v).any():
                per_track.append(float(np.nanmedian(v)))
        out[(target, metric)] = (float(np.median(per_track)) if per_track else math.nan, len(per_track))
    return out


def museval_medians(df: pd.DataFrame) -> pd.Series:
    import museval

    store = museval.EvalStore(frames_agg="median", tracks_agg="median")
    for _, block in df.groupby("track", sort=False):
        store.add_track(block.reset_index(drop=True))
    return store.agg_frames_tracks_scores()


def test_sisec_medians_by_hand():
    nan = math.nan
    df = frames_df({
        # vocals SDR: A -> 3, B all NaN (left out), C -> 8: median 5.5 over 2 tracks (3 if B counted as 0)
        ("A", "vocals", "SDR"): [1, nan, 3, 10], ("B", "vocals", "SDR"): [nan, nan, nan], ("C", "vocals", "SDR"): [8, nan],
        # vocals SIR: 1, 4, 8 -> 4 over 3 tracks
        ("A", "vocals", "SIR"): [0, 2], ("B", "vocals", "SIR"): [4, nan], ("C", "vocals", "SIR"): [nan, 7, 9],
        # bass SDR: only C has values -> 4, never NaN
        ("A", "bass", "SDR"): [nan, nan], ("B", "bass", "SDR"): [nan], ("C", "bass", "SDR"): [2, 4, 6],
        # drums SDR: NaN everywhere -> NaN, 0 tracks
        ("A", "drums", "SDR"): [nan], ("B", "drums", "SDR"): [nan, nan], ("C", "drums", "SDR"): [nan],
    })
    med = aggregate.sisec_medians(df)
    assert list(med.columns) == ["target", "metric", "score", "tracks"]
    got = {(r.target, r.metric): (r.score, r.tracks) for r in med.itertuples()}
    assert got[("vocals", "SDR")] == (5.5, 2)
    assert got[("vocals", "SIR")] == (4.0, 3)
    assert got[("bass", "SDR")] == (4.0, 1)
    assert math.isnan(got[("drums", "SDR")][0]) and got[("drums", "SDR")][1] == 0
    # rows in museval's target order, then SDR, SIR, ISR, SAR
    assert list(zip(med["target"], med["metric"])) == [
        ("vocals", "SDR"), ("vocals", "SIR"), ("drums", "SDR"), ("bass", "SDR")]
    # museval's own aggregation agrees
    ref = museval_medians(df)
    for key, (score, _) in got.items():
        assert same_value(float(ref[key]), float(score)), key
    # per-track medians (NaN frames skipped) and the MLflow metric names
    tm = aggregate.track_medians(df).set_index(["track", "target", "metric"])["score"]
    assert tm[("A", "vocals", "SDR")] == 3.0 and math.isnan(tm[("B", "vocals", "SDR")])
    assert aggregate.metric_dict(med)["test/vocals/SDR"] == 5.5
    assert aggregate.metric_dict(med, "test_wiener1")["test_wiener1/bass/SDR"] == 4.0


def test_sisec_medians_random_nan_patterns_match_museval(tmp_path):
    import museval

    rng = np.random.default_rng(7)
    spec = {}
    for t in range(7):
        for target in ("vocals", "drums", "bass", "other", "accompaniment"):
            n = int(rng.integers(1, 9))
            for metric in METRICS:
                v = rng.normal(5, 4, n)
                v[rng.random(n) < 0.3] = np.nan
                if rng.random() < 0.2:
                    v[:] = np.nan  # a silent stem: every frame NaN
                spec[(f"Track {t}", target, metric)] = v.tolist()
    df = frames_df(spec)
    med = aggregate.sisec_medians(df)
    expected = sisec_by_hand(df)
    ref = museval_medians(df)
    assert len(med) == len(expected) == 20
    for r in med.itertuples():
        score, count = expected[(r.target, r.metric)]
        assert r.tracks == count
        assert same_value(float(r.score), score)
        assert same_value(float(r.score), float(ref[(r.target, r.metric)]))
        if count:
            assert math.isfinite(r.score)

    # the same data through museval JSON files (TrackStore quantises to 1e-5) and load_scores
    folder = tmp_path / "method"
    (folder / "test").mkdir(parents=True)
    for track, block in df.groupby("track"):
        ts = museval.TrackStore(track_name=track, win=1, hop=1)
        for target, tb in block.groupby("target", sort=False):
            lengths = {len(tb[tb.metric == m]) for m in METRICS}
            assert len(lengths) == 1  # museval's format: the four metrics per frame
            ts.add_target(target, {m: tb[tb.metric == m]["score"].tolist() for m in METRICS})
        ts.validate()
        (folder / "test" / f"{track}.json").write_text(ts.json)
    loaded = aggregate.load_scores(sorted((folder / "test").glob("*.json")))
    assert set(loaded.columns) >= {"track", "target", "metric", "time", "score"}
    assert loaded["score"].dtype == np.float64
    store = museval.EvalStore()
    store.add_eval_dir(folder)
    ref = store.agg_frames_tracks_scores()
    med = aggregate.sisec_medians(loaded)
    for r in med.itertuples():
        assert same_value(float(r.score), float(ref[(r.target, r.metric)]))
        assert r.score == pytest.approx(expected[(r.target, r.metric)][0], abs=1e-5, nan_ok=True)
        assert r.tracks == expected[(r.target, r.metric)][1]


# -- 3. silent reference stems -------------------------------------------------------------------------
@needs_ffmpeg
def test_silent_reference_stems(tmp_path):
    import museval

    root = tmp_path / "corpus"
    rng = np.random.default_rng(3)
    silent_bass, late_vocals = "Tiny - Test 01", "Tiny - Test 02"
    src = synth_sources(rng, 3.0)
    src["bass"][:] = 0.0  # a song without bass
    write_track(root, "test", silent_bass, src)
    src = synth_sources(rng, 3.0)
    src["vocals"][: int(1.5 * RATE)] = 0.0  # the singer starts at 1.5 s
    write_track(root, "test", late_vocals, src)

    res = run_eval(model="oracle_irm2", root=str(root), out=str(tmp_path / "out"), save_estimates=True)
    assert sorted(res.evaluated) == [silent_bass, late_vocals]
    tracks = mus_tracks(root)

    # whole-track silent bass: its four-source scenario is all NaN (museval itself raises there)
    ours = load_json(res.folder / "test" / f"{silent_bass}.json")
    assert [t["name"] for t in ours["targets"]] == FIVE
    for target in ("drums", "bass", "other"):
        for m in METRICS:
            values = frame_values(ours, target, m)
            assert len(values) == 3 and all(math.isnan(v) for v in values), (target, m)
    for target in VA:
        assert all(math.isfinite(v) for m in METRICS for v in frame_values(ours, target, m))
    est = read_estimates(res.folder, silent_bass)
    assert not est["bass"].any()  # the oracle mask of a silent source is 0
    with pytest.raises(ValueError, match="silent"):
        museval.eval_mus_track(tracks[silent_bass], est)
    va = museval.eval_mus_track(tracks[silent_bass], {t: est[t] for t in VA})
    assert [t["name"] for t in load_json(va.json)["targets"]] == VA
    for target, theirs in zip(VA, load_json(va.json)["targets"]):
        (mine,) = [t for t in ours["targets"] if t["name"] == target]
        assert assert_same_scores({"museval_version": 0, "targets": [mine]},
                                  {"museval_version": 0, "targets": [theirs]}, TOLERANCE["bsseval"]) == 0

    # vocals silent for 1.5 s: exactly museval's frames, the first one NaN in both scenarios
    ours = load_json(res.folder / "test" / f"{late_vocals}.json")
    theirs = load_json(museval.eval_mus_track(tracks[late_vocals], read_estimates(res.folder, late_vocals)).json)
    assert assert_same_scores(ours, theirs, TOLERANCE["bsseval"]) == 5 * 4  # frame 0 of each target
    for target in FIVE:
        for m in METRICS:
            first, *rest = frame_values(ours, target, m)
            assert math.isnan(first) and all(math.isfinite(v) for v in rest), (target, m)

    # finite medians everywhere; the silent scenario's track is left out of drums/bass/other
    got = medians_of(res)
    assert len(got) == 20 and all(math.isfinite(v) for v in got.values()), got
    tracks_used = {(r.target, r.metric): r.tracks for r in res.medians.itertuples()}
    for m in METRICS:
        assert tracks_used[("vocals", m)] == tracks_used[("accompaniment", m)] == 2
        for target in ("drums", "bass", "other"):
            assert tracks_used[(target, m)] == 1
            assert got[(target, m)] == pytest.approx(float(np.nanmedian(frame_values(ours, target, m))), abs=1e-12)
    csv = pd.read_csv(res.folder / "scores.csv")
    assert len(csv) == 20 and np.isfinite(csv["score"]).all()
    for r in csv.itertuples():
        assert r.score == pytest.approx(got[(r.target, r.metric)], abs=5e-5)
    assert np.isfinite(res.table[list(METRICS)].to_numpy(float)).all()


# -- 4. tracks shorter than a museval window -------------------------------------------------------------
@needs_ffmpeg
def test_short_track_is_skipped_with_a_warning(tmp_path, capsys):
    rng = np.random.default_rng(4)
    root = tmp_path / "corpus"
    short, normal = "Tiny - Test 01", "Tiny - Test 02"
    write_track(root, "test", short, synth_sources(rng, 0.5))
    write_track(root, "test", normal, synth_sources(rng, 2.0))
    capsys.readouterr()
    res = run_eval(model="mixture", targets=VA, root=str(root), out=str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert f"warning: test track {short!r}" in err and "shorter than one 1 s museval window" in err
    assert normal not in err
    assert list(res.skipped) == [short] and "0.50 s long" in res.skipped[short]
    assert res.evaluated == [normal] and res.reused == []
    assert not (res.folder / "test" / f"{short}.json").exists()
    data = load_json(res.folder / "test" / f"{normal}.json")
    assert [len(t["frames"]) for t in data["targets"]] == [2, 2]
    assert set(res.medians["tracks"]) == {1}
    assert set(pd.read_csv(res.folder / "tracks.csv")["track"]) == {normal}
    # rerun: the short track is skipped again, the other reused
    res = run_eval(model="mixture", targets=VA, root=str(root), out=str(tmp_path / "out"))
    assert res.reused == [normal] and res.evaluated == [] and list(res.skipped) == [short]

    # nothing long enough: a clear error
    root2 = tmp_path / "short-only"
    for name in track_names("test", 2):
        write_track(root2, "test", name, synth_sources(rng, 0.5))
    with pytest.raises(LightningSepError, match="No test track of .* is long enough"):
        run_eval(model="mixture", targets=VA, root=str(root2), out=str(tmp_path / "out2"))
    capsys.readouterr()
    assert main(["eval", "--model", "oracle_irm2", "--root", str(root2), "--out", str(tmp_path / "out2"),
                 "--no-mlflow", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "lightning-sep: error: No test track" in err and "long enough" in err
    assert all(f"warning: test track {n!r}" in err for n in track_names("test", 2))


# -- 5. resuming a killed evaluation ---------------------------------------------------------------------
@needs_ffmpeg
def test_killed_evaluation_resumes_without_recomputing(tmp_path):
    root = tmp_path / "corpus"
    make_wav_corpus(root, n_train=0, n_test=4, seconds=3)
    names = track_names("test", 4)
    out = tmp_path / "out"
    test_dir = out / "musdb18hq" / "oracle_irm2" / "test"
    cmd = [sys.executable, "-m", "lightning_sep.cli", "eval", "--model", "oracle_irm2", "--root", str(root),
           "--workers", "1", "--out", str(out)]
    env = os.environ.copy()  # the test's MLFLOW_TRACKING_URI and LIGHTNING_SEP_DATA
    assert env["MLFLOW_TRACKING_URI"].startswith("sqlite:///") and "LIGHTNING_SEP_DATA" in env

    def finished() -> list[Path]:
        return sorted(p for p in test_dir.glob("*.json") if not p.name.startswith("."))

    with open(tmp_path / "first-run.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            deadline = time.monotonic() + 300
            while not finished():
                assert proc.poll() is None, (tmp_path / "first-run.log").read_text()
                assert time.monotonic() < deadline, "no JSON after 300 s"
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = finished()
    assert 1 <= len(done) < 4, "the first run was not interrupted"  # really killed mid-way
    stamps = {}
    for path in done:
        data = load_json(path)  # parses: never a half-written file
        assert [t["name"] for t in data["targets"]] == FIVE
        assert all(len(t["frames"]) == 3 for t in data["targets"])
        assert json_is_complete(path, FIVE, 3)
        stamps[path.stem] = stamp(path)

    res = run_eval(model="oracle_irm2", root=str(root), out=str(out), workers=2)
    assert sorted(res.reused) == sorted(stamps)
    assert sorted(res.evaluated) == sorted(set(names) - set(stamps))
    assert finished() == [test_dir / f"{n}.json" for n in names]
    for name, before in stamps.items():
        assert stamp(test_dir / f"{name}.json") == before, f"{name} was rewritten"
    for path in finished():
        assert json_is_complete(path, FIVE, 3)
    assert not (test_dir.parent / ".work").exists()
    assert not [p for p in test_dir.iterdir() if p.name.startswith(".")]
    assert set(res.medians["tracks"]) == {4}
    # a third run has nothing left to do
    res = run_eval(model="oracle_irm2", root=str(root), out=str(out), workers=1)
    assert sorted(res.reused) == names and res.evaluated == []


# -- 6. worker processes do not change the scores ------------------------------------------------------------
@needs_ffmpeg
def test_workers_give_byte_identical_jsons(tmp_path):
    root = tmp_path / "corpus"
    make_wav_corpus(root, n_train=0, n_test=3, seconds=2)
    results = {w: run_eval(model="oracle_irm2", root=str(root), out=str(tmp_path / f"out{w}"), workers=w) for w in (1, 2)}
    names = track_names("test", 3)
    for w, res in results.items():
        assert sorted(res.evaluated) == names and res.folder == tmp_path / f"out{w}" / "musdb18hq" / "oracle_irm2"
    a, b = results[1].folder, results[2].folder
    for name in names:
        one, two = (a / "test" / f"{name}.json").read_bytes(), (b / "test" / f"{name}.json").read_bytes()
        assert one == two, name
        assert [len(t["frames"]) for t in load_json(one.decode())["targets"]] == [2] * 5
    for file in ("scores.csv", "tracks.csv", "manifest.json"):
        assert (a / file).read_bytes() == (b / file).read_bytes(), file


# -- 7. MLflow ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_home):
    """A one-epoch skip-filter run in its own MLflow store, on a tiny corpus (2 test tracks)."""
    return train_tiny_skipfilter(tmp_path_factory.mktemp("trained"), data_home, n_test=2)


def _check_logged(client, run_id: str, prefix: str, folder: Path, label: str, names: list[str], targets) -> None:
    run = client.get_run(run_id)
    csv = pd.read_csv(folder / "scores.csv")
    assert sorted(zip(csv["target"], csv["metric"])) == sorted((t, m) for t in targets for m in METRICS)
    logged = {k: v for k, v in run.data.metrics.items() if k.startswith(prefix + "/")}
    assert set(logged) == {f"{prefix}/{t}/{m}" for t in targets for m in METRICS}
    for r in csv.itertuples():
        assert logged[f"{prefix}/{r.target}/{r.metric}"] == pytest.approx(r.score, abs=5.1e-5)
    assert run.data.tags[f"{prefix}.dataset"] == "musdb18hq"
    assert run.data.tags[f"{prefix}.tracks"] == str(len(names))
    assert run.data.tags[f"{prefix}.results"] == str(folder)
    jsons = sorted(a.path for a in client.list_artifacts(run_id, f"museval/{label}/test"))
    assert jsons == [f"museval/{label}/test/{n}.json" for n in names]
    files = {a.path for a in client.list_artifacts(run_id, f"museval/{label}")}
    assert {f"museval/{label}/{f}" for f in ("scores.csv", "tracks.csv", "comparison.csv", "manifest.json")} <= files
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, f"museval/{label}/test/{names[0]}.json", tmp)
        assert Path(local).read_bytes() == (folder / "test" / f"{names[0]}.json").read_bytes()


@needs_ffmpeg
def test_eval_logs_to_the_training_run(trained, tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained.uri)
    client = MlflowClient(trained.uri)
    names = track_names("test", 2)
    out = tmp_path / "out"
    label = f"skipfilter-{trained.run_id[:8]}"
    capsys.readouterr()
    assert main(["eval", "--model", "skipfilter", "--root", str(trained.corpus), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"run {trained.run_id}" in printed and f"Logged to MLflow run {trained.run_id}" in printed
    folder = out / "musdb18hq" / label
    _check_logged(client, trained.run_id, "test", folder, label, names, VA)
    manifest = load_json(folder / "manifest.json")
    assert manifest["settings"]["checkpoint"] == str(trained.ckpt)
    assert manifest["settings"]["method"] == "skipfilter"
    before = {k: v for k, v in client.get_run(trained.run_id).data.metrics.items() if k.startswith("test/")}

    # the Wiener post-filter: its own folder and its own metric names
    assert main(["eval", "--model", "skipfilter", "--root", str(trained.corpus), "--out", str(out),
                 "--no-progress", "--wiener", "1"]) == 0
    _check_logged(client, trained.run_id, "test_wiener1", out / "musdb18hq" / f"{label}-wiener1",
                  f"{label}-wiener1", names, VA)
    after = {k: v for k, v in client.get_run(trained.run_id).data.metrics.items() if k.startswith("test/")}
    assert after == before
    # the training run is still the only run of the store and still FINISHED
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_id for r in runs] == [trained.run_id] and runs[0].info.status == "FINISHED"

    # --ckpt of this run also logs to it (the run is found from the checkpoint's folder)
    res = run_eval(ckpt=str(trained.ckpt), root=str(trained.corpus), out=str(out), log_mlflow=True)
    assert res.run_id == trained.run_id and res.method == label and sorted(res.reused) == names


@needs_ffmpeg
def test_reference_method_gets_its_own_run(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    root = tmp_path / "corpus"
    make_wav_corpus(root, n_train=0, n_test=2, seconds=2)
    names = track_names("test", 2)
    # run from another folder than the store's: the artifacts still go beside the store
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    res = run_eval(model="oracle_irm2", targets=VA, root=str(root), out=str(tmp_path / "out"), log_mlflow=True)
    label = "oracle_irm2-vocals+accompaniment"
    assert res.method == label and res.run_id
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run = client.get_run(res.run_id)
    assert run.data.tags["model.family"] == "oracle_irm2"
    assert run.data.tags["lightning_sep.stage"] == "reference"
    assert run.data.tags["data.dataset"] == "musdb18hq"
    assert run.info.status == "FINISHED"
    _check_logged(client, res.run_id, "test", res.folder, label, names, VA)
    for key, value in medians_of(res).items():
        assert run.data.metrics[f"test/{key[0]}/{key[1]}"] == value
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == "lightning-sep"
    store_dir = tmp_path / "mlruns"
    assert exp.artifact_location == (store_dir / "artifacts").as_uri()
    assert not (elsewhere / "mlruns").exists()
    # the same evaluation again: the same run, nothing recomputed
    again = run_eval(model="oracle_irm2", targets=VA, root=str(root), out=str(tmp_path / "out"), log_mlflow=True)
    assert again.run_id == res.run_id and again.evaluated == [] and sorted(again.reused) == names
    assert len(client.search_runs([run.info.experiment_id])) == 1
    # another reference method: another run
    mix = run_eval(model="mixture", targets=VA, root=str(root), out=str(tmp_path / "out"), log_mlflow=True)
    assert mix.run_id != res.run_id
    assert client.get_run(mix.run_id).data.tags["model.family"] == "mixture"
    # a model asked for by name finds no training run among the reference runs
    with pytest.raises(LightningSepError, match="No finished training run of MODEL=skipfilter.*make train MODEL=skipfilter"):
        run_eval(model="skipfilter", root=str(root), out=str(tmp_path / "out"))


# -- 8. bad input ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small") / "corpus"
    make_wav_corpus(root, n_train=0, n_test=1, seconds=1.5)
    return root


@needs_ffmpeg
def test_bad_model_choices(small_corpus, trained, tmp_path, capsys):
    root = str(small_corpus)
    out = str(tmp_path / "out")
    missing = tmp_path / "missing.ckpt"
    msg = eval_error(capsys, "--ckpt", str(missing), "--root", root, "--out", out)
    assert f"Checkpoint {missing}: no such file" in msg

    msg = eval_error(capsys, "--model", "dae", "--ckpt", str(trained.ckpt), "--root", root, "--out", out)
    assert "belongs to MODEL=skipfilter, not MODEL=dae" in msg and str(trained.ckpt) in msg

    msg = eval_error(capsys, "--model", "skipfilter", "--root", root, "--out", out)
    assert "No MLflow experiment 'lightning-sep'" in msg
    assert "train one with `make train MODEL=skipfilter`" in msg

    msg = eval_error(capsys, "--model", "nosuchmodel", "--root", root, "--out", out)
    assert "Unknown MODEL 'nosuchmodel'" in msg
    for name in ("dae", "mss_dae", "skipfilter", "mixture", "oracle_ibm", "oracle_irm1", "oracle_irm2"):
        assert name in msg

    msg = eval_error(capsys, "--model", "oracle_irm2", "--ckpt", str(trained.ckpt), "--root", root, "--out", out)
    assert "reference method" in msg
    msg = eval_error(capsys, "--model", "skipfilter", "--targets", "vocals", "--root", root, "--out", out)
    assert "--targets" in msg
    msg = eval_error(capsys, "--model", "oracle_irm2", "--targets", "vocals", "--root", root, "--out", out)
    assert "at least two targets" in msg
    msg = eval_error(capsys, "--model", "oracle_irm2", "--tracks", "Nope", "--root", root, "--out", out)
    assert "Unknown test track 'Nope'" in msg and "Tiny - Test 01" in msg
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.json"))


@needs_ffmpeg
def test_bad_out_and_workers(small_corpus, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    msg = eval_error(capsys, "--model", "mixture", "--root", str(small_corpus), "--out", str(blocker / "results"))
    assert "--out" in msg and "cannot write there" in msg and str(blocker) in msg

    msg = eval_error(capsys, "--model", "mixture", "--root", str(small_corpus), "--workers", "0")
    assert "EVAL_WORKERS=0" in msg and "at least 1" in msg
    with pytest.raises(LightningSepError, match="at least 1"):
        run_eval(model="mixture", root=str(small_corpus), workers=-1)


@needs_ffmpeg
def test_other_settings_in_the_same_folder_need_overwrite(small_corpus, tmp_path, capsys):
    name = track_names("test", 1)[0]
    out = tmp_path / "out"
    common = ["--model", "oracle_irm2", "--targets", "vocals", "accompaniment", "--root", str(small_corpus),
              "--out", str(out), "--no-mlflow", "--no-progress"]
    assert main(["eval", *common]) == 0
    folder = out / "musdb18hq" / "oracle_irm2-vocals+accompaniment"
    path = folder / "test" / f"{name}.json"
    first = stamp(path)
    first_bytes = path.read_bytes()
    assert load_json(folder / "manifest.json")["settings"]["chunk_seconds"] == 20.0

    msg = eval_error(capsys, *common, "--chunk-seconds", "1.25")
    assert str(folder) in msg and "chunk_seconds changed" in msg and "--overwrite" in msg
    assert stamp(path) == first  # nothing discarded
    assert load_json(folder / "manifest.json")["settings"]["chunk_seconds"] == 20.0

    res = run_eval(model="oracle_irm2", targets=VA, root=str(small_corpus), out=str(out), chunk_seconds=1.25, overwrite=True)
    assert res.evaluated == [name] and res.reused == []
    assert stamp(path) != first
    assert load_json(folder / "manifest.json")["settings"]["chunk_seconds"] == 1.25
    # two chunks with a 1 s cross-fade: another estimate than one 20 s chunk
    assert path.read_bytes() != first_bytes
    # the same settings again: reused, no --overwrite needed
    res = run_eval(model="oracle_irm2", targets=VA, root=str(small_corpus), out=str(out), chunk_seconds=1.25)
    assert res.reused == [name] and res.evaluated == []


# -- 9. make eval --------------------------------------------------------------------------------------------------
def make_eval_command(*variables: str) -> list[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MODEL", "CKPT", "RUN_ID", "EVAL_WORKERS", "WIENER", "ARGS", "DATA", "MAKEFLAGS", "MFLAGS")}
    proc = subprocess.run(["make", "-n", "eval", *variables], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if "lightning-sep eval" in line]
    return shlex.split(line)


@pytest.mark.skipif(not shutil.which("make"), reason="make is not installed")
def test_make_eval_wiring():
    args = make_eval_command("MODEL=oracle_irm2", "EVAL_WORKERS=3")
    assert args[0].endswith(".venv/bin/lightning-sep") and args[1] == "eval"
    assert args[args.index("--model") + 1] == "oracle_irm2"
    assert args[args.index("--workers") + 1] == "3"
    assert args[args.index("--data") + 1] == "musdb"
    assert "--wiener" not in args and "--ckpt" not in args

    args = make_eval_command("CKPT=x.ckpt")
    assert args[args.index("--ckpt") + 1] == "x.ckpt"
    assert "--model" not in args and "--workers" not in args
    assert args[args.index("--wiener") + 1] == "0"

    args = make_eval_command("MODEL=skipfilter", "WIENER=1", "ARGS=--overwrite")
    assert args[args.index("--model") + 1] == "skipfilter"
    assert args[args.index("--wiener") + 1] == "1" and args[-1] == "--overwrite"

    args = make_eval_command()  # the default MODEL
    assert args[args.index("--model") + 1] == "skipfilter"


# -- 10. the acceptance test on the embedded corpus --------------------------------------------------------------
@pytest.mark.slow
@needs_ffmpeg
def test_oracle_beats_skipfilter_beats_mixture_on_the_embedded_corpus(tmp_path):
    from lightning_sep.cli import run

    cli = run(["fit", *config_args("skipfilter"), "--trainer.max_epochs", "3",
               "--trainer.enable_progress_bar", "false"])
    run_id = cli.trainer.logger.run_id
    out = str(tmp_path / "eval")
    oracle = evaluate(EvalSettings(model="oracle_irm2", targets=VA, out=out, progress=False))
    mixture = evaluate(EvalSettings(model="mixture", targets=VA, out=out, progress=False))
    model = evaluate(EvalSettings(model="skipfilter", out=out, progress=False))
    assert model.run_id == run_id and model.method == f"skipfilter-{run_id[:8]}"
    names = [f"Embedded - Test {i:02d}" for i in range(1, 5)]
    for res in (oracle, mixture, model):
        assert res.folder.parent.name == "embedded_musdb"
        assert sorted(res.evaluated) == names and res.skipped == {}
        assert set(res.medians["target"]) == set(VA) and set(res.medians["tracks"]) == {4}
    sdr = {res.method: medians_of(res) for res in (oracle, mixture, model)}
    for target in VA:
        o, s, m = (sdr[r.method][(target, "SDR")] for r in (oracle, model, mixture))
        assert o > s > m, (target, o, s, m)
    table = model.table
    assert set(table["method"]) == {oracle.method, mixture.method, model.method}
    for target in VA:
        block = table[table["target"] == target]
        assert list(block["method"]) == [oracle.method, model.method, mixture.method]  # sorted by SDR
        assert list(block["tracks"]) == [4, 4, 4]
