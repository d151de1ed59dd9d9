"""The per-source families that separate by optimisation: NMF, NAE, CCAE, RCAE (models/source_models.py,
nmf.py, autoencoders.py, losses.generalized_kl), on small real data.

Each family is trained for a few seconds on the easy two-source case of ``conftest.easy_sources`` (low
harmonics + high band noise) and must separate a held-out mixture well above the mixture's SDR.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import (
    EASY_FRONT_END, config_args, easy_datamodule, easy_sources, easy_trainer, one_torch_thread, reload_weights_only,
    sdr_gains, train_easy,
)
from lightning_sep.errors import LightningSepError
from lightning_sep.models import CCAE, NAE, NMF, RCAE
from lightning_sep.models.autoencoders import CCAENet, NAENet
from lightning_sep.models.losses import KL_EPS, generalized_kl
from lightning_sep.models.nmf import NMFBases, fit_activations
from lightning_sep.models.source_models import complete_sources, frozen, optimise_inputs

FE = EASY_FRONT_END
N_BINS = FE["retained_bins"]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    yield from one_torch_thread()


# -- the generalised KL --------------------------------------------------------------------------------------------
def test_generalized_kl_against_hand_computed_values():
    y, y_hat = torch.tensor([1.0, 2.0]), torch.tensor([2.0, 1.0])
    # 1 ln(1/2) - 1 + 2  +  2 ln 2 - 2 + 1  =  ln 2
    elements = torch.tensor([1 - math.log(2), 2 * math.log(2) - 1])
    assert torch.allclose(generalized_kl(y, y_hat, reduction="none"), elements, atol=1e-6)
    assert generalized_kl(y, y_hat, reduction="sum").item() == pytest.approx(math.log(2), abs=1e-6)
    assert generalized_kl(y, y_hat, reduction="mean").item() == pytest.approx(math.log(2) / 2, abs=1e-6)
    assert generalized_kl(y, y_hat).item() == pytest.approx(math.log(2) / 2, abs=1e-6)  # mean by default
    # a silent target bin costs exactly the estimate there: 0 log 0 = 0
    assert generalized_kl(torch.tensor([0.0]), torch.tensor([3.0]), reduction="sum").item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="reduction"):
        generalized_kl(y, y_hat, reduction="max")


def test_generalized_kl_is_zero_at_equality_non_negative_and_homogeneous():
    g = torch.Generator().manual_seed(0)
    y, y_hat = torch.rand(3, 20, 30, generator=g) * 5, torch.rand(3, 20, 30, generator=g) * 5
    assert generalized_kl(y, y.clone(), reduction="sum").abs().item() < 1e-4
    assert (generalized_kl(y, y_hat, reduction="none") >= -1e-6).all()
    kl = generalized_kl(y, y_hat, reduction="sum")
    assert kl.item() > 1.0
    for a in (0.01, 3.7, 250.0):
        assert generalized_kl(a * y, a * y_hat, reduction="sum").item() == pytest.approx(a * kl.item(), rel=1e-4)


# -- separation by input optimisation ------------------------------------------------------------------------------
def random_models(kinds: tuple[str, ...], seed: int, n_bins: int = 32, rank: int = 8) -> list[torch.nn.Module]:
    """Random frozen NAE/CCAE nets with weights scaled up, so that explaining a mixture of theirs is not trivial."""
    torch.manual_seed(seed)
    nets = [NAENet(n_bins, rank) if k == "nae" else CCAENet(n_bins, rank, taps=4) for k in kinds]
    with torch.no_grad():
        for net in nets:
            net.requires_grad_(False)
            for p in net.parameters():
                p.mul_(3)
    return nets


def mixture_of(nets, seed: int, batch: int = 2, frames: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n_bins = nets[0].decoder.weight.shape[0]
    with torch.no_grad():
        return sum(net(torch.rand(batch, n_bins, frames, generator=g) * 3)[0] for net in nets)


@pytest.mark.parametrize("kinds", [("nae", "nae"), ("ccae", "ccae"), ("nae", "ccae")])
def test_input_optimisation_lowers_the_kl_monotonically_on_average(kinds):
    nets = random_models(kinds, seed=1)
    mixture = mixture_of(nets, seed=2)
    outputs, trace = optimise_inputs([lambda x, m=m: m(x)[0] for m in nets], mixture, 300, trace=True)
    assert outputs.shape == (2, len(nets), *mixture.shape[1:]) and (outputs >= 0).all()
    assert trace.shape == (300,) and torch.isfinite(trace).all()
    blocks = trace.view(5, 60).mean(1)
    assert (blocks[1:] < blocks[:-1]).all(), blocks  # measured: each block about half the previous one
    final = generalized_kl(mixture, outputs.sum(1)).item()  # the same quantity as the trace: mean per element
    assert final < 0.2 * trace[0].item(), (final, trace[0].item())  # measured: 1/20 .. 1/40 of the start
    # the optimised inputs explain the mixture better than the starting point (every model fed the mixture)
    start = sum(m(mixture)[0] for m in nets)
    assert final < generalized_kl(mixture, start).item()


def test_input_optimisation_under_inference_mode_and_from_an_initial_point():
    """Lightning validates under torch.inference_mode(); the optimisation must still have gradients there."""
    nets = random_models(("nae", "ccae"), seed=3)
    mixture = mixture_of(nets, seed=4)
    fns = [lambda x, m=m: m(x)[0] for m in nets]
    reference, _ = optimise_inputs(fns, mixture, 50)
    with torch.inference_mode():
        inside = mixture.clone()  # an inference tensor, as a validation batch is
        outputs, trace = optimise_inputs(fns, inside, 50, trace=True)
    assert torch.allclose(outputs, reference, atol=1e-6)
    assert trace[-10:].mean() < 0.75 * trace[:10].mean(), trace  # measured: 3.5 -> 1.8 in 50 steps
    # init: the optimisation starts where it is told (0 iterations = the models at the initial inputs)
    init = torch.rand(2, *mixture.shape)
    at_init, _ = optimise_inputs(fns, mixture, 0, init=init)
    assert torch.allclose(at_init, torch.stack([m(x)[0] for m, x in zip(nets, init)], dim=1))
    with pytest.raises(LightningSepError, match="separation_iterations"):
        optimise_inputs(fns, mixture, -1)


def test_separation_leaves_the_models_untouched_and_restores_their_flags():
    torch.manual_seed(0)
    model = RCAE(front_end=FE, targets=["male", "female"], rank=4, taps=3, rnn_size=8)
    model.eval()
    model.models["female"].decoder.conv.bias.requires_grad_(False)  # flags that differ must come back as they were
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    mixture = torch.rand(2, N_BINS, 30) * 2
    outputs = model.separate_normalized(mixture, 30)
    assert outputs.shape == (2, 2, N_BINS, 30)
    assert model.separation_stats["kl"] > 0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    assert not flags["models.female.decoder.conv.bias"] and flags["models.female.decoder.conv.weight"]
    assert all(p.grad is None for p in model.parameters())
    assert not any(m.training for m in model.modules())  # frozen() trains the RNNs for cuDNN, then gives eval back
    # the whole forward pass under inference mode (as in Lightning's validation) gives the same separation
    model.hparams.separation_iterations = 30
    wave = easy_sources(5, 1)[0]
    with torch.no_grad():
        plain = model(wave)
    with torch.inference_mode():
        inside = model(wave)
    assert inside.shape == (1, 2, wave.shape[-1]) and torch.allclose(plain, inside, atol=1e-6)


def test_frozen_restores_the_flags_after_an_error():
    net = NAENet(8, 2)
    net.encoder.bias.requires_grad_(False)
    net.eval()
    with pytest.raises(RuntimeError, match="inside"):
        with frozen([net]):
            assert net.training and not any(p.requires_grad for p in net.parameters())
            raise RuntimeError("inside")
    assert not net.training
    assert [p.requires_grad for p in net.parameters()] == [True, False, True, True]


# -- NMF ---------------------------------------------------------------------------------------------------------
def exact_nmf(seed: int = 0, n_bins: int = 32, rank: int = 8, batch: int = 2, frames: int = 40):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(n_bins, rank, generator=g) + 0.05
    w = w / w.sum(0)
    h = torch.rand(batch, rank, frames, generator=g) * 3
    return w, h, torch.einsum("fk,bkt->bft", w, h)


def test_fit_activations_decreases_the_kl_to_an_exact_nmf():
    w, h_true, x = exact_nmf()
    kls, errors = [], []
    for iterations in (0, 1, 10, 50, 200):
        h = fit_activations(w, x, iterations)
        assert h.shape == h_true.shape and (h >= 0).all()
        recon = torch.einsum("fk,bkt->bft", w, h)
        kls.append(generalized_kl(x, recon).item())
        errors.append(((recon - x).norm() / x.norm()).item())
    assert all(b <= a for a, b in zip(kls, kls[1:])), kls  # multiplicative updates never increase the KL
    assert kls[-1] < 1e-4 * kls[0], kls  # measured: 0.92 -> 5e-6
    assert errors[-1] < 0.02, errors  # measured: 0.5 % after 200 updates


def test_nmf_bases_updates_keep_unit_sum_non_negative_columns_and_learn_the_data():
    _, _, x = exact_nmf(seed=1)
    torch.manual_seed(2)
    bases = NMFBases(32, 8, inner_iterations=30)
    kls = []
    for _ in range(60):
        recon, h = bases(x)
        kls.append(generalized_kl(x, recon).item())
        bases.update_bases(x, h)
        assert (bases.W >= 0).all()
        assert torch.allclose(bases.W.sum(0), torch.ones(8), atol=1e-5)
    assert kls[-1] < 0.2 * kls[0], kls  # measured: 0.012 -> 0.0006
    assert bases.W.grad is None  # learned by the updates alone


def test_nmf_update_with_statistics_summed_over_ranks_is_the_update_of_the_whole_batch():
    """DDP: two ranks with half a batch each, their statistics summed (``reduce``), take the same update
    as one process with the whole batch."""
    _, _, x = exact_nmf(seed=3)
    torch.manual_seed(4)
    whole = NMFBases(32, 8, inner_iterations=10)
    halves = [NMFBases(32, 8, inner_iterations=10) for _ in range(2)]
    for b in halves:
        b.load_state_dict(whole.state_dict())
    parts = x.chunk(2)
    _, h = whole(x)
    hs = [b(part)[1] for b, part in zip(halves, parts)]
    whole.update_bases(x, h)

    def statistics(w, part, h):  # the update's numerator and denominator (NMFBases.update_bases)
        ratio = part / (torch.einsum("fk,bkt->bft", w, h) + KL_EPS)
        return [torch.einsum("bft,bkt->fk", ratio, h), h.sum(dim=(0, 2)).unsqueeze(0)]

    stats = [statistics(b.W.detach().clone(), part, hh) for b, part, hh in zip(halves, parts, hs)]
    for rank, (b, part, hh) in enumerate(zip(halves, parts, hs)):
        others = iter(stats[1 - rank])  # what strategy.reduce(t, "sum") adds on this rank: the other's share
        b.update_bases(part, hh, reduce=lambda t: t + next(others))
    assert torch.allclose(halves[0].W, halves[1].W, atol=1e-6)
    assert torch.allclose(halves[0].W, whole.W, rtol=1e-4, atol=1e-6)


# -- every family on the easy case ---------------------------------------------------------------------------------
#: class, training steps, arguments (small ranks and nets: seconds each)
FAMILIES = {
    "nmf": (NMF, 20, dict(rank=8)),
    "nae": (NAE, 100, dict(rank=16)),
    "ccae": (CCAE, 100, dict(rank=16, taps=4)),
    "rcae": (RCAE, 100, dict(rank=16, taps=4, rnn_size=16)),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def trained(request, tmp_path_factory):
    """A family trained on the easy case (the validation separates, under inference mode, 20 iterations)."""
    cls, steps, kwargs = FAMILIES[request.param]
    model, trainer = train_easy(cls, steps, tmp_path_factory.mktemp(request.param), val_separation_iterations=20, **kwargs)
    return request.param, model, trainer


def test_each_family_separates_the_easy_case_above_the_mixture(trained):
    family, model, trainer = trained
    assert trainer.global_step == FAMILIES[family][1]
    assert bool(model.fitted) and model.scale.item() > 0  # statistics of the training mixtures
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert metrics["val/sdr"] > metrics["val/sdr_mixture"] + 5, metrics  # a 20-iteration separation already works
    assert {"val/loss", "val/sdr/male", "val/sdr/female", "val/separation_kl"} <= set(metrics)
    model.eval()
    model.hparams.separation_iterations = 300
    mixtures, references = easy_sources(2, 2)
    with torch.no_grad():
        estimates = model(mixtures)
    assert estimates.shape == (2, 2, mixtures.shape[-1])
    assert torch.allclose(estimates.sum(1), mixtures, atol=1e-3)  # ratio masks share the mixture out
    gains = sdr_gains(estimates, references, mixtures)
    # measured: +23 .. +45 dB for every family, estimate and seed; the untrained models give +2 .. +3 dB
    assert (gains > 10).all(), (family, gains)


def test_each_family_checkpoint_loads_weights_only_and_separates_identically(trained, tmp_path):
    family, model, trainer = trained
    cls = FAMILIES[family][0]
    ckpt, loaded = reload_weights_only(cls, trainer, tmp_path / f"{family}.ckpt")
    assert ckpt["hyper_parameters"]["front_end"] == FE
    assert ckpt["hyper_parameters"]["targets"] == ["male", "female"]
    assert loaded.targets == ["male", "female"]
    assert dict(loaded.hparams) == dict(model.hparams)
    assert bool(loaded.fitted) and torch.equal(loaded.scale, model.scale)  # the statistics travel in the checkpoint
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    assert all(torch.equal(state[k], loaded_state[k]) for k in state)
    model.eval(), loaded.eval()
    mag = model.spectrogram(easy_sources(3, 1)[0])[0]
    with torch.no_grad():
        assert torch.equal(model.estimate_magnitudes(mag, 25), loaded.estimate_magnitudes(mag, 25))


# -- sources and targets -----------------------------------------------------------------------------------------
def test_complete_sources():
    assert complete_sources(["vocals"], "nae") == ["vocals", "accompaniment"]
    assert complete_sources(["male"], "nae") == ["male", "female"]
    assert complete_sources(["male", "female"], "nae") == ["male", "female"]
    assert complete_sources(["female", "male"], "nae") == ["female", "male"]  # the data's order is kept
    assert complete_sources(["vocals", "drums", "bass", "other"], "nmf") == ["vocals", "drums", "bass", "other"]
    for bad in (["drums", "bass"], ["drums"], ["vocals", "vocals"]):
        with pytest.raises(LightningSepError, match=r"\[male, female\], \[vocals, accompaniment\]") as err:
            complete_sources(bad, "ccae")
        assert "MODEL=ccae" in str(err.value) and str(bad) in str(err.value)
    with pytest.raises(LightningSepError, match="add up to the mixture"):
        NAE(front_end=FE, targets=["drums", "bass"])


@pytest.mark.parametrize("cls", [NAE, NMF])
def test_a_model_refuses_batches_with_another_number_of_sources(cls):
    model = cls(front_end=FE, targets=["male", "female"], rank=4)
    mixture = torch.randn(2, 4000)
    with pytest.raises(LightningSepError) as err:
        model.training_step((mixture, torch.randn(2, 3, 4000)), 0)
    message = str(err.value)
    assert f"MODEL={cls.family}" in message and "2 source(s) (male, female)" in message
    assert "batches with 3 source signals" in message
    with pytest.raises(LightningSepError, match="no per-source"):
        model.training_step((mixture, torch.randn(2, 4000)), 0)


def test_fit_refuses_a_datamodule_with_other_targets(tmp_path):
    model = NAE(front_end=FE, targets=["male", "female"], rank=4)
    with pytest.raises(LightningSepError, match=r"male, female.*\['vocals'\] \(1\)"):
        easy_trainer(2, tmp_path).fit(model, easy_datamodule(2, targets=["vocals"]))
    assert not bool(model.fitted)  # refused before anything was computed


def test_a_single_vocals_target_is_completed_and_trains_on_the_complement(tmp_path):
    torch.manual_seed(0)
    model = NAE(front_end=FE, targets=["vocals"], rank=8, val_separation_iterations=20)
    assert model.targets == ["vocals", "accompaniment"] and model.data_targets == ["vocals"]
    assert set(model.models) == {"vocals", "accompaniment"}
    mixture, sources = easy_sources(4, 2)
    mix, completed = model.source_signals((mixture, sources[:, :1]))
    assert torch.equal(completed[:, 0], sources[:, 0])
    assert torch.allclose(completed[:, 1], mixture - sources[:, 0])  # accompaniment = mixture - vocals
    trainer = easy_trainer(40, tmp_path)
    trainer.fit(model, easy_datamodule(40, targets=["vocals"]))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert math.isfinite(metrics["train/loss"]) and "val/sdr" in metrics, metrics
    assert "val/sdr/vocals" not in metrics  # one target: no per-target breakdown
    model.eval()
    with torch.no_grad():
        estimates = model.estimate_magnitudes(model.spectrogram(mixture)[0], 200)
    assert estimates.shape[1] == 2
    # the checkpoint keeps the data's single target and completes it again
    path = tmp_path / "vocals.ckpt"
    trainer.save_checkpoint(path)
    loaded = NAE.load_from_checkpoint(path, weights_only=True)
    assert loaded.hparams.targets == ["vocals"] and loaded.targets == ["vocals", "accompaniment"]


# -- the real entry point ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_nae_on_timit_through_the_cli_beats_the_mixture_baseline():
    from lightning_sep.cli import run

    # conf/model/nae.yaml validates every 5 epochs (the separation is the costly part): validate this one
    cli = run(["fit", *config_args("nae", data="timit"), "--trainer.max_epochs", "1",
               "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false",
               "--trainer.enable_model_summary", "false", "--model.init_args.val_separation_iterations", "100"])
    m = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert type(cli.model) is NAE and cli.model.targets == ["male", "female"]
    # measured: val/sdr +6.1 dB over the mixture after one epoch and a 100-iteration separation
    assert m["val/sdr"] > m["val/sdr_mixture"] + 2.0, m
    assert m["val/sdr_improvement"] > 2.0 and m["val/separation_kl"] > 0
