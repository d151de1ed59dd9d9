import torch

from lightning_sep.evaluation.metrics import active, signal_to_distortion_ratio


def test_sdr_equals_the_signal_to_error_ratio():
    torch.manual_seed(0)
    ref = torch.randn(4, 8000)
    noise = torch.randn(4, 8000)
    for snr_db in (-5.0, 0.0, 10.0, 20.0):
        gain = ref.norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True) * 10 ** (-snr_db / 20)
        sdr = signal_to_distortion_ratio(ref + gain * noise, ref)
        assert torch.allclose(sdr, torch.full((4,), snr_db), atol=1e-3)
    assert (signal_to_distortion_ratio(ref, ref) > 60).all()


def test_silent_references_are_inactive():
    ref = torch.stack([torch.zeros(100), torch.ones(100) * 1e-5, torch.ones(100) * 0.1])
    assert active(ref).tolist() == [False, False, True]
