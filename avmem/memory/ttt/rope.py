"""3-D rotary position embedding of the TTT layer (reference §2.2).

Each head of width d_h is read as d_h/2 complex pairs (x[2i], x[2i+1]); the first d_h/8 pairs rotate
with the temporal index t, the next 3d_h/16 with the row h and the last 3d_h/16 with the column w,
each band with frequencies theta^(-2j/n) of its own width n (d_h/4, 3d_h/8, 3d_h/8).
"""

from __future__ import annotations

import torch
from torch import Tensor


def official_positions(grid_hw: tuple[int, int], start: int, length: int) -> Tensor:
    """(t, h, w) positions of merged video tokens g = start .. start+length-1 in raster order.

    The official code numbers the video's merged tokens globally over the whole stream and gives token
    g the position t = g // (Hm*Wm), h = (g // Wm) % Hm, w = g % Wm. Zero rows padded onto a chunk take
    the next indices, so ``official_positions(grid, g0, n_padded)`` gives a chunk's padded positions.

    Args:
        grid_hw: (Hm, Wm), the merged token grid of one temporal patch.
        start: global index of the first token.
        length: number of tokens.

    Returns:
        LongTensor [length, 3].
    """
    hm, wm = (int(v) for v in grid_hw)
    if hm <= 0 or wm <= 0:
        raise ValueError(f"official_positions: grid_hw must be positive, got {grid_hw}")
    if start < 0 or length < 0:
        raise ValueError(f"official_positions: start and length must be >= 0, got {start}, {length}")
    g = torch.arange(start, start + length, dtype=torch.long, device="cpu")
    return torch.stack([g // (hm * wm), (g // wm) % hm, g % wm], dim=-1)


def band_frequencies(
    head_dim: int, theta: float, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor, Tensor]:
    """Frequencies of the t, h and w bands; in float32 they are bit-identical to the official table."""
    widths = (head_dim // 4, head_dim // 8 * 3, head_dim // 8 * 3)
    freqs = []
    for n in widths:
        exponent = torch.arange(0, n, 2, device="cpu")[: n // 2].to(dtype) / n
        freqs.append(1.0 / (theta ** exponent))
    return freqs[0], freqs[1], freqs[2]


def rope_angles(positions: Tensor, head_dim: int, theta: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """Rotation angles [..., d_h/2] for integer positions [..., 3] (float32, or float64 if asked)."""
    dtype = torch.float64 if dtype == torch.float64 else torch.float32
    f_t, f_h, f_w = (f.to(positions.device) for f in band_frequencies(head_dim, theta, dtype))
    pos = positions.to(dtype)
    return torch.cat([pos[..., 0:1] * f_t, pos[..., 1:2] * f_h, pos[..., 2:3] * f_w], dim=-1)


def rope_cos_sin(positions: Tensor, head_dim: int, theta: float, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """(cos, sin) of :func:`rope_angles`: the real form of :func:`rope_cis` used by the fused path."""
    angles = rope_angles(positions, head_dim, theta, dtype)
    return torch.cos(angles), torch.sin(angles)


def rope_cis(positions: Tensor, head_dim: int, theta: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """Unit complex rotations for integer positions.

    Args:
        positions: integer tensor [..., 3] of (t, h, w).
        head_dim: head width d_h (multiple of 16).
        theta: RoPE base.
        dtype: real dtype of the angles: float32 (official, complex64 result) or float64 (complex128).

    Returns:
        complex tensor [..., d_h/2].
    """
    angles = rope_angles(positions, head_dim, theta, dtype)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: Tensor, cis: Tensor) -> Tensor:
    """Rotate pairs of ``x`` [B, T, H, d_h] by ``cis`` [B, T, d_h/2] (shared over heads).

    Computed in float32 (float64 inputs stay float64) and cast back, as the official code does.
    """
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    xc = torch.view_as_complex(x.to(work).reshape(*x.shape[:-1], -1, 2))
    out = torch.view_as_real(xc * cis.unsqueeze(-2)).flatten(-2)
    return out.to(x.dtype)
