"""eSpeak NG speech synthesis through ``ctypes`` (no system package, no subprocess).

The shared library and its ``espeak-ng-data`` folder come from the ``espeakng-loader`` wheel
(``pip install espeakng-loader``).  :func:`synthesize` turns a sentence and a :class:`Voice` into
an :class:`Utterance`: float32 mono audio at eSpeak's native 22050 Hz, trimmed to 50 ms of
silence at each edge like a TIMIT recording, plus word boundaries (for a TIMIT ``.WRD`` file)
taken from eSpeak's word events.

Determinism
-----------
Synthesis is a pure function of ``(text, voice)``: bit-identical in one process and across
processes.  That does not come for free.  eSpeak NG keeps synthesis state in C ``static``
variables that no API call resets -- the pitch-flutter table index (``Flutter_ix``), the glottal
cycle counter used for "roughness" (``cycle_count``), the automatic gain control (``agc``), the
breath-noise resonators -- so the same sentence synthesised twice in one process gives different
pitch contours and even different lengths (``espeak_Terminate`` + ``espeak_Initialize`` does not
reset them either).  The only complete reset is a fresh copy of the library's data segment, so
every :func:`synthesize` call loads the library, initialises it, synthesises, terminates and
unloads it again (``dlopen`` / ``dlclose``: about 1 ms, against a few ms of synthesis).  The two
random generators eSpeak draws noise from -- libc ``rand()`` for the breathy voices (``f2``,
``f3``, ``f5``, ...) and its own for the Klatt voices -- are reseeded before every utterance with a
seed derived from the text and :attr:`Voice.seed`.  (Reseeding libc's ``rand()`` affects any other
user of it in this process; nothing in this platform uses it.)

If some other component of the process (e.g. ``phonemizer``) has the wheel's library loaded, our
``dlclose`` could not unload it; we then load a private copy of the library file instead, which
no one else shares.

eSpeak has process-global state, so all calls into it are serialised with a lock.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import re
import shutil
import sys
import tempfile
import threading
import zlib
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lightning_sep.errors import LightningSepError

__all__ = [
    "NATIVE_SAMPLE_RATE",
    "Utterance",
    "Voice",
    "available_variants",
    "library_version",
    "synthesize",
]

#: eSpeak NG's output rate for its own (non-MBROLA) voices.
NATIVE_SAMPLE_RATE = 22050

EDGE_SILENCE_S = 0.05  # silence kept (or padded) before the first and after the last sound
_FRAME_S = 0.005  # hop of the energy analysis used to trim silence
_SILENCE_DB = -50.0  # a frame quieter than this, relative to the loudest frame, is silence

# --- speak_lib.h constants -------------------------------------------------------------------
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # return an error instead of calling exit() when data is missing
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_RATE, _VOLUME, _PITCH, _RANGE, _WORDGAP = 1, 2, 3, 4, 7
_EE_OK = 0


class _Event(ctypes.Structure):
    """``espeak_EVENT``."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based character index of the word in the text
        ("length", ctypes.c_int),  # word length in characters
        ("audio_position", ctypes.c_int),  # ms from the start of the synthesis
        ("sample", ctypes.c_int),  # samples from the start of the synthesis
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),  # union { int number; const char *name; char string[8]; }
    ]


class _VoiceInfo(ctypes.Structure):
    """``espeak_VOICE``."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


# --------------------------------------------------------------------------------------------
# Public types
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Voice:
    """An eSpeak NG voice: a language plus a variant (timbre) and prosody settings."""

    language: str = "en-us"  # eSpeak voice/language name ("en-us", "en", "en-gb-x-rp", ...)
    variant: str = "m3"  # a file in espeak-ng-data/voices/!v (m1..m8, f1..f5, klatt, ...); "" = none
    pitch: int = 50  # espeakPITCH, 0..100 (base pitch; 50 = the variant's own)
    pitch_range: int = 50  # espeakRANGE, 0..100 (intonation range; 0 = monotone)
    rate: int = 175  # espeakRATE, words per minute, 80..450
    volume: int = 100  # espeakVOLUME, 0..200 (100 = eSpeak's default)
    word_gap: int = 0  # espeakWORDGAP, extra pause between words in units of 10 ms, 0..100
    seed: int = 0  # mixed with the text into the seed of eSpeak's noise generators

    def __post_init__(self) -> None:
        for field, lo, hi in (
            ("pitch", 0, 100),
            ("pitch_range", 0, 100),
            ("rate", 80, 450),
            ("volume", 0, 200),
            ("word_gap", 0, 100),
        ):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise LightningSepError(
                    f"Voice {field}={value!r} is out of range: give an integer from {lo} to {hi}."
                )
        if not self.language or any(c in self.language for c in "+/\\ "):
            raise LightningSepError(
                f"Voice language={self.language!r} is not an eSpeak language name: give one such "
                f"as 'en-us', 'en' or 'en-gb-x-rp' (without '+variant'; that goes in variant=)."
            )

    @property
    def name(self) -> str:
        """The name eSpeak knows the voice by, e.g. ``"en-us+m3"``."""
        return f"{self.language}+{self.variant}" if self.variant else self.language


@dataclass
class Utterance:
    """Synthesised speech and its word alignment."""

    audio: np.ndarray  # float32 mono, in [-1, 1)
    sample_rate: int  # eSpeak's native rate (22050)
    words: list[tuple[int, int, str]]  # (start_sample, end_sample, word), ends exclusive

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate


# --------------------------------------------------------------------------------------------
# The library
# --------------------------------------------------------------------------------------------
_lock = threading.RLock()
_state: dict = {}  # library path, data path, sample rate, version: filled once per process
_capture: dict = {"chunks": [], "events": []}


@_SynthCallback
def _on_synth(wav, n_samples, events):  # called by espeak_Synth, in the calling thread
    if wav and n_samples > 0:
        _capture["chunks"].append(np.ctypeslib.as_array(wav, (n_samples,)).copy())
    i = 0
    while events[i].type != _EVENT_LIST_TERMINATED:
        ev = events[i]
        if ev.type == _EVENT_WORD:
            _capture["events"].append((ev.text_position, ev.length, ev.sample, ev.audio_position))
        i += 1
    return 0  # 0 = continue synthesis


def _locate() -> tuple[str, str]:
    try:
        import espeakng_loader
    except ImportError as exc:
        raise LightningSepError(
            "The eSpeak NG library is not installed (Python package 'espeakng-loader' is "
            "missing): run `pip install espeakng-loader`."
        ) from exc
    lib_path = espeakng_loader.get_library_path()
    try:
        data_path = espeakng_loader.get_data_path()
    except RuntimeError as exc:
        raise LightningSepError(
            f"The espeak-ng-data folder of the 'espeakng-loader' package is missing ({exc}): "
            f"reinstall it with `pip install --force-reinstall espeakng-loader`."
        ) from exc
    if not os.path.isfile(lib_path):
        raise LightningSepError(
            f"The eSpeak NG library {lib_path} is missing: reinstall it with "
            f"`pip install --force-reinstall espeakng-loader`."
        )
    return lib_path, data_path


def _is_loaded(path: str) -> bool:
    """Whether the shared library at ``path`` is already loaded in this process."""
    import _ctypes

    mode = getattr(os, "RTLD_NOLOAD", None)
    if mode is None:  # Windows: assume no one else loads it
        return False
    try:  # dlopen(RTLD_NOLOAD) only finds an already loaded library (by path or by file)
        handle = _ctypes.dlopen(path, mode | os.RTLD_LAZY)
    except OSError:
        return False
    _dlclose(handle)
    return True


def _private_copy(lib_path: str) -> str:
    """A copy of the library file that no other component of this process has loaded."""
    folder = tempfile.mkdtemp(prefix="lightning-sep-espeak-")
    atexit.register(shutil.rmtree, folder, True)
    dest = os.path.join(folder, os.path.basename(lib_path))
    shutil.copy2(lib_path, dest)
    return dest


def _dlclose(handle: int) -> None:
    import _ctypes

    if sys.platform == "win32":
        _ctypes.FreeLibrary(handle)
    else:
        _ctypes.dlclose(handle)


class _Session:
    """The library loaded and initialised for one synthesis, unloaded on exit (see module doc)."""

    def __enter__(self) -> ctypes.CDLL:
        if "lib_path" not in _state:
            lib_path, data_path = _locate()
            _state.update(lib_path=lib_path, data_path=data_path)
        if _is_loaded(_state["lib_path"]):  # someone else holds it: our dlclose could not reset it
            if _state.get("private"):
                raise LightningSepError(
                    f"The eSpeak NG library {_state['lib_path']} stayed loaded after synthesis, "
                    f"so its state cannot be reset and output would not be reproducible: report "
                    f"this as a bug (platform {sys.platform})."
                )
            _state["lib_path"] = _private_copy(_state["lib_path"])
            _state["private"] = True
        try:
            lib = ctypes.CDLL(_state["lib_path"])
        except OSError as exc:
            raise LightningSepError(
                f"Cannot load the eSpeak NG library {_state['lib_path']} ({exc}): reinstall it "
                f"with `pip install --force-reinstall espeakng-loader`."
            ) from exc
        self.lib = lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_VoiceInfo))
        # The data path may be the espeak-ng-data folder itself or its parent (eSpeak NG 1.52
        # tries "<path>/espeak-ng-data" first, then "<path>"); the folder itself is unambiguous.
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, _state["data_path"].encode(), _INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            self._unload()
            raise LightningSepError(
                f"eSpeak NG could not initialise from its data folder {_state['data_path']} "
                f"(espeak_Initialize returned {rate}; its message, if any, is on stderr): "
                f"reinstall it with `pip install --force-reinstall espeakng-loader`."
            )
        _state["sample_rate"] = rate
        lib.espeak_SetSynthCallback(_on_synth)
        return lib

    def _unload(self) -> None:
        handle = self.lib._handle
        del self.lib
        _dlclose(handle)

    def __exit__(self, *exc) -> None:
        self.lib.espeak_Terminate()
        self._unload()


def _library_info() -> None:
    if "version" in _state:
        return
    with _Session() as lib:
        _state["version"] = lib.espeak_Info(None).decode()
        voices = lib.espeak_ListVoices(None)
        names = set()
        i = 0
        while voices[i]:
            identifier = voices[i].contents.identifier.decode()
            names.add(identifier.rsplit("/", 1)[-1].lower())
            i += 1
        _state["languages"] = sorted(names)


def library_version() -> str:
    """eSpeak NG's version (``espeak_Info``), e.g. ``"1.52.0"``, for a corpus manifest."""
    with _lock:
        _library_info()
        return _state["version"]


def available_variants() -> list[str]:
    """The voice variants shipped in ``espeak-ng-data/voices/!v`` (``m1``, ``f3``, ``klatt``...)."""
    with _lock:
        if "variants" not in _state:
            _, data_path = _locate()
            folder = Path(data_path) / "voices" / "!v"
            files = folder.iterdir() if folder.is_dir() else ()
            _state["variants"] = sorted(p.name for p in files if p.is_file())
        return list(_state["variants"])


def _check_variant(voice: Voice) -> None:
    if not voice.variant:
        return
    variants = available_variants()
    if voice.variant not in variants:  # eSpeak itself silently ignores an unknown variant
        raise LightningSepError(
            f"Unknown eSpeak voice variant {voice.variant!r} (voice {voice.name!r}). Available "
            f"variants: {', '.join(variants) or '(none: espeak-ng-data/voices/!v is missing)'}."
        )


# --------------------------------------------------------------------------------------------
# Synthesis
# --------------------------------------------------------------------------------------------
_TOKEN = re.compile(r"\S+")
# A dash that is not a hyphen inside a word ("well-known"): eSpeak NG 1.52 drops it from the text
# it reports word positions in, which shifts the position of every later word.
_DASHES = re.compile(r"-{2,}|(?<![^\W_])-|-(?![^\W_])|[\u2012-\u2015]+")


def _speakable(text: str) -> str:
    """``text`` with free-standing dashes replaced, keeping its length: a dash run becomes a comma
    (a pause) plus spaces where that leaves the comma followed or preceded by a space, else a
    space ("it?\u2014A" -> "it? A": eSpeak would read "it?,A" as one word)."""

    def replace(m: re.Match) -> str:
        n = len(m.group())
        if n >= 2 or m.start() == 0 or text[m.start() - 1].isspace():
            return "," + " " * (n - 1)
        return " "

    return _DASHES.sub(replace, text)


_EDGE_PUNCT = re.compile(r"^\W+|\W+$")


def _noise_seed(text: str, voice: Voice) -> int:
    return (zlib.crc32(text.encode("utf-8")) ^ (voice.seed * 0x9E3779B1)) & 0x7FFFFFFF


def synthesize(text: str, voice: Voice = Voice()) -> Utterance:
    """Speak ``text`` with ``voice``; deterministic (see the module docstring)."""
    if not isinstance(text, str) or not text.strip():
        raise LightningSepError(
            f"Cannot synthesise empty text ({text!r}): give a sentence with at least one word."
        )
    if "\0" in text:
        raise LightningSepError(f"Text {text!r} contains a NUL character: remove it.")
    _check_variant(voice)
    seed = _noise_seed(text, voice)
    data = _speakable(text).encode("utf-8") + b"\0"
    with _lock:
        _library_info()
        _capture["chunks"], _capture["events"] = [], []
        with _Session() as lib:
            rc = lib.espeak_SetVoiceByName(voice.name.encode("utf-8"))
            if rc != _EE_OK:
                langs = _state.get("languages", [])
                same = [n for n in langs if n.split("-")[0] == voice.language.split("-")[0].lower()]
                raise LightningSepError(
                    f"eSpeak NG has no voice {voice.language!r} (voice {voice.name!r}; "
                    f"espeak_SetVoiceByName returned {rc}). Use one of: "
                    f"{', '.join(same or langs)}."
                )
            for param, value in (
                (_RATE, voice.rate),
                (_PITCH, voice.pitch),
                (_RANGE, voice.pitch_range),
                (_VOLUME, voice.volume),
                (_WORDGAP, voice.word_gap),
            ):
                lib.espeak_SetParameter(param, value, 0)
            lib.espeak_ng_SetRandSeed(seed)  # eSpeak's own generator (reset by the reload anyway)
            ctypes.CDLL(None).srand(ctypes.c_uint(seed))  # libc rand(): breath noise
            rc = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _ENDPAUSE,
                                  None, None)
            if rc == _EE_OK:
                rc = lib.espeak_Synchronize()
            if rc != _EE_OK:
                raise LightningSepError(
                    f"eSpeak NG failed to synthesise {text!r} with voice {voice.name!r} "
                    f"(error {rc}): check the text and the voice."
                )
        chunks, events = _capture["chunks"], _capture["events"]
        _capture["chunks"], _capture["events"] = [], []
        sample_rate = _state["sample_rate"]

    pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    audio = pcm.astype(np.float32) / 32768.0
    words = _word_spans(text, events, len(audio), sample_rate)
    audio, words = _trim(audio, words, sample_rate, text, voice)
    return Utterance(audio=audio, sample_rate=sample_rate, words=words)


def _word_spans(text: str, events: list, n: int, sample_rate: int) -> list[tuple[int, int, str]]:
    """Word events -> ``(start, end, word)`` spans over the untrimmed audio.

    An event gives where a word starts (in samples) and its characters in the text.  eSpeak may
    send several events for one written token (a number is read as several words), so events are
    grouped by the token of the text they fall in (tokens are separated by whitespace and dashes);
    a token's word is the token without its surrounding punctuation.  A word ends where the next one starts (the last: at the
    end of the audio); :func:`_trim` then cuts the pauses off both ends of every span.
    """
    spaced = _DASHES.sub(lambda m: " " * len(m.group()), text)  # "well--done" is two words
    tokens = [(m.start(), m.group()) for m in _TOKEN.finditer(spaced)]
    starts = [s for s, _ in tokens]
    first: dict[int, int] = {}
    for text_position, _length, sample, audio_ms in events:
        k = bisect_right(starts, text_position - 1) - 1
        if k < 0:
            continue
        start = sample if sample > 0 or audio_ms == 0 else round(audio_ms * sample_rate / 1000)
        first.setdefault(k, min(max(start, 0), n))
    order = sorted(first)
    spans = []
    for i, k in enumerate(order):
        word = _EDGE_PUNCT.sub("", tokens[k][1])
        if not word:
            continue
        end = first[order[i + 1]] if i + 1 < len(order) else n
        spans.append((first[k], max(end, first[k]), word))
    return spans


def _active_frames(audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, int]:
    hop = max(1, round(_FRAME_S * sample_rate))
    n_frames = len(audio) // hop + (len(audio) % hop > 0)
    padded = np.zeros(n_frames * hop, np.float64)
    padded[: len(audio)] = audio
    power = (padded.reshape(n_frames, hop) ** 2).mean(axis=1)
    peak = power.max() if n_frames else 0.0
    return power > peak * 10 ** (_SILENCE_DB / 10), hop


def _trim(audio, words, sample_rate, text, voice):
    """Keep :data:`EDGE_SILENCE_S` of silence at each end; fit the word spans to the sound."""
    active, hop = _active_frames(audio, sample_rate)
    idx = np.flatnonzero(active)
    if len(idx) == 0:
        raise LightningSepError(
            f"eSpeak NG produced no audible speech for {text!r} with voice {voice.name!r}: "
            f"give text with pronounceable words in the voice's language."
        )
    first, last = idx[0] * hop, min(len(audio), (idx[-1] + 1) * hop)
    # refine the edges to the sample: first/last sample above the silence threshold's amplitude
    thresh = np.sqrt((audio[first:last].astype(np.float64) ** 2).max()) * 10 ** (_SILENCE_DB / 20)
    loud = np.flatnonzero(np.abs(audio[first:last]) > thresh)
    if len(loud):
        first, last = first + loud[0], first + loud[-1] + 1
    margin = round(EDGE_SILENCE_S * sample_rate)
    out = np.zeros(last - first + 2 * margin, np.float32)
    out[margin : margin + last - first] = audio[first:last]

    fitted = []
    for start, end, word in words:
        a, b = -(-start // hop), end // hop  # the frames wholly inside the span
        on = np.flatnonzero(active[a:b])
        if len(on):  # shrink the span to its sounding frames
            start, end = max(start, (a + on[0]) * hop), min(end, (a + on[-1] + 1) * hop)
        start = min(max(start, first), last) - first + margin
        end = min(max(end, first), last) - first + margin
        fitted.append((int(start), int(max(end, start)), word))
    return out, fitted
