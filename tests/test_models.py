"""The DAE, MSS-DAE and skip-filter networks and their shared LightningModule."""

import pytest
import torch
from torch import nn

from lightning_sep.models import DAE, MSSDAE, SkipFilter
from lightning_sep.models.dae import DenoisingAutoencoderNet
from lightning_sep.models.skipfilter import SkipFilterNet

SMALL_FE = dict(sample_rate=8000, n_fft=256, win_length=256, hop_length=64, window="hann", retained_bins=100)


def linears(module):
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("cls, n_linear", [(DAE, 2), (MSSDAE, 4), (SkipFilter, 2)])
def test_architectures_are_square_with_xavier_weights_and_zero_biases(cls, n_linear):
    model = cls(front_end=SMALL_FE)
    layers = linears(model.networks["vocals"])
    assert len(layers) == n_linear
    for layer in layers:
        assert layer.weight.shape == (100, 100)  # N -> N, as the NCA needs
        assert torch.count_nonzero(layer.bias) == 0
        fan = 100 + 100
        assert abs(layer.weight.std().item() - (2 / fan) ** 0.5) < 0.02  # Xavier normal


def test_skipfilter_applies_its_mask_to_the_centre_frame():
    torch.manual_seed(0)
    net = SkipFilterNet(n_in=3 * 10, n_bins=10)
    x = torch.rand(4, 30)
    y = net(x)
    assert torch.allclose(y, x[:, 10:20] * net.mask(x))
    assert (net.mask(x) >= 0).all()


def test_dae_output_is_non_negative_and_shaped_like_a_frame():
    net = DenoisingAutoencoderNet(n_in=50, n_bins=10, n_encoder_layers=3)
    y = net(torch.randn(7, 5, 50))
    assert y.shape == (7, 5, 10) and (y >= 0).all()


def test_forward_separates_waveforms_per_target():
    model = SkipFilter(front_end=SMALL_FE, targets=["vocals", "drums"], context_frames=2)
    wave = torch.randn(3, 8000)
    out = model(wave)
    assert out.shape == (3, 2, 8000)
    assert torch.isfinite(out).all()


def test_checkpoint_hyperparameters_are_plain_values_and_load_weights_only(tmp_path):
    import lightning as L

    model = SkipFilter(front_end=SMALL_FE, targets=["vocals"], lr=3e-4)
    model.normalize.scale.fill_(2.0)
    model.normalize.fitted.fill_(True)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)  # no pickled objects in it
    assert ckpt["hyper_parameters"]["front_end"] == SMALL_FE
    loaded = SkipFilter.load_from_checkpoint(path, weights_only=True)
    assert loaded.hparams.lr == 3e-4
    assert torch.equal(loaded.normalize.scale, torch.full((100,), 2.0))  # statistics travel in the checkpoint
    for a, b in zip(model.parameters(), loaded.parameters()):
        assert torch.equal(a, b)
