"""Segment sampling, written once for every DataModule.

A DataModule holds its material as *tracks*: arrays ``(rows, channels, samples)`` whose row 0 is
the mixture and whose other rows are the sources (MUSDB18: mixture, drums, bass, other, vocals;
TIMIT: mixture, male, female).  Two datasets cut them into ``(mixture, targets)`` items:

* :class:`TrainSegments` -- ``samples_per_track`` random segments per track per epoch; with
  ``remix_rows`` every source row comes from its own random track, channel and offset and the
  mixture is their sum (open-unmix's random track mix; "dynamic mixing" for speech).
* :class:`FixedSegments` -- the same segments every epoch and every run (validation and test):
  ``segments_per_track`` centred in equal parts of each track.

Randomness (no global RNG state is used)
    The training item with index ``i`` in epoch ``e`` draws from
    ``numpy.random.default_rng([seed, 1, e, i])``, and the epoch's order is a permutation from
    ``default_rng([seed, 2, e])``.  The epoch reaches the dataloader workers through the indices
    the :class:`EpochSampler` hands out (``e * len + i``), so a run is reproducible for any
    ``num_workers``, workers never repeat each other's segments, and every epoch draws new
    segments.  Lightning calls ``EpochSampler.set_epoch`` each epoch (also through its
    distributed wrapper under DDP, where each rank gets different indices).
"""

from __future__ import annotations

import warnings
from typing import Callable, Iterator, Optional, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

#: ``stems (rows, samples) float32 -> (mixture (samples,), targets (n_targets, samples))``
ItemFn = Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]]


class Tracks(Protocol):
    """What the datasets need from a collection of tracks."""

    names: list[str]
    lengths: list[int]
    channels: list[int]

    def __len__(self) -> int: ...

    def array(self, i: int) -> np.ndarray:
        """Track ``i`` as ``(rows, channels, samples)`` (row 0: the mixture)."""
        ...


class ArrayTracks:
    """Tracks held in memory as ``(rows, channels, samples)`` float32 arrays."""

    def __init__(self, names: Sequence[str], arrays: Sequence[np.ndarray]):
        self.names = list(names)
        self.arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in arrays]
        self.channels = [int(a.shape[1]) for a in self.arrays]
        self.lengths = [int(a.shape[2]) for a in self.arrays]

    def __len__(self) -> int:
        return len(self.arrays)

    def array(self, i: int) -> np.ndarray:
        return self.arrays[i]


class StemItem:
    """``(mixture, targets)`` from rows of a track: each target is a row, or a row's complement
    (``mixture - row``, e.g. MUSDB's accompaniment = mixture - vocals).  Picklable for workers."""

    def __init__(self, rows: Sequence[int], complement: Sequence[bool] | None = None):
        self.rows = [int(r) for r in rows]
        self.complement = [bool(c) for c in (complement or [False] * len(self.rows))]

    def compact(self) -> tuple[list[int], "StemItem"]:
        """The rows this item reads (the mixture first), and the same item on an array of only those
        rows: a vocals segment of a MUSDB track then copies 2 of its 5 rows (``make bench``: the
        loader's share of a training step)."""
        used = sorted({0, *self.rows})
        return used, StemItem([used.index(r) for r in self.rows], self.complement)

    def __call__(self, stems: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        mixture = stems[0]
        out = [mixture - stems[r] if c else stems[r] for r, c in zip(self.rows, self.complement)]
        return torch.from_numpy(np.ascontiguousarray(mixture)), torch.from_numpy(np.stack(out))


def crop(x: np.ndarray, offset: int, length: int) -> np.ndarray:
    """``x[..., offset:offset + length]`` as float32, zero-padded at the end if the track is short."""
    seg = np.array(x[..., offset : offset + length], dtype=np.float32)  # a writable copy (of a map, too)
    if seg.shape[-1] < length:
        pad = [(0, 0)] * (seg.ndim - 1) + [(0, length - seg.shape[-1])]
        seg = np.pad(seg, pad)
    return seg


def segment(a: np.ndarray, rows: slice | int | list[int], channel: Optional[int], offset: int, length: int) -> np.ndarray:
    """Row(s) of a track, one channel (``channel``) or the channel average (``None``)."""
    if isinstance(rows, list):  # only these rows' samples are read (fancy indexing would copy whole rows)
        return np.stack([segment(a, r, channel, offset, length) for r in rows])
    if channel is None:
        return crop(a[rows], offset, length).mean(axis=-2)
    return crop(a[rows, channel], offset, length)


def compact(item: ItemFn) -> tuple[slice | list[int], ItemFn]:
    """``item.compact()`` where the item has it (:class:`StemItem`), else every row."""
    return item.compact() if isinstance(item, StemItem) else (slice(None), item)


def centred_offsets(n: int, length: int, k: int) -> list[int]:
    """Offsets of ``k`` segments of ``length`` centred in equal parts of ``n`` samples (deduplicated)."""
    if n < length:
        return [0]
    return sorted({min(max(int((j + 0.5) * n / k - length / 2), 0), n - length) for j in range(k)})


class EpochSampler(Sampler[int]):
    """Hands out ``epoch * n + i`` for a seeded permutation of ``i`` in ``range(n)``.

    The epoch advances by one after each pass (or is set by Lightning through :meth:`set_epoch`),
    which is how the dataset's workers learn the epoch without shared state.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = int(n), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch
        self.epoch += 1
        order = np.random.default_rng([self.seed, 2, epoch]).permutation(self.n)
        return iter((epoch * self.n + order).tolist())


class TrainSegments(Dataset):
    """``samples_per_track`` random segments per track per epoch (see the module docstring).

    Item ``i`` of an epoch comes from track ``i // samples_per_track`` (every track is seen equally
    often), with a random channel (``mono=False``) and offset.  With ``remix_rows`` each of those
    rows comes from its own random track, channel and offset, and the mixture is their sum.
    """

    def __init__(
        self, tracks: Tracks, item: ItemFn, segment_samples: int, samples_per_track: int, mono: bool,
        seed: int, remix_rows: Optional[Sequence[int]] = None,
    ):
        self.tracks, self.item = tracks, item
        self.length, self.samples_per_track = int(segment_samples), int(samples_per_track)
        self.mono, self.seed = bool(mono), int(seed)
        self.remix_rows = list(remix_rows) if remix_rows else None
        self.rows, self.row_item = compact(item)  # without remixing: only the rows the item reads

    def __len__(self) -> int:
        return len(self.tracks) * self.samples_per_track

    def _draw(self, rng: np.random.Generator, t: int) -> tuple[Optional[int], int]:
        channel = None if self.mono else int(rng.integers(self.tracks.channels[t]))
        offset = int(rng.integers(max(self.tracks.lengths[t] - self.length, 0) + 1))
        return channel, offset

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = divmod(int(index), len(self))
        rng = np.random.default_rng([self.seed, 1, epoch, i])
        if self.remix_rows is None:
            t = i // self.samples_per_track
            channel, offset = self._draw(rng, t)
            return self.row_item(segment(self.tracks.array(t), self.rows, channel, offset, self.length))
        sources = []
        for row in self.remix_rows:
            t = int(rng.integers(len(self.tracks)))
            channel, offset = self._draw(rng, t)
            sources.append(segment(self.tracks.array(t), row, channel, offset, self.length))
        rows = int(self.tracks.array(0).shape[0])
        stems = np.zeros((rows, self.length), dtype=np.float32)
        for row, audio in zip(self.remix_rows, sources):
            stems[row] = audio
        stems[0] = np.sum(sources, axis=0)
        return self.item(stems)


class FixedSegments(Dataset):
    """Fixed segments (validation/test): ``segments_per_track`` per track (and per channel when
    ``mono=False``), centred in equal parts of the track -- the same every epoch and run.  A track
    shorter than a segment gives one zero-padded segment (with a warning naming it).
    ``segment_samples=None`` makes every track one whole item (batch them one at a time)."""

    def __init__(
        self, tracks: Tracks, item: ItemFn, segment_samples: Optional[int], segments_per_track: int,
        mono: bool, warn_short: bool = True,
    ):
        self.tracks, self.mono = tracks, bool(mono)
        self.rows, self.item = compact(item)
        self.length = None if segment_samples is None else int(segment_samples)
        self.items: list[tuple[int, Optional[int], int]] = []  # (track, channel, offset)
        for t, (name, n) in enumerate(zip(tracks.names, tracks.lengths)):
            length = n if self.length is None else self.length
            if n < length and warn_short:
                warnings.warn(
                    f"Track {name!r} has {n} samples, fewer than a segment ({length}); "
                    "it is evaluated on one zero-padded segment.", stacklevel=2,
                )
            channels = [None] if self.mono else list(range(tracks.channels[t]))
            offsets = centred_offsets(n, length, int(segments_per_track))
            self.items += [(t, c, o) for o in offsets for c in channels]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        t, channel, offset = self.items[index]
        length = self.tracks.lengths[t] if self.length is None else self.length
        return self.item(segment(self.tracks.array(t), self.rows, channel, offset, length))
