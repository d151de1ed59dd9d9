"""The shared front end: STFT/ISTFT, masks, context stacking, band normalisation."""

import math

import pytest
import torch

from lightning_sep.errors import LightningSepError, UnknownNameError
from lightning_sep.transforms import (
    ISTFT,
    STFT,
    BandNormalization,
    FrontEnd,
    apply_mask,
    binary_mask,
    magphase,
    ratio_mask,
    stack_context,
    with_phase,
)


@pytest.mark.parametrize("window", ["hann", "sqrt_hann", "hamming"])
def test_stft_istft_reconstructs_when_all_bins_are_kept(window):
    fe = FrontEnd(sample_rate=16000, n_fft=512, win_length=400, hop_length=128, window=window, retained_bins=257)
    wave = torch.randn(3, 16000)
    spec = STFT(fe)(wave)
    assert spec.shape == (3, 257, 16000 // 128 + 1)
    back = ISTFT(fe)(spec, length=wave.shape[-1])
    assert torch.allclose(back, wave, atol=1e-4)


def test_paper_front_end_and_retained_bins_lowpass():
    fe = FrontEnd()  # paper: 44.1 kHz, 2049 Hamming, 4096 DFT, hop 384, 744 bins
    assert (fe.n_fft, fe.win_length, fe.hop_length, fe.retained_bins) == (4096, 2049, 384, 744)
    t = torch.arange(44100) / 44100
    low, high = torch.sin(2 * math.pi * 440 * t), torch.sin(2 * math.pi * 15000 * t)
    mag, phase = magphase(STFT(fe)(low + high))
    assert mag.shape[-2] == 744
    back = ISTFT(fe)(with_phase(mag, phase), length=t.numel())
    # the 15 kHz tone lies above the retained bins (~8 kHz) and is removed; 440 Hz stays
    inner = slice(4096, -4096)
    assert (back[inner] - low[inner]).abs().max() < 1e-2  # Hamming side lobes leak a little


def test_frames_and_samples_agree_with_the_stft():
    fe = FrontEnd()
    for frames in (1, 17, 128):
        samples = fe.frames_to_samples(frames)
        assert fe.samples_to_frames(samples) == frames
        if samples:
            assert STFT(fe)(torch.zeros(samples)).shape[-1] == frames


def test_front_end_rejects_bad_values():
    with pytest.raises(UnknownNameError, match="window 'triangle'.*hamming"):
        FrontEnd(window="triangle")
    with pytest.raises(LightningSepError, match="retained_bins=5000"):
        FrontEnd(retained_bins=5000)
    with pytest.raises(LightningSepError, match="hop_length"):
        FrontEnd(hop_length=4096)


def test_masks():
    est = torch.rand(2, 3, 10, 7)
    for p in (1, 2):
        m = ratio_mask(est, power=p)
        assert torch.allclose(m.sum(1), torch.ones(2, 10, 7), atol=1e-5)
    b = binary_mask(est)
    assert torch.equal(b.sum(1), torch.ones(2, 10, 7))
    assert torch.equal(b.argmax(1), est.argmax(1))
    mix = torch.randn(2, 10, 7, dtype=torch.complex64)
    assert apply_mask(m, mix).shape == (2, 3, 10, 7)


def test_stack_context_puts_neighbours_around_the_centre_frame():
    x = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5)  # (B, F, T)
    assert torch.equal(stack_context(x, 0), x.transpose(1, 2))
    s = stack_context(x, 1)
    assert s.shape == (2, 5, 9)
    # frame t=2: [frame 1, frame 2, frame 3], each of 3 bins
    assert torch.equal(s[0, 2], torch.cat([x[0, :, 1], x[0, :, 2], x[0, :, 3]]))
    # edges are replicated
    assert torch.equal(s[0, 0, :3], x[0, :, 0])


def test_band_normalization_gives_unit_variance_per_band():
    torch.manual_seed(0)
    scales = torch.tensor([0.01, 1.0, 50.0, 3.0])
    data = [torch.rand(2, 4, 100) * scales[:, None] for _ in range(5)]
    norm = BandNormalization(4)
    assert not bool(norm.fitted)
    norm.fit(iter(data))
    assert bool(norm.fitted)
    out = torch.cat([norm(d) for d in data], dim=-1).transpose(1, 2).reshape(-1, 4)
    assert torch.allclose(out.std(0, unbiased=False), torch.ones(4), atol=1e-4)
    assert torch.allclose(norm.inverse(norm(data[0])), data[0], atol=1e-5)
    assert set(norm.state_dict()) == {"scale", "fitted"}  # stored in the checkpoint
