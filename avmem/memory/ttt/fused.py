"""Fast path of :class:`~avmem.memory.ttt.TTTMemory`: pure, sync-free functions that ``torch.compile`` fuses.

The eager reference (``TTTMemory._mini_batch`` and the code around it in ``layer.py``) stays the
definition of the layer; this module computes the same maths as three pure functions of tensors:

* :func:`fused_prologue` — projections, L2 norm, 3-D RoPE (real cos/sin form), target LayerNorms and
  the learning-rate gate for a whole call ([B, T_pad, ...]);
* :func:`fused_step` — one update-then-read mini-batch step (gradient, Gauss-Newton CG / SGD / Muon,
  read-out), all heads batched in each matmul ([B, H, N, d] @ [B, H, d, h] is one bmm over B*H);
* :func:`fused_epilogue` — head merge, post-norm, output projection and gate.

None of them synchronises with the host (CG runs a fixed number of iterations with masks, see
``cg.py``) or branches on tensor values, so each compiles to one graph (``fullgraph=True``) and the
step can be captured in CUDA graphs. :func:`compiled` wraps them; with ``mode="fused"`` the same
functions run eagerly, which is how the CPU tests cover the compiled maths cheaply.

Precision (``TTTConfig.fast_fp32``):

* ``False`` (default, as the eager path and the official code): every tensor is in the model dtype;
  matmuls take model-dtype inputs and accumulate in fp32 inside the GEMM (cuBLAS / Triton), CG inner
  products are accumulated in fp32 and rounded once. Under ``torch.compile`` each fused elementwise
  chain (LayerNorm, GELU and its derivative, CG updates) is computed in fp32 in registers and rounded
  once when stored, so the compiled path is at least as precise as the eager one.
* ``True``: inside a step, activations, LayerNorm statistics, CG vectors (x, r, p, G p) and CG scalars
  are fp32; only matmul operands are rounded to the model dtype (bf16 tensor cores, fp32
  accumulation). The fast weights are rounded back to the model dtype at the end of each mini-batch,
  so the state keeps the dtype of the parameters.

The RoPE rotation is computed in fp32 in both cases (float64 inputs stay float64), as the official code.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .cg import _cg
from .fast_mlp import LN_EPS, FastWeights, gelu_derivative, ln_backward, target_layer_norm
from .update import newton_schulz

COMPILE_MODES = {"compile": "default", "autotune": "max-autotune-no-cudagraphs", "graphs": "reduce-overhead"}


@dataclass(frozen=True)
class StepSpec:
    """Static (compile-time) description of one mini-batch step.

    Attributes:
        update: "hf", "sgd" or "muon".
        cg_iters: CG iterations of "hf" (0 = gradient step).
        official_cg: True for the official CG indicator and 75 % rule, False for the textbook one.
        lag_weight: lambda of the lag term (used when the step gets a lag target).
        curvature_ln: B_LN instead of B_MLP.
        damping: added multiple of the identity in G.
        ns_steps: Newton-Schulz iterations of "muon".
        fp32: work precision, see the module docstring.
    """

    update: str
    cg_iters: int
    official_cg: bool
    lag_weight: float
    curvature_ln: bool
    damping: float
    ns_steps: int
    fp32: bool


def _work_dtype(model_dtype: torch.dtype, fp32: bool) -> torch.dtype:
    return torch.float32 if fp32 and model_dtype in (torch.bfloat16, torch.float16) else model_dtype


def fused_step(
    W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor,
    q: Tensor, k: Tensor, target: Tensor, eta: Tensor, valid: Tensor,
    lag_target: Tensor | None, lag_mask: Tensor | None, curv_weight: Tensor | None,
    ln_weight: Tensor, ln_bias: Tensor, muon_log_step: Tensor | None, *, spec: StepSpec,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One update-then-read step for all (batch, head) tasks; the maths of ``TTTMemory._mini_batch``.

    Args:
        W1, b1, W2, b2: fast weights [B,H,d,h], [B,H,1,h], [B,H,h,d], [B,H,1,d] (model dtype).
        q, k, target: queries, keys, reconstruction targets [B, H, N, d].
        eta: per-token loss weights [B, H, N, 1].
        valid: real-token mask [1, 1, N, 1] (loss telemetry only).
        lag_target: lag targets [B, H, N, d] or None; lag_mask: [1, 1, N, 1] or None.
        curv_weight: per-token curvature weights [1, 1, N, 1] or None (all ones).
        ln_weight, ln_bias: per-head LayerNorm weight and bias [H, d] (``ttt_norm_weight`` / ``_bias``).
        muon_log_step: log of the per-head Muon step [H] for "muon", else None.
        spec: static step description.

    Returns:
        (W1, b1, W2, b2) after the update (model dtype), read-out [B, H, N, d], loss sum [B].
    """
    mdt = W1.dtype
    wdt = _work_dtype(mdt, spec.fp32)

    def mm(a: Tensor, b: Tensor) -> Tensor:
        return torch.matmul(a.to(mdt), b.to(mdt)).to(wdt)

    g, bt = ln_weight.unsqueeze(1).to(wdt), ln_bias.unsqueeze(1).to(wdt)
    kw = k.to(wdt)
    # forward on the keys, with what the gradient and the curvature products reuse
    z1 = mm(kw, W1) + b1.to(wdt)
    x2 = F.gelu(z1, approximate="tanh")
    gd = gelu_derivative(z1)
    z2 = mm(x2, W2) + b2.to(wdt)
    var, mean = torch.var_mean(z2, dim=-1, keepdim=True, unbiased=False)
    rstd = torch.rsqrt(var + LN_EPS)
    xhat = (z2 - mean) * rstd
    y = g * xhat + bt
    err = y - target.to(wdt)
    per_token = err.square().sum(-1, keepdim=True)
    if lag_target is not None:
        lag_err = y - lag_target.to(wdt)
        err = err + spec.lag_weight * lag_mask.to(wdt) * lag_err
        per_token = per_token + spec.lag_weight * lag_mask.to(wdt) * lag_err.square().sum(-1, keepdim=True)
    # eta-weighted gradient of the mini-batch loss
    dz2 = ln_backward(err * g, xhat, rstd)
    w = eta.to(wdt)
    wz1 = w * (mm(dz2, W2.transpose(-2, -1)) * gd)
    wz2 = w * dz2
    kt, x2t, w2t = kw.transpose(-2, -1), x2.transpose(-2, -1), W2.transpose(-2, -1)
    grad = FastWeights(mm(kt, wz1), wz1.sum(dim=-2, keepdim=True), mm(x2t, wz2), wz2.sum(dim=-2, keepdim=True))

    if spec.update == "hf" and spec.cg_iters > 0:
        cw = None if curv_weight is None else curv_weight.to(wdt)
        g2 = g.square()

        def matvec(v: FastWeights) -> FastWeights:
            u = mm((mm(kw, v.W1) + v.b1) * gd, W2) + mm(x2, v.W2) + v.b2
            if spec.curvature_ln:
                u = ln_backward(ln_backward(u, xhat, rstd) * g2, xhat, rstd)
            if cw is not None:
                u = u * cw
            g1 = mm(u, w2t) * gd
            out = FastWeights(mm(kt, g1), g1.sum(dim=-2, keepdim=True), mm(x2t, u), u.sum(dim=-2, keepdim=True))
            if spec.damping:
                out = out.zip_map(v, lambda a, b: a + spec.damping * b)
            return out

        delta = _cg(matvec, grad, spec.cg_iters, spec.official_cg)
    elif spec.update == "muon":
        step = muon_log_step.exp().to(mdt).to(wdt).view(1, -1, 1, 1)
        delta = FastWeights(step * newton_schulz(grad.W1, spec.ns_steps), grad.b1,
                            step * newton_schulz(grad.W2, spec.ns_steps), grad.b2)
    else:
        delta = grad
    new = FastWeights(W1, b1, W2, b2).zip_map(delta, lambda a, b: (a.to(wdt) - b).to(mdt))

    # read-out with the updated weights: q + LN(MLP(q)), LN dividing by sqrt(var + eps) as the official code
    qw = q.to(wdt)
    h1 = F.gelu(mm(qw, new.W1) + new.b1.to(wdt), approximate="tanh")
    o2 = mm(h1, new.W2) + new.b2.to(wdt)
    ovar, omean = torch.var_mean(o2, dim=-1, keepdim=True, unbiased=False)
    out = (g * ((o2 - omean) / torch.sqrt(ovar + LN_EPS)) + bt + qw).to(mdt)
    with torch.no_grad():
        loss = (0.5 * (per_token * valid.to(wdt)).sum(dim=(1, 2, 3))).to(mdt)
    return new.W1, new.b1, new.W2, new.b2, out, loss


def rope_real(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE of ``x`` [B, T, H, d] with ``cos``/``sin`` [B, T, d/2]: pairs (x[2i], x[2i+1]) rotated in fp32.

    The real form of :func:`~avmem.memory.ttt.rope.apply_rope` (complex product (a + ib)(c + is)).
    """
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    xr = x.to(work).unflatten(-1, (-1, 2))
    a, b = xr[..., 0], xr[..., 1]
    c, s = cos.unsqueeze(-2).to(work), sin.unsqueeze(-2).to(work)
    return torch.stack([a * c - b * s, a * s + b * c], dim=-1).flatten(-2).to(x.dtype)


def fused_prologue(
    x_pad: Tensor, x_lag: Tensor | None, cos: Tensor, sin: Tensor, valid: Tensor, params: dict[str, Tensor], *,
    heads: int, base_lr: float, mini_batch: int, official: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor]:
    """Per-token inputs of the scan for a whole (padded) call; the maths of ``TTTMemory.forward``.

    Args:
        x_pad: [B, T_pad, D] tokens (zero rows appended), T_pad = n_mb * mini_batch.
        x_lag: [B, T_pad, D] inputs of the lag objective, or None without it.
        cos, sin: RoPE rotations [B, T_pad, d/2] (fp32, or fp64 for fp64 inputs).
        valid: real-token mask [T_pad]; clean mode (``official=False``) multiplies eta by it.
        params: the block's tensors under their ``TTTBlockParameters`` names (``wq.weight`` ...).
        heads, base_lr, mini_batch: configuration.
        official: form the targets as (LN(v - k) + k) - k as the released code does, keep padding in eta.

    Returns:
        q, k, target, lag_target (or None) as contiguous [n_mb, B, H, mini_batch, d] and eta
        [n_mb, B, H, mini_batch, 1]: each mini-batch is a contiguous slice whose strides do not depend
        on the call length, so the compiled step is specialised once.
    """
    batch, padded, dim = x_pad.shape
    d = dim // heads
    n_mb = padded // mini_batch

    def by_mb(t: Tensor) -> Tensor:  # [B, T_pad, H, d] -> [n_mb, B, H, mb, d]
        return t.reshape(batch, n_mb, mini_batch, heads, t.shape[-1]).permute(1, 0, 3, 2, 4).contiguous()

    def proj(name: str, inp: Tensor) -> Tensor:
        return F.linear(inp, params[f"{name}.weight"], params[f"{name}.bias"]).view(batch, padded, heads, d)

    def unit_rope(t: Tensor) -> Tensor:
        return rope_real(F.normalize(t, dim=-1), cos, sin)

    q = unit_rope(proj("wq", x_pad))
    k = unit_rope(proj("wk", x_pad))
    gamma_t = params["ttt_norm_weight"].view(1, 1, heads, d)
    beta_t = params["ttt_norm_bias"].view(1, 1, heads, d)
    target = target_layer_norm(proj("wv", x_pad) - k, gamma_t, beta_t)
    if official:
        target = (target + k) - k
    lag_target = None
    if x_lag is not None:
        k_lag = unit_rope(proj("lag_linear_key", x_pad))
        lag_target = target_layer_norm(proj("lag_linear", x_lag) - k_lag, gamma_t, beta_t)
        if official:
            lag_target = (lag_target + k_lag) - k_lag
    logits = torch.einsum("btc,hc->bht", x_pad, params["learnable_ttt_lr_weight"][:, 0])
    eta = (1.0 / mini_batch) * (base_lr * torch.sigmoid(logits + params["learnable_ttt_lr_bias"].view(1, heads, 1)) / d)
    if not official:
        eta = eta * valid
    eta = by_mb(eta.transpose(1, 2).unsqueeze(-1))
    return by_mb(q), by_mb(k), by_mb(target), None if lag_target is None else by_mb(lag_target), eta


def fused_epilogue(
    out: Tensor, x_pad: Tensor, alpha: Tensor, norm_w: Tensor, norm_b: Tensor, wo_w: Tensor, wo_b: Tensor,
) -> Tensor:
    """Block output tanh(alpha) * wo(post_norm(o)) + x over the padded rows, [B, T_pad, D].

    ``out`` are the scan outputs [n_mb, B, H, N, d], ``x_pad`` the padded input [B, T_pad, D]; the
    caller drops the padded rows (computing them costs < one mini-batch of rows and avoids
    specialising the compiled graph on whether the call was padded).
    """
    n_mb, batch, heads, mb, d = out.shape
    o = out.permute(1, 0, 3, 2, 4).reshape(batch, n_mb * mb, heads * d)
    o = F.layer_norm(o, (heads * d,), norm_w, norm_b, eps=1e-6)
    return torch.tanh(alpha) * F.linear(o, wo_w, wo_b) + x_pad


_CACHE: dict[tuple[Any, ...], Callable[..., Any]] = {}


def _own_copy(fn: Callable[..., Any], static: dict[str, Any]) -> Callable[..., Any]:
    """A copy of ``fn`` with its own code object and ``static`` as keyword defaults.

    Dynamo keeps compiled graphs (and counts recompilations) per code object, so each (function, mode,
    static arguments) gets its own cache instead of all of them competing for one function's
    ``recompile_limit``; the static values are constants of the traced graph.
    """
    copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = {**(fn.__kwdefaults__ or {}), **static}
    copy.__doc__, copy.__qualname__ = fn.__doc__, fn.__qualname__
    return copy


def compiled(name: str, mode: str, **static: Any) -> Callable[..., Any]:
    """The function ``name`` ("step", "prologue", "epilogue") for the fast-path ``mode``.

    ``static`` are its keyword-only compile-time arguments (hashable), bound with ``functools.partial``.

    ``mode="fused"`` returns the plain function (eager). "compile", "autotune" and "graphs" return it
    under ``torch.compile(fullgraph=True)``: the step with static shapes and the mode of
    :data:`COMPILE_MODES` ("graphs" = CUDA graphs through ``reduce-overhead``), the prologue and
    epilogue with a dynamic token count in the default mode (their large GEMMs go to cuBLAS either way).
    Compiled callables are cached per (name, mode, static) and shared by all layers.
    """
    if name != "step" and mode in COMPILE_MODES:
        mode = "compile"  # one dynamic-shape compilation of the prologue / epilogue serves every compiled mode
    key = (name, mode, tuple(sorted(static.items())))
    fn = _CACHE.get(key)
    if fn is not None:
        return fn
    base = _own_copy({"step": fused_step, "prologue": fused_prologue, "epilogue": fused_epilogue}[name], static)
    if mode == "fused":
        fn = base
    elif mode in COMPILE_MODES:
        if name == "step":
            fn = torch.compile(base, fullgraph=True, dynamic=False, mode=COMPILE_MODES[mode])
        else:
            fn = torch.compile(base, fullgraph=True, dynamic=True)
    else:
        raise ValueError(f"unknown fast-path mode {mode!r}")
    _CACHE[key] = fn
    return fn
