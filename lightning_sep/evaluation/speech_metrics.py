"""Speech separation metrics: BSS Eval v3 ``bss_eval_sources`` and SI-SDR, in numpy (float64).

:func:`bss_eval_sources` gives the same numbers as ``mir_eval.separation.bss_eval_sources``
(BSS Eval v3, the MATLAB toolbox's ``bss_eval_sources``; Vincent, Gribonval & Févotte,
"Performance measurement in blind audio source separation", IEEE TASLP 14(4), 2006).  Each estimate
``ŝ_j`` is decomposed (eqs. 2-5 and Section III.B of the paper) as::

    ŝ_j = s_target + e_interf + e_artif

where ``s_target = P_j ŝ_j`` is its projection on the delayed copies of reference ``s_j``
(delays 0 .. ``filter_length``-1, i.e. a 512-tap time-invariant distortion filter),
``e_interf = P ŝ_j - P_j ŝ_j`` (projection on the delays of *all* references, minus the target) and
``e_artif = ŝ_j - P ŝ_j``; then SDR, SIR and SAR are the energy ratios of eqs. 6-8 of the paper.
Unlike mir_eval, which rebuilds and solves the Gram system for every (estimate, reference) pair,
the reference FFTs and Gram matrix are computed once and every estimate is solved for at once.

:func:`si_sdr` is the scale-invariant SDR of Le Roux, Wisdom, Erdogan & Hershey, "SDR -- half-baked
or well done?", ICASSP 2019.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.fft import irfft, rfft

from lightning_sep.errors import LightningSepError

#: With ``compute_permutation=True`` all n! orderings are scored; 8! = 40320 is the most allowed.
MAX_PERMUTED_SOURCES = 8


@dataclass(frozen=True)
class SourceScores:
    """Scores per reference source, in reference order."""

    sdr: np.ndarray  # (n_src,) dB
    sir: np.ndarray
    sar: np.ndarray
    si_sdr: np.ndarray  # SI-SDR of the same (reference, assigned estimate) pairs
    permutation: np.ndarray  # int (n_src,): estimate permutation[i] is assigned to reference i


def _as_array(x, name: str) -> np.ndarray:
    if np.iscomplexobj(x):
        raise LightningSepError(f"{name} must be real-valued audio, got complex values.")
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise LightningSepError(f"{name} must be an array of numbers: {err}") from None


def _check_finite(x: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(x).reshape(-1, x.shape[-1]).all(axis=-1) if x.ndim else ~np.isfinite(x)[None]
    if bad.any():
        rows = ", ".join(map(str, np.flatnonzero(bad)))
        raise LightningSepError(f"{name} contain NaN or inf values (source row(s) {rows}).")


def _validate(references, estimates) -> tuple[np.ndarray, np.ndarray]:
    ref, est = _as_array(references, "references"), _as_array(estimates, "estimates")
    if ref.shape != est.shape:
        raise LightningSepError(
            f"references and estimates must have the same shape (n_src, n_samples), "
            f"got references {ref.shape} and estimates {est.shape}."
        )
    if ref.ndim not in (1, 2):
        raise LightningSepError(
            f"references and estimates must be (n_samples,) or (n_src, n_samples), got {ref.ndim} dimensions {ref.shape}."
        )
    ref, est = np.atleast_2d(ref), np.atleast_2d(est)
    if ref.size == 0:
        raise LightningSepError(f"references and estimates are empty (shape {ref.shape}); nothing to evaluate.")
    _check_finite(ref, "references")
    _check_finite(est, "estimates")
    silent = np.flatnonzero(np.all(ref == 0, axis=1))
    if silent.size:
        raise LightningSepError(
            f"reference source row(s) {', '.join(map(str, silent))} are silent (all zeros): "
            "BSS Eval is undefined for a silent reference; leave that source out."
        )
    return ref, est


def _safe_db(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """mir_eval's ``_safe_db``, element-wise: +inf where the denominator is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den == 0, np.inf, 10 * np.log10(num / np.where(den == 0, 1.0, den)))


def _energy(x: np.ndarray) -> np.ndarray:
    return np.sum(x**2, axis=-1)


def _solve(G: np.ndarray, D: np.ndarray) -> np.ndarray:
    """``np.linalg.solve`` with mir_eval's least-squares fallback for a singular Gram matrix."""
    try:
        return np.linalg.solve(G, D)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(G, D)[0]


def bss_eval_sources(references, estimates, compute_permutation: bool = True, filter_length: int = 512) -> SourceScores:
    """BSS Eval v3 SDR, SIR and SAR (dB) of ``estimates`` against ``references``, as mir_eval computes them.

    ``references`` and ``estimates`` are ``(n_src, n_samples)`` (or 1-D: one source).  With
    ``compute_permutation`` the estimates are assigned to the references by the ordering (of
    ``itertools.permutations``, first wins a tie) with the highest mean SIR, as mir_eval does;
    otherwise estimate i goes with reference i.  ``filter_length`` is the number of distortion-filter
    taps (mir_eval: always 512).  A silent (all-zero) estimate is allowed (mir_eval raises): its
    scores are NaN and it takes part in no ordering comparison (its SIR counts as -inf in every
    ordering alike).  A silent reference, NaN/inf values or mismatched shapes raise
    :class:`LightningSepError`.  Also returns the SI-SDR (:func:`si_sdr`) of the chosen pairs.
    """
    ref, est = _validate(references, estimates)
    n_src, n = ref.shape
    L = int(filter_length)
    if L < 1:
        raise LightningSepError(f"filter_length must be a positive number of taps, got {filter_length}.")
    if compute_permutation and n_src > MAX_PERMUTED_SOURCES:
        raise LightningSepError(
            f"bss_eval_sources with compute_permutation=True scores all {n_src}! orderings of the estimates; "
            f"at most {MAX_PERMUTED_SOURCES} sources are supported. Pass compute_permutation=False "
            "(estimate i is scored against reference i) or evaluate fewer sources."
        )
    T = n + L - 1  # length of the projections (full convolution with an L-tap filter)
    n_fft = int(2 ** np.ceil(np.log2(T)))
    sf, ef = rfft(ref, n=n_fft, axis=1), rfft(est, n=n_fft, axis=1)
    # Gram matrix of the delayed references: block (p, q)[a, b] = <r_p delayed a, r_q delayed b>
    # = xcorr_pq[b - a] (mir_eval's Toeplitz blocks; it ends up symmetric, the diagonal transposed).
    lag = (np.arange(L)[None, :] - np.arange(L)[:, None]) % n_fft
    G = np.empty((n_src * L, n_src * L))
    for p in range(n_src):
        xc = irfft(sf[p] * np.conj(sf[: p + 1]), n=n_fft, axis=1)
        for q in range(p + 1):
            block = xc[q][lag]
            G[p * L:(p + 1) * L, q * L:(q + 1) * L] = block
            G[q * L:(q + 1) * L, p * L:(p + 1) * L] = block.T
    # Inner products of every estimate with the delayed references: D[p*L + a, e] = xcorr_pe[-a].
    neg = (-np.arange(L)) % n_fft
    D = np.concatenate([irfft(sf[p] * np.conj(ef), n=n_fft, axis=1)[:, neg].T for p in range(n_src)])

    def project(C: np.ndarray, sources: range) -> np.ndarray:
        """Sum over ``sources`` of reference p filtered by ``C[p*L:(p+1)*L, e]``, for every column e."""
        acc = sum(rfft(C[k * L:(k + 1) * L], n=n_fft, axis=0).T * sf[p] for k, p in enumerate(sources))
        return irfft(acc, n=n_fft, axis=1)[:, :T]

    proj_all = project(_solve(G, D), range(n_src))  # (n_est, T): P ŝ_e
    est_pad = np.pad(est, ((0, 0), (0, L - 1)))
    sdr, sir, sar = (np.full((n_src, n_src), np.nan) for _ in range(3))  # [estimate, reference]
    for j in range(n_src):
        cols = np.arange(n_src) if compute_permutation else np.array([j])
        blk = slice(j * L, (j + 1) * L)
        proj_j = project(_solve(G[blk, blk], D[blk][:, cols]), range(j, j + 1))  # P_j ŝ_e
        # mir_eval's _bss_decomp_mtifilt and _bss_source_crit, vectorised over the estimates
        s_true = np.concatenate([ref[j], np.zeros(L - 1)])
        e_spat = proj_j - s_true
        e_interf = proj_all[cols] - s_true - e_spat
        e_artif = -s_true - e_spat - e_interf + est_pad[cols]
        s_filt = s_true + e_spat
        sdr[cols, j] = _safe_db(_energy(s_filt), _energy(e_interf + e_artif))
        sir[cols, j] = _safe_db(_energy(s_filt), _energy(e_interf))
        sar[cols, j] = _safe_db(_energy(s_filt + e_interf), _energy(e_artif))
    silent = np.all(est == 0, axis=1)
    sdr[silent], sir[silent], sar[silent] = np.nan, np.nan, np.nan
    dum = np.arange(n_src)
    if compute_permutation:
        perms = np.array(list(itertools.permutations(range(n_src))))
        counted = ~silent[perms]  # a silent estimate adds the same -inf to every ordering: leave it out
        vals = np.where(counted, sir[perms, dum], 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_sir = vals.sum(axis=1) / counted.sum(axis=1)
        perm = perms[np.argmax(np.where(np.isnan(mean_sir), -np.inf, mean_sir))]
    else:
        perm = dum
    return SourceScores(
        sdr=sdr[perm, dum], sir=sir[perm, dum], sar=sar[perm, dum],
        si_sdr=si_sdr(ref, est[perm]), permutation=np.asarray(perm, dtype=int),
    )


def si_sdr(reference, estimate, zero_mean: bool = True) -> np.ndarray:
    """Scale-invariant SDR (dB) over the last axis, broadcasting (Le Roux et al. 2019, eqs. 1-2).

    With ``zero_mean`` both signals are made zero-mean first; then ``alpha = <ŝ, s> / ||s||²`` and
    ``SI-SDR = 10 log10(||alpha s||² / ||alpha s - ŝ||²)``: +inf for a perfectly scaled estimate,
    NaN for a silent estimate or a silent (after ``zero_mean``: constant) reference.
    """
    ref, est = _as_array(reference, "reference"), _as_array(estimate, "estimate")
    if min(ref.ndim, est.ndim) == 0 or ref.shape[-1] != est.shape[-1] or ref.shape[-1] == 0:
        raise LightningSepError(
            f"si_sdr needs reference and estimate signals of the same (non-zero) length along the last axis, "
            f"got reference {ref.shape} and estimate {est.shape}."
        )
    try:
        np.broadcast_shapes(ref.shape, est.shape)
    except ValueError:
        raise LightningSepError(f"reference {ref.shape} and estimate {est.shape} do not broadcast together.") from None
    _check_finite(ref, "reference")
    _check_finite(est, "estimate")
    if zero_mean:
        ref = ref - ref.mean(axis=-1, keepdims=True)
        est = est - est.mean(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.sum(est * ref, axis=-1, keepdims=True) / np.sum(ref**2, axis=-1, keepdims=True)
        target = alpha * ref
        return 10 * np.log10(_energy(target) / _energy(target - est))
