"""``lightning-sep separate`` (``make separate``) end to end, on a checkpoint trained here."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO, make_stems_corpus, needs_ffmpeg, synth_track, train_tiny_skipfilter
from lightning_sep.cli import main
from lightning_sep.separation.audio import read_audio
from lightning_sep.tracking.runs import resolve_checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_home) -> SimpleNamespace:
    """One short real training run (about 10 s on 2 CPU cores) in its own MLflow store.

    The per-test stores of conftest are empty: tests pass ``--ckpt`` explicitly, or point
    ``MLFLOW_TRACKING_URI`` at :attr:`uri` to find the run by ``--model``.
    """
    run = train_tiny_skipfilter(tmp_path_factory.mktemp("trained"), data_home, n_test=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", run.uri)
        resolved = resolve_checkpoint(model="skipfilter")
    assert resolved.family == "skipfilter" and resolved.path == run.ckpt.resolve()
    return SimpleNamespace(ckpt=str(resolved.path), uri=run.uri, run_id=resolved.run_id)


def write_mixture(path: Path, seconds: float, sample_rate: int, channels: int, seed: int = 0, subtype: str = "PCM_16") -> np.ndarray:
    """A synthetic mixture ``(samples, channels)`` written to ``path`` (wav or flac)."""
    rng = np.random.default_rng(seed)
    mixture = synth_track(rng, int(round(seconds * sample_rate)), sample_rate, channels)[0]
    sf.write(path, mixture, sample_rate, subtype=subtype)
    return mixture


def separate(*args: str) -> int:
    return main(["separate", *map(str, args), "--no-progress"])


def check_outputs(folder: Path, mixture: np.ndarray, sample_rate: int) -> dict[str, np.ndarray]:
    """``folder`` holds exactly vocals.wav and accompaniment.wav at the input's rate, channels and
    length, and they add up to ``mixture`` ``(samples, channels)``."""
    assert sorted(p.name for p in folder.iterdir()) == ["accompaniment.wav", "vocals.wav"]
    out = {}
    for target in ("vocals", "accompaniment"):
        info = sf.info(str(folder / f"{target}.wav"))
        assert info.samplerate == sample_rate, target
        assert info.channels == mixture.shape[1], target
        assert info.frames == mixture.shape[0], target
        assert info.subtype == "FLOAT"
        out[target], _ = sf.read(str(folder / f"{target}.wav"), dtype="float32", always_2d=True)
        assert np.isfinite(out[target]).all()
    np.testing.assert_allclose(out["vocals"] + out["accompaniment"], mixture, atol=1e-4)
    assert np.abs(out["vocals"]).max() > 1e-3  # something was separated: not all in one output
    assert np.abs(out["accompaniment"]).max() > 1e-3
    return out


def finished_outputs(out: Path) -> list[Path]:
    """Output folders that look finished (a visible folder with a wav in it)."""
    if not out.exists():
        return []
    return [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".") and any(p.glob("*.wav"))]


def error_line(capsys) -> str:
    """The one line the command printed on stderr (MLflow's own INFO lines when it creates a
    fresh store aside)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [l for l in err.strip().splitlines() if not re.match(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d INFO mlflow\.", l)]
    assert len(lines) == 1 and lines[0].startswith("lightning-sep: error: "), err
    return lines[0]


# -- formats --------------------------------------------------------------------------------------

def test_separate_a_stereo_wav_and_a_mono_16khz_flac(tmp_path, trained, capsys):
    wav = tmp_path / "song.wav"
    flac = tmp_path / "voice memo.flac"
    mix_wav = write_mixture(wav, 2.0, 44100, 2, seed=1)
    mix_flac = write_mixture(flac, 1.5, 16000, 1, seed=2)
    out = tmp_path / "separated"
    assert separate(wav, flac, "--out", out, "--ckpt", trained.ckpt) == 0
    printed = capsys.readouterr().out
    assert trained.ckpt in printed and "MODEL=skipfilter" in printed and "vocals, accompaniment" in printed
    assert sorted(p.name for p in out.iterdir()) == ["song", "voice memo"]  # nothing half-written beside them
    check_outputs(out / "song", mix_wav, 44100)
    flac_audio, _ = sf.read(str(flac), dtype="float32", always_2d=True)
    np.testing.assert_allclose(flac_audio, mix_flac, atol=1 / 32768)  # 16-bit
    check_outputs(out / "voice memo", flac_audio, 16000)


def test_separate_again_replaces_the_outputs_and_wiener_changes_them(tmp_path, trained):
    wav = tmp_path / "song.wav"
    mixture = write_mixture(wav, 1.5, 44100, 2, seed=3)
    out = tmp_path / "out"
    assert separate(wav, "--out", out, "--ckpt", trained.ckpt) == 0
    plain = check_outputs(out / "song", mixture, 44100)
    assert separate(wav, "--out", out, "--ckpt", trained.ckpt, "--wiener", "1", "--chunk-seconds", "0.5",
                    "--overlap-seconds", "0.1") == 0
    filtered = check_outputs(out / "song", mixture, 44100)
    assert not np.allclose(plain["vocals"], filtered["vocals"], atol=1e-3)
    assert [p.name for p in out.iterdir()] == ["song"]


def test_separate_finds_the_latest_run_of_the_model(tmp_path, trained, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained.uri)
    wav = tmp_path / "song.wav"
    mixture = write_mixture(wav, 1.0, 44100, 2, seed=4)
    assert separate(wav, "--out", tmp_path / "out", "--model", "skipfilter", "--subtype", "PCM_16") == 0
    assert trained.ckpt in capsys.readouterr().out
    for target in ("vocals", "accompaniment"):
        info = sf.info(str(tmp_path / "out" / "song" / f"{target}.wav"))
        assert (info.subtype, info.frames, info.channels) == ("PCM_16", mixture.shape[0], 2)


@needs_ffmpeg
def test_separate_an_mp3(tmp_path, trained):
    wav = tmp_path / "source.wav"
    original = write_mixture(wav, 2.0, 44100, 2, seed=5)
    mp3 = tmp_path / "tune.mp3"
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-i", str(wav), "-c:a", "libmp3lame", "-b:a", "192k",
                    str(mp3)], check=True)
    decoded, rate = read_audio(mp3)  # what the command separates
    assert rate == 44100 and decoded.shape[0] == 2
    assert abs(decoded.shape[1] - original.shape[0]) <= 1152  # at most one mp3 frame of padding (measured: 0)
    assert separate(mp3, "--out", tmp_path / "out", "--ckpt", trained.ckpt) == 0
    check_outputs(tmp_path / "out" / "tune", decoded.T, 44100)


@needs_ffmpeg
def test_separate_a_stem_mp4(tmp_path, trained):
    stems = make_stems_corpus(tmp_path / "musdb18", n_train=1, n_test=0, seconds=2.0)
    (name, written), = stems.items()
    track = tmp_path / "musdb18" / f"{name}.stem.mp4"
    decoded, rate = read_audio(track)  # the first stream: the mixture
    assert rate == 44100 and decoded.shape[0] == 2
    n = written.shape[1]
    assert abs(decoded.shape[1] - n) <= 2048  # AAC priming/padding
    # it is the mixture stream, not one of the stems
    k = min(n, decoded.shape[1])
    err = np.sum((decoded.T[:k] - written[0, :k]) ** 2) / np.sum(written[0, :k] ** 2)
    assert err < 0.05, err
    assert separate(track, "--out", tmp_path / "out", "--ckpt", trained.ckpt) == 0
    check_outputs(tmp_path / "out" / "Tiny - Train 01", decoded.T, 44100)


# -- errors ---------------------------------------------------------------------------------------

def test_a_missing_input_is_named(tmp_path, trained, capsys):
    good = tmp_path / "good.wav"
    write_mixture(good, 0.5, 44100, 2)
    out = tmp_path / "out"
    assert separate(good, tmp_path / "missing.wav", "--out", out, "--ckpt", trained.ckpt) == 2
    err = error_line(capsys)
    assert "missing.wav" in err and "no such file" in err
    assert not out.exists()  # every input is checked before anything is written


def test_an_unreadable_input_stops_every_input(tmp_path, trained, capsys):
    first, last = tmp_path / "first.wav", tmp_path / "last.flac"
    write_mixture(first, 0.5, 44100, 2)
    write_mixture(last, 0.5, 22050, 1)
    bad = tmp_path / "x.wav"
    bad.write_text("this is not audio\n")
    out = tmp_path / "out"
    assert separate(first, bad, last, "--out", out, "--ckpt", trained.ckpt) == 2
    err = error_line(capsys)
    assert "x.wav" in err and "cannot be read as audio" in err
    assert "first.wav" not in err and "last.flac" not in err
    assert finished_outputs(out) == [] and not out.exists()


def test_an_unwritable_output_folder_is_named(tmp_path, trained, capsys):
    wav = tmp_path / "song.wav"
    write_mixture(wav, 0.5, 44100, 2)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "separated"
    assert separate(wav, "--out", out, "--ckpt", trained.ckpt) == 2
    err = error_line(capsys)
    assert "--out" in err and str(out) in err and "cannot write there" in err
    assert blocker.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "mlruns") == ["a_file", "song.wav"]


def test_a_missing_checkpoint_is_named(tmp_path, capsys):
    wav = tmp_path / "song.wav"
    write_mixture(wav, 0.5, 44100, 2)
    out = tmp_path / "out"
    assert separate(wav, "--out", out, "--ckpt", tmp_path / "nope.ckpt") == 2
    err = error_line(capsys)
    assert "nope.ckpt" in err and "no such file" in err
    assert finished_outputs(out) == []
    assert not (out / "song").exists()


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path, capsys):
    wav = tmp_path / "song.wav"
    write_mixture(wav, 0.5, 44100, 2)
    fake = tmp_path / "model.ckpt"
    fake.write_bytes(b"definitely not a zip or a pickle")
    assert separate(wav, "--out", tmp_path / "out", "--ckpt", fake) == 2
    err = error_line(capsys)
    assert "model.ckpt" in err and "weights-only" in err
    assert finished_outputs(tmp_path / "out") == []


def test_a_checkpoint_of_another_family_is_refused(tmp_path, trained, capsys):
    wav = tmp_path / "song.wav"
    write_mixture(wav, 0.5, 44100, 2)
    out = tmp_path / "out"
    assert separate(wav, "--out", out, "--model", "dae", "--ckpt", trained.ckpt) == 2
    err = error_line(capsys)
    assert "belongs to MODEL=skipfilter" in err and "not MODEL=dae" in err
    assert finished_outputs(out) == []


def test_no_trained_run_says_to_train_one(tmp_path, capsys):
    wav = tmp_path / "song.wav"
    write_mixture(wav, 0.5, 44100, 2)
    out = tmp_path / "out"
    assert separate(wav, "--out", out, "--model", "skipfilter") == 2  # the per-test store is empty
    err = error_line(capsys)
    assert "train one" in err and "make train MODEL=skipfilter" in err
    assert finished_outputs(out) == []
    # the same once the experiment exists but holds no finished skipfilter run with a checkpoint
    import mlflow

    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.create_experiment("lightning-sep")
    run = client.create_run(exp, tags={"model.family": "skipfilter"})
    client.set_terminated(run.info.run_id, "FINISHED")
    assert separate(wav, "--out", out, "--model", "skipfilter") == 2
    err = error_line(capsys)
    assert "No finished training run of MODEL=skipfilter with a checkpoint" in err and "train one" in err


def test_no_model_at_all_says_which_to_give(tmp_path, capsys):
    wav = tmp_path / "song.wav"
    write_mixture(wav, 0.5, 44100, 2)
    assert separate(wav, "--out", tmp_path / "out") == 2
    err = error_line(capsys)
    assert "MODEL=" in err and "CKPT=" in err and "RUN_ID=" in err


def test_two_inputs_with_the_same_name_are_refused(tmp_path, trained, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_mixture(tmp_path / "a" / "song.wav", 0.5, 44100, 2)
    write_mixture(tmp_path / "b" / "song.flac", 0.5, 44100, 2)
    out = tmp_path / "out"
    assert separate(tmp_path / "a" / "song.wav", tmp_path / "b" / "song.flac", "--out", out, "--ckpt", trained.ckpt) == 2
    err = error_line(capsys)
    assert "'song'" in err and "rename" in err
    assert not out.exists()


# -- make separate --------------------------------------------------------------------------------

def make_dry_run(*variables: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL", "CKPT", "RUN_ID", "IN", "OUT", "WIENER", "ARGS")}
    proc = subprocess.run(["make", "-n", "separate", *variables], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_make_separate_passes_the_checkpoint_and_no_default_model():
    printed = make_dry_run("IN=a.wav", "CKPT=x.ckpt")
    line = next(l for l in printed.splitlines() if "lightning-sep separate" in l)
    assert "lightning-sep separate a.wav --out" in line
    assert "--out 'separated'" in line
    assert "--ckpt 'x.ckpt'" in line and "--wiener 0" in line
    assert "--model" not in line
    # a MODEL given on the command line is passed along (the command checks the checkpoint's family)
    line = next(l for l in make_dry_run("IN=a.wav", "CKPT=x.ckpt", "MODEL=dae", "OUT=o", "WIENER=1").splitlines()
                if "lightning-sep separate" in l)
    assert "--model dae" in line and "--ckpt 'x.ckpt'" in line and "--out 'o'" in line and "--wiener 1" in line
    # without CKPT or RUN_ID the default MODEL is used
    line = next(l for l in make_dry_run("IN=a.wav").splitlines() if "lightning-sep separate" in l)
    assert "--model skipfilter" in line and "--ckpt" not in line
