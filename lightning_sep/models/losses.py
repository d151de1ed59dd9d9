"""The training objectives of the generative families, written once.

* :func:`generalized_kl` -- the generalised Kullback-Leibler divergence of NMF and of the
  non-negative / convolutional / recurrent autoencoders (paper ``cae-nae-rcae-venkataramani-2017``,
  slides "NAE in action" and "CCAE in action": ``KL(X || X^) + lambda |H|_1 + mu |W|_1``).
* :func:`gaussian_nll` and :func:`kl_to_standard_normal` -- the two terms of the negative ELBO of
  the VAE (paper ``vae-separation-pandey`` Eqs. (4), (3) and (8)), computed correctly: the
  likelihood keeps its log-variance term and the KL is the closed form against ``N(0, I)`` (the
  authors' code drops the first and mis-signs the second, ``../shared/notes/reference-models.md``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: the guard of the authors' code inside the logarithm and the division
KL_EPS = 1e-16


def generalized_kl(target: Tensor, estimate: Tensor, eps: float = KL_EPS, reduction: str = "mean") -> Tensor:
    """``sum(Y log(Y / Y^) - Y + Y^)`` over all elements (``reduction="sum"``), or its mean per element.

    ``Y`` (``target``) and ``Y^`` (``estimate``) are non-negative magnitudes of the same shape; the
    divergence is 0 exactly when they are equal, and positively homogeneous (``KL(aY || aY^) = a
    KL(Y || Y^)``), so a global scaling of the magnitudes only rescales it.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction={reduction!r}: mean, sum or none")
    d = target * torch.log((target + eps) / (estimate + eps)) - target + estimate
    if reduction == "none":
        return d
    return d.sum() if reduction == "sum" else d.mean()


def gaussian_nll(x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """``-log N(x; mean, exp(logvar))`` per element: ``0.5 (log 2 pi + logvar + (x - mean)^2 / exp(logvar))``
    (the likelihood of paper Eq. (4), a diagonal Gaussian)."""
    return 0.5 * (math.log(2 * math.pi) + logvar + (x - mean).pow(2) * torch.exp(-logvar))


def kl_to_standard_normal(mean: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mean, exp(logvar)) || N(0, I))`` per latent dimension: ``-0.5 (1 + logvar - mean^2 - exp(logvar))``
    (the prior of paper Eq. (3))."""
    return -0.5 * (1 + logvar - mean.pow(2) - torch.exp(logvar))
