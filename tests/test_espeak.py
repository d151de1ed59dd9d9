"""eSpeak NG synthesis through ctypes (datamodules/espeak.py)."""

from __future__ import annotations

import ctypes
import hashlib
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import median_f0
from datamodules import espeak
from datamodules.espeak import Voice, library_version, synthesize
from lightning_sep.errors import LightningSepError

TEXT = "She had your dark suit in greasy wash water all year."
REPO = Path(__file__).resolve().parents[1]


def digest(utt) -> str:
    return hashlib.sha256(utt.audio.tobytes() + repr(utt.words).encode()).hexdigest()


@pytest.fixture(scope="module")
def utt():
    return synthesize(TEXT, Voice())


def test_audio(utt):
    assert utt.sample_rate == espeak.NATIVE_SAMPLE_RATE == 22050
    assert utt.audio.dtype == np.float32 and utt.audio.ndim == 1
    assert np.abs(utt.audio).max() <= 1.0
    assert np.sqrt(np.mean(utt.audio**2)) > 0.02  # clearly not silent
    assert 1.5 < utt.duration < 5.0  # 11 words at 175 words per minute
    edge = round(espeak.EDGE_SILENCE_S * utt.sample_rate)
    # TIMIT-like edges: 50 ms of silence, then sound right away
    assert np.abs(utt.audio[: edge - 5]).max() == 0 and np.abs(utt.audio[-edge + 5 :]).max() == 0
    assert np.abs(utt.audio[edge : edge + 400]).max() > 1e-3


def test_words(utt):
    words = [w for _, _, w in utt.words]
    assert words == re.findall(r"[\w']+", TEXT)
    n = len(utt.audio)
    prev_end = 0
    for start, end, word in utt.words:
        assert prev_end <= start < end <= n, (start, end, word)
        assert 0.05 < (end - start) / utt.sample_rate < 0.8, word
        prev_end = end
    spoken = sum(e - s for s, e, _ in utt.words)
    assert spoken > 0.8 * (n - 2 * espeak.EDGE_SILENCE_S * utt.sample_rate)


def test_words_with_punctuation_and_numbers():
    u = synthesize("Well -- it's 42 degrees, isn't it?\u2014A well-known fact--yes.", Voice())
    assert [w for _, _, w in u.words] == [
        "Well", "it's", "42", "degrees", "isn't", "it", "A", "well-known", "fact", "yes"
    ]
    starts = [s for s, _, _ in u.words]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)


def test_deterministic_in_process(utt):
    assert digest(synthesize(TEXT, Voice())) == digest(utt)
    # a breathy voice draws libc rand(); disturbing it between calls must not matter
    libc = ctypes.CDLL(None)
    a = synthesize(TEXT, Voice(variant="f5"))
    libc.rand(), libc.rand()
    synthesize("Something else first.", Voice(variant="klatt", rate=300))
    assert digest(synthesize(TEXT, Voice(variant="f5"))) == digest(a)


def test_deterministic_across_processes(utt):
    # The child also loads the wheel's library itself first, as phonemizer would: synthesis
    # must then switch to a private copy and still give the same bytes.
    # (espeak.py is loaded by path: importing the datamodules package would import torch)
    code = (
        "import hashlib, importlib.util, sys, espeakng_loader\n"
        "other = espeakng_loader.load_library()\n"
        "spec = importlib.util.spec_from_file_location('espeak', 'datamodules/espeak.py')\n"
        "m = sys.modules['espeak'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(m)\n"
        "assert m._is_loaded(espeakng_loader.get_library_path())\n"
        f"u = m.synthesize({TEXT!r}, m.Voice())\n"
        "assert m._state.get('private')\n"
        "print(hashlib.sha256(u.audio.tobytes() + repr(u.words).encode()).hexdigest())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == digest(utt)


def test_thread_safe(utt):
    results = [None] * 4

    def work(i):
        results[i] = digest(synthesize(TEXT, Voice()))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [digest(utt)] * 4


def test_male_low_pitch_below_female_high_pitch():
    male = synthesize(TEXT, Voice(variant="m3", pitch=25))
    female = synthesize(TEXT, Voice(variant="f3", pitch=75))
    f0_male = median_f0(male.audio, male.sample_rate)
    f0_female = median_f0(female.audio, female.sample_rate)
    assert 70 < f0_male < 130 and 180 < f0_female < 320, (f0_male, f0_female)
    assert f0_female > 1.8 * f0_male


def test_rate_changes_duration():
    slow = synthesize(TEXT, Voice(rate=120)).duration
    fast = synthesize(TEXT, Voice(rate=300)).duration
    assert slow > 1.8 * fast


def test_voice_name_and_validation():
    assert Voice().name == "en-us+m3"
    assert Voice(language="en", variant="").name == "en"
    with pytest.raises(LightningSepError, match="pitch=101.*0 to 100"):
        Voice(pitch=101)
    with pytest.raises(LightningSepError, match="rate=50"):
        Voice(rate=50)
    with pytest.raises(LightningSepError, match="variant="):
        Voice(language="en-us+m3")


def test_errors():
    with pytest.raises(LightningSepError, match="Unknown eSpeak voice variant 'm99'.*Available.*f1"):
        synthesize(TEXT, Voice(variant="m99"))
    with pytest.raises(LightningSepError, match="no voice 'xx-yy'"):
        synthesize(TEXT, Voice(language="xx-yy"))
    with pytest.raises(LightningSepError, match="empty text"):
        synthesize("   ", Voice())
    # the library still works after errors
    assert synthesize("Yes.", Voice()).duration > 0.1


def test_missing_library(monkeypatch):
    monkeypatch.setattr(espeak, "_state", {})
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # import fails
    with pytest.raises(LightningSepError, match="pip install espeakng-loader"):
        synthesize(TEXT, Voice())


def test_library_version():
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?.*", library_version())
    assert {"m1", "m3", "f1", "f5"} <= set(espeak.available_variants())
