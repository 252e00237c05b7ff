"""Naive reference of :class:`~avmem.memory.ttt.TTTMemory` (slow, for tests only).

Written independently of the fast path: RoPE with real cos/sin, LayerNorm through
``F.layer_norm``, the inner gradient by autograd on the eta-weighted loss, Gauss-Newton products by
``torch.func.jvp``/``vjp``, and CG per task with Python control flow (real ``break``s, host syncs).
Outputs and gradients of the fast path are tested against it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import jvp, vjp

from .fast_mlp import FastWeights
from .layer import TTTMemory
from .state import TTTState

_NAMES = ("W1", "b1", "W2", "b2")


def _rope(x: Tensor, pos: Tensor, head_dim: int, theta: float) -> Tensor:
    """x [B, T, H, d] rotated pairwise with angles from integer positions [B, T, 3]."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    angles = []
    for axis, width in enumerate((head_dim // 4, head_dim // 8 * 3, head_dim // 8 * 3)):
        for j in range(width // 2):
            freq = 1.0 / (theta ** torch.tensor(2 * j / width, dtype=dtype, device=pos.device))
            angles.append(pos[..., axis].to(dtype) * freq)
    ang = torch.stack(angles, dim=-1).unsqueeze(-2)  # [B, T, 1, d/2]
    cos, sin = ang.cos(), ang.sin()
    xe, xo = x.to(dtype)[..., 0::2], x.to(dtype)[..., 1::2]
    out = torch.stack([xe * cos - xo * sin, xe * sin + xo * cos], dim=-1).flatten(-2)
    return out.to(x.dtype)


def _target_ln(z: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
    centred = z - z.mean(-1, keepdim=True)
    std = torch.sqrt(centred.square().sum(-1, keepdim=True) / (z.shape[-1] - 1))
    return gamma * centred / (std + 1e-8) + beta


def _mlp(theta: dict[str, Tensor], x: Tensor) -> Tensor:
    hidden = F.gelu(x @ theta["W1"] + theta["b1"], approximate="tanh")
    return hidden @ theta["W2"] + theta["b2"]


def _head_ln(z: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
    """Per-head LayerNorm (biased variance, eps 1e-8) with per-head affine [H, 1, d]."""
    return F.layer_norm(z, z.shape[-1:], eps=1e-8) * gamma + beta


def _head_ln_explicit(z: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
    """:func:`_head_ln` from elementary ops.

    Used inside ``torch.func.jvp`` when the result is differentiated again: PyTorch's forward-mode
    rule of ``F.layer_norm`` gives wrong higher-order derivatives (pytorch/pytorch#196700).
    """
    centred = z - z.mean(-1, keepdim=True)
    return centred * torch.rsqrt(centred.square().mean(-1, keepdim=True) + 1e-8) * gamma + beta


def _lag_pairs(layer: TTTMemory, x: Tensor, padded: int, tail: Tensor | None) -> tuple[Tensor, Tensor]:
    cfg = layer.cfg
    lag = cfg.lag_distance
    batch, length, dim = x.shape
    x_pad = torch.cat([x, x.new_zeros(batch, padded - length, dim)], dim=1)
    if cfg.compat == "official":
        clip = min(lag, padded)
        if tail is None:
            rows = [None] * clip + [x_pad[:, t - clip] for t in range(clip, padded)]
            mask = [0.0] * clip + [1.0] * (padded - clip)
        else:
            prev_len = tail.shape[1]  # the whole previous padded input when shorter than lag
            if prev_len == lag:
                carried = list(range(clip))
            else:
                start, stop, _ = slice(-lag, prev_len - (lag - clip)).indices(prev_len)
                carried = list(range(start, stop))
            if len(carried) + padded - clip != padded:
                rows, mask = [None] * padded, [0.0] * padded
            else:
                rows = [tail[:, i] for i in carried] + [x_pad[:, t - clip] for t in range(clip, padded)]
                mask = [1.0] * padded
    else:
        hist = 0 if tail is None else tail.shape[1]
        rows, mask = [], []
        for t in range(padded):
            g = hist + t - lag
            src = None if t >= length or g < 0 else (tail[:, g] if g < hist else x[:, g - hist])
            rows.append(src)
            mask.append(0.0 if src is None else 1.0)
    rows = [x.new_zeros(batch, dim) if r is None else r for r in rows]
    return torch.stack(rows, dim=1), torch.tensor(mask, dtype=x.dtype, device=x.device)


def _flat(theta: dict[str, Tensor]) -> Tensor:
    b, h = theta["W1"].shape[:2]
    return torch.cat([theta[n].reshape(b * h, -1) for n in _NAMES], dim=-1)


def _unflat(v: Tensor, like: dict[str, Tensor]) -> dict[str, Tensor]:
    out, start = {}, 0
    for n in _NAMES:
        size = like[n][0, 0].numel()
        out[n] = v[:, start:start + size].reshape(like[n].shape)
        start += size
    return out


def _cg(matvec, b: Tensor, iters: int, official: bool) -> Tensor:
    """Per-task CG with the gamma early stop; tasks are rows of b [T, P]."""
    n_tasks = b.shape[0]
    x = [torch.zeros_like(b[i]) for i in range(n_tasks)]
    r = [b[i] for i in range(n_tasks)]
    p = [b[i] for i in range(n_tasks)]
    rs = [torch.dot(r[i], r[i]) for i in range(n_tasks)]
    stopped = [False] * n_tasks
    xg, den, ind = [0.0] * n_tasks, [0.0] * n_tasks, [None] * n_tasks
    for k in range(iters):
        ap = matvec(torch.stack(p))
        for i in range(n_tasks):
            if stopped[i]:
                continue
            p_ap = torch.dot(p[i], ap[i])
            alpha = rs[i] / p_ap if math.isfinite((rs[i] / p_ap).item()) else torch.zeros_like(p_ap)
            cand_xg = xg[i] + (alpha * torch.dot(p[i], b[i])).item()
            cand_den = den[i] + (rs[i].item() if official else (alpha * rs[i]).item())
            cand = cand_xg / math.sqrt(cand_den) if cand_den > 0 else float("nan")
            if k >= 1 and not cand > ind[i]:
                stopped[i] = True
                continue
            xg[i], den[i], ind[i] = cand_xg, cand_den, cand
            x[i] = x[i] + alpha * p[i]
            r[i] = r[i] - alpha * ap[i]
            new_rs = torch.dot(r[i], r[i])
            beta = new_rs / rs[i] if rs[i].item() != 0 else torch.zeros_like(new_rs)
            p[i] = r[i] + beta * p[i]
            rs[i] = new_rs
        if official and sum(stopped) / n_tasks >= 0.75:
            break
    return torch.stack(x)


def _newton_schulz(g: Tensor, steps: int) -> Tensor:
    a, b, c = 3.4445, -4.7750, 2.0315
    wide = g.shape[-2] <= g.shape[-1]
    x = g if wide else g.transpose(-2, -1)
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + 1e-7)
    for _ in range(steps):
        a_mat = x @ x.transpose(-2, -1)
        x = a * x + b * (a_mat @ x) + c * (a_mat @ a_mat @ x)
    return x if wide else x.transpose(-2, -1)


def naive_forward(layer: TTTMemory, x: Tensor, positions: Tensor, state: TTTState | None = None) -> tuple[Tensor, TTTState]:
    """Reference forward of ``layer`` (same contract as ``layer(x, positions, state)``)."""
    cfg = layer.cfg
    p = layer.ttt
    batch, length, dim = x.shape
    heads, d = cfg.num_heads, cfg.head_dim
    mb = cfg.mini_batch
    padded = math.ceil(length / mb) * mb
    official = cfg.compat == "official"
    if positions.dim() == 2:
        positions = positions.unsqueeze(0).expand(batch, -1, -1)
    if positions.shape[1] < padded:
        positions = torch.cat([positions, positions.new_zeros(batch, padded - positions.shape[1], 3)], dim=1)
    x_pad = torch.cat([x, x.new_zeros(batch, padded - length, dim)], dim=1)
    if state is None:
        theta = {n: getattr(p, n).unsqueeze(0).repeat(batch, 1, 1, 1) for n in _NAMES}
        tail, tokens = None, 0
    else:
        theta = dict(zip(_NAMES, state.fast.tensors()))
        tail, tokens = state.lag_tail, state.tokens

    def heads_of(t: Tensor) -> Tensor:
        return t.reshape(batch, padded, heads, d)

    q = _rope(F.normalize(heads_of(F.linear(x_pad, p.wq.weight, p.wq.bias)), dim=-1), positions, d, cfg.rope_theta)
    k = _rope(F.normalize(heads_of(F.linear(x_pad, p.wk.weight, p.wk.bias)), dim=-1), positions, d, cfg.rope_theta)
    v = heads_of(F.linear(x_pad, p.wv.weight, p.wv.bias))
    gamma, beta = p.ttt_norm_weight, p.ttt_norm_bias
    target = _target_ln(v - k, gamma, beta)
    if official:
        target = (target + k) - k
    lag_mask = torch.zeros(padded, dtype=x.dtype, device=x.device)
    lag_target = torch.zeros_like(target)
    if cfg.lag_distance:
        x_lag, lag_mask = _lag_pairs(layer, x, padded, tail)
        k_lag = _rope(F.normalize(heads_of(F.linear(x_pad, p.lag_linear_key.weight, p.lag_linear_key.bias)), dim=-1),
                      positions, d, cfg.rope_theta)
        lag_target = _target_ln(heads_of(F.linear(x_lag, p.lag_linear.weight, p.lag_linear.bias)) - k_lag, gamma, beta)
        if official:
            lag_target = (lag_target + k_lag) - k_lag
    eta = torch.sigmoid(torch.einsum("btc,hc->bht", x_pad, p.learnable_ttt_lr_weight[:, 0])
                        + p.learnable_ttt_lr_bias[:, 0][None, :, None]) * cfg.base_lr / d / mb
    valid = (torch.arange(padded, device=x.device) < length).to(x.dtype)
    if not official:
        eta = eta * valid
    curv_w = torch.ones(padded, dtype=x.dtype, device=x.device) if official else valid

    g_h, b_h = gamma[:, None, :], beta[:, None, :]
    outs = []
    for s in range(0, padded, mb):
        sl = slice(s, s + mb)

        def per_head(t: Tensor) -> Tensor:  # [B, N, H, d] -> [B, H, N, d]
            return t[:, sl].transpose(1, 2)

        keys, queries = per_head(k), per_head(q)
        tgt, tgt_lag = per_head(target), per_head(lag_target)
        m = lag_mask[sl].view(1, 1, -1, 1)
        e = eta[:, :, sl].unsqueeze(-1)
        c = curv_w[sl].view(1, 1, -1, 1)

        def inner_loss(th: dict[str, Tensor]) -> Tensor:
            y = _head_ln(_mlp(th, keys), g_h, b_h)
            per_tok = 0.5 * (y - tgt).square().sum(-1, keepdim=True)
            per_tok = per_tok + cfg.lag_weight * m * 0.5 * (y - tgt_lag).square().sum(-1, keepdim=True)
            return (e * per_tok).sum()

        leaves = [theta[n] for n in _NAMES]
        if not any(t.requires_grad for t in leaves):
            leaves = [t.detach().requires_grad_(True) for t in leaves]
            theta = dict(zip(_NAMES, leaves))
        with torch.enable_grad():
            grads = torch.autograd.grad(inner_loss(theta), leaves, create_graph=torch.is_grad_enabled())
        grad = dict(zip(_NAMES, grads))

        if cfg.update == "sgd" or (cfg.update == "hf" and cfg.cg_iters == 0):
            delta = grad
        elif cfg.update == "hf":
            point = {n: theta[n] for n in _NAMES}

            def outputs(th: dict[str, Tensor]) -> Tensor:
                z = _mlp(th, keys)
                return _head_ln_explicit(z, g_h, b_h) if cfg.curvature == "ln" else z

            def matvec(vflat: Tensor) -> Tensor:
                tangent = _unflat(vflat, point)
                _, jv = jvp(outputs, (point,), (tangent,))
                _, pullback = vjp(outputs, point)
                (gv,) = pullback(c * jv)
                return _flat(gv) + cfg.damping * vflat

            delta = _unflat(_cg(matvec, _flat(grad), cfg.cg_iters, official), point)
        else:
            step = layer.update.log_step.exp().view(1, -1, 1, 1)
            delta = {"W1": step * _newton_schulz(grad["W1"], cfg.ns_steps), "b1": grad["b1"],
                     "W2": step * _newton_schulz(grad["W2"], cfg.ns_steps), "b2": grad["b2"]}
        theta = {n: theta[n] - delta[n] for n in _NAMES}
        outs.append(_head_ln(_mlp(theta, queries), g_h, b_h) + queries)

    o = torch.cat(outs, dim=2).transpose(1, 2).reshape(batch, padded, dim)[:, :length]
    o = F.linear(F.layer_norm(o, (dim,), p.post_norm.weight, p.post_norm.bias, eps=1e-6), p.wo.weight, p.wo.bias)
    y = torch.tanh(layer.gating_alpha) * o + x
    if cfg.lag_distance == 0:
        new_tail = None
    elif official:
        new_tail = x_pad[:, -cfg.lag_distance:]
    else:
        new_tail = (x if tail is None else torch.cat([tail, x], dim=1))[:, -cfg.lag_distance:]
    fast = FastWeights(*(theta[n] for n in _NAMES))
    return y, TTTState(fast=fast, lag_tail=new_tail, tokens=tokens + length)
