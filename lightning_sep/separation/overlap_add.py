"""Chunked full-track inference with cross-faded overlap-add.

A 10-minute stereo track is about 26 million samples per channel: its spectrogram at the paper's
front end (hop 384, 2049 bins) would not fit a GPU, nor comfortably RAM.  :func:`overlap_add`
runs a separator on chunks of ``chunk`` samples that overlap by ``overlap`` samples and blends
neighbouring chunks with complementary linear ramps (``w_prev + w_next = 1`` on every overlapped
sample), so the model's memory is that of one chunk whatever the track length and the chunk
boundaries (where the STFT sees a reflected edge) are faded out.  Only the output track itself,
``(sources, channels, samples)``, is held whole.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from lightning_sep.errors import LightningSepError

#: ``process(mixture_chunk (C, n), extra_chunk (..., C, n) or None) -> estimates (J, C, n)``
ChunkFn = Callable[[Tensor, Optional[Tensor]], Tensor]


def chunk_starts(length: int, chunk: int, overlap: int) -> list[int]:
    """Start sample of every chunk: ``0, hop, 2 hop, ...`` until a chunk reaches the end."""
    if chunk <= 0 or not 0 <= overlap < chunk:
        raise LightningSepError(f"Chunking needs 0 <= overlap ({overlap}) < chunk ({chunk}) samples.")
    starts = [0]
    while starts[-1] + chunk < length:
        starts.append(starts[-1] + chunk - overlap)
    return starts


def _ramp(n: int, device: torch.device) -> Tensor:
    """``n`` samples rising from 0 to 1 (exclusive), symmetric: ``ramp + ramp.flip(0) == 1``."""
    return (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n


@torch.no_grad()
def overlap_add(
    process: ChunkFn,
    mixture: Tensor,
    chunk: int,
    overlap: int,
    extra: Optional[Tensor] = None,
    progress: bool | str = False,
) -> Tensor:
    """Apply ``process`` to overlapping chunks of ``mixture`` ``(channels, samples)`` and blend.

    Args:
        process: separates one chunk: ``(C, n)`` (and the same chunk of ``extra``) to ``(J, C, n)``.
        mixture: the whole track, ``(channels, samples)``.
        chunk, overlap: chunk length and overlap in samples (``0 <= overlap < chunk``).
        extra: signals cut like the mixture and passed along (the reference stems of an oracle).
        progress: a tqdm progress bar over the chunks (its description when a string).

    Returns:
        ``(J, channels, samples)``, float32, on the mixture's device.
    """
    length = mixture.shape[-1]
    starts = chunk_starts(length, chunk, overlap)
    bar = None
    if progress and len(starts) > 1:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(starts), desc=progress if isinstance(progress, str) else "chunks",
                   unit="chunk", leave=False, disable=None)
    out: Optional[Tensor] = None
    try:
        for i, start in enumerate(starts):
            stop = min(start + chunk, length)
            est = process(mixture[..., start:stop], None if extra is None else extra[..., start:stop])
            if len(starts) == 1:
                return est.float()
            weight = torch.ones(stop - start, device=est.device)
            if i > 0 and overlap:
                weight[:overlap] = _ramp(overlap, est.device)
            if stop < length and overlap:
                weight[-overlap:] *= 1 - _ramp(overlap, est.device)
            if out is None:
                out = torch.zeros(*est.shape[:-1], length, device=est.device, dtype=torch.float32)
            out[..., start:stop] += est.float() * weight
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    assert out is not None
    return out
