"""Supervised KL-NMF, the classical anchor of the per-source families (``MODEL=nmf``).

Paper ``cae-nae-rcae-venkataramani-2017`` (slides "Learning an NMF model", "NMF in action"):
``X = W H`` with non-negative bases ``W`` (``F x K``) and activations ``H`` (``K x T``), learned by
the multiplicative updates of the generalised KL divergence (Lee & Seung 2001)::

    H <- H * (W^T (X / WH)) / (W^T 1 + lambda)        W <- W * ((X / WH) H^T) / (1 H^T)

* **Training**, per source, on its clean magnitudes: each batch's activations are fitted with
  ``inner_iterations`` updates of ``H`` (``W`` fixed), then ``W`` takes one update from the batch
  (mini-batch multiplicative updates, Serizel, Essid & Richard, MLSP 2016) and its columns are
  scaled to unit sum.  The trainer's epochs and batches are the passes over the data.
* **Separation**: the bases of all sources side by side, ``W = [W_1 ... W_S]``, stay fixed and the
  activations of the mixture are estimated by ``separation_iterations`` updates of ``H``; each
  source's share ``W_i H_i`` masks the mixture (the same masking as the autoencoders).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from lightning_sep.models.losses import KL_EPS, generalized_kl
from lightning_sep.models.source_models import SourceModels


class NMFBases(nn.Module):
    """One source's bases ``W`` (``F x K``, columns of unit sum), learned by multiplicative updates,
    not by gradients.  ``forward`` fits activations to ``X`` ``(B, F, T)`` and returns ``(W H, H)``
    like the autoencoders.

    ``W`` is a parameter that formally requires a gradient only because DDP refuses to wrap a module
    without one; no gradient is ever computed for it (:meth:`NMF.training_step` runs without autograd,
    and the optimiser's learning rate is 0).  Under DDP the update's statistics are summed over the
    ranks (``reduce``), so every rank takes the update of the whole distributed batch and the bases
    stay identical on all of them."""

    def __init__(self, n_bins: int, rank: int, inner_iterations: int = 20, sparsity: float = 0.0):
        super().__init__()
        w = torch.rand(n_bins, rank) + 0.1
        self.W = nn.Parameter(w / w.sum(0, keepdim=True))
        self.inner_iterations, self.sparsity = int(inner_iterations), float(sparsity)

    def bases(self) -> list[Tensor]:
        return []  # columns of unit sum: an L1 penalty on them would be a constant

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = fit_activations(self.W, x, self.inner_iterations, self.sparsity)
        return torch.einsum("fk,bkt->bft", self.W, h), h

    @torch.no_grad()
    def update_bases(self, x: Tensor, h: Tensor, reduce: Optional[Callable[[Tensor], Tensor]] = None) -> None:
        """One multiplicative update of ``W`` from magnitudes ``x`` ``(B, F, T)`` and their activations.

        The numerator ``(X / WH) H^T`` and denominator ``1 H^T`` are sums over the batch; ``reduce``
        (the strategy's sum over DDP ranks) makes them the sums over every rank's batch."""
        w = self.W
        ratio = x / (torch.einsum("fk,bkt->bft", w, h) + KL_EPS)
        num = torch.einsum("bft,bkt->fk", ratio, h)
        den = h.sum(dim=(0, 2)).unsqueeze(0)
        if reduce is not None:
            num, den = reduce(num), reduce(den)
        w = w * num / (den + KL_EPS)
        self.W.copy_(w / (w.sum(0, keepdim=True) + KL_EPS))


@torch.no_grad()
def fit_activations(w: Tensor, x: Tensor, iterations: int, sparsity: float = 0.0, h: Optional[Tensor] = None) -> Tensor:
    """Activations ``H`` ``(B, K, T)`` of magnitudes ``x`` ``(B, F, T)`` on fixed bases ``w`` (``F x K``):
    ``iterations`` multiplicative KL updates from a flat start (module docstring)."""
    if h is None:
        h = x.mean(dim=1, keepdim=True).expand(x.shape[0], w.shape[1], x.shape[2]) / w.shape[1] + KL_EPS
    denom = w.sum(0)[None, :, None] + sparsity  # W^T 1 (+ lambda)
    for _ in range(iterations):
        ratio = x / (torch.einsum("fk,bkt->bft", w, h) + KL_EPS)
        h = h * torch.einsum("fk,bft->bkt", w, ratio) / denom
    return h


class NMF(SourceModels):
    """Supervised KL-NMF (``MODEL=nmf``; module docstring).

    Args:
        inner_iterations: activation updates per training batch before the bases' update.
        rank, sparsity_activations, separation_iterations, ...: as
            :class:`~lightning_sep.models.source_models.SourceModels` (``lr``, ``momentum`` and
            ``sparsity_weights`` are unused: the updates are multiplicative and the bases' columns
            have unit sum).
    """

    family = "nmf"
    optimises_inputs = False

    def __init__(self, inner_iterations: int = 20, separation_iterations: int = 500, **kwargs: Any):
        self.inner_iterations = int(inner_iterations)
        super().__init__(separation_iterations=separation_iterations, **kwargs)
        self.automatic_optimization = False

    def build_model(self, n_bins: int) -> nn.Module:
        return NMFBases(n_bins, self.hparams.rank, self.inner_iterations, self.hparams.sparsity_activations)

    @torch.no_grad()
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        _, sources = self.source_signals(batch)
        mags = self.source_magnitudes(sources)
        total = mags.new_zeros(())
        for j, s in enumerate(self.sources):
            model = self.models[s]
            x = mags[:, j]
            recon, h = model(x)
            total = total + generalized_kl(x, recon)
            model.update_bases(x, h, reduce=self._sum_over_ranks)
        self.optimizers().step()  # changes nothing (see configure_optimizers); Lightning counts the update
        loss = total  # summed over sources, as SourceModels.reconstruction_loss (validation)
        self.check_finite(loss, "the magnitudes may hold NaN or inf")
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(sources))
        return loss

    def _sum_over_ranks(self, t: Tensor) -> Tensor:
        """The sum of ``t`` over the DDP ranks (Lightning's strategy; ``t`` itself on one process)."""
        return self.trainer.strategy.reduce(t, reduce_op="sum")

    def configure_optimizers(self) -> Any:
        """The updates are multiplicative (:meth:`training_step`); an optimiser that changes nothing
        (learning rate 0, and the bases have no gradient) is stepped once per batch so that Lightning
        counts the updates like any family's (global step, checkpoints, logging intervals)."""
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def separate_normalized(self, mixture: Tensor, iterations: int) -> Tensor:
        w = torch.cat([self.models[s].W for s in self.sources], dim=1)  # (F, S K)
        h = fit_activations(w, mixture, iterations, self.hparams.sparsity_activations)
        k = self.hparams.rank
        outputs = torch.stack([torch.einsum("fk,bkt->bft", w[:, j * k:(j + 1) * k], h[:, j * k:(j + 1) * k])
                               for j in range(len(self.sources))], dim=1)
        return self.explained(mixture, outputs)
