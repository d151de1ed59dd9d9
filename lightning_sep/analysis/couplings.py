"""The neural couplings algorithm (NCA): a linear map that approximates what a trained model does.

Paper ``dae-skipfilter-nca-mimilakis`` Sec. 3 and 4 (Mimilakis, Drossos, Cano & Schuller). For
a model whose output (after its last ReLU) is ``y = f(x)`` -- the target magnitude spectrum for
the DAE and MSS-DAE, the *mask* for the skip-filter -- the NCA finds a couplings matrix ``C``
(``N x N``) with ``y ~ C x`` over a batch of ``T`` adjacent test frames:

* **student** strategy, Eq. (15)-(16): ``C`` itself is learned (knowledge distillation with a linear
  student, no bias) by minimising ``||Y - X C^T||_1``;
* **compositional** strategy, Eq. (17)-(19): the model's frozen layers ``(W_i, b_i)`` are kept and
  one scaling matrix ``S_i`` per layer is learned,
  ``C = prod_i (W_i o ReLU((W_i (+) b_i) S_i^T))`` (``o`` the Hadamard product; ``(+)`` adds the
  bias vector to every column of ``W_i``, i.e. ``b_i[j]`` to row ``j``), with the same L1 objective;
* baselines: the **linear composition** ``W_L ... W_2 W_1`` (Eqs. (11)-(13), the map if the model
  had no ReLU and no bias) and the **identity** (the mixture itself);
* :func:`tod_ratio`, the trace-to-off-diagonal ratio of Eq. (22) (small = the map uses the
  inter-frequency structure, large = a scalar filter, i.e. a mask).

Layers are PyTorch's ``nn.Linear`` convention: ``W`` is ``(out, in)`` and ``y = W x + b``; a batch
of frames is ``X`` of shape ``(T, N)`` and its image ``X C^T``.

The paper's equations are not in our copy of it (only their numbers); the formulas here follow
its text, the reference notes (``shared/notes/reference-models.md``) and the authors' code
(Js-Mim/nca_mss): Adam, lr ``1e-4``, Xavier-normal initialisation, 600 iterations by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from lightning_sep.errors import LightningSepError

#: the NCA strategies (paper Sec. 3) and the baselines (Sec. 4.2), in table order
STRATEGIES: tuple[str, ...] = ("student", "compositional")
BASELINES: tuple[str, ...] = ("linear_composition", "identity")


# -- measures ---------------------------------------------------------------------------------------------
def tod_ratio(matrix: Tensor) -> float:
    """Trace-to-off-diagonal ratio (TOD-R), paper Eq. (22).

    ``tr(|C|) / ((1/N) ||(1 - I) o C||_1)``: the summed magnitude of the main diagonal over the
    summed magnitude of the off-diagonal elements, the latter divided by ``N`` because it has
    ``N - 1`` times as many elements (the paper's "scaling ... due to the expected high values of the
    denominator"; its exact constant is not in our copy of the paper -- with ``1/N`` an isotropic
    matrix such as all-ones scores ``N / (N - 1) ~ 1``). The absolute value is taken before the
    trace, as in the paper. Identity and any diagonal matrix: ``inf``; a zero matrix: ``nan``.
    """
    c = matrix.detach().double().abs()
    if c.dim() != 2 or c.shape[0] != c.shape[1]:
        raise LightningSepError(f"TOD-R needs a square couplings matrix, got shape {tuple(matrix.shape)}.")
    n = c.shape[0]
    trace = torch.diagonal(c).sum()
    off = (c.sum() - trace) / n
    if off == 0:
        return float("nan") if trace == 0 else float("inf")
    return float(trace / off)


def snr_db(reference: Tensor, estimate: Tensor) -> float:
    """``10 log10(||ref||^2 / ||ref - est||^2)`` in dB over the whole batch (paper Sec. 4.2)."""
    ref, est = reference.detach().double(), estimate.detach().double()
    err = (ref - est).pow(2).sum()
    energy = ref.pow(2).sum()
    if energy == 0:
        return float("nan")
    if err == 0:
        return float("inf")
    return float(10 * torch.log10(energy / err))


# -- the model's layers -------------------------------------------------------------------------------------
@dataclass
class CoupledLayers:
    """The affine layers of one target's network, input first, and what the NCA approximates.

    ``masks``: the network's output is a mask applied to the mixture (skip-filter): the NCA
    approximates the mask, and its SNRs are computed after masking (paper Sec. 4.2).
    """

    weights: list[Tensor]  # (out, in) each
    biases: list[Tensor]  # (out,) each
    masks: bool

    @property
    def n_bins(self) -> int:
        return int(self.weights[0].shape[1])


def coupled_layers(network: nn.Module, family: str) -> CoupledLayers:
    """The linear layers of a DAE, MSS-DAE or skip-filter network, checked to be square ``N -> N``.

    The NCA composes the layers into one ``N x N`` couplings matrix (Eq. (14)), so every layer must
    map ``N`` bins to ``N`` (the paper's "dimensionality preserved through the layers") and the input
    must be one frame (no context frames).
    """
    from lightning_sep.models.dae import DenoisingAutoencoderNet
    from lightning_sep.models.skipfilter import SkipFilterNet

    masks = isinstance(network, SkipFilterNet)
    net = network.masker if masks else network
    if not isinstance(net, DenoisingAutoencoderNet):
        raise LightningSepError(
            f"MODEL={family}: the neural couplings analysis (paper dae-skipfilter-nca-mimilakis Sec. 3) covers "
            "feed-forward ReLU networks of square layers: MODEL=dae, mss_dae or skipfilter.")
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    shapes = [tuple(m.weight.shape) for m in linears]
    n = shapes[-1][0]
    if any(s != (n, n) for s in shapes):
        raise LightningSepError(
            f"MODEL={family}: its layers are {' -> '.join(str(s[1]) for s in shapes)} -> {n} units, not square "
            f"{n} -> {n}: the NCA composes them into one N x N couplings matrix (paper Sec. 3), so it needs "
            "hidden_size: null and context_frames: 0 (the paper's models). Train one with those settings.")
    weights = [m.weight.detach() for m in linears]
    biases = [m.bias.detach() if m.bias is not None else torch.zeros(n, device=m.weight.device) for m in linears]
    return CoupledLayers(weights, biases, masks)


def linear_composition(weights: Sequence[Tensor], masks: Optional[Sequence[Tensor]] = None) -> Tensor:
    """``(W_L o D_L) ... (W_1 o D_1)``: with ``masks`` None the plain linear composition of Eqs.
    (11)-(13); with the compositional strategy's ``D_i`` its couplings matrix, Eq. (17)."""
    out: Optional[Tensor] = None
    for i, w in enumerate(weights):
        layer = w if masks is None else w * masks[i]
        out = layer if out is None else layer @ out
    assert out is not None, "no layers"
    return out


# -- the strategies ----------------------------------------------------------------------------------------
class StudentCouplings(nn.Module):
    """Student strategy, Eq. (15): ``Y ~ X C^T`` with ``C`` (``N x N``) learned, Xavier-normal start."""

    def __init__(self, n_bins: int):
        super().__init__()
        self.couplings = nn.Parameter(torch.empty(n_bins, n_bins))
        nn.init.xavier_normal_(self.couplings)

    def matrix(self) -> Tensor:
        return self.couplings

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.couplings.T


class CompositionalCouplings(nn.Module):
    """Compositional strategy, Eqs. (17)-(19): the model's frozen ``(W_i, b_i)`` and a learned
    scaling ``S_i`` per layer; ``D_i = ReLU((W_i (+) b_i) S_i^T)``, ``C = prod_i (W_i o D_i)``.

    The forward pass applies the layers to the frames one after another (``T N^2`` per layer)
    instead of forming ``C`` (``N^3``); :meth:`matrix` forms it.
    """

    def __init__(self, layers: CoupledLayers, scalings: Optional[Sequence[Tensor]] = None):
        super().__init__()
        for i, (w, b) in enumerate(zip(layers.weights, layers.biases)):
            self.register_buffer(f"weight{i}", w.detach().clone())
            self.register_buffer(f"shifted{i}", (w + b[:, None]).detach().clone())  # W (+) b, Eq. (19)
        self.n_layers = len(layers.weights)
        self.scalings = nn.ParameterList()
        for i, w in enumerate(layers.weights):
            s = torch.empty(w.shape[1], w.shape[1], device=w.device, dtype=w.dtype)
            if scalings is None:
                nn.init.xavier_normal_(s)
            else:
                s.copy_(scalings[i])
            self.scalings.append(nn.Parameter(s))

    def masks(self) -> list[Tensor]:
        """The ``D_i`` of Eq. (18)."""
        return [torch.relu(getattr(self, f"shifted{i}") @ self.scalings[i].T) for i in range(self.n_layers)]

    def scaled_weights(self) -> list[Tensor]:
        return [getattr(self, f"weight{i}") * d for i, d in enumerate(self.masks())]

    def matrix(self) -> Tensor:
        return linear_composition(self.scaled_weights())

    def forward(self, x: Tensor) -> Tensor:
        for w in self.scaled_weights():
            x = x @ w.T
        return x


@dataclass
class Fit:
    """A fitted couplings matrix and its last L1 error (summed over the batch, Eq. (15))."""

    matrix: Tensor
    l1: float


def fit_couplings(
    strategy: nn.Module, x: Tensor, y: Tensor, iterations: int = 600, lr: float = 1e-4,
) -> Fit:
    """Algorithm 1: minimise ``||Y - strategy(X)||_1`` by Adam (the paper's solver and lr).

    ``x``, ``y``: ``(T, N)`` batches of adjacent frames: the model's input and its output (mask for
    the skip-filter). Only the strategy's parameters are trained.
    """
    if iterations < 1:
        raise LightningSepError(f"--iterations {iterations}: the NCA needs at least one iteration.")
    x, y = x.detach(), y.detach()
    opt = torch.optim.Adam(strategy.parameters(), lr=lr)
    for _ in range(iterations):
        opt.zero_grad(set_to_none=True)
        loss = (y - strategy(x)).abs().sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = float((y - strategy(x)).abs().sum())
        return Fit(strategy.matrix().detach().clone(), last)
