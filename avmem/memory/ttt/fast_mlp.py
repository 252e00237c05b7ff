"""The per-head fast-weight model f(x; W) = x + LN(MLP(x; W)) with hand-derived derivatives.

Notation for one mini-batch (all heads batched, shapes [B, H, N, .]):

    X1 = k                      keys, [B, H, N, d]
    Z1 = X1 W1 + b1             [B, H, N, h]
    X2 = gelu_tanh(Z1)          [B, H, N, h]
    Z2 = X2 W2 + b2             B_MLP output, [B, H, N, d]
    y  = gamma * xhat + beta    xhat = (Z2 - mean) * rstd, rstd = (var + eps)^-1/2 (biased var)

Everything a gradient or a Gauss-Newton product needs (X1, X2, gelu'(Z1), xhat, rstd) is cached by
:func:`forward_keys`, so a GN product costs 6 matmuls (3 for Jv, 3 for J^T u) and no extra forward.
The derivations are in ``docs/ttt_math.md``; ``tests/test_ttt_math.py`` checks them against
``torch.func`` in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

LN_EPS = 1e-8


@dataclass
class FastWeights:
    """Fast weights of all heads: W1 [B,H,d,h], b1 [B,H,1,h], W2 [B,H,h,d], b2 [B,H,1,d].

    Also used for tangents and gradients of the same shapes. Per-task scalars (one task = one
    (batch, head) pair) broadcast as [B, H, 1, 1].
    """

    W1: Tensor
    b1: Tensor
    W2: Tensor
    b2: Tensor

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return (self.W1, self.b1, self.W2, self.b2)

    def map(self, fn: Callable[[Tensor], Tensor]) -> "FastWeights":
        return FastWeights(*(fn(t) for t in self.tensors()))

    def zip_map(self, other: "FastWeights", fn: Callable[[Tensor, Tensor], Tensor]) -> "FastWeights":
        return FastWeights(*(fn(a, b) for a, b in zip(self.tensors(), other.tensors())))

    def __add__(self, other: "FastWeights") -> "FastWeights":
        return self.zip_map(other, torch.add)

    def __sub__(self, other: "FastWeights") -> "FastWeights":
        return self.zip_map(other, torch.sub)

    def axpy(self, s: Tensor, other: "FastWeights") -> "FastWeights":
        """self + s * other, with s per task [B, H, 1, 1]."""
        return self.zip_map(other, lambda a, b: a + s * b)

    def dot(self, other: "FastWeights") -> Tensor:
        """Per-task inner product, [B, H, 1, 1], accumulated in float32 (or wider) and rounded once."""
        acc = torch.float64 if self.W1.dtype == torch.float64 else torch.float32
        total = sum((a * b).sum(dim=(-2, -1), keepdim=True, dtype=acc) for a, b in zip(self.tensors(), other.tensors()))
        return total.to(self.W1.dtype)

    def numel_per_task(self) -> int:
        return sum(t.shape[-2] * t.shape[-1] for t in self.tensors())


@dataclass
class KeyCache:
    """Activations of the fast-weight MLP at the keys, reused by gradients and curvature products."""

    X1: Tensor  # [B, H, N, d]
    X2: Tensor  # [B, H, N, h]
    gelu_d: Tensor  # gelu'(Z1), [B, H, N, h]
    W2: Tensor  # [B, H, h, d] (weights the cache was computed with)
    xhat: Tensor  # normalised Z2, [B, H, N, d]
    rstd: Tensor  # [B, H, N, 1]


def layer_norm(z: Tensor, gamma: Tensor, beta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-head LayerNorm with biased variance and eps inside the root; returns (y, xhat, rstd)."""
    var, mean = torch.var_mean(z, dim=-1, keepdim=True, unbiased=False)
    rstd = torch.rsqrt(var + LN_EPS)
    xhat = (z - mean) * rstd
    return gamma * xhat + beta, xhat, rstd


def target_layer_norm(z: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
    """LayerNorm of the reconstruction targets: unbiased std with eps outside the root (official)."""
    mean = z.mean(dim=-1, keepdim=True)
    std = z.std(dim=-1, keepdim=True)
    return gamma * ((z - mean) / (std + LN_EPS)) + beta


def ln_backward(g: Tensor, xhat: Tensor, rstd: Tensor) -> Tensor:
    """Vector-Jacobian product of xhat(z) with g: (g - mean(g) - xhat * mean(g * xhat)) * rstd.

    The Jacobian of xhat w.r.t. z is symmetric, so this is also its Jacobian-vector product.
    """
    return (g - g.mean(dim=-1, keepdim=True) - xhat * (g * xhat).mean(dim=-1, keepdim=True)) * rstd


def gelu_derivative(z: Tensor) -> Tensor:
    """d/dz gelu_tanh(z)."""
    return torch.ops.aten.gelu_backward(torch.ones_like(z), z, approximate="tanh")


def forward_keys(theta: FastWeights, keys: Tensor, gamma: Tensor, beta: Tensor) -> tuple[Tensor, KeyCache]:
    """Run the MLP + LayerNorm on the keys and cache what derivatives need.

    Args:
        theta: fast weights [B, H, ...].
        keys: X1 [B, H, N, d].
        gamma, beta: per-head LN parameters broadcastable to [B, H, N, d] (i.e. [H, 1, d]).

    Returns:
        y [B, H, N, d] (LN output, without the residual) and the cache.
    """
    z1 = keys @ theta.W1 + theta.b1
    x2 = F.gelu(z1, approximate="tanh")
    z2 = x2 @ theta.W2 + theta.b2
    y, xhat, rstd = layer_norm(z2, gamma, beta)
    return y, KeyCache(X1=keys, X2=x2, gelu_d=gelu_derivative(z1), W2=theta.W2, xhat=xhat, rstd=rstd)


def output_grad_to_z2(dy: Tensor, cache: KeyCache, gamma: Tensor) -> Tensor:
    """Back-propagate dL/dy [B,H,N,d] through the LayerNorm to dL/dZ2."""
    return ln_backward(dy * gamma, cache.xhat, cache.rstd)


def weighted_param_grad(cache: KeyCache, dz2: Tensor, weight: Tensor) -> FastWeights:
    """Gradient of sum_t weight_t * loss_t w.r.t. the fast weights, given per-token dL/dZ2.

    Args:
        cache: key activations.
        dz2: per-token dl_t/dZ2 [B, H, N, d].
        weight: per-token weights (eta) [B, H, N, 1].

    Returns:
        (X1^T (w*dZ1), sum w*dZ1, X2^T (w*dZ2), sum w*dZ2) with dZ1 = (dZ2 W2^T) * gelu'(Z1).
    """
    dz1 = (dz2 @ cache.W2.transpose(-2, -1)) * cache.gelu_d
    wz1 = weight * dz1
    wz2 = weight * dz2
    return FastWeights(
        W1=cache.X1.transpose(-2, -1) @ wz1,
        b1=wz1.sum(dim=-2, keepdim=True),
        W2=cache.X2.transpose(-2, -1) @ wz2,
        b2=wz2.sum(dim=-2, keepdim=True),
    )


def mlp_jvp(cache: KeyCache, v: FastWeights) -> Tensor:
    """J v with J = dZ2/dtheta at the keys: [B, H, N, d]."""
    dz1 = cache.X1 @ v.W1 + v.b1
    return (dz1 * cache.gelu_d) @ cache.W2 + cache.X2 @ v.W2 + v.b2


def mlp_vjp(cache: KeyCache, u: Tensor) -> FastWeights:
    """J^T u for a per-token cotangent u = dL/dZ2 [B, H, N, d] (summed over tokens)."""
    gz1 = (u @ cache.W2.transpose(-2, -1)) * cache.gelu_d
    return FastWeights(
        W1=cache.X1.transpose(-2, -1) @ gz1,
        b1=gz1.sum(dim=-2, keepdim=True),
        W2=cache.X2.transpose(-2, -1) @ u,
        b2=u.sum(dim=-2, keepdim=True),
    )


def gauss_newton_product(
    cache: KeyCache,
    v: FastWeights,
    token_weight: Tensor | None = None,
    ln_gamma: Tensor | None = None,
    damping: float = 0.0,
) -> FastWeights:
    """Gauss-Newton product G v summed over the mini-batch's tokens.

    Args:
        cache: key activations (the linearisation point).
        v: tangent.
        token_weight: optional per-token curvature weights c_t [B,H,N,1] (None = all ones).
        ln_gamma: None for B_MLP = sum_t J_t^T c_t J_t (pre-LayerNorm); the LN weight [H,1,d] for
            B_LN = sum_t J_t^T P_t diag(gamma^2) P_t c_t J_t, P_t the (symmetric) LN Jacobian.
        damping: adds damping * v.

    Returns:
        G v with the shapes of v.
    """
    u = mlp_jvp(cache, v)
    if ln_gamma is not None:
        u = ln_backward(ln_backward(u, cache.xhat, cache.rstd) * ln_gamma.square(), cache.xhat, cache.rstd)
    if token_weight is not None:
        u = u * token_weight
    out = mlp_vjp(cache, u)
    if damping:
        out = out.axpy(torch.as_tensor(damping, dtype=u.dtype, device=u.device), v)
    return out


def read_out(theta: FastWeights, queries: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
    """f(q; theta) = q + LN(MLP(q; theta)), [B, H, N, d].

    The LayerNorm divides by sqrt(var + eps) here, as the official read-out does (the loss side
    multiplies by rsqrt); the two differ only in rounding.
    """
    z1 = queries @ theta.W1 + theta.b1
    z2 = F.gelu(z1, approximate="tanh") @ theta.W2 + theta.b2
    var, mean = torch.var_mean(z2, dim=-1, keepdim=True, unbiased=False)
    return gamma * ((z2 - mean) / torch.sqrt(var + LN_EPS)) + beta + queries
