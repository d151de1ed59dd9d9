"""``TIMITDataModule``: two-speaker (male + female) mixtures from TIMIT, by the papers' protocols.

Where the data comes from
    ``root=`` if given, else ``$TIMIT_ROOT``, else the embedded TIMIT-format corpus
    (:func:`datamodules.embedded_timit.ensure_embedded_timit`, eSpeak NG voices generated on first
    use).  The tree is read by :mod:`datamodules._timit` (upper- or lower-case names, NIST SPHERE).

Protocols (:mod:`datamodules.timit_protocols`, seeded; named in ``conf/data/``)
    ``pairs`` -- per dialect region one male and one female speaker, 9 utterances each for
    training and the remaining one each mixed for test (cae-nae-rcae-venkataramani-2017);
    ``ten_speakers`` -- 5 + 5 speakers, 25 male-female mixtures, 20 for training and 5 for test
    (vae-separation-pandey).  ``snr_db`` sets the male-to-female ratio of every mixture and
    ``test_snr_db`` that of the test mixtures alone (the VAE paper's confidence-versus-SNR curve).

Items
    ``(mixture, sources)``: float32 ``(samples,)`` and ``(n_targets, samples)`` with the clean
    sources ``male`` and ``female`` (``targets``), so mixture-to-source models and per-source
    models (trained on the clean speech) use the same DataModule.  Every track is
    ``(3, 1, samples)``: mixture, male, female, with ``mixture = male + female``.
    Training: ``samples_per_mixture`` random segments of ``segment_frames`` per training mixture
    per epoch (:mod:`datamodules.segments`; with ``dynamic_mixing`` the two speakers come from
    independent random mixtures and offsets); validation: fixed segments of the validation
    mixtures (of the training mixtures when the protocol holds none out); test: every test mixture
    whole (batch size 1).  ``make eval DATA=timit`` scores the whole test mixtures with BSS Eval.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from datamodules import _timit
from datamodules import timit_protocols as protocols
from datamodules._timit import SEXES, TimitUtterance
from datamodules.base import SeparationDataModule, check_at_least, check_targets
from datamodules.segments import ArrayTracks, FixedSegments, StemItem, TrainSegments
from lightning_sep.errors import LightningSepError, UnknownNameError

#: The sources of every mixture, in track row order (row 0 is the mixture).
SOURCES: tuple[str, ...] = SEXES
_ROW = {name: i + 1 for i, name in enumerate(SOURCES)}


@dataclass
class SpeechMixture:
    """A whole test mixture and what it is made of (``make eval DATA=timit``)."""

    name: str
    pair: str  # "<male speaker>+<female speaker>"
    audio: np.ndarray  # (3, samples) float32: mixture, male, female
    utterances: dict[str, list[str]]  # source -> utterance ids
    snr_db: float


class TIMITDataModule(SeparationDataModule):
    """TIMIT (or the embedded TIMIT-format corpus) as male + female speech mixtures.

    Args:
        root: the TIMIT folder (``TRAIN``/``TEST``); default ``$TIMIT_ROOT``, else the embedded corpus.
        protocol: ``pairs`` or ``ten_speakers`` (module docstring).
        subset: the TIMIT subset the speakers are drawn from (``train`` or ``test``; the papers
            draw training speakers).
        include_sa: use the two SA sentences every speaker reads (10 utterances per speaker; 8 without).
        regions, pairs_per_region, train_utterances: the ``pairs`` protocol (``regions`` null = every region).
        speakers_per_sex: the ``ten_speakers`` protocol (5).
        validation_holdout: 0 = the papers' protocols (validation on the training mixtures); ``k``
            = ``k`` training utterances per speaker (pairs) or ``k`` training mixtures (ten_speakers).
        snr_db, test_snr_db: male-to-female power ratio of the mixtures (test: ``test_snr_db`` if set).
        level_db: the mixtures' power (sum of the two sources' powers) in dB re. full scale.
        targets: sources the model estimates, of ``male``, ``female``.
        sample_rate, n_fft, win_length, hop_length, window, retained_bins: the front end (audio is
            resampled to ``sample_rate``; TIMIT is 16 kHz).
        segment_frames, samples_per_mixture, dynamic_mixing: training segments.
        val_segment_frames, val_segments_per_mixture: the fixed validation segments.
        batch_size, num_workers, seed: the dataloaders, and the seed of the protocol and segments.
        embedded_seed: seed of the embedded corpus, used when no root is configured.
    """

    #: ``<corpus>-<protocol>``: each protocol is its own set of mixtures (the MLflow tag ``data.dataset``,
    #: so ``make eval`` only finds models trained on the same mixtures)
    dataset_name = "timit"
    test_batch_size = 1  # test items are whole mixtures of different lengths
    sources = SOURCES

    def __init__(
        self,
        root: Optional[str] = None,
        protocol: str = "pairs",
        subset: str = "train",
        include_sa: bool = True,
        regions: Optional[list[str]] = None,
        pairs_per_region: int = 1,
        train_utterances: int = 9,
        speakers_per_sex: int = 5,
        validation_holdout: int = 0,
        snr_db: float = 0.0,
        test_snr_db: Optional[float] = None,
        level_db: float = -20.0,
        targets: list[str] = ["male", "female"],  # noqa: B006 - copied; a list default reads well in the CLI
        sample_rate: int = 16000,
        n_fft: int = 1024,
        win_length: int = 1024,
        hop_length: int = 256,
        window: str = "sqrt_hann",
        retained_bins: int = 513,
        segment_frames: int = 100,
        samples_per_mixture: int = 64,
        dynamic_mixing: bool = False,
        val_segment_frames: int = 100,
        val_segments_per_mixture: int = 4,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 42,
        embedded_seed: int = 1993,
    ):
        super().__init__(
            sample_rate=sample_rate, n_fft=n_fft, win_length=win_length, hop_length=hop_length, window=window,
            retained_bins=retained_bins, segment_frames=segment_frames, val_segment_frames=val_segment_frames,
            batch_size=batch_size, num_workers=num_workers, seed=seed,
        )
        self.targets = check_targets(targets, SOURCES)
        if protocol not in protocols.PROTOCOLS:
            raise UnknownNameError("protocol", protocol, protocols.PROTOCOLS)
        if str(subset).lower() not in _timit.SUBSETS:
            raise UnknownNameError("subset", subset, _timit.SUBSETS)
        check_at_least(1, samples_per_mixture=samples_per_mixture, val_segments_per_mixture=val_segments_per_mixture,
                       pairs_per_region=pairs_per_region, train_utterances=train_utterances)
        check_at_least(0, validation_holdout=validation_holdout, embedded_seed=embedded_seed)
        for name, value in (("snr_db", snr_db), ("test_snr_db", test_snr_db), ("level_db", level_db)):
            if value is not None and not np.isfinite(float(value)):
                raise LightningSepError(f"{name}={value} must be a finite number of dB.")
        if float(level_db) > 0:
            raise LightningSepError(f"level_db={level_db} must be <= 0 dB (full scale).")
        self.save_hyperparameters()
        self.root_arg, self.protocol, self.subset = root, protocol, str(subset).lower()
        self.include_sa = bool(include_sa)
        self.regions = [regions] if isinstance(regions, str) else (list(regions) if regions else None)
        self.pairs_per_region, self.train_utterances = int(pairs_per_region), int(train_utterances)
        self.speakers_per_sex, self.validation_holdout = int(speakers_per_sex), int(validation_holdout)
        self.snr_db = float(snr_db)
        self.test_snr_db = self.snr_db if test_snr_db is None else float(test_snr_db)
        self.level_db = float(level_db)
        self.samples_per_mixture, self.dynamic_mixing = int(samples_per_mixture), bool(dynamic_mixing)
        self.val_segments_per_mixture = int(val_segments_per_mixture)
        self.embedded_seed = int(embedded_seed)
        self.item = StemItem([_ROW[t] for t in self.targets])
        self.root: Optional[Path] = None
        self.embedded = False
        self.dataset_name = f"timit-{protocol}"
        self._plan: Optional[protocols.ProtocolPlan] = None
        self._audio: dict[Path, np.ndarray] = {}
        self._tracks: dict[str, ArrayTracks] = {}

    # -- where the data is -------------------------------------------------------------------------
    def _resolve_root(self) -> Path:
        if self.root is not None:
            return self.root
        env = os.environ.get("TIMIT_ROOT", "").strip()
        if self.root_arg or env:
            origin = f"root={self.root_arg}" if self.root_arg else f"TIMIT_ROOT={env}"
            root = Path(self.root_arg or env).expanduser()
            advice = ("Point TIMIT_ROOT (or root) at the TIMIT folder that holds TRAIN and TEST, or leave both "
                      "unset to use the embedded corpus.")
            if not root.exists():
                raise LightningSepError(f"{origin}: {root} does not exist. {advice}")
            if not root.is_dir():
                raise LightningSepError(f"{origin}: {root} is not a folder. {advice}")
            tree = _timit.find_timit_root(root) or root
            manifest = tree / "manifest.json"
            if manifest.is_file() and '"embedded-timit"' in manifest.read_text()[:200]:
                self.embedded = True
        else:
            from datamodules.embedded_timit import ensure_embedded_timit

            root = ensure_embedded_timit(seed=self.embedded_seed)
            self.embedded = True
        self.dataset_name = f"{'embedded_timit' if self.embedded else 'timit'}-{self.protocol}"
        self.root = root
        return root

    def plan(self) -> protocols.ProtocolPlan:
        """The protocol's mixtures (utterance lists), computed once."""
        if self._plan is not None:
            return self._plan
        root = self._resolve_root()
        utts = [u for u in _timit.scan_timit(root, self.include_sa) if u.subset == self.subset]
        if not utts:
            raise LightningSepError(f"{root}: the TIMIT subset {self.subset.upper()} holds no utterances: "
                                    f"expected {_timit.LAYOUT}; choose subset: train or test.")
        if self.protocol == "pairs":
            plan = protocols.pairs(utts, self.seed, _timit.utterance_length, self.regions, self.pairs_per_region,
                                   self.train_utterances, self.validation_holdout, self.include_sa)
        else:
            plan = protocols.ten_speakers(utts, self.seed, self.speakers_per_sex, self.validation_holdout,
                                          self.include_sa)
        self._plan = plan
        for note in plan.notes:
            self._announce_note(note)
        return plan

    def _announce_note(self, note: str) -> None:
        import warnings

        warnings.warn(f"TIMIT {self.protocol} protocol: {note}.", stacklevel=3)

    # -- audio -------------------------------------------------------------------------------------
    def _utterance(self, utt: TimitUtterance) -> np.ndarray:
        """Zero-mean, unit-variance float64 audio at ``sample_rate`` (read once)."""
        audio = self._audio.get(utt.path)
        if audio is None:
            x, rate = _timit.read_utterance(utt)
            if rate != self.sample_rate:
                import torch
                import torchaudio.functional as AF

                x = AF.resample(torch.from_numpy(x), rate, self.sample_rate).numpy()
            audio = self._audio[utt.path] = protocols.normalize(x, str(utt.path))
        return audio

    def _mixture(self, plan: protocols.MixturePlan, snr_db: float) -> np.ndarray:
        return protocols.mix([self._utterance(u) for u in plan.male], [self._utterance(u) for u in plan.female],
                             plan.fit, snr_db, self.level_db)

    def _tracks_of(self, split: str) -> ArrayTracks:
        plan = self.plan()
        if split == "valid" and not plan.valid:
            split = "train"  # the papers' protocols: validation on the training mixtures
        tracks = self._tracks.get(split)
        if tracks is None:
            mixtures = {"train": plan.train, "valid": plan.valid, "test": plan.test}[split]
            snr = self.test_snr_db if split == "test" else self.snr_db
            tracks = self._tracks[split] = ArrayTracks(
                [m.name for m in mixtures], [self._mixture(m, snr)[:, None, :] for m in mixtures])
        return tracks

    @property
    def eval_name(self) -> str:
        """The results folder of ``make eval``: the dataset, protocol and test SNR (each its own test set)."""
        snr = "" if self.test_snr_db == 0 else f"-snr{self.test_snr_db:g}dB"
        self._resolve_root()
        return f"{self.dataset_name}{snr}"

    # -- Lightning hooks -----------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Generate the embedded corpus if it is needed (once, on rank 0)."""
        self._resolve_root()

    def setup(self, stage: Optional[str] = None) -> None:
        plan = self.plan()
        if stage in (None, "fit", "validate"):
            if self.train_set is None and stage in (None, "fit"):
                self._set_train_set(TrainSegments(
                    self._tracks_of("train"), self.item, self.segment_samples, self.samples_per_mixture, True,
                    self.seed, [1, 2] if self.dynamic_mixing else None))
            if self.valid_set is None:
                self.valid_set = FixedSegments(self._tracks_of("valid"), self.item, self.val_segment_samples,
                                               self.val_segments_per_mixture, True, warn_short=False)
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = FixedSegments(self._tracks_of("test"), self.item, None, 1, True)
        where = "the embedded TIMIT-format corpus" if self.embedded else "TIMIT"
        self._announce(f"{where} ({self.root}): {plan.summary()}, SNR {self.snr_db:g} dB "
                       f"(test {self.test_snr_db:g} dB). Test pairs: {', '.join(m.name for m in plan.test)}")

    # -- what models and the evaluation ask for -------------------------------------------------------
    def train_mixtures(self) -> Iterator[np.ndarray]:
        """The training mixtures, float32 ``(1, samples)`` (the model's normalisation statistics)."""
        tracks = self._tracks_of("train")
        for i in range(len(tracks)):
            yield tracks.array(i)[0]

    def train_sources(self, source: str) -> Iterator[np.ndarray]:
        """The clean training speech of one source (``male`` or ``female``), float32 ``(1, samples)``
        per training mixture: what per-source models are trained on."""
        if source not in _ROW:
            raise UnknownNameError("source", source, SOURCES)
        tracks = self._tracks_of("train")
        for i in range(len(tracks)):
            yield tracks.array(i)[_ROW[source]]

    def test_mixtures(self) -> list[SpeechMixture]:
        """Every test mixture whole, with its clean sources (``make eval DATA=timit``)."""
        plan = self.plan()
        tracks = self._tracks_of("test")
        return [SpeechMixture(
            name=m.name, pair=m.pair, audio=tracks.array(i)[:, 0, :], snr_db=self.test_snr_db,
            utterances={"male": [u.id for u in m.male], "female": [u.id for u in m.female]},
        ) for i, m in enumerate(plan.test)]

    def describe(self) -> dict[str, Any]:
        """What the mixtures are made of (logged with evaluations)."""
        plan = self.plan()
        return {
            "protocol": self.protocol, "subset": self.subset, "seed": self.seed, "speakers": plan.speakers,
            "train": {m.name: [u.id for u in m.utterances] for m in plan.train},
            "valid": {m.name: [u.id for u in m.utterances] for m in plan.valid},
            "test": {m.name: [u.id for u in m.utterances] for m in plan.test},
        }

