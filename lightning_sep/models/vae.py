"""Mixture-to-source variational autoencoders: the VAE and the deep VAE, with a confidence score.

Paper ``vae-separation-pandey`` Secs. 2-4 and the authors' code (``../shared/notes/reference-models.md``):

* One VAE per source maps a *mixture* segment of ``C`` adjacent magnitude frames (17 by default,
  the paper's best "batch size", Table 1), flattened to ``C x F``, to the same segment of that
  source.  Encoder ``[C F, hidden..., K]`` with ReLU, giving the posterior ``q(z|Y) =
  N(mu, diag(sigma^2))``; decoder ``[K, ...hidden, C F]`` with ReLU, giving the Gaussian likelihood
  ``p(S|z) = N(mu_S, diag(sigma_S^2))`` (Eq. (4)).  VAE: hidden ``[128]``, K = 64 ("[513 128 64]");
  deep VAE: ``[256, 192, 128]`` ("[513 256 192 128 64]", Table 2).
* Training maximises the ELBO with one reparameterised sample (Eq. (8), L = 1):
  ``-log p(S|z) + KL(q(z|Y) || N(0, I))``, both in closed form
  (:mod:`~lightning_sep.models.losses`); the authors' code drops the likelihood's log-variance
  term and mis-signs its KL, which is not reproduced.  The loss is reported per spectrogram element.
* At test time ``z = mu``; segments are taken every ``segment_hop`` frames (default ``C``: disjoint)
  and overlapping estimates are averaged.
* **Confidence** (Sec. 4.3, Fig. 5): the average posterior variance ``mean(sigma^2)`` over latent
  dimensions and segments of an input; lower = more confident.  Every separation records it
  (``separation_stats``); validation logs it; ``make confidence`` draws it against the input SNR.

:class:`SegmentAutoencoder` (``MODEL=ae``) is the same network without the variational part
(deterministic code, MSE loss): the "autoencoder of the same size" the paper compares against.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_sep.errors import LightningSepError
from lightning_sep.models.base import MixtureToTarget
from lightning_sep.models.losses import gaussian_nll, kl_to_standard_normal
from lightning_sep.transforms import frame_segments, overlap_average


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers)


class VAENet(nn.Module):
    """Gaussian encoder and decoder MLPs: ``(..., n) -> (S mean, S log-variance, z mean, z log-variance)``.

    Args:
        n: input and output size (``C x F``).
        hidden_sizes: the encoder's hidden layers (the decoder mirrors them).
        latent_size: K.
        min_logvar: lower bound of the likelihood's log-variance, applied smoothly
            (``min + softplus(raw - min)``), so silent bins cannot drive the likelihood to infinity.
        variational: False = a plain autoencoder (deterministic code ``z = mu``, no variances).
    """

    def __init__(self, n: int, hidden_sizes: Sequence[int], latent_size: int, min_logvar: float = -6.0,
                 variational: bool = True):
        super().__init__()
        hidden = list(hidden_sizes)
        self.encoder = _mlp([n, *hidden])
        self.z_mean = nn.Linear(hidden[-1] if hidden else n, latent_size)
        self.z_logvar = nn.Linear(hidden[-1] if hidden else n, latent_size) if variational else None
        self.decoder = _mlp([latent_size, *hidden[::-1]])
        self.x_mean = nn.Linear(hidden[0] if hidden else latent_size, n)
        self.x_logvar = nn.Linear(hidden[0] if hidden else latent_size, n) if variational else None
        self.min_logvar = float(min_logvar)

    def encode(self, y: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        e = self.encoder(y)
        return self.z_mean(e), None if self.z_logvar is None else self.z_logvar(e)

    def decode(self, z: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        d = self.decoder(z)
        if self.x_logvar is None:
            return self.x_mean(d), None
        return self.x_mean(d), self.min_logvar + F.softplus(self.x_logvar(d) - self.min_logvar)

    def forward(self, y: Tensor, sample: bool = False) -> tuple[Tensor, Optional[Tensor], Tensor, Optional[Tensor]]:
        mu, logvar = self.encode(y)
        z = mu
        if sample and logvar is not None:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        x_mu, x_logvar = self.decode(z)
        return x_mu, x_logvar, mu, logvar


def negative_elbo(target: Tensor, x_mu: Tensor, x_logvar: Tensor, mu: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
    """Per example (summed over its elements): ``-log p(S|z)`` and ``KL(q(z|Y) || N(0, I))``."""
    return gaussian_nll(target, x_mu, x_logvar).sum(-1), kl_to_standard_normal(mu, logvar).sum(-1)


class VAE(MixtureToTarget):
    """The VAE of paper ``vae-separation-pandey`` (``MODEL=vae``; module docstring).

    Args:
        hidden_sizes: encoder hidden layers (paper: ``[128]``; the deep VAE ``[256, 192, 128]``).
        latent_size: K (paper: 64, best of 16..512, Fig. 4).
        segment_frames: C, frames per input/output segment (paper: 17, Table 1).
        segment_hop: frames between segments at separation (default C: disjoint segments).
        min_logvar: lower bound of the likelihood's log-variance (normalised magnitudes).
        lr: Adam (authors' code: 1e-3); the rest as :class:`~lightning_sep.models.base.MixtureToTarget`.
    """

    family = "vae"
    variational = True

    def __init__(
        self,
        hidden_sizes: list[int] = [128],  # noqa: B006 - copied; a list default reads well in the CLI
        latent_size: int = 64,
        segment_frames: int = 17,
        segment_hop: Optional[int] = None,
        min_logvar: float = -6.0,
        lr: float = 1e-3,
        **kwargs: Any,
    ):
        if int(latent_size) < 1 or int(segment_frames) < 1 or any(int(h) < 1 for h in hidden_sizes):
            raise LightningSepError(
                f"latent_size={latent_size}, segment_frames={segment_frames} and hidden_sizes={hidden_sizes} "
                "must be positive.")
        if segment_hop is not None and not 1 <= int(segment_hop) <= int(segment_frames):
            raise LightningSepError(f"segment_hop={segment_hop} must be in 1..segment_frames={segment_frames}.")
        if kwargs.get("context_frames"):
            raise LightningSepError("The VAE sees segment_frames adjacent frames already: leave context_frames at 0.")
        self.hidden_sizes, self.latent_size = [int(h) for h in hidden_sizes], int(latent_size)
        self.segment_frames = int(segment_frames)
        self.segment_hop = int(segment_hop or segment_frames)
        self.min_logvar = float(min_logvar)
        super().__init__(lr=lr, **kwargs)

    def build_network(self, n_in: int, n_bins: int) -> nn.Module:
        n = n_bins * self.segment_frames
        return VAENet(n, self.hidden_sizes, self.latent_size, self.min_logvar, variational=self.variational)

    # -- segments -------------------------------------------------------------------------------
    def _segments(self, x: Tensor, hop: int) -> Tensor:
        return frame_segments(x, self.segment_frames, hop)

    def _unsegment(self, segs: Tensor, frames: int, hop: int) -> Tensor:
        return overlap_average(segs, self.front_end.n_bins, self.segment_frames, hop, frames)

    def _estimate_normalized(self, x: Tensor) -> Tensor:
        """Normalised mixture ``(B, F, T)`` to each target's estimate ``(B, S, F, T)`` with ``z = mu``;
        records the average posterior variance per target in :attr:`separation_stats`."""
        segs = self._segments(x, self.segment_hop)
        outs, stats = [], {}
        for t in self.targets:
            x_mu, _, _, logvar = self.networks[t](segs)
            outs.append(self._unsegment(x_mu, x.shape[-1], self.segment_hop))
            if logvar is not None:
                stats[f"posterior_variance/{t}"] = float(torch.exp(logvar.detach()).mean())
        if stats:
            stats["posterior_variance"] = sum(stats.values()) / len(stats)
        self.separation_stats = stats
        return torch.stack(outs, dim=1)

    # -- training -------------------------------------------------------------------------------
    def common_step(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        mixture, targets = self.check_batch(batch)
        mix_mag, mix_phase = self.spectrogram(mixture)
        tgt_mag, _ = self.spectrogram(targets)  # (B, S, F, T)
        x, s = self.normalize(mix_mag), self.normalize(tgt_mag)
        frames = x.shape[-1]
        hop = self.segment_frames if self.training else self.segment_hop
        y = self._segments(x, hop)  # (B, N, C F)
        losses, estimates, variances = [], [], []
        for j, t in enumerate(self.targets):
            target = self._segments(s[:, j], hop)
            x_mu, x_logvar, mu, logvar = self.networks[t](y, sample=self.training)
            if self.variational:
                nll, kl = negative_elbo(target, x_mu, x_logvar, mu, logvar)
                losses.append((nll + kl).mean() / target.shape[-1])
                variances.append(torch.exp(logvar.detach()).mean())
            else:
                losses.append(F.mse_loss(x_mu, target))
            estimates.append(self._unsegment(x_mu, frames, hop))
        out = {"loss": sum(losses) / len(losses), "estimate": torch.stack(estimates, dim=1), "mix_phase": mix_phase}
        if variances:
            out["posterior_variance"] = sum(variances) / len(variances)
        return out


class DeepVAE(VAE):
    """The deep VAE (``MODEL=deep_vae``): encoder ``[C F, 256, 192, 128, 64]`` (paper Table 2)."""

    family = "deep_vae"

    def __init__(self, hidden_sizes: list[int] = [256, 192, 128], **kwargs: Any):  # noqa: B006
        super().__init__(hidden_sizes=hidden_sizes, **kwargs)


class SegmentAutoencoder(VAE):
    """The plain autoencoder of the VAE's size (``MODEL=ae``): deterministic code, MSE loss; the
    baseline the VAE paper compares against (Table 3, "Autoencoders")."""

    family = "ae"
    variational = False
