"""MUSDBDataModule on tiny corpora written by the tests (MUSDB18-HQ wav folders and .stem.mp4)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import STEM_ORDER, make_stems_corpus, make_wav_corpus, needs_ffmpeg
from datamodules import MUSDBDataModule
from datamodules import _musdb as musdb_io
from lightning_sep.errors import LightningSepError, UnknownNameError

HOP = 384
ROW = {name: i for i, name in enumerate(STEM_ORDER)}
SMALL = dict(segment_frames=16, samples_per_track=4, val_segment_frames=32, val_segments_per_track=3, batch_size=4)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """3 train + 1 test tracks of 4 s (MUSDB18-HQ layout) and a cache shared by this module's tests."""
    base = tmp_path_factory.mktemp("musdb")
    written = make_wav_corpus(base / "root", n_train=3, n_test=1, seconds=4.0)
    return base / "root", base / "cache", written


@pytest.fixture(autouse=True)
def _no_env_root(monkeypatch, tmp_path):
    monkeypatch.delenv("MUSDB_ROOT", raising=False)
    monkeypatch.setenv("LIGHTNING_SEP_DATA", str(tmp_path / "data_home"))  # never the repo's data/


@pytest.fixture
def count_decodes(monkeypatch):
    calls = []
    real = musdb_io.decode_track

    def counting(track, *args, **kwargs):
        calls.append(track.name)
        return real(track, *args, **kwargs)

    monkeypatch.setattr(musdb_io, "decode_track", counting)
    return calls


def make_dm(root, cache, **kwargs) -> MUSDBDataModule:
    args = dict(SMALL)
    args.update(kwargs)
    return MUSDBDataModule(root=str(root), cache_dir=str(cache), **args)


def ready(dm: MUSDBDataModule, stage: str = "fit") -> MUSDBDataModule:
    dm.prepare_data()
    dm.setup(stage)
    return dm


def expected_segment(written, key, channel, offset, length):
    """(5, length) stems from what the corpus builder wrote: one channel or the channel mean."""
    stems = written[key][:, offset : offset + length, :]  # (5, L, C)
    return stems.mean(-1) if channel is None else stems[..., channel]


# -- shapes, dtypes and values ---------------------------------------------------------------------
def test_front_end_is_plain_python():
    dm = MUSDBDataModule(hop_length=256, window="hann")
    fe = dm.front_end
    assert fe == {"sample_rate": 44100, "n_fft": 4096, "win_length": 2049, "hop_length": 256,
                  "window": "hann", "retained_bins": 744}
    assert all(type(v) in (int, str) for v in fe.values())
    assert dm.segment_samples == 127 * 256 and dm.source_names == ["vocals"] and dm.targets == ["vocals"]


@needs_ffmpeg
def test_mono_batches_shapes_and_values(corpus):
    root, cache, written = corpus
    targets = ["vocals", "drums", "accompaniment"]
    dm = ready(make_dm(root, cache, targets=targets))
    assert dm.root == root and dm.is_wav is True
    L, Lv = 15 * HOP, 31 * HOP

    mix, tgt = next(iter(dm.train_dataloader()))
    assert mix.shape == (4, L) and tgt.shape == (4, 3, L)
    assert mix.dtype == torch.float32 and tgt.dtype == torch.float32
    assert torch.equal(tgt[:, 2], mix - tgt[:, 0])  # accompaniment = mixture - vocals
    # the mixture is the sum of the four stems (each 16-bit quantised on its own)
    assert mix.abs().max() > 0.05

    vmix, vtgt = next(iter(dm.val_dataloader()))
    assert vmix.shape == (3, Lv) and vtgt.shape == (3, 3, Lv)  # 1 validation track x 3 segments
    # every validation item equals the audio the corpus builder wrote (mono = channel mean)
    ds = dm.valid_set
    for k, (t, channel, offset) in enumerate(ds.items):
        assert channel is None
        m, y = ds[k]
        exp = expected_segment(written, f"train/{ds.tracks.names[t]}", None, offset, Lv)
        np.testing.assert_allclose(m.numpy(), exp[0], atol=1e-6)
        np.testing.assert_allclose(y[0].numpy(), exp[ROW["vocals"]], atol=1e-6)
        np.testing.assert_allclose(y[1].numpy(), exp[ROW["drums"]], atol=1e-6)
        np.testing.assert_allclose(y[2].numpy(), exp[0] - exp[ROW["vocals"]], atol=1e-6)
    # training items come from the written tracks too (find the offset of one item)
    m, y = dm.train_set[0]
    name = dm.train_set.tracks.names[0]  # item 0 is from the first track
    full = written[f"train/{name}"].mean(-1)[0]
    hits = [o for o in range(full.size - L + 1) if abs(full[o] - m[0].item()) < 1e-6
            and np.allclose(full[o : o + L], m.numpy(), atol=1e-6)]
    assert hits


@needs_ffmpeg
def test_per_channel_batches(corpus):
    root, cache, written = corpus
    dm = ready(make_dm(root, cache, mono=False, targets=["accompaniment", "bass"]))
    L, Lv = 15 * HOP, 31 * HOP
    mix, tgt = next(iter(dm.train_dataloader()))
    assert mix.shape == (4, L) and tgt.shape == (4, 2, L)
    # validation: every channel of every segment is its own example
    ds = dm.valid_set
    assert len(ds) == len(dm.valid_tracks) * 3 * 2
    assert sorted({c for _, c, _ in ds.items}) == [0, 1]
    for k, (t, channel, offset) in enumerate(ds.items):
        m, y = ds[k]
        assert m.shape == (Lv,) and y.shape == (2, Lv)
        exp = expected_segment(written, f"train/{ds.tracks.names[t]}", channel, offset, Lv)
        np.testing.assert_allclose(m.numpy(), exp[0], atol=1e-6)
        np.testing.assert_allclose(y[0].numpy(), exp[0] - exp[ROW["vocals"]], atol=1e-6)
        np.testing.assert_allclose(y[1].numpy(), exp[ROW["bass"]], atol=1e-6)
    # the two channels differ (they are not the channel mean)
    a, b = ds[0][0], ds[1][0]
    assert not torch.allclose(a, b)
    # training mixtures for the model's statistics: every channel
    mixtures = list(dm.train_mixtures())
    assert len(mixtures) == len(dm.train_tracks)
    for name, x in zip(dm.train_tracks, mixtures):
        assert x.dtype == np.float32 and x.shape == (2, 4 * 44100)
        np.testing.assert_allclose(x, written[f"train/{name}"][0].T, atol=1e-6)


@needs_ffmpeg
def test_train_mixtures_mono(corpus):
    root, cache, written = corpus
    dm = make_dm(root, cache)
    mixtures = list(dm.train_mixtures())  # sets itself up when needed
    assert [x.shape for x in mixtures] == [(1, 4 * 44100)] * len(dm.train_tracks)
    for name, x in zip(dm.train_tracks, mixtures):
        assert x.dtype == np.float32
        np.testing.assert_allclose(x[0], written[f"train/{name}"][0].mean(-1), atol=1e-6)


@needs_ffmpeg
def test_random_track_mix_resums_the_mixture(corpus):
    root, cache, written = corpus
    names = ["drums", "bass", "other", "vocals"]
    dm = ready(make_dm(root, cache, targets=names + ["accompaniment"], random_track_mix=True, samples_per_track=8))
    mix, tgt = next(iter(dm.train_dataloader()))
    torch.testing.assert_close(mix, tgt[:, :4].sum(1), atol=1e-6, rtol=0)
    torch.testing.assert_close(tgt[:, 4], mix - tgt[:, 3], atol=1e-6, rtol=0)  # = drums + bass + other
    # every source is a real segment of that source, drawn on its own (track and offset)
    L = 15 * HOP

    def locate(segment, row):
        for name in dm.train_tracks:
            full = written[f"train/{name}"][ROW[row]].mean(-1)
            for o in np.flatnonzero(np.abs(full[: full.size - L + 1] - segment[0]) < 1e-6):
                if np.allclose(full[o : o + L], segment, atol=1e-6):
                    return name, int(o)
        raise AssertionError(f"{row} segment not found in the training tracks")

    places = [[locate(dm.train_set[k][1][j].numpy(), row) for j, row in enumerate(names)] for k in range(4)]
    assert all(len(set(p)) > 1 for p in places)
    again = ready(make_dm(root, cache, targets=["vocals"], random_track_mix=True, samples_per_track=8))
    assert torch.equal(again.train_set[5][0], dm.train_set[5][0])  # seeded: reproducible


@needs_ffmpeg
def test_training_is_reproducible_and_changes_each_epoch(corpus):
    root, cache, _ = corpus
    a = ready(make_dm(root, cache, seed=7))
    b = ready(make_dm(root, cache, seed=7))
    la, lb = a.train_dataloader(), b.train_dataloader()
    ea0, eb0 = [x for x, _ in la], [x for x, _ in lb]
    ea1 = [x for x, _ in la]
    assert len(ea0) == 2  # 2 train tracks x 4 segments / batch of 4
    assert all(torch.equal(x, y) for x, y in zip(ea0, eb0))
    assert not torch.equal(torch.cat(ea0), torch.cat(ea1))  # a new epoch draws new segments
    # Lightning's set_epoch picks the epoch explicitly
    la.sampler.set_epoch(0)
    assert all(torch.equal(x, y) for x, y in zip(ea0, [x for x, _ in la]))
    # worker processes give the same items (per-item seeding; the cache maps reopen in workers)
    w = ready(make_dm(root, cache, seed=7, num_workers=2))
    ew0 = [x for x, _ in w.train_dataloader()]
    assert all(torch.equal(x, y) for x, y in zip(ea0, ew0))
    c = ready(make_dm(root, cache, seed=8))
    assert not torch.equal(torch.cat(ea0), torch.cat([x for x, _ in c.train_dataloader()]))


@needs_ffmpeg
def test_validation_segments_fixed_across_epochs_and_instances(corpus):
    root, cache, _ = corpus
    a = ready(make_dm(root, cache))
    la = a.val_dataloader()
    e0 = [(x.clone(), y.clone()) for x, y in la]
    e1 = list(la)
    b = ready(make_dm(root, cache, seed=42))
    e2 = list(b.val_dataloader())
    assert len(e0) == len(e1) == len(e2) > 0
    for (x0, y0), (x1, y1), (x2, y2) in zip(e0, e1, e2):
        assert torch.equal(x0, x1) and torch.equal(y0, y1) and torch.equal(x0, x2) and torch.equal(y0, y2)
    # offsets: centred in equal parts of the track, distinct
    n, Lv = 4 * 44100, 31 * HOP
    assert [o for _, _, o in a.valid_set.items] == [int((j + 0.5) * n / 3 - Lv / 2) for j in range(3)]
    # the test set uses the same fixed scheme on test/
    ready(a, "test")
    assert a.test_tracks == ["Tiny - Test 01"] and len(a.test_set) == 3
    tx, ty = next(iter(a.test_dataloader()))
    assert tx.shape == (3, Lv) and ty.shape == (3, 1, Lv)


@needs_ffmpeg
def test_short_tracks_are_zero_padded_with_a_warning(corpus):
    root, cache, _ = corpus
    dm = make_dm(root, cache, val_segment_frames=600)  # 599 * 384 > 4 s
    dm.prepare_data()
    with pytest.warns(UserWarning, match="Tiny - Train"):
        dm.setup("fit")
    x, _ = dm.valid_set[0]
    assert len(dm.valid_set) == len(dm.valid_tracks)
    assert x.shape == (599 * HOP,) and torch.all(x[4 * 44100 :] == 0)


# -- the cache -------------------------------------------------------------------------------------
@needs_ffmpeg
def test_cache_reused_without_decoding(tmp_path, count_decodes):
    root = tmp_path / "root"
    make_wav_corpus(root, n_train=2, n_test=1, seconds=1.0)
    cache = tmp_path / "cache"
    a = ready(make_dm(root, cache))
    assert sorted(count_decodes) == ["Tiny - Test 01", "Tiny - Train 01", "Tiny - Train 02"]
    list(a.train_dataloader()), list(a.train_dataloader()), list(a.val_dataloader())
    assert len(count_decodes) == 3  # epochs read the cache
    count_decodes.clear()
    b = ready(make_dm(root, cache))  # a later run
    ready(b, "test")
    list(b.train_dataloader()), list(b.val_dataloader()), list(b.test_dataloader())
    assert count_decodes == []
    assert len(list(cache.glob("*.npy"))) == 3
    # setup without prepare_data still fills a missing entry (e.g. another node)
    for p in cache.glob("train-Tiny_-_Train_01.*.npy"):
        p.unlink()
    c = make_dm(root, cache)
    c.setup("fit")
    assert count_decodes == ["Tiny - Train 01"]


@needs_ffmpeg
def test_cache_invalidated_when_a_file_changes(tmp_path, count_decodes):
    root = tmp_path / "root"
    make_wav_corpus(root, n_train=2, n_test=1, seconds=1.0)
    cache = tmp_path / "cache"
    a = ready(make_dm(root, cache, targets=["vocals"]))
    before = [np.array(x) for x in a.train_mixtures()]
    count_decodes.clear()
    # edit one stem of a training track: louder vocals, written to the same file
    path = root / "train" / "Tiny - Train 01" / "vocals.wav"
    audio, rate = sf.read(path, dtype="float32")
    sf.write(path, audio * 2, rate, subtype="PCM_16")
    b = ready(make_dm(root, cache, targets=["vocals"]))
    assert count_decodes == ["Tiny - Train 01"]
    assert len(list(cache.glob("*.npy"))) == 3  # the stale entry was removed
    entry = np.load(b.train_set.tracks.paths[0])
    np.testing.assert_allclose(entry[ROW["vocals"]].T, np.round(audio * 2 * 32768) / 32768, atol=1e-6)
    after = [np.array(x) for x in b.train_mixtures()]
    np.testing.assert_array_equal(after[0], before[0])  # the mixture file did not change


@needs_ffmpeg
def test_resamples_to_the_requested_rate(tmp_path):
    root = tmp_path / "root"
    written = make_wav_corpus(root, n_train=2, n_test=0, seconds=1.0, sample_rate=22050)
    dm = ready(make_dm(root, tmp_path / "cache"))
    x = next(dm.train_mixtures())
    assert x.shape == (1, 44100)
    src = written[f"train/{dm.train_tracks[0]}"][0].mean(-1)
    np.testing.assert_allclose(x[0, ::2], src, atol=0.02)  # a 2x band-limited upsampling


# -- splits ----------------------------------------------------------------------------------------
@needs_ffmpeg
def test_held_out_validation_for_own_folder(tmp_path, capsys):
    root = tmp_path / "root"
    make_wav_corpus(root, n_train=6, n_test=0, seconds=0.5)
    cache = tmp_path / "cache"
    a = ready(make_dm(root, cache, validation_fraction=0.34, val_segment_frames=8))
    all_names = [f"Tiny - Train {i:02d}" for i in range(1, 7)]
    assert len(a.valid_tracks) == 2 and len(a.train_tracks) == 4
    assert not set(a.valid_tracks) & set(a.train_tracks)
    assert sorted(a.valid_tracks + a.train_tracks) == all_names
    a.setup("validate")
    out = capsys.readouterr().out
    assert out.count("Validation tracks: " + ", ".join(a.valid_tracks)) == 1  # announced once
    b = ready(make_dm(root, cache, validation_fraction=0.34, val_segment_frames=8))
    assert b.valid_tracks == a.valid_tracks  # seeded: the same every run
    # a tiny fraction still holds out one track; a huge one leaves one for training
    assert len(ready(make_dm(root, cache, validation_fraction=0.01, val_segment_frames=8)).valid_tracks) == 1
    assert len(ready(make_dm(root, cache, validation_fraction=0.99, val_segment_frames=8)).train_tracks) == 1
    # explicit tracks
    c = ready(make_dm(root, cache, validation_tracks=["Tiny - Train 02", "Tiny - Train 05"], val_segment_frames=8))
    assert c.valid_tracks == ["Tiny - Train 02", "Tiny - Train 05"]
    assert c.train_tracks == ["Tiny - Train 01", "Tiny - Train 03", "Tiny - Train 04", "Tiny - Train 06"]
    assert c.valid_set.tracks.names == c.valid_tracks
    with pytest.raises(UnknownNameError) as err:
        make_dm(root, cache, validation_tracks=["Nope - Nothing"]).setup("fit")
    assert "Nope - Nothing" in str(err.value) and "Tiny - Train 03" in str(err.value)


@needs_ffmpeg
def test_official_validation_split_is_used(tmp_path):
    root = tmp_path / "root"
    make_wav_corpus(root, n_train=3, n_test=0, seconds=0.5)
    (root / "train" / "Tiny - Train 02").rename(root / "train" / "Actions - One Minute Smile")
    dm = ready(make_dm(root, tmp_path / "cache", val_segment_frames=8))
    assert dm.valid_tracks == ["Actions - One Minute Smile"]
    assert dm.train_tracks == ["Tiny - Train 01", "Tiny - Train 03"]


# -- errors ----------------------------------------------------------------------------------------
def test_musdb_root_missing(monkeypatch, tmp_path):
    missing = tmp_path / "no-such-musdb"
    monkeypatch.setenv("MUSDB_ROOT", str(missing))
    dm = MUSDBDataModule(cache_dir=str(tmp_path / "cache"))
    with pytest.raises(LightningSepError) as err:
        dm.prepare_data()
    msg = str(err.value)
    assert str(missing) in msg and "MUSDB_ROOT" in msg and "does not exist" in msg
    assert "train/ and test/" in msg and "unset it" in msg and "embedded" in msg
    with pytest.raises(LightningSepError, match="root=.*does not exist"):
        MUSDBDataModule(root=str(missing)).setup("fit")


@needs_ffmpeg
def test_musdb_root_empty(monkeypatch, tmp_path):
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    monkeypatch.setenv("MUSDB_ROOT", str(empty))
    with pytest.raises(LightningSepError) as err:
        MUSDBDataModule(cache_dir=str(tmp_path / "cache")).prepare_data()
    msg = str(err.value)
    assert f"No MUSDB tracks found in {empty}" in msg and "mixture" in msg and ".stem.mp4" in msg


def test_bad_arguments():
    with pytest.raises(UnknownNameError) as err:
        MUSDBDataModule(targets=["vocals", "piano"])
    assert "'piano'" in str(err.value) and "accompaniment" in str(err.value) and "drums" in str(err.value)
    with pytest.raises(LightningSepError, match="more than once"):
        MUSDBDataModule(targets=["vocals", "vocals"])
    with pytest.raises(LightningSepError, match="validation_fraction"):
        MUSDBDataModule(validation_fraction=1.0)
    with pytest.raises(LightningSepError, match="retained_bins"):
        MUSDBDataModule(retained_bins=5000)
    with pytest.raises(LightningSepError, match="segment_frames"):
        MUSDBDataModule(segment_frames=1)


@needs_ffmpeg
def test_corrupt_stem_wav_is_named(tmp_path):
    root = tmp_path / "root"
    make_wav_corpus(root, n_train=2, n_test=0, seconds=0.5)
    bad = root / "train" / "Tiny - Train 02" / "vocals.wav"
    bad.write_bytes(b"this is not a wav file" * 100)
    with pytest.raises(LightningSepError) as err:
        make_dm(root, tmp_path / "cache").prepare_data()
    msg = str(err.value)
    assert str(bad) in msg and "corrupt" in msg and "Replace the file" in msg


@needs_ffmpeg
def test_corrupt_mixture_wav_is_named(tmp_path):
    root = tmp_path / "root"
    make_wav_corpus(root, n_train=2, n_test=0, seconds=0.5)
    bad = root / "train" / "Tiny - Train 01" / "mixture.wav"
    bad.write_bytes(os.urandom(3000))  # musdb probes the mixtures when it lists the tracks
    with pytest.raises(LightningSepError) as err:
        make_dm(root, tmp_path / "cache").prepare_data()
    assert str(bad) in str(err.value) and "corrupt" in str(err.value)


@needs_ffmpeg
def test_missing_stem_and_mismatched_stems_are_named(tmp_path):
    root = tmp_path / "root"
    make_wav_corpus(root, n_train=2, n_test=0, seconds=0.5)
    track = root / "train" / "Tiny - Train 01"
    (track / "bass.wav").unlink()
    with pytest.raises(LightningSepError, match=r"Tiny - Train 01 lacks bass\.wav"):
        make_dm(root, tmp_path / "cache").prepare_data()
    sf.write(track / "bass.wav", np.zeros((1000, 2), np.float32), 44100, subtype="PCM_16")
    with pytest.raises(LightningSepError, match=r"Track 'Tiny - Train 01'.*different lengths"):
        make_dm(root, tmp_path / "cache").prepare_data()
    sf.write(track / "bass.wav", np.zeros((11025, 2), np.float32), 22050, subtype="PCM_16")
    with pytest.raises(LightningSepError, match=r"Track 'Tiny - Train 01'.*different sample rates"):
        make_dm(root, tmp_path / "cache").prepare_data()


def test_ffmpeg_missing_gives_install_instructions(tmp_path):
    """Without ffmpeg/ffprobe on PATH, ``import musdb`` raises stempeg's RuntimeError at import;
    the DataModule turns it into a LightningSepError that says how to install them."""
    root = tmp_path / "root"
    make_wav_corpus(root, n_train=2, n_test=0, seconds=0.5)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python").symlink_to(sys.executable)
    code = textwrap.dedent(
        f"""
        import shutil, sys
        assert shutil.which("ffmpeg") is None and shutil.which("ffprobe") is None
        from datamodules import MUSDBDataModule  # importing the module needs no ffmpeg
        from lightning_sep.errors import LightningSepError
        try:
            import musdb
        except RuntimeError as err:
            print("MUSDB-IMPORT:", type(err).__name__, err)
        try:
            MUSDBDataModule(root={str(root)!r}, cache_dir={str(tmp_path / 'cache')!r}).prepare_data()
        except LightningSepError as err:
            print("ERROR:", err)
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PATH", "MUSDB_ROOT")}
    env["PATH"] = str(bindir)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "MUSDB-IMPORT: RuntimeError ffmpeg or ffprobe could not be found!" in proc.stdout
    error = proc.stdout.split("ERROR:", 1)[1]
    assert "ffmpeg/ffprobe not found on PATH" in error
    assert "make setup" in error and "apt-get install ffmpeg" in error and "brew install ffmpeg" in error


# -- MUSDB18 .stem.mp4 ----------------------------------------------------------------------------
@needs_ffmpeg
def test_stem_mp4_corpus(tmp_path):
    root = tmp_path / "stems"
    written = make_stems_corpus(root, n_train=2, n_test=1, seconds=3.0)
    dm = ready(make_dm(root, tmp_path / "cache", mono=False, targets=["vocals", "drums", "bass", "other"]))
    assert dm.is_wav is False and dm.dataset_name == "musdb18"
    assert len(dm.train_tracks) == 1 and len(dm.valid_tracks) == 1
    mix, tgt = next(iter(dm.train_dataloader()))
    assert mix.shape == (4, 15 * HOP) and tgt.shape == (4, 4, 15 * HOP)
    ready(dm, "test")
    for tracks, subset in ((dm.train_set.tracks, "train"), (dm.valid_set.tracks, "train"), (dm.test_set.tracks, "test")):
        for i, name in enumerate(tracks.names):
            decoded = np.asarray(tracks.array(i))
            ref = written[f"{subset}/{name}"].transpose(0, 2, 1)  # (5, 2, n)
            assert decoded.shape == ref.shape and decoded.dtype == np.float32
            for s in range(5):
                for c in range(2):
                    corr = np.corrcoef(decoded[s, c], ref[s, c])[0, 1]
                    assert corr > 0.9, (name, STEM_ORDER[s], c, corr)


@needs_ffmpeg
def test_truncated_stem_mp4_is_named(tmp_path):
    root = tmp_path / "stems"
    make_stems_corpus(root, n_train=2, n_test=0, seconds=1.0)
    bad = root / "train" / "Tiny - Train 02.stem.mp4"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.raises(LightningSepError) as err:
        make_dm(root, tmp_path / "cache").prepare_data()
    assert str(bad) in str(err.value)


# -- the embedded corpus (default root) -------------------------------------------------------------
@needs_ffmpeg
def test_default_root_is_the_embedded_corpus(monkeypatch, tmp_path):
    embedded = pytest.importorskip("datamodules.embedded_musdb")
    monkeypatch.setattr(
        embedded, "ensure_embedded_musdb",
        functools.partial(embedded.ensure_embedded_musdb, n_train=3, n_test=1, duration=2.0, progress=False),
    )
    dm = ready(MUSDBDataModule(**SMALL))
    assert dm.root is not None and str(dm.root).startswith(str(tmp_path / "data_home"))
    assert dm.dataset_name == "embedded_musdb"
    assert len(dm.train_tracks) == 2 and len(dm.valid_tracks) == 1 and len(dm.test_tracks) == 1
    mix, tgt = next(iter(dm.train_dataloader()))
    assert mix.shape == (4, 15 * HOP) and tgt.shape == (4, 1, 15 * HOP)
    assert (tmp_path / "data_home" / "cache" / "musdb").is_dir()
