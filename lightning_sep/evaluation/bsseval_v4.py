"""BSS Eval v4 in torch: museval's ``evaluate`` (SDR, ISR, SIR, SAR per source and frame), on CPU or GPU.

:func:`bss_eval_v4` gives the numbers of ``museval.evaluate(references, estimates, win, hop,
mode="v4")`` -- the ``bss_eval_images`` decomposition with *time-invariant* distortion filters
(Liutkus, Stöter & Ito, "The 2018 Signal Separation Evaluation Campaign", LVA/ICA 2018, Sec. 3;
Vincent, Gribonval & Févotte, IEEE TASLP 14(4), 2006, eqs. 2-5 and 6-8 with the image terms of
the BSS_EVAL toolbox guide, Févotte et al. 2005).  For each target ``j``, with ``L = 512`` taps:

* over the **whole track**, the least-squares filters that map the delayed copies (delays
  ``0 .. L-1``) of every reference channel to each estimate channel (``C``), and of the references
  of ``j`` alone (``C_j``): ``G c = d`` with ``G`` the Gram matrix of the delayed references and
  ``d`` their correlations with the estimate (museval's ``_compute_projection_filters``);
* in **every frame** (``win`` samples every ``hop``; museval's ``Framing``), the frame of the
  references filtered by them, ``P_j`` and ``P`` (length ``win + L - 1``), give::

      s_true   = s_j (zero-padded)          e_spat   = P_j - s_true
      e_interf = P - s_true - e_spat        e_artif  = ŝ_j - s_true - e_spat - e_interf
      SDR = 10 log10 |s_true|² / |e_spat + e_interf + e_artif|²
      ISR = 10 log10 |s_true|² / |e_spat|²
      SIR = 10 log10 |s_true + e_spat|² / |e_interf|²
      SAR = 10 log10 |s_true + e_spat + e_interf|² / |e_artif|²

  (a zero denominator is +inf, as museval's ``_safe_db``); a frame where any reference or any
  estimate is silent (its channel sum is zero throughout) is NaN for every source and metric.

What museval does slowly and this does once (the same sums in another order; float64 throughout):

* the Gram matrix needs only lags ``|k| < L``: every pair of channels is correlated in one pass of
  block FFTs (overlap-save, blocks of ~15k samples, the cross-spectra summed over blocks in the
  frequency domain by per-frequency matrix products), instead of a full-length complex FFT per pair
  and per target;
* one Cholesky factorisation for all targets' ``C`` (museval: one LU per target), one batched for
  the ``C_j``;
* the frames are filtered in batched real FFTs, every target and channel at once, and the energies
  come from the spectra (Parseval) as quadratic forms of the 4x4 Gram matrix of ``(s, ŝ, P_j, P)``.

Memory: a float64 copy of the signals, the Gram matrix (``(S C L)^2`` float64: 134 MB for four
stereo sources) and ~32 MB of spectra at a time, whatever the track length.

Where the problem is well posed the numbers are museval's to ~1e-9 dB (``tests/test_bsseval_v4.py``).
Where the references are rank-deficient at rounding level -- stems with no energy at all in part of
the spectrum, e.g. synthesised sources with nothing above 16 kHz and a bass with nothing above a
few kHz -- the Gram matrix is singular to rounding and the filters are not determined by the data:
museval's own scores then move by several dB under a -140 dB perturbation of the input, and the two
implementations differ by as much; the filters here reach the lower least-squares residual (the
quantity both minimise), so these scores are the better-determined ones.

museval raises when a source is silent over the *whole* track; here every frame is NaN instead
(its own frame rule), so one silent stem does not stop an evaluation.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from lightning_sep.errors import LightningSepError

#: the metrics, in the order of museval's ``evaluate`` (and of :func:`bss_eval_v4`'s first axis)
METRICS_V4: tuple[str, ...] = ("SDR", "ISR", "SIR", "SAR")
#: museval's distortion filter length (``filters_len``)
FILTERS_LEN = 512
#: museval's _bss_decomp_mtifilt as combinations of (s, ŝ, P_j, P): s_true, e_spat + e_interf + e_artif = ŝ - s,
#: e_spat = P_j - s, s_true + e_spat = P_j, e_interf = P - P_j, s_true + e_spat + e_interf = P, e_artif = ŝ - P
_TERMS = ((1, 0, 0, 0), (-1, 1, 0, 0), (-1, 0, 1, 0), (0, 0, 1, 0), (0, 0, -1, 1), (0, 0, 0, 1), (0, 1, 0, -1))
#: _bss_crit's ratios of those energies, in METRICS_V4 order: SDR, ISR, SIR, SAR
_RATIOS = ((0, 1), (0, 2), (3, 4), (5, 6))
#: museval's regularisation of the Gram matrix (``np.finfo(float).eps``)
_EPS = float(np.finfo(float).eps)

Audio = Union[np.ndarray, Tensor, Sequence[np.ndarray]]


def n_frames(n_samples: int, win: int, hop: int) -> int:
    """museval's ``Framing.nwin``: full ``win``-sample frames every ``hop`` (the tail that does not
    fill a frame is not scored); one frame of the whole signal when it is not longer than ``win``."""
    if win < n_samples:
        return int(np.floor((n_samples - win + hop) / hop))
    return 1


def _as_tensor(x: Audio, name: str, device: torch.device) -> Tensor:
    if isinstance(x, Tensor):
        t = x.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as err:
            raise LightningSepError(
                f"{name} must be arrays of numbers (sources, samples, channels): {str(err).rstrip('.')}"
                + (". If the sources have different lengths, cut or pad them to one length first."
                   if "inhomogeneous" in str(err) or "sequence" in str(err) else ".")
            ) from None
    if t.is_complex():
        raise LightningSepError(f"{name} must be real-valued audio, got complex values.")
    if not (t.is_floating_point() or t.dtype in (torch.int16, torch.int32, torch.int64, torch.uint8, torch.int8)):
        raise LightningSepError(f"{name} must be audio samples (numbers), got dtype {t.dtype}.")
    return t.to(device=device, dtype=t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float64)


def check_inputs(references: Tensor, estimates: Tensor, names: Optional[Sequence[str]] = None, finite: bool = True) -> None:
    """Shapes ``(sources, samples, channels)`` that agree, at least one source and sample, finite
    values; each failure says what differs, names the source (``names``) and what to do."""
    label = (lambda i: f"{names[i]!r}") if names is not None else (lambda i: f"source {i}")
    if references.ndim != 3 or estimates.ndim != 3:
        raise LightningSepError(
            f"references and estimates must be (sources, samples, channels); got {tuple(references.shape)} "
            f"and {tuple(estimates.shape)}."
        )
    if references.shape[0] != estimates.shape[0]:
        raise LightningSepError(
            f"{references.shape[0]} reference(s) but {estimates.shape[0]} estimate(s): give one estimate per reference, "
            "in the same order."
        )
    if references.shape[0] == 0 or references.shape[1] == 0:
        raise LightningSepError(f"nothing to evaluate: references of shape {tuple(references.shape)}.")
    if references.shape[2] != estimates.shape[2]:
        raise LightningSepError(
            f"the estimates have {estimates.shape[2]} channel(s) and the references {references.shape[2]}: "
            "separate every channel of the mixture (a mono model's estimate must be repeated or the "
            "references mixed down to mono -- both, the same way)."
        )
    if references.shape[1] != estimates.shape[1]:
        raise LightningSepError(
            f"the estimates have {estimates.shape[1]} samples and the references {references.shape[1]}: an estimate "
            "must cover the whole reference, sample for sample (trim or pad it; museval.pad_or_truncate would do so "
            "silently and score the padding)."
        )
    if names is not None and len(names) != references.shape[0]:
        raise LightningSepError(f"names: {len(names)} given ({list(names)}) for {references.shape[0]} sources.")
    for what, x in (("reference", references), ("estimate", estimates)) if finite else ():
        if bool(torch.isfinite(x.sum(dtype=torch.float64))):  # one pass; a NaN or inf makes the sum so
            continue
        bad = ~torch.isfinite(x).reshape(x.shape[0], -1).all(dim=1)
        if bool(bad.any()):
            which = ", ".join(label(i) for i in torch.nonzero(bad).flatten().tolist())
            raise LightningSepError(
                f"the {what} of {which} contains NaN or inf samples: BSS Eval of it would be meaningless. "
                + ("Check the model's output (a diverged training?)." if what == "estimate" else "Check the audio files.")
            )


def _silent_frames(frames: Tensor, n_src: int) -> Tensor:
    """museval's ``_any_source_silent`` per frame: ``frames (S*C, T, frame)`` -> ``(T,)``, True where the
    channel *sum* of some source is zero at every sample of the frame."""
    return (frames.unflatten(0, (n_src, -1)).sum(1) == 0).all(-1).any(0)


def _samples(value: float, name: str, n: int) -> int:
    """A frame length or hop in samples: a positive integer; ``inf`` (museval's whole-signal window) is ``n``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0:
        return int(value)
    if isinstance(value, (float, np.floating)) and value > 0:
        if np.isinf(value):
            return n
        if float(value).is_integer():
            return int(value)
    raise LightningSepError(f"{name}={value!r}: must be positive, a whole number of samples (or inf: the whole signal).")


CHUNK_BYTES = 2**25
BLOCK_FFT = 16384


def _block_correlations(padded: Tensor, n_a: int, lags: int, block: int) -> Tensor:
    """``R[p, q, k] = sum_n a[p, n] b[q, n + k]`` for ``k = -(lags-1) .. lags-1`` (index ``k + lags - 1``),
    where ``b`` are the rows of ``padded`` and ``a`` its first ``n_a`` rows.

    ``padded`` holds the signals between ``lags - 1`` zeros in front and zeros up to a whole number of
    blocks plus ``lags - 1`` behind (:func:`_padded_signals`).  Block FFTs of ``block + 2 (lags - 1)``
    points (overlap-save), the cross-spectra summed over blocks in the frequency domain, one inverse FFT
    per pair.
    """
    pad = lags - 1
    nfft = block + 2 * pad
    n_blocks = (padded.shape[-1] - 2 * pad) // block
    acc = None
    step = max(1, int(CHUNK_BYTES // (nfft * (n_a + padded.shape[0]) * 16)))  # blocks per chunk: ~32 MB of spectra
    for first in range(0, n_blocks, step):
        last = min(n_blocks, first + step)
        lo, hi = first * block, last * block
        # a's blocks (zero-padded to nfft by the FFT), b's windows from lo - pad to hi + pad: views
        xa = padded[:n_a, pad + lo : pad + hi].unflatten(-1, (last - first, block))
        xb = padded[:, lo : hi + 2 * pad].unfold(-1, nfft, block)
        # spectra as (F, signals, blocks), contiguous: the per-frequency products are then plain BLAS calls
        fa = torch.fft.rfft(xa, n=nfft).permute(2, 0, 1).contiguous()
        fb = torch.fft.rfft(xb, n=nfft).permute(2, 0, 1).contiguous()
        # sum over blocks of B conj(A), per frequency: (F, Q, blocks) @ (F, blocks, P)
        s = torch.matmul(fb, fa.mH)
        acc = s if acc is None else acc.add_(s)
    r = torch.fft.irfft(acc.permute(2, 1, 0), n=nfft)  # (P, Q, nfft)
    return r[..., : 2 * pad + 1]


def _padded_signals(refs: Tensor, ests: Tensor, lags: int, block: int) -> Tensor:
    """``(2*S*C, lags - 1 + blocks * block + lags - 1)`` float64: every reference channel then every
    estimate channel (source-major) as a row, between the zeros :func:`_block_correlations` reads."""
    n_src, n, n_chan = refs.shape
    A, pad = n_src * n_chan, lags - 1
    padded = torch.zeros(2 * A, pad + -(-n // block) * block + pad, dtype=torch.float64, device=refs.device)
    padded[:A, pad : pad + n].view(n_src, n_chan, n).copy_(refs.permute(0, 2, 1))
    padded[A:, pad : pad + n].view(n_src, n_chan, n).copy_(ests.permute(0, 2, 1))
    return padded


def _filters(padded: Tensor, n_src: int, n_chan: int, filters_len: int, block: int) -> tuple[Tensor, Tensor]:
    """The distortion filters over the whole signals.

    ``padded``: the references' channels then the estimates' (:func:`_padded_signals`).  Returns ``C (S*C*L, S*C)``: column
    ``(j, c)`` filters every reference channel onto estimate ``j``'s channel ``c``; and
    ``Cj (S, C*L, C)``: target ``j``'s own references onto its estimate (museval's ``C``/``Cj``).
    """
    L, A = filters_len, n_src * n_chan
    r = _block_correlations(padded, A, L, block)  # (A, 2A, 2L-1)
    lag = torch.arange(L, device=padded.device)
    # G[(a, p), (b, q)] = <shift_p ref_a, shift_q ref_b> = R_ab[p - q];  D[(a, m), e] = R_ae[m]
    G = r[:, :A][:, :, (lag[:, None] - lag[None, :]) + L - 1]  # (A, A, L, L)
    G = G.permute(0, 2, 1, 3).reshape(A * L, A * L)
    D = r[:, A:, L - 1 :].permute(0, 2, 1).reshape(A * L, A)  # (A*L, estimates' channels)
    del r
    # each target's own block of G and D (before G is regularised in place)
    Gj = G.reshape(n_src, n_chan * L, n_src, n_chan * L).diagonal(dim1=0, dim2=2).permute(2, 0, 1).clone()
    Dj = D.reshape(n_src, n_chan * L, n_src, n_chan).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
    G.diagonal().add_(_EPS)  # museval: G + eps I
    Gj.diagonal(dim1=1, dim2=2).add_(_EPS)
    return _solve(G, D), _solve(Gj, Dj)


def _solve(G: Tensor, D: Tensor) -> Tensor:
    """``G x = D`` for the (regularised, symmetric positive semi-definite) Gram matrices: Cholesky, LU where
    it fails, least squares where ``G`` is singular (museval: ``np.linalg.solve``, then ``lstsq``)."""
    factor, info = torch.linalg.cholesky_ex(G)
    if not bool((info != 0).any()):  # (two triangular solves: cholesky_solve copies the factor)
        return torch.linalg.solve_triangular(factor.mH, torch.linalg.solve_triangular(factor, D, upper=False), upper=True)
    del factor
    x, info = torch.linalg.solve_ex(G, D)
    bad = info != 0
    if bool(bad.any()):
        if G.ndim == 2:
            return torch.linalg.lstsq(G.cpu(), D.cpu(), driver="gelsd").solution.to(D.device)
        x = x.clone()
        x[bad] = torch.linalg.lstsq(G[bad].cpu(), D[bad].cpu(), driver="gelsd").solution.to(D.device)
    return x


def _fast_len(n: int) -> int:
    """The next 2^a 3^b 5^c >= n (a fast FFT size)."""
    from scipy.fft import next_fast_len

    return int(next_fast_len(n, real=True))


def _safe_db(num: Tensor, den: Tensor) -> Tensor:
    """``10 log10(num / den)``, +inf where ``den`` is 0 (museval's ``_safe_db``)."""
    out = 10 * torch.log10(num / den)
    return torch.where(den == 0, torch.full_like(out, float("inf")), out)


def bss_eval_v4(
    references: Audio,
    estimates: Audio,
    win: int = 44100,
    hop: int = 44100,
    filters_len: int = FILTERS_LEN,
    device: Union[str, torch.device, None] = None,
    names: Optional[Sequence[str]] = None,
    frames_per_chunk: Optional[int] = None,
) -> Tensor:
    """BSS Eval v4 scores ``(4 [SDR, ISR, SIR, SAR], sources, frames)`` in dB (float64, on CPU).

    Args:
        references, estimates: ``(sources, samples, channels)`` (museval's layout; a sequence of
            ``(samples, channels)`` arrays is stacked), numpy or torch, any float or int dtype.
            Same shape, finite: anything else is a :class:`LightningSepError` naming the problem.
        win, hop: frame length and hop in samples (museval's defaults for MUSDB: 1 s and 1 s).
        filters_len: distortion filter taps (museval: 512).
        device: where to compute (default: the references' device if a tensor, else CPU).
        names: the sources' names, for the error messages.
        frames_per_chunk: frames filtered at once (default: as many as fit in ~256 MB).

    Returns the scores as ``museval.evaluate`` returns them, stacked: NaN in frames where any
    source is silent, +inf where a denominator is exactly zero.
    """
    if device is None:
        device = references.device if isinstance(references, Tensor) else "cpu"
    device = torch.device(device)
    refs = _as_tensor(references, "references", device)
    ests = _as_tensor(estimates, "estimates", device)
    check_inputs(refs, ests, names)
    n_src, n, n_chan = refs.shape
    win, L = _samples(win, "win", n), _samples(filters_len, "filters_len", n)
    hop = _samples(hop, "hop", n) if win < n else 1  # one frame of the whole signal: no hop
    nwin = n_frames(n, win, hop)
    frame = min(win, n)
    A = n_src * n_chan
    block = max(4096, BLOCK_FFT - 2 * (L - 1))
    padded = _padded_signals(refs, ests, L, block)
    del refs, ests
    r, e = padded[:A, L - 1 : L - 1 + n], padded[A:, L - 1 : L - 1 + n]  # (S*C, N) views
    ref_frames = r.unfold(-1, frame, hop)  # (A, frames, frame): views, no copy
    est_frames = e.unfold(-1, frame, hop)
    # museval's frame rule: any silent reference or estimate -> NaN for every source and metric
    silent = _silent_frames(ref_frames, n_src) | _silent_frames(est_frames, n_src)  # (frames,)
    out = torch.full((4, n_src, nwin), float("nan"), dtype=torch.float64, device=device)
    if bool(silent.all()):
        return out.cpu()  # (a source silent over the whole track: museval raises ValueError)
    C, Cj = _filters(padded, n_src, n_chan, L, block)

    # the frames' projections are FFT convolutions of m >= frame + L - 1 points, and every energy of
    # museval's decomposition is taken from the spectra (Parseval: the signals are zero beyond frame + L - 1)
    m = _fast_len(frame + L - 1)
    nf = m // 2 + 1
    cf = torch.fft.rfft(C.reshape(A, L, A), n=m, dim=1).permute(1, 0, 2).contiguous()  # (F, ref ch a, est ch k)
    cjf = torch.fft.rfft(Cj.reshape(n_src, n_chan, L, n_chan), n=m, dim=2)  # (S, ci, F, c)
    # one-sided Parseval: sum_n x^2 = (2 sum_f |X_f|^2 - |X_0|^2 - |X_m/2|^2 (m even)) / m
    edges = [0, nf - 1] if m % 2 == 0 else [0]
    terms = torch.tensor(_TERMS, dtype=torch.float64, device=device)

    chunk = frames_per_chunk or max(1, min(nwin, int(2**25 // (4 * A * nf * 16))))  # ~32 MB of spectra
    for t0 in range(0, nwin, chunk):
        ref_t = ref_frames[:, t0 : t0 + chunk]
        est_t = est_frames[:, t0 : t0 + chunk]
        T = ref_t.shape[1]
        # v = (s, ŝ, P_j, P) per channel and frame: museval's decomposition is made of these four
        v = torch.empty(4, A, T, nf, dtype=torch.complex128, device=device)
        torch.fft.rfft(ref_t, n=m, out=v[0])
        torch.fft.rfft(est_t, n=m, out=v[1])
        # P_j: target j's own references through C_j;  P: every reference channel through C
        s_true, p_j = v[0].unflatten(0, (n_src, n_chan)), v[2].unflatten(0, (n_src, n_chan))
        for c in range(n_chan):
            torch.mul(s_true[:, 0], cjf[:, 0, None, :, c], out=p_j[:, c])
            for ci in range(1, n_chan):
                p_j[:, c].addcmul_(s_true[:, ci], cjf[:, ci, None, :, c])
        v[3] = torch.matmul(v[0].permute(2, 1, 0).contiguous(), cf).permute(2, 1, 0)  # (F, T, A) @ (F, A, K)
        # Gram matrix of the four per channel and frame; every energy below is a quadratic form of it
        vt = v.permute(1, 2, 0, 3)  # (A, T, 4, F)
        gram = 2 * torch.matmul(vt, vt.mH).real
        for f in edges:
            gram -= (vt[..., f, None] * vt[..., f, None].mH).real
        gram = gram.unflatten(0, (n_src, n_chan)).sum(1) / m  # (S, T, 4, 4)
        e = torch.einsum("ki,stij,kj->kst", terms, gram, terms).clamp_min(0)  # the _TERMS' energies
        scores = torch.stack([_safe_db(e[num], e[den]) for num, den in _RATIOS])  # (4, S, T)
        scores[:, :, silent[t0 : t0 + T]] = float("nan")
        out[:, :, t0 : t0 + T] = scores
    return out.cpu()
