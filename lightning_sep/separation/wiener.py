"""The multichannel Wiener post-filter (as in open-unmix's ``filtering.wiener`` and ``norbert``).

Every source ``j`` is modelled as a zero-mean complex Gaussian in each time-frequency bin with a
power spectral density ``v_j(f, t)`` and a spatial covariance matrix ``R_j(f)`` (``C x C`` for ``C``
channels).  Starting from the separator's magnitudes with the mixture phase, each iteration of
expectation-maximisation (Duong, Vincent & Gribonval 2010; Nugraha, Liutkus & Vincent 2016):

* ``v_j(f, t) = mean_c |y_jc(f, t)|^2``,
* ``R_j(f) = sum_t y_j(f, t) y_j(f, t)^H / sum_t v_j(f, t)``,
* ``y_j(f, t) = v_j R_j(f) [sum_k v_k R_k(f)]^-1 x(f, t)`` (the multichannel Wiener filter).

With ``residual=True`` a residual source ``x - sum_j y_j`` takes what the estimates do not explain
(needed when the targets do not add up to the mixture, e.g. a vocals-only model).
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def wiener(
    magnitudes: Tensor, mixture: Tensor, iterations: int = 1, residual: bool = False, eps: float = 1e-10
) -> Tensor:
    """Multichannel Wiener filtering of a mixture STFT from per-source magnitude estimates.

    Args:
        magnitudes: ``(J, C, F, T)`` non-negative magnitude estimates.
        mixture: ``(C, F, T)`` complex mixture STFT.
        iterations: EM iterations (0 = magnitudes with the mixture phase, unfiltered).
        residual: add a residual source ``mixture - sum(estimates)`` (returned last).
        eps: regularisation.

    Returns:
        ``(J [+ 1], C, F, T)`` complex estimates.
    """
    scale = max(float(mixture.abs().max()), 1e-8)
    x = (mixture / scale).to(torch.complex64)
    y = torch.polar((magnitudes / scale).float().clamp_min(0), x.angle().unsqueeze(0).expand_as(magnitudes))
    if residual:
        y = torch.cat([y, (x - y.sum(0)).unsqueeze(0)])
    n_channels = x.shape[0]
    eye = torch.eye(n_channels, dtype=x.dtype, device=x.device)
    for _ in range(iterations):
        v = (y.real**2 + y.imag**2).mean(dim=1)  # (J, F, T)
        # spatial covariance per source and frequency, normalised by the total PSD
        R = torch.einsum("jcft,jdft->jfcd", y, y.conj()) / (v.sum(-1)[..., None, None] + eps)  # (J, F, C, C)
        Cxx = torch.einsum("jft,jfcd->ftcd", v.to(x.dtype), R)  # (F, T, C, C)
        trace = Cxx.diagonal(dim1=-2, dim2=-1).real.sum(-1) / n_channels  # (F, T)
        Cxx = Cxx + (1e-6 * trace + eps)[..., None, None] * eye
        inv = torch.linalg.inv(Cxx)
        # y_j = v_j R_j inv x
        Rinvx = torch.einsum("jfcd,ftde,eft->jcft", R, inv, x)
        y = v.to(x.dtype).unsqueeze(1) * Rinvx
    return y * scale
