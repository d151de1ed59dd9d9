"""The shared separation machinery: chunked overlap-add, the Wiener post-filter, the separators."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_sep.errors import LightningSepError, UnknownNameError
from lightning_sep.models import SkipFilter
from lightning_sep.separation import (
    MixtureSeparator,
    ModelSeparator,
    OracleSeparator,
    overlap_add,
    reference_separator,
    separate_track,
    wiener,
)
from lightning_sep.separation.overlap_add import chunk_starts
from lightning_sep.separation.separators import ALL_TARGETS, REFERENCE_METHODS, SOURCES
from lightning_sep.transforms import FrontEnd

SR = 44100


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    reference, estimate = np.asarray(reference, np.float64), np.asarray(estimate, np.float64)
    return float(10 * np.log10(np.sum(reference**2) / max(np.sum((reference - estimate) ** 2), 1e-30)))


def linear_process(x, extra):
    """A point-wise linear separator: what overlap-add must reproduce exactly."""
    return torch.stack([2 * x, -x])


# -- overlap_add / chunk_starts -------------------------------------------------------------------

@pytest.mark.parametrize(
    "length, chunk, overlap",
    [
        (50, 100, 10),     # shorter than a chunk: one chunk
        (100, 100, 10),    # exactly one chunk
        (400, 100, 0),     # an exact multiple, no overlap
        (400, 100, 20),    # an exact multiple, with overlap
        (1001, 100, 25),   # a short last chunk
        (101, 100, 99),    # overlap of almost the whole chunk
        (5000, 333, 111),
        (7, 1, 0),         # one-sample chunks
    ],
)
def test_overlap_add_of_a_linear_process_equals_the_unchunked_result(length, chunk, overlap):
    torch.manual_seed(0)
    x = torch.randn(2, length)
    out = overlap_add(linear_process, x, chunk, overlap)
    assert out.shape == (2, 2, length) and out.dtype == torch.float32
    torch.testing.assert_close(out, linear_process(x, None), rtol=1e-6, atol=1e-6)
    # the blending weights are a partition of unity: a constant process gives the constant back
    ones = overlap_add(lambda c, e: torch.ones(1, *c.shape), x, chunk, overlap)
    torch.testing.assert_close(ones, torch.ones(1, 2, length), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "length, chunk, overlap",
    [(1, 10, 0), (10, 10, 3), (11, 10, 3), (95, 10, 0), (100, 10, 0), (1000, 64, 63), (12345, 1000, 250)],
)
def test_chunks_cover_the_whole_signal_with_the_requested_hop(length, chunk, overlap):
    starts = chunk_starts(length, chunk, overlap)
    assert starts[0] == 0
    assert all(b - a == chunk - overlap for a, b in zip(starts, starts[1:]))
    assert starts[-1] + chunk >= length  # the last chunk reaches the end ...
    if len(starts) > 1:
        assert starts[-2] + chunk < length  # ... and none is spare
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s : s + chunk] = True
    assert covered.all()


def test_overlap_add_hands_the_process_the_chunks_it_documents():
    length, chunk, overlap = 1000, 300, 50
    x = torch.arange(length, dtype=torch.float32).repeat(2, 1)
    seen = []

    def process(c, e):
        seen.append((int(c[0, 0]), c.shape[-1]))
        return c.unsqueeze(0)

    out = overlap_add(process, x, chunk, overlap)
    assert seen == [(0, 300), (250, 300), (500, 300), (750, 250)]
    torch.testing.assert_close(out[0], x)


@pytest.mark.parametrize("chunk, overlap", [(0, 0), (-5, 0), (10, 10), (10, 11), (10, -1)])
def test_bad_chunking_is_a_user_error(chunk, overlap):
    with pytest.raises(LightningSepError, match="overlap"):
        chunk_starts(100, chunk, overlap)
    with pytest.raises(LightningSepError):
        overlap_add(linear_process, torch.zeros(1, 100), chunk, overlap)


@pytest.mark.parametrize("length, chunk, overlap", [(50, 100, 10), (1000, 128, 0), (1000, 128, 32)])
def test_extra_is_cut_in_step_with_the_mixture(length, chunk, overlap):
    torch.manual_seed(1)
    x = torch.randn(2, length)
    extra = torch.randn(4, 2, length)
    extra[0] = x  # the first extra signal is the mixture itself: the chunks must match sample for sample

    def process(c, e):
        assert e.shape == (4, *c.shape)
        assert torch.equal(e[0], c)
        return e

    out = overlap_add(process, x, chunk, overlap, extra=extra)
    torch.testing.assert_close(out, extra, rtol=1e-6, atol=1e-6)


def test_overlap_add_with_a_progress_bar_gives_the_same_result():
    x = torch.randn(1, 1000)
    out = overlap_add(linear_process, x, 100, 10, progress="test")
    torch.testing.assert_close(out, linear_process(x, None), rtol=1e-6, atol=1e-6)


# -- separate_track with a model ------------------------------------------------------------------

@pytest.fixture(scope="module")
def vocals_model():
    torch.manual_seed(0)
    return SkipFilter(front_end=None, targets=["vocals"])


def music(seconds: float, sample_rate: int = SR, channels: int = 2, seed: int = 0) -> np.ndarray:
    """``(channels, samples)`` float32: a few sines under envelopes, plus a little noise."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    out = np.zeros((channels, n))
    for c in range(channels):
        for f in rng.uniform(100, 4000, size=4):
            out[c] += 0.1 * (1 + np.sin(2 * np.pi * rng.uniform(0.5, 3) * t)) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6))
        out[c] += 0.01 * rng.standard_normal(n)
    return out.astype(np.float32)


@pytest.mark.parametrize("channels", [1, 2])
def test_model_separation_shapes_and_accompaniment(vocals_model, channels):
    sep = ModelSeparator(vocals_model)
    assert sep.targets == ["vocals", "accompaniment"] and sep.sample_rate == SR and sep.name == "skipfilter"
    x = music(1.5, channels=channels)
    est = separate_track(sep, x, SR)
    assert list(est) == ["vocals", "accompaniment"]
    for target, audio in est.items():
        assert audio.shape == (x.shape[1], channels), target
        assert audio.dtype == np.float32 and np.isfinite(audio).all()
    np.testing.assert_allclose(est["accompaniment"], x.T - est["vocals"], atol=1e-5)
    assert np.abs(est["vocals"]).max() > 1e-3  # an untrained model still estimates something
    # the channels are a batch for the monaural model: each is separated on its own
    if channels == 2:
        left = separate_track(sep, x[:1], SR)
        np.testing.assert_allclose(left["vocals"][:, 0], est["vocals"][:, 0], atol=1e-5)


def test_chunked_separation_is_close_to_the_unchunked(vocals_model):
    sep = ModelSeparator(vocals_model)
    x = music(3.0, seed=3)
    whole = separate_track(sep, x, SR, chunk_seconds=10.0)
    chunked = separate_track(sep, x, SR, chunk_seconds=1.0, overlap_seconds=0.25)
    for t in ("vocals", "accompaniment"):
        ratio = np.sum((chunked[t] - whole[t]) ** 2) / np.sum(whole[t] ** 2)
        assert ratio < 2e-3, (t, ratio)  # measured: 1.4e-4 (vocals), 2e-4 (accompaniment)
    # far from the chunk boundaries (STFT edges) the chunked result is the unchunked one
    mid = slice(int(0.1 * SR), int(0.6 * SR))
    np.testing.assert_allclose(chunked["vocals"][mid], whole["vocals"][mid], atol=1e-5)
    # without overlap the boundaries are hard cuts: the error is larger than with a cross-fade
    hard = separate_track(sep, x, SR, chunk_seconds=1.0, overlap_seconds=0.0)
    assert np.sum((hard["vocals"] - whole["vocals"]) ** 2) > np.sum((chunked["vocals"] - whole["vocals"]) ** 2)


def test_another_sample_rate_is_resampled_to_the_models_and_back(vocals_model):
    import torchaudio.functional as AF

    sep = ModelSeparator(vocals_model)
    x = music(1.0, sample_rate=22050, seed=4)
    est = separate_track(sep, x, 22050)
    for audio in est.values():
        assert audio.shape == (x.shape[1], 2) and np.isfinite(audio).all()
    # the model ran at its own rate: the same as separating the upsampled mixture and downsampling
    up = AF.resample(torch.from_numpy(x), 22050, SR).numpy()
    at_model_rate = separate_track(sep, up, SR)
    down = AF.resample(torch.from_numpy(at_model_rate["vocals"].T.copy()), SR, 22050).numpy().T
    np.testing.assert_allclose(est["vocals"], down[: x.shape[1]], atol=1e-4)
    # and the two outputs still add up to the mixture the user gave
    np.testing.assert_allclose(est["vocals"] + est["accompaniment"], x.T, atol=1e-5)


def test_wiener_post_filter_in_the_model_separator(vocals_model):
    x = music(1.5, seed=5)
    plain = separate_track(ModelSeparator(vocals_model), x, SR)
    sep = ModelSeparator(vocals_model, wiener_iterations=1)
    assert sep.residual  # vocals alone do not add up to the mixture
    est = separate_track(sep, x, SR)
    for audio in est.values():
        assert audio.shape == (x.shape[1], 2) and np.isfinite(audio).all()
    np.testing.assert_allclose(est["vocals"] + est["accompaniment"], x.T, atol=1e-5)
    # the filter changes the estimate, and (being a soft mask of the mixture) keeps it no louder than the mixture
    assert not np.allclose(est["vocals"], plain["vocals"], atol=1e-3)
    assert np.sum(est["vocals"] ** 2) <= np.sum(x**2) * 1.01
    with pytest.raises(LightningSepError, match="wiener_iterations"):
        ModelSeparator(vocals_model, wiener_iterations=-1)


def test_separate_track_rejects_bad_chunk_settings(vocals_model):
    sep = ModelSeparator(vocals_model)
    x = music(0.2)
    for chunk, overlap in ((0.0, 0.0), (-1.0, 0.0), (1.0, 1.0), (1.0, -0.5)):
        with pytest.raises(LightningSepError, match="chunk_seconds"):
            separate_track(sep, x, SR, chunk_seconds=chunk, overlap_seconds=overlap)


# -- wiener() -------------------------------------------------------------------------------------

def random_spec(shape, generator) -> torch.Tensor:
    return torch.complex(torch.randn(shape, generator=generator), torch.randn(shape, generator=generator))


def spec_snr_db(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    return float(10 * torch.log10(reference.abs().pow(2).sum() / (reference - estimate).abs().pow(2).sum().clamp_min(1e-30)))


@pytest.mark.parametrize("iterations", [0, 1, 3])
def test_wiener_with_a_residual_adds_up_to_the_mixture(iterations):
    g = torch.Generator().manual_seed(0)
    x = random_spec((2, 64, 40), g)
    mag = (x.abs() * torch.rand(x.shape, generator=g)).unsqueeze(0)  # one source, part of the mixture
    y = wiener(mag, x, iterations=iterations, residual=True)
    assert y.shape == (2, 2, 64, 40) and y.is_complex()
    torch.testing.assert_close(y.sum(0), x.to(torch.complex64), rtol=0, atol=1e-4 * float(x.abs().max()))
    # without a residual only the source comes back
    assert wiener(mag, x, iterations=iterations).shape == (1, 2, 64, 40)


def test_wiener_recovers_sources_with_disjoint_frequency_support():
    g = torch.Generator().manual_seed(1)
    C, F, T = 2, 96, 50
    s1, s2 = random_spec((C, F, T), g), random_spec((C, F, T), g)
    s1[:, F // 2 :] = 0  # source 1: low bins only
    s2[:, : F // 2] = 0  # source 2: high bins only
    s2 = s2 * torch.tensor([0.2, 1.0])[:, None, None]  # another spatial image
    x = s1 + s2
    mags = torch.stack([s1.abs(), s2.abs()])
    for iterations in (0, 1, 2):
        y = wiener(mags, x, iterations=iterations)
        assert y.shape == (2, C, F, T)
        assert spec_snr_db(s1, y[0]) > 30 and spec_snr_db(s2, y[1]) > 30, iterations


def test_wiener_with_spatial_cues_beats_the_mixture_phase():
    """Two sources with the same spectrum but opposite panning: EM uses the spatial covariance."""
    g = torch.Generator().manual_seed(2)
    F, T = 64, 60
    a, b = random_spec((F, T), g), random_spec((F, T), g)
    s1 = torch.stack([a, 0.3 * a])  # mostly left
    s2 = torch.stack([0.3 * b, b])  # mostly right
    x = s1 + s2
    mags = torch.stack([s1.abs(), s2.abs()])
    snr = [spec_snr_db(s1, wiener(mags, x, iterations=i)[0]) for i in (0, 1, 3)]
    # measured: about 8, 12 and 15 dB
    assert snr[1] > snr[0] + 2 and snr[2] > snr[1] + 1, snr


def test_wiener_without_iterations_is_the_magnitudes_with_the_mixture_phase():
    g = torch.Generator().manual_seed(3)
    x = random_spec((2, 32, 20), g) * 50
    mags = torch.rand((3, 2, 32, 20), generator=g) * 10
    y = wiener(mags, x, iterations=0)
    expected = torch.polar(mags, x.angle().expand_as(mags))
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(y.abs(), mags, rtol=1e-5, atol=1e-4)


def test_wiener_is_scale_invariant():
    g = torch.Generator().manual_seed(4)
    x = random_spec((2, 32, 20), g)
    mags = torch.stack([x.abs() * 0.7, x.abs() * 0.3])
    y = wiener(mags, x, iterations=2)
    y_big = wiener(mags * 1000, x * 1000, iterations=2)
    torch.testing.assert_close(y_big / 1000, y, rtol=1e-4, atol=1e-5)


# -- reference methods ----------------------------------------------------------------------------

FREQS = {"drums": 220.0, "bass": 660.0, "other": 1540.0, "vocals": 3300.0}


def disjoint_stems(seconds: float = 1.0, sample_rate: int = SR, channels: int = 2) -> np.ndarray:
    """``(4, channels, samples)`` sines far apart in frequency, in :data:`SOURCES` order."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    stems = []
    for k, name in enumerate(SOURCES):
        chans = [(0.1 + 0.05 * k) * (1 + 0.3 * c) * np.sin(2 * np.pi * FREQS[name] * t + k + c) for c in range(channels)]
        stems.append(chans)
    return np.asarray(stems, dtype=np.float32)


# measured SNRs: 31-39 dB (lowest for the 220 Hz stem)
@pytest.mark.parametrize("method, min_snr", [("oracle_irm2", 27.0), ("oracle_irm1", 25.0), ("oracle_ibm", 25.0)])
def test_oracles_recover_stems_with_disjoint_spectra(method, min_snr):
    stems = disjoint_stems()
    mixture = stems.sum(0)
    sep = reference_separator(method, FrontEnd())
    assert isinstance(sep, OracleSeparator) and sep.needs_references and sep.name == method
    assert sep.targets == list(ALL_TARGETS)
    est = separate_track(sep, mixture, SR, references=stems)
    assert list(est) == list(ALL_TARGETS)
    for k, name in enumerate(SOURCES):
        assert est[name].shape == (mixture.shape[1], 2)
        assert snr_db(stems[k].T, est[name]) > min_snr, (name, snr_db(stems[k].T, est[name]))
    np.testing.assert_allclose(est["accompaniment"], est["drums"] + est["bass"] + est["other"], atol=1e-6)
    assert snr_db(stems[:3].sum(0).T, est["accompaniment"]) > min_snr


def test_oracle_works_chunked_and_at_another_sample_rate():
    stems = disjoint_stems(seconds=1.5, sample_rate=22050)
    sep = reference_separator("oracle_irm2", FrontEnd(), targets=["vocals", "bass"])
    est = separate_track(sep, stems.sum(0), 22050, references=stems, chunk_seconds=0.5, overlap_seconds=0.1)
    assert list(est) == ["vocals", "bass"]
    assert est["vocals"].shape == (stems.shape[-1], 2)
    # the references are resampled and cut in step with the mixture
    assert snr_db(stems[3].T, est["vocals"]) > 30  # measured: 41 dB
    assert snr_db(stems[1].T, est["bass"]) > 30  # measured: 35 dB


def capture_masked_spectra(sep: OracleSeparator) -> list:
    """Replace the oracle's inverse STFT by one that records what it is given."""
    seen = []

    def fake_istft(spec, length):
        seen.append(spec)
        return torch.zeros(*spec.shape[:-2], length)

    sep.istft = fake_istft
    return seen


def overlapping_stems(n: int = 8000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal((4, 2, n))).astype(np.float32)


def test_ibm_keeps_or_zeroes_each_mixture_bin():
    stems = overlapping_stems()
    mixture = torch.from_numpy(stems.sum(0))
    sep = OracleSeparator("ibm", FrontEnd())
    seen = capture_masked_spectra(sep)
    sep.separate(mixture, torch.from_numpy(stems))
    (masked,) = seen
    x = sep.stft(mixture)
    assert masked.shape == (4, *x.shape)
    kept = masked == x.unsqueeze(0)
    zeroed = masked == 0
    assert bool((kept | zeroed).all())
    assert 0.1 < float(kept.float().mean()) < 0.9  # overlapping sources: some bins of each are kept, some not
    # the rule: kept where |S_j| / |X| >= 0.5
    s = sep.stft(torch.from_numpy(stems)).abs()
    ratio = s / x.abs().unsqueeze(0)
    clear = (ratio - 0.5).abs() > 1e-3
    assert bool((kept[clear] == (ratio[clear] >= 0.5)).all())


@pytest.mark.parametrize("kind", ["irm1", "irm2"])
def test_ratio_masks_are_soft_and_share_each_bin(kind):
    stems = overlapping_stems(seed=1)
    mixture = torch.from_numpy(stems.sum(0))
    sep = OracleSeparator(kind, FrontEnd())
    seen = capture_masked_spectra(sep)
    sep.separate(mixture, torch.from_numpy(stems))
    x = sep.stft(mixture)
    mask = (seen[0] / x.unsqueeze(0)).real
    assert float(mask.min()) >= -1e-5 and float(mask.max()) <= 1 + 1e-5
    torch.testing.assert_close(mask.sum(0), torch.ones_like(mask[0]), rtol=0, atol=1e-4)
    s = sep.stft(torch.from_numpy(stems)).abs() ** (1 if kind == "irm1" else 2)
    torch.testing.assert_close(mask, s / s.sum(0, keepdim=True), rtol=0, atol=1e-4)


def test_ibm_estimates_of_overlapping_sources_are_no_louder_than_the_mixture():
    stems = overlapping_stems(n=SR // 2, seed=2)
    mixture = stems.sum(0)
    est = separate_track(reference_separator("oracle_ibm", FrontEnd()), mixture, SR, references=stems)
    energy = float(np.sum(mixture.astype(np.float64) ** 2))
    for k, name in enumerate(SOURCES):
        e = float(np.sum(est[name].astype(np.float64) ** 2))
        assert 0 < e <= energy * 1.001, name
        assert 0 < snr_db(stems[k].T, est[name]) < 10  # measured: 2 dB (four equal noises overlap everywhere)


def test_mixture_separator_returns_the_mixture_for_every_target():
    x = music(0.5, seed=6)
    sep = reference_separator("mixture", FrontEnd())
    assert isinstance(sep, MixtureSeparator) and not sep.needs_references and sep.sample_rate == SR
    est = separate_track(sep, x, SR, chunk_seconds=0.2, overlap_seconds=0.05)
    assert list(est) == list(ALL_TARGETS)
    for audio in est.values():
        np.testing.assert_allclose(audio, x.T, atol=1e-6)
    only = separate_track(MixtureSeparator(SR, ["vocals"]), x, SR)
    assert list(only) == ["vocals"]


def test_unknown_names_list_the_available_ones():
    with pytest.raises(UnknownNameError) as err:
        MixtureSeparator(SR, ["vocals", "guitar"])
    assert "'guitar'" in str(err.value)
    assert all(t in str(err.value) for t in ALL_TARGETS)
    with pytest.raises(UnknownNameError) as err:
        reference_separator("oracle_irm3", FrontEnd())
    assert "oracle_irm3" in str(err.value)
    assert all(m in str(err.value) for m in REFERENCE_METHODS)
    with pytest.raises(UnknownNameError) as err:
        reference_separator("oracle_ibm", FrontEnd(), targets=["piano"])
    assert "piano" in str(err.value) and "accompaniment" in str(err.value)
    with pytest.raises(UnknownNameError) as err:
        OracleSeparator("irm3", FrontEnd())
    assert all(k in str(err.value) for k in ("ibm", "irm1", "irm2"))
    with pytest.raises(LightningSepError, match="No targets"):
        MixtureSeparator(SR, [])


def test_an_oracle_needs_the_references():
    sep = reference_separator("oracle_irm2", FrontEnd())
    x = disjoint_stems(0.2).sum(0)
    with pytest.raises(LightningSepError, match="reference"):
        separate_track(sep, x, SR)
    with pytest.raises(LightningSepError, match="reference"):
        sep.separate(torch.from_numpy(x))
    with pytest.raises(LightningSepError, match="reference"):
        sep.separate(torch.from_numpy(x), torch.zeros(2, *x.shape))  # not the 4 stems
