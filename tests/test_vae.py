"""The mixture-to-source VAE, deep VAE and segment autoencoder (models/vae.py, losses.gaussian_nll and
kl_to_standard_normal, transforms.frame_segments / overlap_average), on small real data.

Each family is trained for a few seconds on the easy two-source case of ``conftest.easy_sources`` (low
harmonics + high band noise) and must separate a held-out mixture above the mixture's SDR.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import yaml
from torch import nn
from torch.nn import functional as F

from conftest import (
    EASY_FRONT_END, REPO, easy_datamodule, easy_sources, easy_trainer, one_torch_thread, reload_weights_only, sdr_gains, train_easy,
)
from lightning_sep.errors import LightningSepError
from lightning_sep.models import VAE, DeepVAE, SegmentAutoencoder
from lightning_sep.models.losses import gaussian_nll, kl_to_standard_normal
from lightning_sep.models.vae import VAENet, negative_elbo
from lightning_sep.transforms import frame_segments, overlap_average

FE = EASY_FRONT_END
N_BINS = FE["retained_bins"]
LOG_2PI = math.log(2 * math.pi)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    yield from one_torch_thread()


# -- the two terms of the negative ELBO ----------------------------------------------------------------------------
def test_gaussian_nll_against_hand_computed_values():
    t = torch.tensor
    assert gaussian_nll(t(1.0), t(0.0), t(0.0)).item() == pytest.approx(0.5 * (LOG_2PI + 1), abs=1e-6)
    assert gaussian_nll(t(0.0), t(0.0), t(0.0)).item() == pytest.approx(0.5 * LOG_2PI, abs=1e-6)
    # x = 3, mean 1, variance 4: 0.5 (ln 2 pi + ln 4 + 2^2 / 4)
    expected = 0.5 * (LOG_2PI + math.log(4) + 1)
    assert gaussian_nll(t(3.0), t(1.0), t(math.log(4))).item() == pytest.approx(expected, abs=1e-6)
    # element-wise, and the same as torch's normal log-density
    g = torch.Generator().manual_seed(0)
    x, mean, logvar = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    expected = -torch.distributions.Normal(mean, torch.exp(0.5 * logvar)).log_prob(x)
    assert torch.allclose(gaussian_nll(x, mean, logvar), expected, atol=1e-5)


def test_kl_to_standard_normal_against_hand_computed_values():
    t = torch.tensor
    assert kl_to_standard_normal(t(0.0), t(0.0)).item() == pytest.approx(0.0, abs=1e-7)
    assert kl_to_standard_normal(t(1.0), t(0.0)).item() == pytest.approx(0.5, abs=1e-6)
    expected = -0.5 * (1 + math.log(2) - 2)  # variance 2: 0.5 (2 - 1 - ln 2)
    assert kl_to_standard_normal(t(0.0), t(math.log(2))).item() == pytest.approx(expected, abs=1e-6)
    g = torch.Generator().manual_seed(1)
    mu, logvar = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, torch.exp(0.5 * logvar)), torch.distributions.Normal(0.0, 1.0))
    assert torch.allclose(kl_to_standard_normal(mu, logvar), expected, atol=1e-5)
    assert (kl_to_standard_normal(mu, logvar) >= 0).all()


def test_negative_elbo_sums_each_term_over_the_last_dimension():
    target, x_mu, x_logvar = torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 3)
    mu, logvar = torch.ones(2, 4), torch.zeros(2, 4)
    nll, kl = negative_elbo(target, x_mu, x_logvar, mu, logvar)
    assert nll.shape == (2,) and kl.shape == (2,)
    assert torch.allclose(nll, torch.full((2,), 3 * 0.5 * (LOG_2PI + 1)))
    assert torch.allclose(kl, torch.full((2,), 4 * 0.5))
    g = torch.Generator().manual_seed(2)
    args = [torch.randn(5, 7, 11, generator=g) for _ in range(3)]  # target, x_mu, x_logvar
    args += [torch.randn(5, 7, 3, generator=g) for _ in range(2)]  # mu, logvar
    nll, kl = negative_elbo(*args)
    assert nll.shape == kl.shape == (5, 7)
    assert torch.allclose(nll, gaussian_nll(*args[:3]).sum(-1))
    assert torch.allclose(kl, kl_to_standard_normal(*args[3:]).sum(-1))


# -- segments ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size, hop, frames", [
    (17, 17, 126),  # the VAE's disjoint segments, T not a multiple of C
    (17, 5, 126),   # overlapping, T not a multiple of the hop
    (4, 3, 10),
    (6, 4, 17),
    (8, 1, 20),
    (5, 2, 3),      # T < size: one zero-padded segment
    (17, 17, 17),   # T == size
    (1, 1, 7),
])
def test_frame_segments_round_trip_and_layout(size, hop, frames):
    b, f = 2, 3
    x = torch.arange(b * f * frames, dtype=torch.float32).reshape(b, f, frames) + 1  # no zeros: padding shows
    segs = frame_segments(x, size, hop)
    n = 1 if frames <= size else math.ceil((frames - size) / hop) + 1
    assert segs.shape == (b, n, f * size)
    assert (n - 1) * hop + size >= frames  # every frame is covered
    padded = F.pad(x, (0, (n - 1) * hop + size - frames))
    for i in range(n):
        for k in range(size):  # frame-major: [frame 0 bins, frame 1 bins, ...]
            assert torch.equal(segs[:, i, k * f:(k + 1) * f], padded[:, :, i * hop + k])
    assert torch.equal(overlap_average(segs, f, size, hop, frames), x)


@pytest.mark.parametrize("size, hop, frames", [(4, 3, 10), (6, 2, 15), (5, 2, 3)])
def test_overlap_average_takes_the_mean_of_the_segments_of_each_frame(size, hop, frames):
    segs = frame_segments(torch.zeros(1, 2, frames), size, hop)
    n = segs.shape[1]
    segs = torch.arange(n, dtype=torch.float32).view(1, n, 1).expand_as(segs).contiguous()  # segment i holds i
    out = overlap_average(segs, 2, size, hop, frames)
    assert out.shape == (1, 2, frames)
    for t in range(frames):
        covering = [i for i in range(n) if i * hop <= t < i * hop + size]
        assert torch.allclose(out[0, :, t], torch.tensor(sum(covering) / len(covering)))


# -- the architectures of conf/model -------------------------------------------------------------------------------
def from_config(name: str, **overrides):
    """The model of ``conf/model/<name>.yaml`` with the easy front end and two targets."""
    spec = yaml.safe_load((REPO / "conf" / "model" / f"{name}.yaml").read_text())["model"]
    module, cls = spec["class_path"].rsplit(".", 1)
    args = {**spec["init_args"], **overrides}
    return getattr(importlib.import_module(module), cls)(front_end=FE, targets=["male", "female"], **args)


def linear_shapes(seq: nn.Sequential) -> list[tuple[int, int]]:
    layers = list(seq)
    assert all(isinstance(m, nn.ReLU) for m in layers[1::2])  # ReLU after every layer
    return [(m.in_features, m.out_features) for m in layers[0::2]]


@pytest.mark.parametrize("name, cls, hidden", [
    ("vae", VAE, [128]),
    ("deep_vae", DeepVAE, [256, 192, 128]),
    ("ae", SegmentAutoencoder, [128]),
])
def test_configured_architectures(name, cls, hidden):
    model = from_config(name)
    assert type(model) is cls and model.family == name
    n = 17 * N_BINS  # C x F
    assert set(model.networks) == {"male", "female"}
    net = model.networks["female"]
    assert isinstance(net, VAENet)
    sizes = [n, *hidden]
    assert linear_shapes(net.encoder) == list(zip(sizes[:-1], sizes[1:]))
    assert (net.z_mean.in_features, net.z_mean.out_features) == (hidden[-1], 64)
    assert linear_shapes(net.decoder) == list(zip([64, *hidden[::-1]][:-1], hidden[::-1]))
    assert (net.x_mean.in_features, net.x_mean.out_features) == (hidden[0], n)
    if cls is SegmentAutoencoder:  # a plain autoencoder: no variances
        assert net.z_logvar is None and net.x_logvar is None
    else:
        assert (net.z_logvar.in_features, net.z_logvar.out_features) == (hidden[-1], 64)
        assert (net.x_logvar.in_features, net.x_logvar.out_features) == (hidden[0], n)
    y = torch.rand(2, 3, n)
    x_mu, x_logvar, mu, logvar = net(y)
    assert x_mu.shape == (2, 3, n) and mu.shape == (2, 3, 64)
    if x_logvar is not None:
        assert (x_logvar > net.min_logvar).all()  # the smooth lower bound of the likelihood's log-variance


def test_invalid_settings_are_refused():
    with pytest.raises(LightningSepError, match="context_frames"):
        VAE(front_end=FE, context_frames=2)
    with pytest.raises(LightningSepError, match="context_frames"):
        SegmentAutoencoder(front_end=FE, context_frames=1)
    with pytest.raises(LightningSepError, match="segment_hop=18"):
        VAE(front_end=FE, segment_hop=18)
    with pytest.raises(LightningSepError, match="must be positive"):
        DeepVAE(front_end=FE, latent_size=0)
    with pytest.raises(LightningSepError, match="must be positive"):
        VAE(front_end=FE, hidden_sizes=[128, 0])


# -- sampling, confidence and the MSE of the plain autoencoder -------------------------------------------------------
def test_vae_samples_in_training_and_uses_the_mean_otherwise():
    torch.manual_seed(0)
    model = VAE(front_end=FE, targets=["male", "female"], segment_frames=5, hidden_sizes=[32], latent_size=8)
    mixture, sources = easy_sources(7, 2, seconds=0.5)
    batch = (mixture, sources)
    model.eval()
    with torch.no_grad():
        a, b = model.common_step(batch), model.common_step(batch)
        assert torch.equal(a["loss"], b["loss"]) and torch.equal(a["estimate"], b["estimate"])
        sep = model(mixture)
        assert torch.equal(sep, model(mixture))
        stats = dict(model.separation_stats)
        model.train()
        a, b = model.common_step(batch), model.common_step(batch)
        assert not torch.equal(a["estimate"], b["estimate"])  # one reparameterised sample per step
        assert a["loss"].item() != b["loss"].item()
        assert torch.equal(model(mixture), sep)  # separating always decodes z = mean
    # the confidence score: the average posterior variance, per target and overall
    assert set(stats) == {"posterior_variance", "posterior_variance/male", "posterior_variance/female"}
    assert all(v > 0 for v in stats.values())
    assert stats["posterior_variance"] == pytest.approx(
        (stats["posterior_variance/male"] + stats["posterior_variance/female"]) / 2)
    assert a["posterior_variance"].item() > 0


def test_segment_autoencoder_is_deterministic_and_trained_with_the_mse():
    torch.manual_seed(0)
    model = SegmentAutoencoder(front_end=FE, targets=["male", "female"], segment_frames=5, hidden_sizes=[32],
                               latent_size=8)
    model.normalize.scale.uniform_(0.5, 2.0)
    mixture, sources = easy_sources(8, 2, seconds=0.5)
    model.train()
    with torch.no_grad():
        a, b = model.common_step((mixture, sources)), model.common_step((mixture, sources))
        assert torch.equal(a["estimate"], b["estimate"]) and "posterior_variance" not in a
        x = frame_segments(model.normalize(model.spectrogram(mixture)[0]), 5, 5)
        s = model.normalize(model.spectrogram(sources)[0])
        mse = [F.mse_loss(model.networks[t](x)[0], frame_segments(s[:, j], 5, 5)) for j, t in enumerate(model.targets)]
        assert a["loss"].item() == pytest.approx(float(sum(mse) / 2), rel=1e-6)
        model.eval()
        model(mixture)
    assert model.separation_stats == {}  # no variance, no confidence score


# -- every family on the easy case ---------------------------------------------------------------------------------
#: class, training steps, arguments (the configured sizes: seconds each)
FAMILIES = {
    "vae": (VAE, 100, {}),
    "deep_vae": (DeepVAE, 100, {}),
    "ae": (SegmentAutoencoder, 100, {}),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def trained(request, tmp_path_factory):
    cls, steps, kwargs = FAMILIES[request.param]
    model, trainer = train_easy(cls, steps, tmp_path_factory.mktemp(request.param), **kwargs)
    return request.param, model, trainer


def test_each_family_separates_the_easy_case_above_the_mixture(trained):
    family, model, trainer = trained
    assert trainer.global_step == FAMILIES[family][1]
    assert bool(model.normalize.fitted)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert metrics["val/sdr"] > metrics["val/sdr_mixture"] + 3, metrics
    assert ("val/posterior_variance" in metrics) == (family != "ae")
    model.eval()
    mixtures, references = easy_sources(2, 2)
    with torch.no_grad():
        estimates = model(mixtures)
    assert estimates.shape == (2, 2, mixtures.shape[-1])
    gains = sdr_gains(estimates, references, mixtures)
    # measured after 100 steps (three seeds): +6.4 .. +9.9 dB (vae), +7.7 .. +11.4 dB (deep_vae), +8.9 .. +20 dB (ae);
    # the untrained networks give +0.2 dB
    assert (gains > 3).all(), (family, gains)
    if family != "ae":
        assert model.separation_stats["posterior_variance"] > 0


def test_each_family_checkpoint_loads_weights_only_and_separates_identically(trained, tmp_path):
    family, model, trainer = trained
    cls = FAMILIES[family][0]
    ckpt, loaded = reload_weights_only(cls, trainer, tmp_path / f"{family}.ckpt")
    assert ckpt["hyper_parameters"]["front_end"] == FE
    assert dict(loaded.hparams) == dict(model.hparams)
    assert loaded.hidden_sizes == model.hidden_sizes and loaded.segment_frames == model.segment_frames
    assert bool(loaded.normalize.fitted) and torch.equal(loaded.normalize.scale, model.normalize.scale)
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    assert all(torch.equal(state[k], loaded_state[k]) for k in state)
    model.eval(), loaded.eval()
    mixture = easy_sources(3, 1)[0]
    with torch.no_grad():
        assert torch.equal(model(mixture), loaded(mixture))


# -- source counts -------------------------------------------------------------------------------------------------
def test_a_vae_refuses_batches_with_another_number_of_sources(tmp_path):
    model = VAE(front_end=FE, targets=["male", "female"], hidden_sizes=[16], latent_size=4)
    with pytest.raises(LightningSepError) as err:
        model.training_step((torch.randn(2, 4000), torch.randn(2, 3, 4000)), 0)
    message = str(err.value)
    assert "MODEL=vae" in message and "2 source(s) (male, female)" in message and "3 source signals" in message
    with pytest.raises(LightningSepError, match=r"male, female.*\['vocals'\] \(1\)"):
        easy_trainer(2, tmp_path).fit(model, easy_datamodule(2, targets=["vocals"]))
    assert not bool(model.normalize.fitted)
