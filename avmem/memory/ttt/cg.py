"""Batched conjugate gradient with a per-task gamma early stop and no host synchronisation.

One task is one (batch, head) pair: CG runs independently per task on the fast-weight vector. The
loop always runs ``iters`` iterations; a stopped task gets step size 0 from then on (masks instead of
``break``), so the solver can be compiled or captured in a CUDA graph. Stop decisions are detached,
exactly as in the official code; gradients flow through alpha, beta and the curvature products.

Two stop rules (Algorithm 1 of seed 001 keeps the iterate before the indicator breaks monotonicity):

* :func:`cg_official` reproduces ``cg_mlp_ES_optimised`` (reference §3.3): indicator
  ``sum_i alpha_i p_i^T b / sqrt(sum_i rho_i)`` with rho_i = r_i^T r_i, checked from the second
  iteration on; all tasks stop once >= 75 % of them have stopped.
* :func:`cg_textbook` uses gamma(x) = b^T x / sqrt(x^T G x), with x^T G x = sum_i alpha_i rho_i,
  and stops each task on its own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .fast_mlp import FastWeights

MatVec = Callable[[FastWeights], FastWeights]

OFFICIAL_STOP_FRACTION = 0.75


def _finite_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den where that is finite, else 0 (the official ``nan_to_num`` of a quotient).

    Written with two ``where`` so that gradients of the discarded entries are exactly zero.
    """
    with torch.no_grad():
        ok = torch.isfinite(num / den)
    safe_den = torch.where(ok, den, torch.ones_like(den))
    return torch.where(ok, num / safe_den, torch.zeros_like(num))


def _cg(matvec: MatVec, b: FastWeights, iters: int, official: bool) -> FastWeights:
    x = b.map(torch.zeros_like)
    r = b
    p = b
    rs = r.dot(r)
    mask = torch.ones_like(rs)
    active = torch.ones((), dtype=rs.dtype, device=rs.device)
    xg = den = indicator = None
    for k in range(iters):
        ap = matvec(p)
        p_ap = p.dot(ap)
        alpha = _finite_div(rs, p_ap)
        with torch.no_grad():
            d_xg = torch.nan_to_num(p.dot(b) * alpha, nan=0.0, posinf=0.0, neginf=0.0)
            d_den = torch.nan_to_num(rs if official else alpha * rs, nan=0.0, posinf=0.0, neginf=0.0)
            if k == 0:
                xg, den = d_xg, d_den
            else:
                xg = xg + d_xg * mask
                den = den + d_den * mask
                new_indicator = xg / den.sqrt()
                mask = mask * (new_indicator > indicator).to(mask.dtype)
            indicator = xg / den.sqrt()
        step = alpha * (mask * active)
        x = x.axpy(step, p)
        r = r.axpy(-step, ap)
        new_rs = r.dot(r)
        beta = _finite_div(new_rs, rs)
        p = r.axpy(beta, p)
        rs = new_rs
        if official:
            with torch.no_grad():
                stopped = (mask == 0).to(rs.dtype).mean()
                active = active * (stopped < OFFICIAL_STOP_FRACTION).to(rs.dtype)
    return x


def cg_official(matvec: MatVec, b: FastWeights, iters: int) -> FastWeights:
    """Approximately solve G x = b per task with the official indicator and 75 % rule."""
    return _cg(matvec, b, iters, official=True)


def cg_textbook(matvec: MatVec, b: FastWeights, iters: int) -> FastWeights:
    """Approximately solve G x = b per task with gamma = b^T x / sqrt(x^T G x), per-task stop."""
    return _cg(matvec, b, iters, official=False)
