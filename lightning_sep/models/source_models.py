"""Per-source models that separate a mixture by optimisation: the shared machinery.

Paper ``cae-nae-rcae-venkataramani-2017`` (slides "CAE Source separation"), and what the authors'
code does (``../shared/notes/reference-models.md``):

1. **Training.** One model per source learns that source alone, from its clean magnitude
   spectrograms, by minimising the generalised KL divergence of its reconstruction
   (:func:`~lightning_sep.models.losses.generalized_kl`, plus the optional L1 sparsity terms
   ``lambda |H|_1`` and ``mu |W|_1``).  :class:`SourceModels` holds the models of every source of
   the mixture and trains them together, each on its own clean signal of the same batch.
2. **Separation.** The trained models are frozen; their *inputs* ``X_i`` become free tensors shaped
   like the mixture spectrogram, and ``KL(|M| || sum_i f_i(X_i))`` is minimised over them for N
   iterations (:func:`optimise_inputs`; RMSProp as in training, 4000 iterations = twice the
   training iterations).  NMF does the same with its activations and fixed bases.
3. **Masking.** ``x_i = ISTFT(X^_i / sum_k X^_k * |M| * exp(j angle M))``: each output's share of
   the mixture magnitude with the mixture phase (:func:`~lightning_sep.transforms.ratio_mask`).

The sources must add up to the mixture (the models explain it together): ``[male, female]``,
``[vocals, accompaniment]`` or MUSDB18's four stems.  Data with one target that has a known
complement (``vocals``, as ``DATA=musdb`` gives by default) gets the complement as the second
source, learned from ``mixture - target``.

Magnitudes are divided by the mean training-mixture magnitude (:attr:`SourceModels.scale`, fitted
once before training and kept in the checkpoint), so the networks see values of order 1; the KL
is positively homogeneous, so this only rescales the objective.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch import Tensor, nn

from lightning_sep.errors import LightningSepError
from lightning_sep.models.base import SpectrogramSeparator
from lightning_sep.models.losses import generalized_kl
from lightning_sep.transforms import ratio_mask, with_phase

#: a source model's forward: magnitudes ``(B, F, T)`` to its reconstruction ``(B, F, T)``
SourceFn = Callable[[Tensor], Tensor]


def complete_sources(targets: Sequence[str], family: str) -> list[str]:
    """The sources a per-source family models: ``targets`` when they add up to the mixture, a single
    target and its complement (``vocals`` -> ``accompaniment``, ``male`` <-> ``female``), else an error."""
    from lightning_sep.separation.separators import COMPLEMENTS, PARTITIONS

    targets = list(targets)
    if set(targets) in PARTITIONS and len(set(targets)) == len(targets):
        return targets
    if len(targets) == 1 and targets[0] in COMPLEMENTS:
        return [targets[0], COMPLEMENTS[targets[0]]]
    raise LightningSepError(
        f"MODEL={family} separates a mixture by explaining it as the sum of one model per source, so its targets "
        f"must add up to the mixture: [male, female], [vocals, accompaniment], [drums, bass, other, vocals] or a "
        f"single vocals/male/female target (its complement is added); got {targets}. "
        "Set them with ARGS='--data.init_args.targets [vocals,accompaniment]'."
    )


def optimise_inputs(
    models: Sequence[SourceFn],
    mixture: Tensor,
    iterations: int,
    lr: float = 1e-3,
    momentum: float = 0.7,
    init: Optional[Tensor] = None,
    trace: bool = False,
) -> tuple[Tensor, Optional[Tensor]]:
    """Separation by input optimisation (paper ``cae-nae-rcae-venkataramani-2017``, "CAE Source separation").

    Minimises ``KL(M || sum_i f_i(X_i))`` over free inputs ``X_i`` shaped like ``mixture`` ``M``
    ``(B, F, T)``, with the models frozen, by centred RMSProp (the authors' optimiser and defaults);
    the batch items are independent problems (their losses are summed).

    Args:
        models: one function per source, ``(B, F, T) -> (B, F, T)`` non-negative.
        mixture: non-negative mixture magnitudes (in the models' scale).
        iterations: optimisation steps (paper: 4000, twice the training iterations).
        init: the inputs' starting point ``(S, B, F, T)`` (default: the mixture for every source).
        trace: also return the KL (mean per element) before each step, ``(iterations,)``.

    Returns:
        the models' outputs ``(B, S, F, T)`` at the optimised inputs, and the trace (or None).
    """
    if iterations < 0:
        raise LightningSepError(f"separation_iterations={iterations} must be >= 0.")
    with torch.inference_mode(False), torch.enable_grad():
        target = mixture.detach().clone()
        start = target.unsqueeze(0).expand(len(models), *target.shape) if init is None else init
        inputs = [x.detach().clone().requires_grad_(True) for x in start]
        opt = torch.optim.RMSprop(inputs, lr=lr, momentum=momentum, centered=True)
        losses = torch.empty(iterations) if trace else None
        for i in range(iterations):
            opt.zero_grad(set_to_none=True)
            total = sum(f(x) for f, x in zip(models, inputs))
            loss = generalized_kl(target, total, reduction="sum")
            loss.backward()
            opt.step()
            if losses is not None:
                losses[i] = loss.detach() / target.numel()
        with torch.no_grad():
            outputs = torch.stack([f(x) for f, x in zip(models, inputs)], dim=1)
    return outputs.detach(), losses


class frozen:
    """Context manager: the modules' parameters stop requiring gradients (inputs are optimised, not
    weights) and the modules run in training mode, which cuDNN's RNN backward needs (none of these
    models has dropout or batch statistics); both are restored on exit."""

    def __init__(self, modules: Sequence[nn.Module]):
        self.modules = list(modules)

    def __enter__(self) -> None:
        self.state = [([s.training for s in m.modules()], [p.requires_grad for p in m.parameters()]) for m in self.modules]
        for m in self.modules:
            m.train()
            m.requires_grad_(False)

    def __exit__(self, *exc: Any) -> None:
        for m, (modes, flags) in zip(self.modules, self.state):
            for s, training in zip(m.modules(), modes):
                s.training = training
            for p, flag in zip(m.parameters(), flags):
                p.requires_grad_(flag)


class SourceModels(SpectrogramSeparator):
    """One model per source, trained on the clean sources with the generalised KL; separation by optimisation.

    Args:
        front_end, targets: linked from the DataModule (see :func:`complete_sources` for the targets).
        rank: K, the latent channels (paper: swept 10..100, best 80).
        sparsity_activations: lambda, weight of ``|H|_1`` (paper's experiments: 0).
        sparsity_weights: mu, weight of the decoder bases' ``|W|_1`` (paper's experiments: 0).
        lr, momentum: centred RMSProp of training (authors' code: 1e-3, 0.7).
        separation_iterations: input-optimisation steps at separation (authors' code: 4000).
        separation_lr: the RMSProp learning rate of the input optimisation.
        val_separation_iterations: steps of the separation whose SDR is logged each validation
            (``val/sdr``; fewer than at test time, so a lower bound of it; 0 = loss only).
        early_stopping_patience: stop after this many validations without improvement of
            ``monitor`` (``None`` = train for ``max_epochs``, as the paper's fixed iteration count).
        monitor: ``val/loss`` (the KL of the clean validation sources, minimised) or ``val/sdr``.

    The loss of a batch is ``(sum_i KL(S_i || f_i(S_i)) + lambda |H_i|_1 + mu |W_i|_1) / (B F T)``:
    the paper's objective over the batch, per spectrogram element.
    """

    family = "source_models"
    #: the separation optimises the models' inputs (NMF overrides :meth:`separate_normalized`)
    optimises_inputs = True

    def __init__(
        self,
        front_end: Optional[dict] = None,
        targets: Optional[list[str]] = None,
        rank: int = 80,
        sparsity_activations: float = 0.0,
        sparsity_weights: float = 0.0,
        lr: float = 1e-3,
        momentum: float = 0.7,
        separation_iterations: int = 4000,
        separation_lr: float = 1e-3,
        val_separation_iterations: int = 200,
        early_stopping_patience: Optional[int] = None,
        monitor: str = "val/loss",
    ):
        super().__init__(front_end, targets)
        if rank < 1:
            raise LightningSepError(f"rank={rank} must be at least 1.")
        if sparsity_activations < 0 or sparsity_weights < 0:
            raise LightningSepError(
                f"sparsity_activations={sparsity_activations} and sparsity_weights={sparsity_weights} must be >= 0.")
        if separation_iterations < 0 or val_separation_iterations < 0:
            raise LightningSepError("separation_iterations and val_separation_iterations must be >= 0.")
        if monitor not in ("val/loss", "val/sdr"):
            raise LightningSepError(f"monitor={monitor!r}: val/loss or val/sdr.")
        self.sources = complete_sources(self.data_targets, self.family)
        self.targets = list(self.sources)
        self.save_hyperparameters(ignore=["front_end", "targets"])
        self.hparams["front_end"] = self.front_end.to_dict()
        self.hparams["targets"] = list(self.data_targets)
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.models = nn.ModuleDict({s: self.build_model(self.front_end.n_bins) for s in self.sources})

    # -- what a family defines -------------------------------------------------------------------
    def build_model(self, n_bins: int) -> nn.Module:
        """One source's model: ``forward(X (B, F, T)) -> (X^ (B, F, T), H (B, K, T'))`` and
        ``bases()`` (the decoder weights that ``mu |W|_1`` penalises)."""
        raise NotImplementedError

    # -- statistics before training ---------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        self.check_datamodule_targets()
        if not bool(self.fitted):
            total, count = 0.0, 0
            for mag in self.training_magnitudes(self.training_mixtures()):
                total += float(mag.double().sum())
                count += mag.numel()
            if not count or total <= 0:
                raise LightningSepError("The training mixtures are silent: there is nothing to learn the sources from.")
            self.scale.fill_(count / total)
            self.fitted.fill_(True)

    # -- the sources of a batch -------------------------------------------------------------------
    def source_signals(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """``(mixture (B, L), sources (B, S, L))``: the batch's targets, plus ``mixture - target``
        when the model completed a single target with its complement."""
        mixture, targets = self.check_batch(batch)
        if len(self.sources) > targets.shape[1]:
            targets = torch.cat([targets, (mixture - targets[:, 0]).unsqueeze(1)], dim=1)
        return mixture, targets

    def source_magnitudes(self, sources: Tensor) -> Tensor:
        """Clean source waveforms ``(B, S, L)`` to their scaled magnitudes ``(B, S, F, T)``."""
        return self.spectrogram(sources)[0] * self.scale

    def reconstruction_loss(self, magnitudes: Tensor) -> Tensor:
        """The batch loss (class docstring) for clean source magnitudes ``(B, S, F, T)`` (scaled)."""
        hp = self.hparams
        total = magnitudes.new_zeros(())
        for j, s in enumerate(self.sources):
            x = magnitudes[:, j]
            recon, h = self.models[s](x)
            total = total + generalized_kl(x, recon, reduction="sum")
            if hp.sparsity_activations:
                total = total + hp.sparsity_activations * h.abs().sum()
            if hp.sparsity_weights:
                total = total + hp.sparsity_weights * sum(w.abs().sum() for w in self.models[s].bases())
        return total / magnitudes[:, 0].numel()

    # -- training --------------------------------------------------------------------------------
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        _, sources = self.source_signals(batch)
        loss = self.reconstruction_loss(self.source_magnitudes(sources))
        self.check_finite(loss, f"lower the learning rate (lr={self.hparams.lr})")
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(sources))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.hparams.val_separation_iterations)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.hparams.separation_iterations)

    def _evaluate(self, batch: tuple[Tensor, Tensor], prefix: str, iterations: int) -> None:
        mixture, sources = self.source_signals(batch)
        loss = self.reconstruction_loss(self.source_magnitudes(sources))
        self.log(f"{prefix}/loss", loss, batch_size=len(mixture), sync_dist=True, prog_bar=True)
        if iterations:
            self.log_scores(prefix, self.validation_estimates(mixture, iterations), mixture, batch[1])
            if "kl" in self.separation_stats:
                self.log(f"{prefix}/separation_kl", self.separation_stats["kl"], batch_size=len(mixture), sync_dist=True)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        return torch.optim.RMSprop(self.parameters(), lr=hp.lr, momentum=hp.momentum, centered=True)

    def configure_callbacks(self) -> list:
        hp = self.hparams
        if hp.early_stopping_patience is None:
            return []
        return [EarlyStopping(monitor=hp.monitor, mode="min" if hp.monitor == "val/loss" else "max",
                              patience=hp.early_stopping_patience)]

    # -- separation ------------------------------------------------------------------------------
    def validation_estimates(self, mixture: Tensor, iterations: Optional[int] = None) -> Tensor:
        """Waveforms ``(B, L)`` to ``(B, S, L)`` by ``iterations`` steps of input optimisation (default: the
        validation's ``val_separation_iterations``, else ``separation_iterations``)."""
        if iterations is None:
            iterations = self.hparams.val_separation_iterations or self.hparams.separation_iterations
        mag, phase = self.spectrogram(mixture)
        est = self.estimate_magnitudes(mag, iterations)
        return self.istft(with_phase(est, phase.unsqueeze(1)), length=mixture.shape[-1])

    def estimate_magnitudes(self, mixture_magnitude: Tensor, iterations: Optional[int] = None) -> Tensor:
        """Mixture magnitudes ``(B, F, T)`` to each source's masked magnitude ``(B, S, F, T)``."""
        iterations = self.hparams.separation_iterations if iterations is None else int(iterations)
        outputs = self.separate_normalized(mixture_magnitude * self.scale, iterations)
        return ratio_mask(outputs, dim=1) * mixture_magnitude.unsqueeze(1)

    def explained(self, mixture: Tensor, outputs: Tensor) -> Tensor:
        """``outputs``, after recording how well they explain ``mixture`` together (``separation_stats["kl"]``,
        logged with every separation)."""
        self.separation_stats = {"kl": float(generalized_kl(mixture, outputs.sum(1)))}
        return outputs

    def separate_normalized(self, mixture: Tensor, iterations: int) -> Tensor:
        """The sources' model outputs ``(B, S, F, T)`` that explain the (scaled) mixture together."""
        models = [self.models[s] for s in self.sources]
        with frozen(models):
            outputs, _ = optimise_inputs([lambda x, m=m: m(x)[0] for m in models], mixture, iterations,
                                         lr=self.hparams.separation_lr, momentum=self.hparams.momentum)
        return self.explained(mixture, outputs)
