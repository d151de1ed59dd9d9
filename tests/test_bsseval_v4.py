"""BSS Eval v4 in torch (``bss_eval_v4``), checked frame by frame against ``museval.evaluate``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.signal import lfilter

from lightning_sep.errors import LightningSepError
from lightning_sep.evaluation.bsseval_v4 import METRICS_V4, bss_eval_v4, n_frames

SR = 8000  # 1 s frames at 8 kHz: museval stays fast
WIN = SR
TOL_DB = 0.01


def source(rng: np.random.Generator, n: int, channels: int, sample_rate: int = SR) -> np.ndarray:
    """``(n, channels)``: three decaying harmonics (re-struck every 0.5 s) plus resonant noise."""
    t = np.arange(n) / sample_rate
    f0, decay = rng.uniform(100, 400), rng.uniform(2, 6)
    tone = sum(np.exp(-decay * (t % 0.5)) * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k for k in (1, 2, 3))
    noise = lfilter([1.0], [1.0, -rng.uniform(0.5, 1.5), 0.7], rng.standard_normal((channels, n)), axis=1)
    return (0.5 * tone + 0.1 * noise).T * rng.uniform(0.5, 1.5, channels)


def make_track(n_src: int, channels: int, n: int, seed: int = 0, sample_rate: int = SR) -> tuple[np.ndarray, np.ndarray]:
    """References ``(n_src, n, channels)``; estimates = the reference + leakage of the others,
    through a short FIR, plus a little noise."""
    rng = np.random.default_rng(seed)
    ref = np.stack([source(rng, n, channels, sample_rate) for _ in range(n_src)])
    mixing = np.eye(n_src) + 0.15 * rng.uniform(size=(n_src, n_src))
    est = np.einsum("ij,jnc->inc", mixing, ref)
    est = lfilter([0.9, 0.2, -0.1], [1.0], est, axis=1) + 0.03 * rng.standard_normal(ref.shape)
    return ref, est


def museval_scores(ref: np.ndarray, est: np.ndarray, win: int = WIN, hop: int = WIN) -> np.ndarray:
    import museval

    return np.array(museval.evaluate(ref, est, win=win, hop=hop))


def assert_matches_museval(ours, expected: np.ndarray, tol: float = TOL_DB) -> None:
    """Same shape, NaN and inf in the same places (same sign), every other value within ``tol`` dB."""
    ours = np.asarray(ours)
    assert ours.shape == expected.shape
    nan, inf = np.isnan(expected), np.isinf(expected)
    np.testing.assert_array_equal(np.isnan(ours), nan, err_msg="NaN in other places than museval's")
    np.testing.assert_array_equal(np.isinf(ours), inf, err_msg="inf in other places than museval's")
    np.testing.assert_array_equal(ours[inf], expected[inf])
    finite = ~(nan | inf)
    diff = np.where(finite, np.abs(ours - np.where(finite, expected, 0)), 0)
    worst = np.unravel_index(np.argmax(diff), diff.shape)  # (metric, source, frame)
    assert diff.max() <= tol, (
        f"max |ours - museval| = {diff.max():.4g} dB, {METRICS_V4[worst[0]]} at (source, frame) {worst[1:]}: "
        f"{ours[worst]:.4f} vs {expected[worst]:.4f}"
    )


@pytest.mark.parametrize("n_src, channels", [(2, 1), (2, 2), (4, 1), (4, 2)])
def test_matches_museval(n_src, channels):
    n = int((3.4 if n_src == 2 else 2.4) * SR)  # not a multiple of the window: the 0.4 s tail is not scored
    ref, est = make_track(n_src, channels, n, seed=10 * n_src + channels)
    expected = museval_scores(ref, est)
    ours = bss_eval_v4(ref, est, win=WIN, hop=WIN)
    assert ours.dtype == torch.float64 and ours.device.type == "cpu"
    assert ours.shape == (4, n_src, n // WIN) == (4, n_src, n_frames(n, WIN, WIN))
    assert np.isfinite(expected).all()
    assert (expected[0] > 5).all() and (expected[0] < 40).all()  # a realistic, non-trivial separation
    assert_matches_museval(ours, expected)


def test_matches_museval_at_44100_hz_with_default_frames():
    """museval's MUSDB setting (1 s frames at 44.1 kHz), 2.3 s of stereo."""
    ref, est = make_track(2, 2, int(2.3 * 44100), seed=3, sample_rate=44100)
    expected = museval_scores(ref, est, 44100, 44100)  # museval.evaluate's defaults
    ours = bss_eval_v4(ref, est)
    assert ours.shape == (4, 2, 2)
    assert_matches_museval(ours, expected)


@pytest.mark.parametrize("win, hop", [(SR, SR // 2), (3000, 2200)])
def test_overlapping_frames_match_museval(win, hop):
    n = int(3.3 * SR)
    ref, est = make_track(2, 2, n, seed=5)
    ours = bss_eval_v4(ref, est, win=win, hop=hop)
    assert ours.shape[-1] == n_frames(n, win, hop) == (5 if hop == SR // 2 else 11)
    assert_matches_museval(ours, museval_scores(ref, est, win, hop))


@pytest.mark.parametrize("where", ["reference", "estimate"])
def test_silent_frame_is_nan_for_every_source_as_in_museval(where):
    """A source silent over frame 1 (and a bit around it): that frame is NaN for all sources."""
    ref, est = make_track(2, 2, int(3.4 * SR), seed=7)
    if where == "reference":
        ref[0, SR - 300 : 2 * SR + 300] = 0
    else:
        est[1, SR - 300 : 2 * SR + 300] = 0
    expected = museval_scores(ref, est)
    ours = bss_eval_v4(ref, est, win=WIN, hop=WIN)
    assert np.isnan(expected[:, :, 1]).all() and np.isfinite(expected[:, :, [0, 2]]).all()
    assert_matches_museval(ours, expected)


def test_frame_silent_but_for_a_few_samples_is_scored():
    """Silence must cover the whole frame: 200 non-zero samples left in frame 1 and it is scored."""
    ref, est = make_track(2, 1, int(3.4 * SR), seed=8)
    ref[1, SR + 200 : 2 * SR + 300] = 0
    expected = museval_scores(ref, est)
    assert np.isfinite(expected).all()
    assert_matches_museval(bss_eval_v4(ref, est, win=WIN, hop=WIN), expected)


def test_silent_frame_with_overlapping_frames():
    """Silence over exactly [1 s, 2 s): only the frame starting at 1 s is NaN, not the half-covered ones."""
    ref, est = make_track(2, 1, int(3.3 * SR), seed=9)
    ref[1, SR : 2 * SR] = 0
    expected = museval_scores(ref, est, SR, SR // 2)
    ours = bss_eval_v4(ref, est, win=SR, hop=SR // 2)
    np.testing.assert_array_equal(np.isnan(expected).all(axis=(0, 1)), [False, False, True, False, False])
    assert_matches_museval(ours, expected)


@pytest.mark.parametrize("where", ["reference", "estimate"])
def test_stereo_channels_that_cancel_are_silent(where):
    """museval's rule is on the channel *sum*: L = -R over a frame makes it a silent frame."""
    ref, est = make_track(2, 2, int(3.4 * SR), seed=11)
    x = ref if where == "reference" else est
    x[1, 2 * SR - 50 : 3 * SR + 50, 1] = -x[1, 2 * SR - 50 : 3 * SR + 50, 0]
    expected = museval_scores(ref, est)
    assert np.isnan(expected[:, :, 2]).all() and np.isfinite(expected[:, :, :2]).all()
    assert_matches_museval(bss_eval_v4(ref, est, win=WIN, hop=WIN), expected)


@pytest.mark.parametrize("where", ["reference", "estimate", "cancelling reference"])
def test_source_silent_over_the_whole_track(where):
    """museval refuses it (ValueError); we give NaN in every frame, for every source."""
    import museval

    ref, est = make_track(2, 2, int(2.5 * SR), seed=12)
    if where == "reference":
        ref[1] = 0
    elif where == "estimate":
        est[0] = 0
    else:
        ref[1, :, 1] = -ref[1, :, 0]
    with pytest.raises(ValueError, match="non-silent"):
        museval.evaluate(ref, est, win=WIN, hop=WIN)
    ours = bss_eval_v4(ref, est, win=WIN, hop=WIN)
    assert ours.shape == (4, 2, 2)
    assert torch.isnan(ours).all()


@pytest.mark.parametrize("channels", [1, 2])
def test_track_shorter_than_one_window(channels):
    """One frame: the whole track."""
    n = int(0.6 * SR)
    ref, est = make_track(2, channels, n, seed=13)
    assert n_frames(n, WIN, WIN) == 1
    ours = bss_eval_v4(ref, est, win=WIN, hop=WIN)
    assert ours.shape == (4, 2, 1)
    assert_matches_museval(ours, museval_scores(ref, est))


def test_track_shorter_than_the_filters():
    """300 samples, 512 taps: the delayed references span every signal, so the estimate has no
    artifact and SAR is +inf up to rounding (some 200+ dB in both, not comparable); the rest agrees."""
    ref, est = make_track(2, 1, 300, seed=14)
    expected = museval_scores(ref, est)
    ours = bss_eval_v4(ref, est, win=WIN, hop=WIN).numpy()
    assert_matches_museval(ours[:3], expected[:3])
    assert (ours[3] > 150).all() and (expected[3] > 150).all()


@pytest.mark.parametrize("channels", [1, 2])
def test_single_source_has_infinite_sir_as_in_museval(channels):
    ref, est = make_track(1, channels, int(2.5 * SR), seed=15)
    expected = museval_scores(ref, est)
    ours = bss_eval_v4(ref, est, win=WIN, hop=WIN)
    assert np.isposinf(expected[2]).all()
    assert_matches_museval(ours, expected)


def test_perfect_estimate_has_infinite_sdr_as_in_museval():
    """Estimate == reference: SDR +inf in both.  ISR, SIR, SAR are +inf too in exact arithmetic: both
    give rounding noise (museval ~270 dB, ours 150 dB to inf), so only their size is checked."""
    ref, est = make_track(2, 2, int(2.5 * SR), seed=16)
    est[0] = ref[0]
    expected = museval_scores(ref, est)
    ours = bss_eval_v4(ref, est, win=WIN, hop=WIN).numpy()
    assert np.isposinf(expected[0, 0]).all() and np.isposinf(ours[0, 0]).all()
    assert (expected[1:, 0] > 120).all() and (ours[1:, 0] > 120).all()
    assert_matches_museval(ours[:, 1:], expected[:, 1:])  # the other source is an ordinary estimate


@pytest.mark.parametrize(
    "n, win, hop",
    [(100, 8000, 8000), (8000, 8000, 8000), (8001, 8000, 8000), (27200, 8000, 8000), (26400, 8000, 4000),
     (26400, 3000, 2200), (20000, 3000, 7000), (44100 * 5 + 17, 44100, 44100)],
)
def test_n_frames_is_museval_framing(n, win, hop):
    from museval.metrics import Framing

    framing = Framing(win, hop, n)
    assert n_frames(n, win, hop) == framing.nwin == len(list(framing))


def test_input_types_give_the_same_scores():
    """float64 / float32 numpy, torch tensors, a list of (samples, channels) arrays, int16."""
    ref, est = make_track(2, 2, int(1.3 * SR), seed=17)
    kw = dict(win=WIN, hop=WIN, filters_len=64)  # ours against ours: short filters keep it fast
    base = bss_eval_v4(ref, est, **kw)
    assert torch.isfinite(base).all()
    same = dict(rtol=0, atol=0)
    torch.testing.assert_close(bss_eval_v4(torch.from_numpy(ref), torch.from_numpy(est), **kw), base, **same)
    torch.testing.assert_close(bss_eval_v4(list(ref), [torch.from_numpy(e) for e in est], **kw), base, **same)
    ref32, est32 = ref.astype(np.float32), est.astype(np.float32)
    from32 = bss_eval_v4(ref32, est32, **kw)
    assert from32.dtype == torch.float64  # computed in float64 whatever the input
    torch.testing.assert_close(from32, bss_eval_v4(ref32.astype(float), est32.astype(float), **kw), **same)
    torch.testing.assert_close(from32, base, rtol=0, atol=TOL_DB)
    scale = 0.5 * 32767 / max(np.abs(ref).max(), np.abs(est).max())
    ref16, est16 = np.round(ref * scale).astype(np.int16), np.round(est * scale).astype(np.int16)
    from16 = bss_eval_v4(ref16, est16, **kw)
    torch.testing.assert_close(from16, bss_eval_v4(ref16 / 32768.0, est16 / 32768.0, **kw), rtol=0, atol=1e-6)
    torch.testing.assert_close(from16, base, rtol=0, atol=0.05)  # 16-bit rounding of the audio


def test_frames_per_chunk_does_not_change_the_scores():
    ref, est = make_track(2, 2, int(3.2 * SR), seed=18)
    est[1, SR : 2 * SR + 10] = 0  # a NaN frame inside a chunk
    kw = dict(win=WIN, hop=SR // 2, filters_len=64)
    base = bss_eval_v4(ref, est, **kw)
    assert base.shape == (4, 2, 5) and torch.isnan(base[..., 2]).all() and torch.isnan(base).sum() == 8
    for chunk in (1, 3, 100):
        chunked = bss_eval_v4(ref, est, **kw, frames_per_chunk=chunk)
        torch.testing.assert_close(chunked, base, rtol=0, atol=1e-9, equal_nan=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
def test_cuda_gives_the_cpu_scores():
    ref, est = make_track(4, 2, int(3.4 * SR), seed=19)
    ref[2, SR : 2 * SR + 5] = 0  # frame 1 silent
    cpu = bss_eval_v4(ref, est, win=WIN, hop=WIN)
    gpu = bss_eval_v4(ref, est, win=WIN, hop=WIN, device="cuda")
    on_gpu = bss_eval_v4(torch.from_numpy(ref).cuda(), torch.from_numpy(est).cuda(), win=WIN, hop=WIN)
    assert torch.isnan(cpu[..., 1]).all() and torch.isfinite(cpu[..., [0, 2]]).all()
    for out in (gpu, on_gpu):
        assert out.device.type == "cpu" and out.dtype == torch.float64
        torch.testing.assert_close(out, cpu, rtol=0, atol=1e-6, equal_nan=True)


# --- bad input: a clear LightningSepError, never a score --------------------------------------------------------------

NAMES = ["vocals", "drums"]


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    return make_track(2, 2, 5000, seed=20)


def raises(ref, est, *match: str, **kwargs) -> str:
    with pytest.raises(LightningSepError) as info:
        bss_eval_v4(ref, est, win=2000, hop=2000, **kwargs)
    message = str(info.value)
    for part in match:
        assert part in message, f"{part!r} not in {message!r}"
    return message


def test_different_lengths_are_refused(pair):
    ref, est = pair
    raises(ref, est[:, :4000], "4000 samples", "5000", "trim or pad")
    raises(ref[:, :4000], est, "5000 samples", "4000")
    raises(torch.from_numpy(ref), torch.from_numpy(est[:, :-1]), "4999 samples")


def test_different_channel_counts_are_refused(pair):
    ref, est = pair
    raises(ref, est[..., :1], "1 channel(s)", "references 2", "mono")


def test_different_source_counts_are_refused(pair):
    ref, est = pair
    raises(ref, est[:1], "2 reference(s) but 1 estimate(s)")
    raises(np.concatenate([ref, ref]), est, "4 reference(s) but 2 estimate(s)")


def test_sources_of_different_lengths_in_a_list_are_refused(pair):
    ref, est = pair
    raises([ref[0], ref[1][:4000]], [est[0], est[1][:4000]], "different lengths")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_an_estimate_names_the_source(pair, bad):
    ref, est = pair
    est = est.copy()
    est[1, 1234, 0] = bad
    message = raises(ref, est, "estimate", "'drums'", "NaN or inf", names=NAMES)
    assert "vocals" not in message
    raises(ref, est, "estimate of source 1", "NaN or inf")  # without names: the index


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_a_reference_names_the_source(pair, bad):
    ref, est = pair
    ref = ref.copy()
    ref[0, -1, 1] = bad
    message = raises(ref, est, "reference", "'vocals'", "NaN or inf", "audio files", names=NAMES)
    assert "drums" not in message
    raises(torch.from_numpy(ref), torch.from_numpy(est), "reference of source 0")


def test_complex_input_is_refused(pair):
    ref, est = pair
    raises(ref.astype(np.complex128), est, "references", "real-valued")
    raises(ref, torch.from_numpy(est) + 1j, "estimates", "real-valued")


@pytest.mark.parametrize("shape", [(2, 5000), (5000,), (1, 2, 5000, 2)])
def test_wrong_number_of_dimensions_is_refused(shape):
    x = np.ones(shape)
    raises(x, x, "(sources, samples, channels)", str(shape))


@pytest.mark.parametrize("shape", [(0, 5000, 2), (2, 0, 2)])
def test_empty_input_is_refused(shape):
    raises(np.zeros(shape), np.zeros(shape), "nothing to evaluate", str(shape))


def test_non_numeric_input_is_refused(pair):
    ref, est = pair
    raises(ref > 0, est, "dtype torch.bool")
    raises(np.full((2, 5000, 2), "a"), est, "arrays of numbers")


@pytest.mark.parametrize("win, hop", [(0, 2000), (2000, 0), (-1, 2000)])
def test_non_positive_frames_are_refused(pair, win, hop):
    ref, est = pair
    with pytest.raises(LightningSepError, match="must be positive"):
        bss_eval_v4(ref, est, win=win, hop=hop)


def test_whole_signal_window_matches_museval():
    """``win=inf`` (museval's whole-signal window) is one frame of the whole track."""
    ref, est = make_track(2, 2, int(2.3 * WIN), seed=21)
    expected = museval_scores(ref, est, win=np.inf, hop=np.inf)
    assert expected.shape[-1] == 1
    assert_matches_museval(bss_eval_v4(ref, est, win=float("inf"), hop=float("inf")), expected)


@pytest.mark.parametrize("win, hop", [(1000.5, 1000), (2000, float("nan")), ("2000", 2000)])
def test_frames_that_are_not_sample_counts_are_refused(pair, win, hop):
    ref, est = pair
    with pytest.raises(LightningSepError, match="whole number of samples"):
        bss_eval_v4(ref, est, win=win, hop=hop)


def test_names_must_name_every_source(pair):
    ref, est = pair
    est = est.copy()
    est[1, 5, 0] = np.nan
    with pytest.raises(LightningSepError, match=r"names: 1 given \(\['vocals'\]\) for 2 sources"):
        bss_eval_v4(ref, est, names=["vocals"])
