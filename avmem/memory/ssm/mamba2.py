"""A Mamba-2 memory layer in pure PyTorch (state-space duality, Dao & Gu 2024), the recurrent-memory
alternative to the TTT block in the memory study (seed 001 Table 2: Mamba-2 vs TTT).

Per head h (headdim P, state size N), with dt_t = softplus(dt_raw + dt_bias) and A_h = -exp(A_log_h):

    S_t = exp(dt_t A_h) S_{t-1} + dt_t x_t B_t^T        S: [P, N]
    y_t = S_t C_t + D_h x_t

x, B, C come from a causal depthwise convolution (kernel ``d_conv``) + SiLU over the input projection;
the output is gated by SiLU(z), RMS-normalised, projected back to ``dim`` and added to the input through
a tanh gate (as the TTT block's ``gating_alpha``), so at initialisation the layer is close to identity.

:func:`ssd_chunked` evaluates the recurrence in chunks of Q tokens (quadratic inside a chunk, a scan over
chunk states between them); :func:`ssd_reference` is the token-by-token recurrence it is tested against
(outputs and gradients). :class:`Mamba2State` carries the SSM state and the convolution tail across calls,
so a stream can be fed in pieces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class Mamba2Config:
    """Sizes of the layer: d_inner = expand * dim = heads * headdim."""

    dim: int
    d_state: int = 64
    expand: int = 2
    headdim: int = 64
    d_conv: int = 4
    chunk: int = 256
    gate_init: float = 0.1

    def __post_init__(self) -> None:
        for name in ("dim", "d_state", "expand", "headdim", "d_conv", "chunk"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Mamba2Config: {name} must be a positive int, got {value!r}")
        if (self.expand * self.dim) % self.headdim:
            raise ValueError(f"Mamba2Config: expand * dim ({self.expand * self.dim}) must be divisible by headdim "
                             f"({self.headdim})")

    @property
    def d_inner(self) -> int:
        return self.expand * self.dim

    @property
    def heads(self) -> int:
        return self.d_inner // self.headdim


@dataclass
class Mamba2State:
    """ssm [B, H, P, N] after the last token; conv [B, d_inner + 2N, d_conv - 1] the last conv inputs."""

    ssm: Tensor
    conv: Tensor

    def tensors(self) -> dict[str, Tensor]:
        return {"ssm": self.ssm, "conv": self.conv}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> "Mamba2State":
        if set(tensors) != {"ssm", "conv"}:
            raise ValueError(f"a Mamba-2 state holds 'ssm' and 'conv', got {sorted(tensors)}")
        return cls(ssm=tensors["ssm"], conv=tensors["conv"])


def _segsum(x: Tensor) -> Tensor:
    """[..., T] -> [..., T, T]: out[i, j] = sum_{j < k <= i} x[k] for j <= i, -inf above the diagonal."""
    t = x.shape[-1]
    cum = torch.cumsum(x, dim=-1)
    out = cum[..., :, None] - cum[..., None, :]
    mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
    return out.masked_fill(~mask, float("-inf"))


def ssd_chunked(x: Tensor, dt: Tensor, a: Tensor, b: Tensor, c: Tensor, chunk: int,
                initial: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The SSM recurrence (without the D skip) in chunks.

    Args:
        x [B, L, H, P], dt [B, L, H] (> 0), a [H] (< 0), b and c [B, L, N] (one group), chunk Q,
        initial state [B, H, P, N] or None (zeros).

    Returns:
        y [B, L, H, P] and the final state [B, H, P, N].
    """
    bsz, length, heads, p = x.shape
    n = b.shape[-1]
    pad = (-length) % chunk
    if pad:  # dt = 0 on padding: no decay, no input, the state passes through unchanged
        x, dt = F.pad(x, (0, 0, 0, 0, 0, pad)), F.pad(dt, (0, 0, 0, pad))
        b, c = F.pad(b, (0, 0, 0, pad)), F.pad(c, (0, 0, 0, pad))
    k = x.shape[1] // chunk
    x = x.reshape(bsz, k, chunk, heads, p)
    dt = dt.reshape(bsz, k, chunk, heads)
    b = b.reshape(bsz, k, chunk, n)
    c = c.reshape(bsz, k, chunk, n)
    da = (dt * a).permute(0, 3, 1, 2)  # [B, H, K, Q]
    cum = torch.cumsum(da, dim=-1)
    xdt = x * dt[..., None]
    decay_in = torch.exp(_segsum(da))  # [B, H, K, Q, Q]
    y_diag = torch.einsum("bkln,bksn,bhkls,bkshp->bklhp", c, b, decay_in, xdt)
    decay_to_end = torch.exp(cum[..., -1:] - cum)  # [B, H, K, Q]
    states = torch.einsum("bksn,bhks,bkshp->bkhpn", b, decay_to_end, xdt)
    if initial is None:
        initial = x.new_zeros(bsz, heads, p, n)
    states = torch.cat([initial[:, None], states], dim=1)  # [B, K+1, H, P, N]
    chunk_decay = torch.exp(_segsum(F.pad(cum[..., -1], (1, 0))))  # [B, H, K+1, K+1]
    states = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, states)
    before, final = states[:, :-1], states[:, -1]
    y_off = torch.einsum("bkln,bkhpn,bhkl->bklhp", c, before, torch.exp(cum))
    y = (y_diag + y_off).reshape(bsz, k * chunk, heads, p)[:, :length]
    return y, final


def ssd_reference(x: Tensor, dt: Tensor, a: Tensor, b: Tensor, c: Tensor,
                  initial: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Token-by-token recurrence, same arguments and results as :func:`ssd_chunked` (for tests)."""
    bsz, length, heads, p = x.shape
    state = x.new_zeros(bsz, heads, p, b.shape[-1]) if initial is None else initial
    ys = []
    for t in range(length):
        decay = torch.exp(dt[:, t] * a)[..., None, None]  # [B, H, 1, 1]
        state = decay * state + torch.einsum("bhp,bn->bhpn", x[:, t] * dt[:, t, :, None], b[:, t])
        ys.append(torch.einsum("bhpn,bn->bhp", state, c[:, t]))
    return torch.stack(ys, dim=1), state


class Mamba2Memory(nn.Module):
    """A Mamba-2 block over the stream's visual tokens, residual through a tanh gate: [B, L, dim] -> same."""

    def __init__(self, cfg: Mamba2Config) -> None:
        super().__init__()
        self.cfg = cfg
        d_inner, n, heads = cfg.d_inner, cfg.d_state, cfg.heads
        self.conv_dim = d_inner + 2 * n
        self.in_proj = nn.Linear(cfg.dim, 2 * d_inner + 2 * n + heads, bias=False)
        self.conv = nn.Conv1d(self.conv_dim, self.conv_dim, cfg.d_conv, groups=self.conv_dim, bias=True)
        dt = torch.exp(torch.rand(heads) * (math.log(0.1) - math.log(0.001)) + math.log(0.001))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt): dt in [1e-3, 0.1]
        self.A_log = nn.Parameter(torch.log(torch.empty(heads).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(heads))
        self.norm = nn.RMSNorm(d_inner, eps=1e-5)
        self.out_proj = nn.Linear(d_inner, cfg.dim, bias=False)
        self.gating_alpha = nn.Parameter(torch.full((cfg.dim,), cfg.gate_init))

    @property
    def dtype(self) -> torch.dtype:
        return self.in_proj.weight.dtype

    def initial_state(self, batch: int, device, dtype) -> Mamba2State:
        cfg = self.cfg
        return Mamba2State(ssm=torch.zeros(batch, cfg.heads, cfg.headdim, cfg.d_state, device=device, dtype=dtype),
                           conv=torch.zeros(batch, self.conv_dim, cfg.d_conv - 1, device=device, dtype=dtype))

    def forward(self, x: Tensor, positions: Tensor | None = None,
                state: Mamba2State | None = None) -> tuple[Tensor, Mamba2State]:
        """x [B, L, dim] -> (y [B, L, dim], state after the last token). ``positions`` is accepted for the
        memory-layer interface and unused (the recurrence is ordered by the stream)."""
        if x.dim() != 3 or x.shape[-1] != self.cfg.dim or not x.dtype.is_floating_point:
            raise ValueError(f"Mamba2Memory: x must be a float tensor [B, L, {self.cfg.dim}], got "
                             f"{x.dtype} {list(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("Mamba2Memory: x contains NaN or Inf")
        cfg = self.cfg
        bsz, length, _ = x.shape
        if state is None:
            state = self.initial_state(bsz, x.device, x.dtype)
        d_inner, n, heads = cfg.d_inner, cfg.d_state, cfg.heads
        z, xbc, dt = torch.split(self.in_proj(x), [d_inner, self.conv_dim, heads], dim=-1)
        seq = torch.cat([state.conv, xbc.transpose(1, 2)], dim=-1)  # [B, conv_dim, d_conv - 1 + L]
        xbc = F.silu(self.conv(seq)).transpose(1, 2)  # [B, L, conv_dim]
        conv_tail = seq[..., -(cfg.d_conv - 1):] if cfg.d_conv > 1 else seq[..., :0]
        xs, b, c = torch.split(xbc, [d_inner, n, n], dim=-1)
        work = torch.promote_types(x.dtype, torch.float32)  # the scan runs in at least float32
        dt = F.softplus(dt.to(work) + self.dt_bias.to(work))
        a = -torch.exp(self.A_log.to(work))
        xh = xs.reshape(bsz, length, heads, cfg.headdim).to(work)
        y, ssm = ssd_chunked(xh, dt, a, b.to(work), c.to(work), cfg.chunk, state.ssm.to(work))
        y = y + self.D.to(work)[:, None] * xh
        y = y.reshape(bsz, length, d_inner).to(x.dtype)
        y = self.out_proj(self.norm(y * F.silu(z)))
        out = x + torch.tanh(self.gating_alpha) * y
        return out, Mamba2State(ssm=ssm.to(state.ssm.dtype), conv=conv_tail)
