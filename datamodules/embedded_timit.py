"""The embedded TIMIT-format speech corpus: eSpeak NG voices, generated on first use.

The TIMIT papers' protocols need speakers of both sexes with ten sentences each.  Without
``TIMIT_ROOT`` the platform writes a corpus in the TIMIT layout, read back by the same reader as
the real one (:mod:`datamodules._timit`)::

    root/TRAIN/DR1/FABC0/SA1.WAV  SA1.TXT  SA1.WRD   (NIST SPHERE, 16 kHz, 16-bit PCM)
    root/TEST/DR1/...
    root/manifest.json

Speakers: :data:`SPEAKERS` -- one male and one female speaker in each of the dialect regions
DR1..DR5 of ``TRAIN`` (10 speakers: the ``pairs`` protocol finds 5 pairs, ``ten_speakers`` its 5 +
5) and one of each in ``TEST/DR1``.  Every speaker is an eSpeak NG voice variant with its own
pitch, pitch range and speaking rate (``m*`` variants are male, ``f*`` female), synthesised with
the library and voice data of the ``espeakng-loader`` wheel (:mod:`datamodules.espeak`), so no
system package is needed.

Sentences: like TIMIT, each speaker reads the two dialect sentences SA1 and SA2 (the real TIMIT
texts), five "compact" SX sentences drawn from a shared pool (speakers share SX texts, as in
TIMIT) and three "diverse" SI sentences of their own.  The pools are the Harvard sentences (IEEE
Recommended Practice for Speech Quality Measurements, 1969).  ``.TXT`` holds ``0 <samples>
<text>`` and ``.WRD`` the word boundaries from eSpeak's word events, both as in TIMIT.

Deterministic from the seed (speaker names, voice assignment, sentence draws, the faint noise
floor added as a recording would have), atomic and locked (:mod:`datamodules.corpus`).
"""

from __future__ import annotations

import hashlib
import json
import os
import string
import sys
import zlib
from pathlib import Path
from typing import Optional

import numpy as np

from datamodules.corpus import MANIFEST, ensure_corpus, manifest_is_complete
from lightning_sep.errors import LightningSepError
from lightning_sep.paths import data_home

CORPUS_VERSION = 1
SAMPLE_RATE = 16000
#: (subset, region, sex, eSpeak variant, pitch 0-100, pitch range 0-100, words per minute)
SPEAKERS: tuple[tuple[str, str, str, str, int, int, int], ...] = (
    ("TRAIN", "DR1", "male", "m1", 38, 45, 160),
    ("TRAIN", "DR1", "female", "f1", 62, 60, 170),
    ("TRAIN", "DR2", "male", "m2", 30, 35, 180),
    ("TRAIN", "DR2", "female", "f2", 70, 55, 155),
    ("TRAIN", "DR3", "male", "m3", 45, 60, 150),
    ("TRAIN", "DR3", "female", "f3", 58, 70, 185),
    ("TRAIN", "DR4", "male", "m4", 25, 50, 170),
    ("TRAIN", "DR4", "female", "f4", 75, 45, 165),
    ("TRAIN", "DR5", "male", "m6", 40, 40, 190),
    ("TRAIN", "DR5", "female", "f5", 66, 65, 150),
    ("TEST", "DR1", "male", "m7", 34, 55, 165),
    ("TEST", "DR1", "female", "f2", 80, 50, 175),
)
SA = ("She had your dark suit in greasy wash water all year.",
      "Don't ask me to carry an oily rag like that.")
#: Harvard sentences, lists 1-2: the shared SX pool (5 per speaker)
SX_POOL = (
    "The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.", "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.", "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.", "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.", "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.", "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.", "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.", "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.", "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.", "The girl at the booth sold fifty bonds.",
)
#: Harvard sentences, lists 3-6: the SI pool (3 of their own per speaker)
SI_POOL = (
    "The small pup gnawed a hole in the sock.", "The fish twisted and turned on the bent hook.",
    "Press the pants and sew a button on the vest.", "The swan dive was far short of perfect.",
    "The beauty of the view stunned the young boy.", "Two blue fish swam in the tank.",
    "Her purse was full of useless trash.", "The colt reared and threw the tall rider.",
    "It snowed, rained, and hailed the same morning.", "Read verse out loud for pleasure.",
    "Hoist the load to your left shoulder.", "Take the winding path to reach the lake.",
    "Note closely the size of the gas tank.", "Wipe the grease off his dirty face.",
    "Mend the coat before you go out.", "The wrist was badly strained and hung limp.",
    "The stray cat gave birth to kittens.", "The young girl gave no clear response.",
    "The meal was cooked before the bell rang.", "What joy there is in living.",
    "A king ruled the state in the early days.", "The ship was torn apart on the sharp reef.",
    "Sickness kept him home the third week.", "The wide road shimmered in the hot sun.",
    "The lazy cow lay in the cool grass.", "Lift the square stone over the fence.",
    "The rope will bind the seven books at once.", "Hop over the fence and plunge in.",
    "The friendly gang left the drug store.", "Mesh wire keeps chicks inside.",
    "The frosty air passed through the coat.", "The crooked maze failed to fool the mouse.",
    "Adding fast leads to wrong sums.", "The show was a flop from the very start.",
    "A saw is a tool used for making boards.", "The wagon moved on well oiled wheels.",
    "March the soldiers past the next hill.", "A cup of sugar makes sweet fudge.",
    "Place a rosebush near the porch steps.", "Both lost their lives in the raging storm.",
)
SX_PER_SPEAKER, SI_PER_SPEAKER = 5, 3
#: silence (with the noise floor) around each sentence, as TIMIT's recordings have; level of the floor
_EDGE_SECONDS, _NOISE_DBFS, _SPEECH_RMS_DBFS = 0.15, -66.0, -24.0


def default_root(seed: int = 1993) -> Path:
    """``data_home()/embedded-timit-v<version>-seed<seed>``."""
    return data_home() / f"embedded-timit-v{CORPUS_VERSION}-seed{seed}"


def _rng(seed: int, *keys: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), *(zlib.crc32(k.encode()) for k in keys)])


def plan_corpus(seed: int) -> list[dict]:
    """Speakers with their names, voices and sentences (no audio): what :func:`ensure_embedded_timit` writes."""
    rng = _rng(seed, "speakers")
    si = rng.permutation(len(SI_POOL))
    used: set[str] = set()
    speakers = []
    for k, (subset, region, sex, variant, pitch, prange, rate) in enumerate(SPEAKERS):
        while True:
            name = ("M" if sex == "male" else "F") + "".join(rng.choice(list(string.ascii_uppercase), 3)) + "0"
            if name not in used:
                used.add(name)
                break
        sentences = [("SA1", SA[0]), ("SA2", SA[1])]
        sentences += [(f"SX{10 + i}", SX_POOL[i]) for i in sorted(rng.choice(len(SX_POOL), SX_PER_SPEAKER, replace=False))]
        sentences += [(f"SI{500 + int(i)}", SI_POOL[i]) for i in sorted(si[k * SI_PER_SPEAKER:(k + 1) * SI_PER_SPEAKER])]
        speakers.append({"subset": subset, "region": region, "speaker": name, "sex": sex,
                         "voice": {"variant": variant, "pitch": pitch, "pitch_range": prange, "rate": rate},
                         "sentences": sentences})
    return speakers


def _params(seed: int, lowercase: bool) -> dict:
    from datamodules.espeak import library_version

    return {"seed": int(seed), "lowercase": bool(lowercase), "sample_rate": SAMPLE_RATE, "espeak": library_version()}


def _relpath(spk: dict, stem: str, suffix: str, lowercase: bool) -> str:
    path = f"{spk['subset']}/{spk['region']}/{spk['speaker']}/{stem}{suffix}"
    return path.lower() if lowercase else path


def _expected_files(seed: int, lowercase: bool) -> set[str]:
    return {_relpath(spk, stem, suffix, lowercase) for spk in plan_corpus(seed) for stem, _ in spk["sentences"]
            for suffix in (".WAV", ".TXT", ".WRD")}


def is_complete(root: str | os.PathLike, seed: int = 1993, lowercase: bool = False) -> bool:
    """True if ``root`` holds a finished corpus of this version, seed, case and eSpeak version."""
    return manifest_is_complete(Path(root), CORPUS_VERSION, _params(seed, lowercase), _expected_files(seed, lowercase))


def render_sentence(text: str, voice: dict, seed: int, key: str) -> tuple[np.ndarray, list[tuple[int, int, str]]]:
    """One sentence as int16 at 16 kHz (with silence and a faint noise floor at the edges) and its
    word boundaries in samples."""
    from scipy.signal import resample_poly

    from datamodules.espeak import Voice, synthesize

    utt = synthesize(text, Voice(**voice))
    g = np.gcd(SAMPLE_RATE, utt.sample_rate)
    speech = resample_poly(utt.audio.astype(np.float64), SAMPLE_RATE // g, utt.sample_rate // g)
    speech *= 10 ** (_SPEECH_RMS_DBFS / 20) / max(np.sqrt(np.mean(speech**2)), 1e-9)
    edge = int(_EDGE_SECONDS * SAMPLE_RATE)
    audio = np.pad(speech, (edge, edge))
    audio += _rng(seed, "noise", key).standard_normal(audio.size) * 10 ** (_NOISE_DBFS / 20)
    peak = np.abs(audio).max()
    if peak > 0.99:
        audio *= 0.99 / peak
    pcm = np.round(audio * 32767).astype(np.int16)
    scale = SAMPLE_RATE / utt.sample_rate
    words = [(edge + int(round(a * scale)), edge + int(round(b * scale)), w) for a, b, w in utt.words]
    return pcm, words


def _write(tmp: Path, seed: int, lowercase: bool, progress: bool) -> None:
    from tqdm import tqdm

    from datamodules.espeak import library_version
    from datamodules.sphere import write_sphere

    speakers = plan_corpus(seed)
    jobs = [(spk, stem, text) for spk in speakers for stem, text in spk["sentences"]]
    files: dict[str, dict] = {}
    with tqdm(jobs, desc="Generating embedded TIMIT (eSpeak NG)", unit="sentence", disable=not progress,
              file=sys.stderr) as bar:
        for spk, stem, text in bar:
            pcm, words = render_sentence(text, spk["voice"], seed, f"{spk['speaker']}/{stem}")
            utterance_id = f"{spk['speaker'][1:].lower()}_{stem.lower()}"
            out = {suffix: tmp / _relpath(spk, stem, suffix, lowercase) for suffix in (".WAV", ".TXT", ".WRD")}
            out[".WAV"].parent.mkdir(parents=True, exist_ok=True)
            write_sphere(out[".WAV"], pcm, SAMPLE_RATE, {"database_id": "TIMIT", "database_version": "1.0",
                                                          "utterance_id": utterance_id})
            out[".TXT"].write_text(f"0 {pcm.size} {text}\n")
            out[".WRD"].write_text("".join(f"{a} {b} {w.lower()}\n" for a, b, w in words))  # TIMIT: lower case
            for suffix, path in out.items():
                files[_relpath(spk, stem, suffix, lowercase)] = {
                    "bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    manifest = {"format": "embedded-timit", "version": CORPUS_VERSION, "params": _params(seed, lowercase),
                "espeak": library_version(),
                "speakers": [{k: v for k, v in s.items() if k != "sentences"} for s in speakers], "files": files}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))


def ensure_embedded_timit(root: Optional[str | os.PathLike] = None, *, seed: int = 1993, lowercase: bool = False,
                          progress: bool = True) -> Path:
    """Return the root of a complete embedded TIMIT corpus, generating it first if needed
    (``lowercase`` writes ``train/dr1/mabc0/sa1.wav`` names, as some TIMIT copies have)."""
    if int(seed) < 0:
        raise LightningSepError(f"embedded_seed={seed} must be >= 0.")
    root = Path(root) if root is not None else default_root(seed)
    allowed = ("train", "test") if lowercase else ("TRAIN", "TEST")
    return ensure_corpus(root, lambda r: is_complete(r, seed, lowercase), allowed, "embedded TIMIT corpus",
                         lambda tmp: _write(tmp, seed, lowercase, progress))
