"""Fast-weight update rules behind one interface: ``rule(grad, curvature) -> delta`` (W <- W - delta).

``grad`` is the eta-weighted gradient of the mini-batch's reconstruction loss (eta acting as per-token
loss weights, seed 001 App. A.1); ``curvature`` is the mini-batch's Gauss-Newton operator, which only
the Hessian-free rule uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .cg import MatVec, cg_official, cg_textbook
from .config import TTTConfig
from .fast_mlp import FastWeights, KeyCache, gauss_newton_product

CGSolver = Callable[[MatVec, FastWeights, int], FastWeights]


@dataclass
class Curvature:
    """Gauss-Newton operator of one mini-batch.

    Attributes:
        cache: key activations (linearisation point).
        token_weight: per-token curvature weights [B,H,N,1], or None for all ones (official).
        ln_gamma: LN weight [H,1,d] for B_LN, None for B_MLP.
        damping: added multiple of the identity.
    """

    cache: KeyCache
    token_weight: Tensor | None
    ln_gamma: Tensor | None
    damping: float

    def __call__(self, v: FastWeights) -> FastWeights:
        return gauss_newton_product(self.cache, v, self.token_weight, self.ln_gamma, self.damping)


class UpdateRule(nn.Module):
    """Maps the eta-weighted gradient of a mini-batch to the fast-weight step."""

    def forward(self, grad: FastWeights, curvature: Curvature) -> FastWeights:  # pragma: no cover
        raise NotImplementedError


class SGDUpdate(UpdateRule):
    """TTT_SGD: the eta-weighted gradient itself (eq. 5; the released script's ``cg_max_iter=0``)."""

    def forward(self, grad: FastWeights, curvature: Curvature) -> FastWeights:
        return grad


class HFUpdate(UpdateRule):
    """TTT_HF (Algorithm 1): at most ``iters`` iterations of ``solve`` on G x = grad.

    ``solve`` is :func:`~avmem.memory.ttt.cg.cg_official` (released indicator and 75 % rule) or
    :func:`~avmem.memory.ttt.cg.cg_textbook`. With ``iters=0`` the step is the gradient, as in the
    official code.
    """

    def __init__(self, iters: int, solve: CGSolver) -> None:
        super().__init__()
        self.iters = iters
        self.solve = solve

    def forward(self, grad: FastWeights, curvature: Curvature) -> FastWeights:
        if self.iters == 0:
            return grad
        return self.solve(curvature, grad, self.iters)

    def extra_repr(self) -> str:
        return f"iters={self.iters}, solve={self.solve.__name__}"


def newton_schulz(g: Tensor, steps: int) -> Tensor:
    """Quintic Newton-Schulz orthogonalisation of a batch of matrices [..., m, n].

    Normalises by the Frobenius norm, then iterates X <- aX + (bA + cA^2)X with A = X X^T and the
    coefficients (3.4445, -4.7750, 2.0315) used by LaCT / Muon, on the wide orientation.
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    transpose = g.shape[-2] > g.shape[-1]
    x = g.transpose(-2, -1) if transpose else g
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = x @ x.transpose(-2, -1)
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.transpose(-2, -1) if transpose else x


class MuonUpdate(UpdateRule):
    """TTT_Muon (seed 001 App. A.2.1): delta W = eta_Muon * NS5(grad W) for W1 and W2.

    eta_Muon is a learnable per-head step size (stored as its log); the biases take the SGD step.
    """

    def __init__(self, num_heads: int, step_init: float, ns_steps: int) -> None:
        super().__init__()
        self.ns_steps = ns_steps
        self.log_step = nn.Parameter(torch.full((num_heads,), math.log(step_init)))

    def forward(self, grad: FastWeights, curvature: Curvature) -> FastWeights:
        step = self.log_step.exp().to(grad.W1.dtype).view(1, -1, 1, 1)
        return FastWeights(
            W1=step * newton_schulz(grad.W1, self.ns_steps),
            b1=grad.b1,
            W2=step * newton_schulz(grad.W2, self.ns_steps),
            b2=grad.b2,
        )

    def extra_repr(self) -> str:
        return f"ns_steps={self.ns_steps}"


def make_update_rule(cfg: TTTConfig) -> UpdateRule:
    """The update rule named by ``cfg.update``."""
    if cfg.update == "sgd":
        return SGDUpdate()
    if cfg.update == "hf":
        return HFUpdate(cfg.cg_iters, cg_official if cfg.compat == "official" else cg_textbook)
    return MuonUpdate(cfg.num_heads, cfg.muon_step_init, cfg.ns_steps)
