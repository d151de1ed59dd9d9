"""The embedded MUSDB18-format corpus: layout, exact mixtures, determinism, atomic generation, and
stems that measurably behave like music (pitched vocals with rests, low bass, drums on a tempo grid,
harmony in the song's key)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import soundfile as sf

from conftest import needs_ffmpeg
from datamodules import embedded_musdb as em
from datamodules import synth
from lightning_sep.errors import LightningSepError

SMALL = dict(n_train=2, n_test=1, duration=3.0, progress=False)
SR = 44100


@pytest.fixture(autouse=True)
def _data_home(monkeypatch, tmp_path):
    monkeypatch.setenv("LIGHTNING_SEP_DATA", str(tmp_path / "data_home"))  # never the repo's data/


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """2 train + 1 test tracks of 3 s at 44.1 kHz, shared by the read-only tests."""
    return em.ensure_embedded_musdb(tmp_path_factory.mktemp("emb") / "corpus", seed=5, **SMALL)


@pytest.fixture(scope="module")
def songs():
    """Three 8-second tracks (with their plans) for the musical checks."""
    names = [f"Embedded - Train {i:02d}" for i in (1, 2, 3)]
    return [(em.plan_track(n, 2018, 8.0, SR), em.generate_track(n, 2018, 8.0, SR)) for n in names]


def wav_files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.wav"))


# -- layout, exact sums, determinism -----------------------------------------------------------------
def test_generate_track_stems(songs):
    song, stems = songs[0]
    assert set(stems) == {"vocals", "drums", "bass", "other", "mixture"}
    for x in stems.values():
        assert x.dtype == np.float32 and x.shape == (8 * SR, 2)
    total = ((stems["vocals"] + stems["drums"]) + stems["bass"]) + stems["other"]
    np.testing.assert_array_equal(stems["mixture"], total)
    for _, s in songs:
        peak = np.abs(s["mixture"]).max()
        assert 0.5 < peak < 1.0
        assert all(np.abs(s[k]).max() < 1.0 for k in synth.STEMS)


def test_layout_manifest_and_mixture_is_stem_sum_on_disk(small_corpus):
    root = small_corpus
    names = em.track_names(2, 1)
    assert names == {"train": ["Embedded - Train 01", "Embedded - Train 02"], "test": ["Embedded - Test 01"]}
    expected = sorted(f"{sub}/{t}/{f}.wav" for sub, ts in names.items() for t in ts for f in em.FILES)
    assert wav_files(root) == expected
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["version"] == em.CORPUS_VERSION
    assert manifest["params"] == {"seed": 5, "n_train": 2, "n_test": 1, "duration": 3.0, "sample_rate": SR}
    assert sorted(manifest["files"]) == expected
    for sub, tracks in names.items():
        for track in tracks:
            folder = root / sub / track
            audio = {}
            for f in em.FILES:
                info = sf.info(folder / f"{f}.wav")
                assert (info.samplerate, info.channels, info.frames, info.subtype) == (SR, 2, 3 * SR, "FLOAT")
                audio[f], _ = sf.read(folder / f"{f}.wav", dtype="float32")
            total = audio["vocals"] + audio["drums"] + audio["bass"] + audio["other"]
            assert np.abs(audio["mixture"] - total).max() < 1e-6
            assert np.abs(audio["mixture"]).max() < 1.0


@needs_ffmpeg
def test_readable_by_musdb(small_corpus):
    musdb = pytest.importorskip("musdb")
    train = musdb.DB(root=str(small_corpus), is_wav=True, subsets="train")
    test = musdb.DB(root=str(small_corpus), is_wav=True, subsets="test")
    assert [t.name for t in train] == ["Embedded - Train 01", "Embedded - Train 02"]
    assert [t.name for t in test] == ["Embedded - Test 01"]
    # Not in musdb's official validation list, so split="train" keeps every training track.
    assert len(musdb.DB(root=str(small_corpus), is_wav=True, subsets="train", split="train")) == 2
    track = test[0]
    assert track.rate == SR
    mixture = track.audio
    assert mixture.shape == (3 * SR, 2)
    vocals = track.targets["vocals"].audio
    written, _ = sf.read(small_corpus / "test" / "Embedded - Test 01" / "vocals.wav")
    assert np.abs(vocals - written).max() < 2e-4  # musdb decodes through 16-bit PCM
    accompaniment = track.targets["accompaniment"].audio
    assert np.abs(mixture - vocals - accompaniment).max() < 1e-3


def test_same_seed_identical_other_seed_different():
    a = em.generate_track("Embedded - Train 01", 7, 2.0, SR)
    b = em.generate_track("Embedded - Train 01", 7, 2.0, SR)
    c = em.generate_track("Embedded - Train 01", 8, 2.0, SR)
    d = em.generate_track("Embedded - Train 02", 7, 2.0, SR)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        assert not np.allclose(a[k], c[k]) and not np.allclose(a[k], d[k])


def test_corpus_is_bit_identical_for_the_same_seed(tmp_path, small_corpus):
    again = em.ensure_embedded_musdb(tmp_path / "again", seed=5, **SMALL)
    other = em.ensure_embedded_musdb(tmp_path / "other", seed=6, **SMALL)
    for rel in wav_files(small_corpus):
        assert (again / rel).read_bytes() == (small_corpus / rel).read_bytes()
        assert (other / rel).read_bytes() != (small_corpus / rel).read_bytes()


def test_default_root_names_the_parameters(tmp_path):
    home = tmp_path / "data_home"
    assert em.default_root() == home / "embedded-musdb18-v1-seed2018"
    assert em.default_root(7) == home / "embedded-musdb18-v1-seed7"
    root = em.ensure_embedded_musdb(seed=3, n_train=1, n_test=1, duration=1.0, sample_rate=22050, progress=False)
    assert root == home / "embedded-musdb18-v1-seed3-train1-test1-1s-22050Hz"
    assert sf.info(root / "test" / "Embedded - Test 01" / "mixture.wav").samplerate == 22050


# -- trust: cached, interrupted, stale, concurrent ---------------------------------------------------
def test_second_call_does_not_regenerate(tmp_path, monkeypatch):
    root = em.ensure_embedded_musdb(tmp_path / "c", **SMALL)
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*")}

    def boom(*args, **kwargs):
        raise AssertionError("regenerated")

    monkeypatch.setattr(em, "generate_track", boom)
    assert em.ensure_embedded_musdb(tmp_path / "c", **SMALL) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == mtimes


def test_other_parameters_are_regenerated(tmp_path):
    root = em.ensure_embedded_musdb(tmp_path / "c", **SMALL)
    again = em.ensure_embedded_musdb(tmp_path / "c", **{**SMALL, "duration": 2.0})
    assert again == root
    assert sf.info(root / "train" / "Embedded - Train 01" / "vocals.wav").frames == 2 * SR
    assert json.loads((root / "manifest.json").read_text())["params"]["duration"] == 2.0


def test_interrupted_generation_leaves_nothing_and_is_redone(tmp_path, monkeypatch):
    calls = []
    real = em.generate_track

    def flaky(name, *args):
        calls.append(name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the second track
        return real(name, *args)

    monkeypatch.setattr(em, "generate_track", flaky)
    parent = tmp_path / "corpora"
    with pytest.raises(KeyboardInterrupt):
        em.ensure_embedded_musdb(parent / "c", **SMALL)
    assert [p.name for p in parent.iterdir()] == [".c.lock"]  # no corpus, no half-built folder

    root = em.ensure_embedded_musdb(parent / "c", **SMALL)
    assert len(calls) == 2 + 3 and em.is_complete(root, em._params(2018, 2, 1, 3.0, SR))
    assert len(wav_files(root)) == 15


def test_leftovers_of_a_killed_generation_are_not_trusted(tmp_path):
    root = tmp_path / "corpora" / "c"
    # A killed process leaves its hidden build folder; an old-style copy lacks the manifest.
    stray = root.parent / ".c.tmp-dead"
    (stray / "train").mkdir(parents=True)
    (root / "train" / "Embedded - Train 01").mkdir(parents=True)
    (root / "train" / "Embedded - Train 01" / "mixture.wav").write_bytes(b"partial")
    assert not em.is_complete(root, em._params(2018, 2, 1, 3.0, SR))

    assert em.ensure_embedded_musdb(root, **SMALL) == root
    assert not stray.exists()
    assert len(wav_files(root)) == 15
    assert sf.info(root / "train" / "Embedded - Train 01" / "mixture.wav").frames == 3 * SR


def test_truncated_file_or_bad_manifest_is_regenerated(tmp_path):
    root = em.ensure_embedded_musdb(tmp_path / "c", **SMALL)
    params = em._params(2018, 2, 1, 3.0, SR)
    victim = root / "test" / "Embedded - Test 01" / "bass.wav"
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])
    assert not em.is_complete(root, params)
    em.ensure_embedded_musdb(root, **SMALL)
    assert victim.read_bytes() == good

    (root / "manifest.json").write_text("{not json")
    assert not em.is_complete(root, params)
    em.ensure_embedded_musdb(root, **SMALL)
    assert em.is_complete(root, params) and victim.read_bytes() == good


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "thesis.tex").write_text("precious")
    with pytest.raises(LightningSepError, match="refusing"):
        em.ensure_embedded_musdb(root, **SMALL)
    assert (root / "thesis.tex").read_text() == "precious"


def test_concurrent_calls_generate_once(tmp_path, monkeypatch):
    writes = []
    real = em._write

    def counting(*args):
        writes.append(threading.get_ident())
        return real(*args)

    monkeypatch.setattr(em, "_write", counting)
    results, errors = [], []

    def call():
        try:
            results.append(em.ensure_embedded_musdb(tmp_path / "c", **SMALL))
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    # flock locks belong to open file descriptions, so threads contend like processes do.
    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(writes) == 1
    assert results == [tmp_path / "c"] * 3


def test_progress_bar_on_stderr(tmp_path, capsys):
    em.ensure_embedded_musdb(tmp_path / "a", **{**SMALL, "duration": 1.0, "progress": True})
    out, err = capsys.readouterr()
    assert "Generating embedded MUSDB18" in err and "3/3" in err and out == ""
    em.ensure_embedded_musdb(tmp_path / "b", **{**SMALL, "duration": 1.0})
    assert capsys.readouterr() == ("", "")


# -- the stems sound like music -----------------------------------------------------------------------
def frames(x, size, hop):
    count = 1 + (len(x) - size) // hop
    return x[np.arange(size)[None, :] + hop * np.arange(count)[:, None]]


def frame_rms(x, seconds):
    return np.sqrt(np.mean(frames(x, int(seconds * SR), int(seconds * SR)) ** 2, axis=1))


def pitch_frames(x):
    """Per loud 46-ms frame: the normalised autocorrelation peak in 1-14 ms lags and its f0."""
    fr = frames(x, 2048, 1024)
    rms = np.sqrt(np.mean(fr**2, axis=1))
    fr = fr[rms > 0.1 * rms.max()]
    fr = fr - fr.mean(axis=1, keepdims=True)
    ac = np.fft.irfft(np.abs(np.fft.rfft(fr, 4096, axis=1)) ** 2, axis=1)[:, :2048]
    ac /= ac[:, :1]
    lo, hi = SR // 1000, SR // 70
    lag = lo + np.argmax(ac[:, lo:hi], axis=1)
    return ac[np.arange(len(ac)), lag], SR / lag


def in_key_fraction(x, song, fmin, fmax):
    """Share of spectral energy between ``fmin`` and ``fmax`` on pitch classes of the song's key."""
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / SR)
    band = (freqs > fmin) & (freqs < fmax)
    pcs = np.round(12 * np.log2(freqs[band] / 440) + 69).astype(int) % 12
    chroma = np.bincount(pcs, power[band], 12)
    scale = (song.key + np.array(synth.SCALES[song.mode])) % 12
    return chroma[scale].sum() / chroma.sum()


def drum_onsets(x):
    """Times (s) where the energy above 4 kHz jumps by more than 10 dB within 6 ms."""
    from scipy import signal

    hf = signal.sosfilt(signal.butter(4, 4000, "highpass", fs=SR, output="sos"), x)
    hop = 64
    level = 10 * np.log10(np.add.reduceat(hf**2, np.arange(0, len(hf), hop)) + 1e-10)
    rises = np.flatnonzero(level[4:] - level[:-4] > 10)
    onsets = [r for i, r in enumerate(rises) if i == 0 or r - rises[i - 1] > 0.03 * SR / hop]
    return (np.array(onsets) + 4) * hop / SR


def test_vocals_are_pitched_sung_and_have_rests(songs):
    for song, stems in songs:
        vocals = stems["vocals"].mean(axis=1)
        peaks, f0 = pitch_frames(vocals)
        assert np.median(peaks) > 0.85  # clearly periodic (voiced), unlike noise
        assert 100 < np.median(f0) < 1000  # a singing voice's range
        assert in_key_fraction(vocals, song, 80, 2000) > 0.85  # the melody is in the key
        rms = frame_rms(vocals, 0.05)
        assert np.mean(rms < 1e-3 * rms.max()) > 0.05  # silent rests between phrases
        assert np.mean(rms > 0.1 * rms.max()) > 0.3  # ...but mostly singing
        # Unvoiced consonants: some sounding frames have most of their energy above 4 kHz.
        fr = frames(vocals, 882, 882) * np.hanning(882)
        power = np.abs(np.fft.rfft(fr, axis=1)) ** 2
        total = power.sum(axis=1)
        hiss = power[:, np.fft.rfftfreq(882, 1 / SR) > 4000].sum(axis=1) / np.maximum(total, 1e-20)
        assert np.sum((total > 1e-3 * total.max()) & (hiss > 0.5)) >= 1


def f0_track(x, hop=256):
    """Per-frame f0 (Hz, parabolic-interpolated autocorrelation peak) and a voiced flag."""
    fr = frames(x, 2048, hop)
    rms = np.sqrt(np.mean(fr**2, axis=1))
    fr = fr - fr.mean(axis=1, keepdims=True)
    ac = np.fft.irfft(np.abs(np.fft.rfft(fr, 4096, axis=1)) ** 2, axis=1)[:, :2048]
    ac /= np.maximum(ac[:, :1], 1e-20)
    lo, hi = SR // 1000, SR // 70
    lag = lo + np.argmax(ac[:, lo:hi], axis=1)
    y = ac[np.arange(len(ac))[:, None], lag[:, None] + np.array([-1, 0, 1])]
    fine = lag + 0.5 * (y[:, 0] - y[:, 2]) / (y[:, 0] - 2 * y[:, 1] + y[:, 2] - 1e-12)
    return SR / fine, (rms > 0.1 * rms.max()) & (y[:, 1] > 0.8)


def sung_note(monkeypatch, vowel, midi=57):
    """The vocal synthesiser singing one 3.5-second note (the melody replaced by that note)."""
    song = synth.Song(SR, 4 * SR, 120.0, 9, "major", (0, 3, 4, 0), 4)
    note = synth.Note(0.0, 7.0, midi, vowel, None, 1.0, False)
    monkeypatch.setattr(synth, "compose_melody", lambda *args: [note])
    return synth.render_vocals(song, np.random.default_rng(0)).mean(axis=1)


def test_vocal_note_has_pitch_vibrato_and_vowel_formants(monkeypatch):
    hop = 256
    voice = sung_note(monkeypatch, "a")
    f0, voiced = f0_track(voice[int(0.8 * SR) : int(3.2 * SR)], hop)
    assert voiced.all()
    cents = 1200 * np.log2(f0 / 220.0)  # A3
    assert abs(np.median(cents)) < 30
    x = np.arange(len(cents))
    wobble = cents - np.polyval(np.polyfit(x, cents, 2), x)
    rates = np.linspace(2, 12, 1001)
    power = np.abs(np.exp(-2j * np.pi * rates[:, None] * (x * hop / SR)[None, :]) @ wobble)
    assert 4.7 < rates[np.argmax(power)] < 6.3  # vibrato at 5-6 Hz (true rate of this voice: 5.9 Hz)
    assert 5 < np.percentile(np.abs(wobble), 95) < 60  # a few to ~50 cents deep

    def band(x, lo, hi):
        power = np.abs(np.fft.rfft(x)) ** 2
        freqs = np.fft.rfftfreq(len(x), 1 / SR)
        return power[(freqs >= lo) & (freqs < hi)].sum()

    # Same pitch and voice, other vowel: /a/ has a high F1 and low F2, /i/ a low F1 and high F2.
    ee = sung_note(monkeypatch, "i")
    a_tilt = band(voice, 550, 1200) / band(voice, 1900, 3200)
    i_tilt = band(ee, 550, 1200) / band(ee, 1900, 3200)
    assert 10 * np.log10(a_tilt / i_tilt) > 10


def test_bass_is_low(songs):
    for song, stems in songs:
        bass = stems["bass"].mean(axis=1)
        power = np.abs(np.fft.rfft(bass)) ** 2
        freqs = np.fft.rfftfreq(len(bass), 1 / SR)
        assert power[freqs < 300].sum() / power.sum() > 0.9
        assert freqs[np.argmax(power)] < 180  # fundamentals E1..E3 dominate
        assert in_key_fraction(bass, song, 35, 400) > 0.85


def test_drums_hit_on_the_tempo_grid(songs):
    for song, stems in songs:
        onsets = drum_onsets(stems["drums"].mean(axis=1))
        beats = 8.0 * song.bpm / 60
        assert len(onsets) > beats  # at least one hit per beat on average
        ioi = np.diff(onsets)

        def on_grid(unit):
            k = np.round(ioi / unit)
            return np.mean((k >= 1) & (np.abs(ioi - k * unit) < 0.012))

        sixteenth = 60 / song.bpm / 4
        assert on_grid(sixteenth) > 0.9
        assert on_grid(sixteenth * 1.13) < 0.4  # a wrong tempo does not fit


def test_other_plays_chords_in_key_and_mix_levels(songs):
    for song, stems in songs:
        other = stems["other"].mean(axis=1)
        assert in_key_fraction(other, song, 100, 2000) > 0.9
        ratio = em.vocals_to_accompaniment_db(stems)
        assert -3.5 < ratio < 1.5  # audible, not dominant
        left, right = stems["other"].T
        assert np.corrcoef(left, right)[0, 1] < 0.95  # a wide stereo pad, unlike the centred bass
        assert np.corrcoef(*stems["bass"].T)[0, 1] > 0.99


def test_tracks_vary():
    names = em.track_names(12, 4)
    plans = [em.plan_track(n, 2018, 20.0) for n in names["train"] + names["test"]]
    assert len({p.bpm for p in plans}) >= 8 and all(80 <= p.bpm <= 140 for p in plans)
    assert len({p.key for p in plans}) >= 5 and {p.mode for p in plans} == {"major", "minor"}
    assert len({p.progression for p in plans}) >= 4
