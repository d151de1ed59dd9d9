"""The speaker-pair protocols of the TIMIT papers, and how their mixtures are made.

A protocol turns the utterances of a TIMIT tree into a :class:`ProtocolPlan`: which utterances of
which male and female speaker form each training, validation and test mixture.  Plans are seeded
(``numpy.random.default_rng``; no global state) and use metadata only -- no audio is read except
SPHERE headers for lengths.

``pairs`` (cae-nae-rcae-venkataramani-2017; the authors' code)
    Per dialect region, ``pairs_per_region`` random male and female speakers.  The test mixture of
    a pair is the one utterance per speaker whose lengths are closest (the shorter zero-padded);
    the speaker's other ``train_utterances`` (9) utterances, concatenated, are its training data,
    the two trimmed to the shorter.

``ten_speakers`` (vae-separation-pandey, Sec. 4)
    ``speakers_per_sex`` (5) random male and female speakers; every male-female pair is one mixture
    (25).  Each speaker's utterances are split into as many disjoint groups as there are speakers
    of the other sex, and mixture ``(male i, female j)`` uses male ``i``'s group ``j`` and female
    ``j``'s group ``i``, so no utterance is in two mixtures.  The test mixtures are a seeded
    cyclic diagonal ``(i, (i + shift) mod 5)``: every speaker is in one test mixture and four
    training ones ("4 for each male and female speaker"), 20 training and 5 test mixtures.

Validation
    Neither paper holds data out for validation.  ``validation_holdout=0`` keeps their protocol
    (the DataModule then validates on fixed segments of the training mixtures);
    ``validation_holdout=k`` moves ``k`` training utterances per speaker (``pairs``) or ``k``
    training mixtures (``ten_speakers``) to a validation set.

Mixing (:func:`mix`)
    Each utterance is normalised to zero mean and unit variance (as the authors' code and the VAE
    paper do), each speaker's utterances are concatenated, the two are trimmed (training) or
    zero-padded (test) to one length, and scaled so that the male-to-female power ratio is
    ``snr_db`` over the mixture and the mixture sits at ``level_db`` dB re. full scale (the papers
    mix unit-variance signals; BSS Eval is scale-invariant, and a fixed level keeps files playable).
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from datamodules._timit import TimitUtterance
from lightning_sep.errors import LightningSepError, UnknownNameError

PROTOCOLS: tuple[str, ...] = ("pairs", "ten_speakers")


@dataclass(frozen=True)
class MixturePlan:
    """The utterances of one mixture: ``male`` and ``female`` are concatenated in order."""

    name: str
    male: tuple[TimitUtterance, ...]
    female: tuple[TimitUtterance, ...]
    fit: str  # "trim" (both cut to the shorter) or "pad" (the shorter zero-padded)

    @property
    def utterances(self) -> tuple[TimitUtterance, ...]:
        return self.male + self.female

    @property
    def pair(self) -> str:
        """``<male speaker>+<female speaker>``."""
        return f"{self.male[0].speaker}+{self.female[0].speaker}"


@dataclass
class ProtocolPlan:
    name: str
    train: list[MixturePlan]
    valid: list[MixturePlan]  # empty: validate on the training mixtures
    test: list[MixturePlan]
    speakers: dict[str, str] = field(default_factory=dict)  # speaker -> "male DR1 train"
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        valid = f"{len(self.valid)} validation" if self.valid else "validation on the training mixtures"
        males = sum(v.startswith("male") for v in self.speakers.values())
        return (f"TIMIT protocol {self.name}: {males} male + {len(self.speakers) - males} female speakers, "
                f"{len(self.train)} training, {valid}, {len(self.test)} test mixtures")


def _by_speaker(utterances: Sequence[TimitUtterance]) -> dict[str, list[TimitUtterance]]:
    out: dict[str, list[TimitUtterance]] = defaultdict(list)
    for u in utterances:
        out[u.speaker].append(u)
    return dict(out)


def _describe(utts: list[TimitUtterance]) -> str:
    u = utts[0]
    return f"{u.sex} {u.region} {u.subset}"


def _too_few(protocol: str, need: int, what: str, counts: dict[str, int], include_sa: bool) -> LightningSepError:
    most = max(counts.values(), default=0)
    sa = "" if include_sa else " (SA sentences are excluded: include_sa: true adds 2 per speaker)"
    return LightningSepError(
        f"Too few speakers or utterances for the {protocol} protocol: it needs {what} with at least {need} "
        f"utterances each; the data has {len(counts)} speaker(s) with at most {most} utterances{sa}. "
        "Use a complete TIMIT copy (TIMIT_ROOT), another subset, or a smaller protocol setting."
    )


def pairs(
    utterances: Sequence[TimitUtterance], seed: int, length: Callable[[TimitUtterance], int],
    regions: Optional[Sequence[str]] = None, pairs_per_region: int = 1, train_utterances: int = 9,
    validation_holdout: int = 0, include_sa: bool = True,
) -> ProtocolPlan:
    """The CAE paper's protocol (module docstring); ``length`` gives an utterance's samples."""
    if pairs_per_region < 1 or train_utterances < 1 or not 0 <= validation_holdout < train_utterances:
        raise LightningSepError(
            f"pairs protocol: pairs_per_region={pairs_per_region} and train_utterances={train_utterances} "
            f"must be >= 1, validation_holdout={validation_holdout} in 0..{train_utterances - 1} (it moves that "
            "many of each speaker's training utterances to validation).")
    need = train_utterances + 1  # the validation utterances come out of the training ones
    speakers = _by_speaker(utterances)
    present = sorted({u.region for u in utterances})
    if regions:
        wanted = []
        for r in regions:
            r = str(r).upper()
            if r not in present:
                raise UnknownNameError("dialect region", r, present)
            wanted.append(r)
    else:
        wanted = present
    plan = ProtocolPlan("pairs", [], [], [])
    for region in wanted:
        by_sex = {sex: sorted(s for s, u in speakers.items() if u[0].region == region and u[0].sex == sex
                              and len(u) >= need) for sex in ("male", "female")}
        if min(len(v) for v in by_sex.values()) < pairs_per_region:
            why = (f"{region} has {len(by_sex['male'])} male and {len(by_sex['female'])} female speaker(s) with "
                   f">= {need} utterances; {pairs_per_region} of each are needed")
            if regions:
                raise LightningSepError(f"Too few speakers or utterances for the pairs protocol: {why}.")
            plan.notes.append(f"{why}: skipped")
            continue
        rng = np.random.default_rng([seed, zlib.crc32(region.encode())])
        males = [by_sex["male"][i] for i in rng.choice(len(by_sex["male"]), pairs_per_region, replace=False)]
        females = [by_sex["female"][i] for i in rng.choice(len(by_sex["female"]), pairs_per_region, replace=False)]
        for m, f in zip(males, females):
            um, uf = speakers[m], speakers[f]
            lm, lf = [length(u) for u in um], [length(u) for u in uf]
            gap = np.abs(np.subtract.outer(lm, lf))
            i, j = np.unravel_index(int(np.argmin(gap)), gap.shape)  # the first closest pair
            name = f"{region}_{m}+{f}"
            rest_m = [um[k] for k in sorted(rng.permutation([k for k in range(len(um)) if k != i])[: need - 1])]
            rest_f = [uf[k] for k in sorted(rng.permutation([k for k in range(len(uf)) if k != j])[: need - 1])]
            held_m = set(rng.choice(len(rest_m), validation_holdout, replace=False).tolist())
            held_f = set(rng.choice(len(rest_f), validation_holdout, replace=False).tolist())
            plan.test.append(MixturePlan(name, (um[i],), (uf[j],), "pad"))
            plan.train.append(MixturePlan(
                name, tuple(u for k, u in enumerate(rest_m) if k not in held_m),
                tuple(u for k, u in enumerate(rest_f) if k not in held_f), "trim"))
            if validation_holdout:
                plan.valid.append(MixturePlan(
                    name, tuple(rest_m[k] for k in sorted(held_m)), tuple(rest_f[k] for k in sorted(held_f)), "trim"))
            plan.speakers[m], plan.speakers[f] = _describe(um), _describe(uf)
    if not plan.test:
        raise _too_few("pairs", need, f"one male and one female speaker in a dialect region ({', '.join(wanted)})",
                       {s: len(u) for s, u in speakers.items()}, include_sa)
    return plan


def ten_speakers(
    utterances: Sequence[TimitUtterance], seed: int, speakers_per_sex: int = 5, validation_holdout: int = 0,
    include_sa: bool = True,
) -> ProtocolPlan:
    """The VAE paper's protocol (module docstring)."""
    n = int(speakers_per_sex)
    if n < 2:
        raise LightningSepError(f"ten_speakers protocol: speakers_per_sex={n} must be >= 2 (one test mixture each).")
    speakers = _by_speaker(utterances)
    by_sex = {sex: sorted(s for s, u in speakers.items() if u[0].sex == sex and len(u) >= n) for sex in ("male", "female")}
    if min(len(v) for v in by_sex.values()) < n:
        raise _too_few("ten_speakers", n, f"{n} male and {n} female speakers (found {len(by_sex['male'])} male, "
                       f"{len(by_sex['female'])} female)", {s: len(u) for s, u in speakers.items()}, include_sa)
    n_train = n * n - n
    if not 0 <= validation_holdout < n_train:
        raise LightningSepError(
            f"ten_speakers protocol: validation_holdout={validation_holdout} must be in 0..{n_train - 1} "
            f"(it takes training mixtures, of which there are {n_train}).")
    rng = np.random.default_rng([seed, 4])
    chosen = {sex: [by_sex[sex][k] for k in rng.choice(len(by_sex[sex]), n, replace=False)] for sex in ("male", "female")}
    # each speaker's utterances in n disjoint groups, one per speaker of the other sex
    groups = {s: np.array_split(rng.permutation(len(speakers[s])), n) for s in chosen["male"] + chosen["female"]}
    shift = int(rng.integers(n))

    def utts(speaker: str, group: int) -> tuple[TimitUtterance, ...]:
        return tuple(speakers[speaker][k] for k in sorted(groups[speaker][group]))

    plan = ProtocolPlan("ten_speakers", [], [], [])
    train = []
    for i, m in enumerate(chosen["male"]):
        for j, f in enumerate(chosen["female"]):
            test = j == (i + shift) % n
            mixture = MixturePlan(f"{m}+{f}", utts(m, j), utts(f, i), "pad" if test else "trim")
            (plan.test if test else train).append(mixture)
    held = set(rng.choice(len(train), validation_holdout, replace=False).tolist())
    plan.train = [p for k, p in enumerate(train) if k not in held]
    plan.valid = [p for k, p in enumerate(train) if k in held]
    for s in chosen["male"] + chosen["female"]:
        plan.speakers[s] = _describe(speakers[s])
    return plan


# -- mixing ------------------------------------------------------------------------------------------
def normalize(x: np.ndarray, name: str) -> np.ndarray:
    """Zero mean, unit variance (float64)."""
    x = np.asarray(x, dtype=np.float64)
    std = x.std()
    if not std > 0:
        raise LightningSepError(f"{name}: the utterance is silent (zero variance); it cannot be mixed at an SNR.")
    return (x - x.mean()) / std


def mix(male: Sequence[np.ndarray], female: Sequence[np.ndarray], fit: str, snr_db: float = 0.0,
        level_db: float = -20.0) -> np.ndarray:
    """``(3, samples)`` float32: mixture, male, female with ``mixture = male + female``.

    ``male`` and ``female`` are lists of normalised utterances (:func:`normalize`), concatenated.
    The male-to-female power ratio over the returned length is ``snr_db`` and the sum of the two
    powers is ``level_db`` dB re. full scale (1.0).
    """
    m, f = np.concatenate(list(male)), np.concatenate(list(female))
    if fit == "trim":
        n = min(m.size, f.size)
    elif fit == "pad":
        n = max(m.size, f.size)
    else:
        raise UnknownNameError("fit", fit, ["trim", "pad"])
    m, f = (np.pad(x[:n], (0, n - min(n, x.size))) for x in (m, f))
    pm, pf = float(np.mean(m * m)), float(np.mean(f * f))
    ratio = 10 ** (snr_db / 10)  # pm' / pf'
    total = 10 ** (level_db / 10)  # pm' + pf'
    gm = np.sqrt(total * ratio / (1 + ratio) / pm)
    gf = np.sqrt(total / (1 + ratio) / pf)
    m, f = (m * gm).astype(np.float32), (f * gf).astype(np.float32)
    return np.stack([m + f, m, f])
