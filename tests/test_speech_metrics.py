"""BSS Eval v3 ``bss_eval_sources`` (checked against mir_eval) and SI-SDR."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.signal import lfilter

from lightning_sep.errors import LightningSepError
from lightning_sep.evaluation.speech_metrics import SourceScores, bss_eval_sources, si_sdr

SR = 8000


def speech_like(rng: np.random.Generator, n: int) -> np.ndarray:
    """Resonant filtered noise under a syllable-rate (2-6 Hz) amplitude envelope."""
    x = lfilter([1.0], [1.0, -1.6, 0.8], rng.standard_normal(n))
    t = np.arange(n) / SR
    return x * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(2, 6) * t + rng.uniform(0, 2 * np.pi))) ** 2


def make_case(n_src: int, seconds: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """References, and estimates = (leaky mixtures + noise, short FIR) in reversed order."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    ref = np.stack([speech_like(rng, n) for _ in range(n_src)])
    mixing = np.eye(n_src) + 0.2 * rng.uniform(size=(n_src, n_src))
    est = mixing @ ref + 0.05 * rng.standard_normal((n_src, n))
    est = lfilter([1.0, 0.3, -0.1], [1.0], est, axis=1)
    return ref, est[::-1].copy()


def mir_eval_scores(ref: np.ndarray, est: np.ndarray, compute_permutation: bool):
    from mir_eval.separation import bss_eval_sources as mir_bss_eval_sources

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # mir_eval.separation is deprecated in 0.8
        return mir_bss_eval_sources(ref, est, compute_permutation)


@pytest.mark.parametrize("n_src", [2, 3])
@pytest.mark.parametrize("compute_permutation", [True, False])
def test_matches_mir_eval(n_src, compute_permutation):
    ref, est = make_case(n_src, seed=n_src)
    sdr, sir, sar, perm = mir_eval_scores(ref, est, compute_permutation)
    ours = bss_eval_sources(ref, est, compute_permutation=compute_permutation)
    assert isinstance(ours, SourceScores)
    np.testing.assert_allclose(ours.sdr, sdr, rtol=0, atol=1e-3)
    np.testing.assert_allclose(ours.sir, sir, rtol=0, atol=1e-3)
    np.testing.assert_allclose(ours.sar, sar, rtol=0, atol=1e-3)
    np.testing.assert_array_equal(ours.permutation, perm)
    if compute_permutation:  # the estimates were given reversed, so the ordering matters
        np.testing.assert_array_equal(ours.permutation, np.arange(n_src)[::-1])
        assert (ours.sdr > 10).all()
    else:
        np.testing.assert_array_equal(ours.permutation, np.arange(n_src))
    np.testing.assert_allclose(ours.si_sdr, si_sdr(ref, est[ours.permutation]))


def test_single_source_1d_matches_mir_eval():
    ref, est = make_case(2, seconds=0.5)
    sdr, sir, sar, perm = mir_eval_scores(ref[0], est[1], True)
    ours = bss_eval_sources(ref[0], est[1])
    np.testing.assert_allclose([ours.sdr, ours.sar], [sdr, sar], rtol=0, atol=1e-3)
    assert ours.sir.tolist() == sir.tolist() == [np.inf]  # no other source: no interference
    assert ours.permutation.tolist() == perm.tolist() == [0]


def test_si_sdr_of_a_scaled_reference_is_infinite():
    ref = make_case(1)[0][0]
    assert si_sdr(ref, 2 * ref) == np.inf
    assert si_sdr(ref, 2 * ref, zero_mean=False) == np.inf


def test_si_sdr_with_an_orthogonal_error_of_known_energy():
    rng = np.random.default_rng(1)
    s = rng.standard_normal(4000)
    s -= s.mean()
    e = rng.standard_normal(4000)
    e -= e.mean()
    e -= (e @ s) / (s @ s) * s  # orthogonal to s, still zero-mean
    for snr_db in (-5.0, 0.0, 12.5):
        noise = e * np.sqrt((s @ s) / (e @ e) * 10 ** (-snr_db / 10))
        assert si_sdr(s, s + noise) == pytest.approx(snr_db, abs=1e-9)
        assert si_sdr(s, s + noise, zero_mean=False) == pytest.approx(snr_db, abs=1e-9)
        # scale invariance: neither the estimate's nor the reference's gain matters
        assert si_sdr(3.7 * s, -0.2 * (s + noise)) == pytest.approx(snr_db, abs=1e-9)


def test_si_sdr_zero_mean_removes_an_offset():
    rng = np.random.default_rng(2)
    s = rng.standard_normal(1000)
    s -= s.mean()
    est = s + 0.5
    assert si_sdr(s, est) > 200  # the offset is removed (only rounding error is left)
    # without zero_mean: alpha = 1, the error is the constant 0.5
    assert si_sdr(s, est, zero_mean=False) == pytest.approx(10 * np.log10((s @ s) / (1000 * 0.25)))


def test_si_sdr_broadcasts_over_leading_axes():
    ref, est = make_case(2, seconds=0.25)
    out = si_sdr(ref, np.stack([est, est[::-1], 2 * est]))
    assert out.shape == (3, 2)
    np.testing.assert_allclose(out[0], out[2])
    np.testing.assert_allclose(out[1], [si_sdr(ref[0], est[1]), si_sdr(ref[1], est[0])])


@pytest.mark.parametrize("compute_permutation", [True, False])
def test_a_silent_estimate_scores_nan(compute_permutation):
    ref, est = make_case(2, seconds=0.5)
    est = np.stack([np.zeros_like(ref[0]), est[1]])  # est[1] resembles ref[0]
    scores = bss_eval_sources(ref, est, compute_permutation=compute_permutation)
    silent_ref = 1 if compute_permutation else 0
    assert scores.permutation.tolist() == ([1, 0] if compute_permutation else [0, 1])
    for values in (scores.sdr, scores.sir, scores.sar, scores.si_sdr):
        assert np.isnan(values[silent_ref]) and np.isfinite(values[1 - silent_ref])
    if compute_permutation:
        assert scores.sdr[0] > 10
    assert np.isnan(bss_eval_sources(ref, np.zeros_like(ref)).sdr).all()


def test_bad_input_raises_a_clear_error():
    ref, est = make_case(2, seconds=0.25)
    with pytest.raises(LightningSepError, match=r"silent.*row\(s\) 1|row\(s\) 1.*silent"):
        bss_eval_sources(np.stack([ref[0], np.zeros_like(ref[1])]), est)
    with pytest.raises(LightningSepError, match=r"\(2, 2000\).*\(2, 1999\)"):
        bss_eval_sources(ref, est[:, :-1])
    bad = est.copy()
    bad[1, 7] = np.nan
    with pytest.raises(LightningSepError, match=r"estimates contain NaN or inf.*row\(s\) 1"):
        bss_eval_sources(ref, bad)
    with pytest.raises(LightningSepError, match="references contain NaN or inf"):
        bss_eval_sources(np.where(bad == bad, ref, np.inf), est)
    with pytest.raises(LightningSepError, match="3 dimensions"):
        bss_eval_sources(ref[None], est[None])
    with pytest.raises(LightningSepError, match="empty"):
        bss_eval_sources(np.zeros((2, 0)), np.zeros((2, 0)))
    with pytest.raises(LightningSepError, match="same.*length"):
        si_sdr(ref, est[:, :-1])
    with pytest.raises(LightningSepError, match="do not broadcast"):
        si_sdr(ref, np.stack([est[0]] * 3))


def test_more_than_eight_sources_need_compute_permutation_false():
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((9, 300))
    est = ref + 0.1 * rng.standard_normal((9, 300))
    with pytest.raises(LightningSepError, match="compute_permutation=False"):
        bss_eval_sources(ref, est, filter_length=8)
    scores = bss_eval_sources(ref, est, compute_permutation=False, filter_length=8)
    assert scores.permutation.tolist() == list(range(9)) and np.isfinite(scores.sdr).all()
