"""The TTT memory block of video-SALMONN S (seed 001 §3.2, reference §2).

For each head h and each mini-batch of N tokens (update first, then read):

    q, k = RoPE3D(l2norm(wq x)), RoPE3D(l2norm(wk x));  v = wv x
    target_t = LN_h(v_t - k_t);  lag target = LN_h(lag_linear(x_{t-T}) - RoPE3D(l2norm(lag_linear_key x_t)))
    l_t = 1/2 ||LN_h(MLP_W(k_t)) - target_t||^2 + lambda m_t 1/2 ||LN_h(MLP_W(k_t)) - lag_target_t||^2
    eta_t = base_lr * sigmoid(w_h x_t + b_h) / d_h / N          (per-token loss weight)
    W <- W - rule(grad_W sum_t eta_t l_t)                        (sgd | hf | muon)
    o_t = q_t + LN_h(MLP_W(q_t))

and the block output is ``tanh(alpha) * wo(post_norm(o)) + x``. The fast weights are carried across
mini-batches and calls in :class:`TTTState`.

Compatibility modes (``TTTConfig.compat``):

=================  =======================================  ======================================
                   ``official`` (released code)             ``clean`` (paper)
=================  =======================================  ======================================
padding rows       zero rows padded to a multiple of N take  padding rows have zero weight in the
                   part in the update (their eta is          gradient and in the curvature
                   sigmoid(b_h) * const)
lag carry-over     first T rows pair with the previous       pairs with the real token T steps
                   call's *padded* tail, mask 1 everywhere;  earlier over all calls; rows without
                   a shorter previous call follows the       one are masked
                   released slice literally (docs)
CG stop            indicator sum alpha p^T b / sqrt(sum      gamma = b^T x / sqrt(x^T G x),
                   r^T r); all heads stop at 75 % stopped    each head on its own
curvature          B_MLP = sum_t J_t^T J_t over all rows     B_MLP or B_LN over real rows,
                                                             optional damping
=================  =======================================  ======================================
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, fields, replace
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .config import FAST_MODES, TTTConfig
from .fast_mlp import (
    FastWeights,
    forward_keys,
    output_grad_to_z2,
    read_out,
    target_layer_norm,
    weighted_param_grad,
)
from .fused import COMPILE_MODES, StepSpec, compiled
from .official import extract_ttt_tensors
from .rope import apply_rope, rope_cis, rope_cos_sin
from .state import TTTState
from .update import Curvature, make_update_rule

FAST_ENV = "AVMEM_TTT_FAST"


@dataclass
class MiniBatches:
    """Per-mini-batch inputs of the scan, stacked on a leading mini-batch axis.

    Head tensors are [n_mb, B, H, N, d] (``eta`` [n_mb, B, H, N, 1]); token tensors [n_mb, 1, 1, N, 1].
    :meth:`at` drops the leading axis.
    """

    q: Tensor
    k: Tensor
    target: Tensor
    eta: Tensor
    valid: Tensor
    lag_target: Tensor | None = None
    lag_mask: Tensor | None = None
    curv_weight: Tensor | None = None

    def at(self, i: int) -> "MiniBatches":
        return MiniBatches(**{f.name: None if (t := getattr(self, f.name)) is None else t[i] for f in fields(self)})


class TTTBlockParameters(nn.Module):
    """The learned tensors of the block, under the official names (reference §5.2).

    Shapes (D = dim, H heads, d = D/H, h = hidden_mult * d): ``learnable_ttt_lr_weight`` [H,1,D],
    ``learnable_ttt_lr_bias`` [H,1], ``ttt_norm_weight``/``ttt_norm_bias`` [H,d], ``W1`` [H,d,h],
    ``b1`` [H,1,h], ``W2`` [H,h,d], ``b2`` [H,1,d], ``wq``/``wk``/``wv``/``wo`` (and, with the lag
    objective, ``lag_linear``/``lag_linear_key``) Linear(D, D), ``post_norm`` LayerNorm(D, eps=1e-6).
    """

    def __init__(self, cfg: TTTConfig) -> None:
        super().__init__()
        dim, heads, d, h = cfg.dim, cfg.num_heads, cfg.head_dim, cfg.hidden_dim
        self.wq = nn.Linear(dim, dim)
        self.wk = nn.Linear(dim, dim)
        self.wv = nn.Linear(dim, dim)
        self.wo = nn.Linear(dim, dim)
        if cfg.lag_distance > 0:
            self.lag_linear = nn.Linear(dim, dim)
            self.lag_linear_key = nn.Linear(dim, dim)
        self.learnable_ttt_lr_weight = nn.Parameter(torch.randn(heads, 1, dim) * 0.02)
        self.learnable_ttt_lr_bias = nn.Parameter(torch.zeros(heads, 1))
        self.ttt_norm_weight = nn.Parameter(torch.ones(heads, d))
        self.ttt_norm_bias = nn.Parameter(torch.zeros(heads, d))
        self.post_norm = nn.LayerNorm(dim, eps=1e-6)
        self.W1 = nn.Parameter(torch.randn(heads, d, h) * 0.02)
        self.b1 = nn.Parameter(torch.zeros(heads, 1, h))
        self.W2 = nn.Parameter(torch.randn(heads, h, d) * 0.02)
        self.b2 = nn.Parameter(torch.zeros(heads, 1, d))


class TTTMemory(nn.Module):
    """Multi-head TTT-MLP memory layer with an explicit streaming state.

    Example::

        ttt = TTTMemory(TTTConfig(dim=4096, num_heads=8))
        y, state = ttt(x, positions)          # x [B, T, dim], positions [B, T, 3] (t, h, w)
        y2, state = ttt(x2, positions2, state)

    ``forward`` pads T to a multiple of ``mini_batch`` internally and returns outputs for the T real
    tokens. ``positions`` may also cover the padded length (the padding rows' positions, used by the
    official mode where padding rows take part in the update; see :func:`official_positions`).
    """

    def __init__(self, cfg: TTTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.ttt = TTTBlockParameters(cfg)
        self.gating_alpha = nn.Parameter(torch.full((cfg.dim,), float(cfg.gate_init)))
        self.update = make_update_rule(cfg)

    @property
    def dtype(self) -> torch.dtype:
        return self.ttt.W1.dtype

    @property
    def fast_mode(self) -> str:
        """The execution path in use: "off" (eager reference) or a fused mode of ``TTTConfig.fast``.

        "auto" resolves to ``$AVMEM_TTT_FAST`` when set (any mode but "auto"; e.g. "fused" skips compiling on a
        machine where torch.compile is slow or broken), else to "compile" when the parameters are on CUDA and to
        "off" otherwise.

        Raises:
            ValueError: ``$AVMEM_TTT_FAST`` is not a mode.
        """
        mode = self.cfg.fast
        if mode == "auto":
            env = os.environ.get(FAST_ENV, "").strip()
            if env:
                if env not in FAST_MODES or env == "auto":
                    raise ValueError(f"${FAST_ENV}={env!r}: choose from {[m for m in FAST_MODES if m != 'auto']}")
                return env
            return "compile" if self.device.type == "cuda" else "off"
        return mode

    def set_fast(self, fast: str, fast_fp32: bool | None = None) -> "TTTMemory":
        """Switch the execution path (and optionally the fused precision) in place; returns self."""
        kw = {"fast": fast} if fast_fp32 is None else {"fast": fast, "fast_fp32": fast_fp32}
        self.cfg = replace(self.cfg, **kw)
        return self

    @property
    def device(self) -> torch.device:
        return self.ttt.W1.device

    def init_state(self, batch_size: int) -> TTTState:
        """State before the first token: the learned initial fast weights, tiled over the batch."""
        p = self.ttt
        fast = FastWeights(p.W1, p.b1, p.W2, p.b2).map(
            lambda t: t.unsqueeze(0).expand(batch_size, *t.shape)
        )
        return TTTState(fast=fast)

    def forward(self, x: Tensor, positions: Tensor, state: TTTState | None = None) -> tuple[Tensor, TTTState]:
        """Absorb ``x`` into the fast weights and read it out.

        Args:
            x: [B, T, dim] tokens, T >= 1, the dtype of the parameters.
            positions: integer (t, h, w) RoPE positions, [B, T or T_pad, 3] or [T or T_pad, 3].
            state: state returned by the previous call, or None to start from the learned weights.

        Returns:
            y [B, T, dim] = tanh(alpha) * TTT(x) + x, and the new state.
        """
        cfg = self.cfg
        batch, length = self._check_inputs(x, positions, state)
        if state is None:
            state = self.init_state(batch)
        mb = cfg.mini_batch
        padded = -(-length // mb) * mb
        pad = padded - length
        pos = self._padded_positions(positions, batch, length, padded)
        x_pad = F.pad(x, (0, 0, 0, pad)) if pad else x

        heads, d = cfg.num_heads, cfg.head_dim
        p = self.ttt
        mode = self.fast_mode
        if mode in COMPILE_MODES:
            try:
                return self._forward_fused(x, x_pad, pos, state, mode)
            except (torch._dynamo.exc.TorchDynamoException, torch._dynamo.exc.FailOnRecompileLimitHit) as exc:
                # a compiler problem of this machine must not stop the model: same maths, uncompiled; running out
                # of memory (also while autotuning) is not a compiler problem and is raised as such. The fallback
                # covers the forward: a recompilation inside backward (activation checkpointing) raises there.
                cause = exc
                while cause is not None:
                    if isinstance(cause, torch.OutOfMemoryError):
                        raise cause from None
                    cause = cause.__cause__ or getattr(cause, "inner_exception", None)
                warnings.warn(f"TTTMemory: torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                              f"switching this layer to fast='fused' (uncompiled)", RuntimeWarning, stacklevel=2)
                self.set_fast("fused")
                mode = "fused"
        if mode != "off":
            return self._forward_fused(x, x_pad, pos, state, mode)
        cis = rope_cis(pos, d, cfg.rope_theta, dtype=x.dtype)

        def split(t: Tensor) -> Tensor:
            return t.view(batch, padded, heads, d)

        q = apply_rope(F.normalize(split(p.wq(x_pad)), dim=-1), cis)
        k = apply_rope(F.normalize(split(p.wk(x_pad)), dim=-1), cis)
        v = split(p.wv(x_pad))
        gamma_t, beta_t = p.ttt_norm_weight.view(1, 1, heads, d), p.ttt_norm_bias.view(1, 1, heads, d)
        target = target_layer_norm(v - k, gamma_t, beta_t)
        official = cfg.compat == "official"
        if official:  # the released code forms LN(v - k) + k and subtracts k again (rounding in bf16)
            target = (target + k) - k

        valid = (torch.arange(padded, device=x.device) < length).to(x.dtype)
        lag_target = lag_mask = None
        if cfg.lag_distance > 0:
            x_lag, lag_mask = self._lag_inputs(x, x_pad, state)
            k_lag = apply_rope(F.normalize(split(p.lag_linear_key(x_pad)), dim=-1), cis)
            lag_target = target_layer_norm(split(p.lag_linear(x_lag)) - k_lag, gamma_t, beta_t)
            if official:
                lag_target = (lag_target + k_lag) - k_lag

        logits = torch.einsum("btc,hc->bht", x_pad, p.learnable_ttt_lr_weight[:, 0])
        eta = (1.0 / mb) * (cfg.base_lr * torch.sigmoid(logits + p.learnable_ttt_lr_bias.view(1, heads, 1)) / d)
        curv_weight = None
        if not official:
            eta = eta * valid
            curv_weight = valid

        n_mb = padded // mb

        def by_mb(t: Tensor) -> Tensor:  # [B, T_pad, H, d] -> [n_mb, B, H, mb, d]
            return t.view(batch, n_mb, mb, heads, d).permute(1, 0, 3, 2, 4)

        def tokens_by_mb(t: Tensor) -> Tensor:  # [T_pad] -> [n_mb, 1, 1, mb, 1]
            return t.view(n_mb, 1, 1, mb, 1)

        seq = MiniBatches(
            q=by_mb(q),
            k=by_mb(k),
            target=by_mb(target),
            eta=eta.view(batch, heads, n_mb, mb).permute(2, 0, 1, 3).unsqueeze(-1),
            valid=tokens_by_mb(valid),
            lag_target=None if lag_target is None else by_mb(lag_target),
            lag_mask=None if lag_mask is None else tokens_by_mb(lag_mask),
            curv_weight=None if curv_weight is None else tokens_by_mb(curv_weight),
        )

        fast, out, loss_sum = self._scan(state.fast, seq, self._mini_batch)

        o = out.permute(1, 0, 3, 2, 4).reshape(batch, padded, cfg.dim)[:, :length]
        y = torch.tanh(self.gating_alpha) * p.wo(p.post_norm(o)) + x

        return y, self._advanced(state, fast, x, x_pad, length, loss_sum / (length * heads))

    def _forward_fused(self, x: Tensor, x_pad: Tensor, pos: Tensor, state: TTTState, mode: str) -> tuple[Tensor, TTTState]:
        """``forward`` on the fused path (``fused.py``): same maths, pure functions, compiled per ``mode``."""
        cfg = self.cfg
        p = self.ttt
        batch, length = x.shape[:2]
        padded = x_pad.shape[1]
        heads, d, mb = cfg.num_heads, cfg.head_dim, cfg.mini_batch
        official = cfg.compat == "official"
        no_grad = not torch.is_grad_enabled()
        graphs = mode == "graphs" and no_grad and x.device.type == "cuda" and not torch.compiler.is_compiling()
        step_mode = mode if mode != "graphs" or graphs else "compile"
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()

        cos, sin = rope_cos_sin(pos, d, cfg.rope_theta, dtype=x.dtype)
        x_lag = lag_mask = None
        if cfg.lag_distance > 0:
            x_lag, lag_mask = self._lag_inputs(x, x_pad, state)
        valid = (torch.arange(padded, device=x.device) < length).to(x.dtype)
        params = dict(p.named_parameters())
        prologue = compiled("prologue", mode, heads=heads, base_lr=float(cfg.base_lr), mini_batch=mb, official=official)
        q, k, target, lag_target, eta = prologue(x_pad, x_lag, cos, sin, valid, params)
        n_mb = padded // mb

        def tokens_by_mb(t: Tensor) -> Tensor:  # [T_pad] -> [n_mb, 1, 1, mb, 1]
            return t.contiguous().view(n_mb, 1, 1, mb, 1)

        if step_mode != "fused" and not torch.compiler.is_compiling():
            # the step gets slices of these; an unbacked leading size keeps dynamo from specialising the
            # compiled step on n_mb == 1 vs > 1 (it guards on the size of a view's base)
            for t in (q, k, target, lag_target, eta, valid, lag_mask):
                if t is not None:
                    torch._dynamo.decorators.mark_unbacked(t, 0)

        seq = MiniBatches(
            q=q, k=k, target=target, eta=eta, valid=tokens_by_mb(valid), lag_target=lag_target,
            lag_mask=None if lag_mask is None else tokens_by_mb(lag_mask),
            curv_weight=None if official else tokens_by_mb(valid),
        )
        spec = StepSpec(update=cfg.update, cg_iters=cfg.cg_iters, official_cg=official, lag_weight=float(cfg.lag_weight),
                        curvature_ln=cfg.curvature == "ln", damping=float(cfg.damping), ns_steps=cfg.ns_steps,
                        fp32=cfg.fast_fp32)
        step = compiled("step", step_mode, spec=spec)
        log_step = self.update.log_step if cfg.update == "muon" else None

        def mini_batch(fast: FastWeights, m: MiniBatches) -> tuple[FastWeights, Tensor, Tensor]:
            r = step(*fast.tensors(), m.q, m.k, m.target, m.eta, m.valid, m.lag_target, m.lag_mask, m.curv_weight,
                     p.ttt_norm_weight, p.ttt_norm_bias, log_step)
            return FastWeights(*r[:4]), r[4], r[5]

        # contiguous weights: the learned initial state is an expand over the batch (stride 0)
        fast, out, loss_sum = self._scan(state.fast.map(Tensor.contiguous), seq, mini_batch)
        if graphs:  # outputs of a CUDA graph live in its pool until the next replay: keep the state
            fast = fast.map(torch.clone)
        epilogue = compiled("epilogue", mode)
        y = epilogue(out, x_pad, self.gating_alpha, p.post_norm.weight, p.post_norm.bias, p.wo.weight, p.wo.bias)
        if padded != length:
            y = y[:, :length].contiguous()
        return y, self._advanced(state, fast, x, x_pad, length, loss_sum / (length * heads))

    def _mini_batch(self, fast: FastWeights, mb: "MiniBatches") -> tuple[FastWeights, Tensor, Tensor]:
        """One update-then-read step; returns new weights, outputs [B,H,N,d], loss sum [B]."""
        cfg = self.cfg
        p = self.ttt
        gamma = p.ttt_norm_weight.unsqueeze(1)
        beta = p.ttt_norm_bias.unsqueeze(1)
        y, cache = forward_keys(fast, mb.k, gamma, beta)
        err = y - mb.target
        per_token = err.square().sum(-1, keepdim=True)
        if mb.lag_target is not None:
            lag_err = y - mb.lag_target
            err = err + cfg.lag_weight * mb.lag_mask * lag_err
            per_token = per_token + cfg.lag_weight * mb.lag_mask * lag_err.square().sum(-1, keepdim=True)
        dz2 = output_grad_to_z2(err, cache, gamma)
        grad = weighted_param_grad(cache, dz2, mb.eta)
        curvature = Curvature(
            cache=cache,
            token_weight=mb.curv_weight,
            ln_gamma=gamma if cfg.curvature == "ln" else None,
            damping=cfg.damping,
        )
        fast = fast - self.update(grad, curvature)
        out = read_out(fast, mb.q, gamma, beta)
        with torch.no_grad():
            loss = 0.5 * (per_token * mb.valid).sum(dim=(1, 2, 3))
        return fast, out, loss

    def _scan(
        self, fast: FastWeights, seq: "MiniBatches",
        step: Callable[[FastWeights, "MiniBatches"], tuple[FastWeights, Tensor, Tensor]],
    ) -> tuple[FastWeights, Tensor, Tensor]:
        """Run ``step`` over all mini-batches in order; outputs [n_mb, B, H, mb, d]."""
        n_mb = seq.q.shape[0]
        group = self.cfg.checkpoint_group
        use_ckpt = group > 0 and torch.is_grad_enabled()
        group = group if use_ckpt else n_mb

        def run(start: int, stop: int, *weights: Tensor) -> tuple[Tensor, ...]:
            cur = FastWeights(*weights)
            outs, losses = [], []
            for i in range(start, stop):
                cur, o, loss = step(cur, seq.at(i))
                outs.append(o)
                losses.append(loss)
            return (*cur.tensors(), torch.stack(outs), torch.stack(losses).sum(0))

        outs, loss_sum = [], 0.0
        weights = fast.tensors()
        for start in range(0, n_mb, group):
            stop = min(start + group, n_mb)
            if use_ckpt:
                res = checkpoint(run, start, stop, *weights, use_reentrant=False)
            else:
                res = run(start, stop, *weights)
            weights, out, loss = res[:4], res[4], res[5]
            outs.append(out)
            loss_sum = loss_sum + loss
        return FastWeights(*weights), torch.cat(outs), loss_sum

    def _lag_inputs(self, x: Tensor, x_pad: Tensor, state: TTTState) -> tuple[Tensor, Tensor]:
        """Inputs x_{t-T} of the lag objective [B, T_pad, dim] and its mask [T_pad]."""
        lag = self.cfg.lag_distance
        batch, padded, dim = x_pad.shape
        tail = state.lag_tail
        if self.cfg.compat == "official":
            clip = min(lag, padded)
            if tail is None:
                shifted = torch.cat([x_pad.new_zeros(batch, clip, dim), x_pad[:, : padded - clip]], dim=1)
                return shifted, torch.cat([x_pad.new_zeros(clip), x_pad.new_ones(padded - clip)])
            if tail.shape[1] == lag:
                carried = tail[:, :clip]
            else:
                # the tail is the whole previous padded input (P < lag rows); the official slice
                # prev[:, -lag:P - (lag - clip)] follows Python's negative-index rules
                carried = tail[:, -lag: tail.shape[1] - (lag - clip)]
            shifted = torch.cat([carried, x_pad[:, : padded - clip]], dim=1)
            if shifted.shape[1] != padded:
                return torch.zeros_like(x_pad), x_pad.new_zeros(padded)
            return shifted, x_pad.new_ones(padded)
        history = x.new_zeros(batch, 0, dim) if tail is None else tail
        ext = torch.cat([history, x], dim=1)
        t = torch.arange(padded, device=x.device)
        idx = history.shape[1] + t - lag
        ok = (idx >= 0) & (t < x.shape[1])
        idx = idx.clamp(0, ext.shape[1] - 1)
        mask = ok.to(x.dtype)
        return ext[:, idx] * mask.view(1, -1, 1), mask

    def _advanced(self, state: TTTState, fast, x: Tensor, x_pad: Tensor, length: int, loss: Tensor) -> TTTState:
        """The state after ``length`` more tokens: new fast weights, lag tail, token count and mean loss."""
        return TTTState(fast=fast, lag_tail=self._next_lag_tail(x, x_pad, state), tokens=state.tokens + length,
                        last_loss=loss)

    def _next_lag_tail(self, x: Tensor, x_pad: Tensor, state: TTTState) -> Tensor | None:
        lag = self.cfg.lag_distance
        if lag == 0:
            return None
        if self.cfg.compat == "official":
            return x_pad[:, -lag:]
        if state.lag_tail is None:
            return x[:, -lag:]
        return torch.cat([state.lag_tail, x], dim=1)[:, -lag:]

    def _padded_positions(self, positions: Tensor, batch: int, length: int, padded: int) -> Tensor:
        if positions.dim() == 2:
            positions = positions.unsqueeze(0).expand(batch, -1, -1)
        n = positions.shape[1]
        if n == padded:
            return positions
        if self.cfg.compat == "official":
            raise ValueError(
                f"positions cover {n} tokens but compat='official' pads the {length} tokens to {padded} "
                f"and the padding rows take part in the update: pass the padded positions "
                f"(e.g. official_positions(grid_hw, start, {padded}))"
            )
        return F.pad(positions, (0, 0, 0, padded - n))

    def _check_inputs(self, x: Tensor, positions: Tensor, state: TTTState | None) -> tuple[int, int]:
        cfg = self.cfg
        if not isinstance(x, Tensor):
            raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 3 or x.shape[-1] != cfg.dim:
            raise ValueError(f"x must have shape [B, T, {cfg.dim}], got {list(x.shape)}")
        batch, length, _ = x.shape
        if batch == 0 or length == 0:
            raise ValueError(f"x must hold at least one token in one sequence, got shape {list(x.shape)}")
        if x.dtype != self.dtype:
            raise ValueError(f"x has dtype {x.dtype} but the TTT memory's parameters are {self.dtype}")
        if x.device != self.device:
            raise ValueError(f"x is on {x.device} but the TTT memory is on {self.device}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x contains NaN or Inf")
        if not isinstance(positions, Tensor):
            raise ValueError(f"positions must be a torch.Tensor, got {type(positions).__name__}")
        if positions.dtype.is_floating_point or positions.dtype.is_complex or positions.dtype == torch.bool:
            raise ValueError(f"positions must be an integer tensor, got {positions.dtype}")
        padded = -(-length // cfg.mini_batch) * cfg.mini_batch
        allowed = sorted({length, padded})
        ok_shape = positions.shape[-1:] == (3,) and positions.shape[-2] in allowed and (
            positions.dim() == 2 or (positions.dim() == 3 and positions.shape[0] == batch)
        )
        if not ok_shape:
            raise ValueError(
                f"positions must have shape [{batch}, T, 3] or [T, 3] with T in {allowed}, "
                f"got {list(positions.shape)}"
            )
        if positions.device != x.device:
            raise ValueError(f"positions are on {positions.device} but x is on {x.device}")
        if bool((positions < 0).any()):
            raise ValueError("positions must be >= 0")
        if state is not None:
            self._check_state(state, batch)
        return batch, length

    def _check_state(self, state: TTTState, batch: int) -> None:
        if not isinstance(state, TTTState):
            raise ValueError(f"state must be a TTTState, got {type(state).__name__}")
        cfg = self.cfg
        d, h, heads = cfg.head_dim, cfg.hidden_dim, cfg.num_heads
        expected = {"W1": (batch, heads, d, h), "b1": (batch, heads, 1, h),
                    "W2": (batch, heads, h, d), "b2": (batch, heads, 1, d)}
        for name, t in zip(expected, state.fast.tensors()):
            if tuple(t.shape) != expected[name]:
                raise ValueError(f"state.fast.{name} has shape {list(t.shape)}, expected {list(expected[name])}")
            if t.dtype != self.dtype or t.device != self.device:
                raise ValueError(f"state.fast.{name} is {t.dtype} on {t.device}, expected {self.dtype} on {self.device}")
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"state.fast.{name} contains NaN or Inf")
        tail = state.lag_tail
        if tail is not None:
            if tail.dim() != 3 or tail.shape[0] != batch or tail.shape[2] != cfg.dim or tail.shape[1] > cfg.lag_distance:
                raise ValueError(
                    f"state.lag_tail has shape {list(tail.shape)}, expected [{batch}, <= {cfg.lag_distance}, {cfg.dim}]"
                )
            if not bool(torch.isfinite(tail).all()):
                raise ValueError("state.lag_tail contains NaN or Inf")

    @classmethod
    def from_official_state_dict(cls, state_dict: Mapping[str, Tensor], cfg: TTTConfig) -> "TTTMemory":
        """Build a layer holding the tensors of an official checkpoint or adapter.

        Accepts ``ttt_layers.ttt.<name>`` / ``ttt_gating.gating_alpha`` with or without the ``model.``,
        ``base_model.model.model.`` and ``modules_to_save.default.`` forms (reference §5.4), as well as
        this class's own keys. Other keys (LoRA, base weights) are ignored.

        Raises:
            ValueError: naming the first missing, mis-shaped, non-finite or unexpected TTT tensor.
        """
        layer = cls(cfg)
        found = extract_ttt_tensors(state_dict)
        own = layer.state_dict()
        unexpected = sorted(set(found) - set(own))
        if unexpected:
            raise ValueError(
                f"checkpoint holds TTT tensors this configuration does not have: {unexpected} "
                f"(lag_distance={cfg.lag_distance}; only the official 'forward_usekey_carryover' layout is supported)"
            )
        for name, ref in own.items():
            if name not in found:
                if name.startswith("update."):
                    raise ValueError(f"checkpoint is missing '{name}', the learned step of update='{cfg.update}' "
                                     "(official checkpoints have none: they were trained with hf/sgd)")
                official_name = f"ttt_layers.{name}" if name.startswith("ttt.") else "ttt_gating.gating_alpha"
                raise ValueError(f"checkpoint is missing TTT tensor '{official_name}'")
            t = found[name]
            if tuple(t.shape) != tuple(ref.shape):
                raise ValueError(f"TTT tensor '{name}' has shape {list(t.shape)}, expected {list(ref.shape)}")
            if not t.dtype.is_floating_point:
                raise ValueError(f"TTT tensor '{name}' has dtype {t.dtype}, expected a floating dtype")
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"TTT tensor '{name}' contains NaN or Inf")
        layer.load_state_dict({name: found[name].to(own[name].dtype) for name in own})
        return layer

    def extra_repr(self) -> str:
        cfg = self.cfg
        return (f"dim={cfg.dim}, heads={cfg.num_heads}, hidden_mult={cfg.hidden_mult}, mini_batch={cfg.mini_batch}, "
                f"update={cfg.update}, compat={cfg.compat}, params={sum(p.numel() for p in self.parameters()):,}")


def parameter_count(cfg: TTTConfig) -> int:
    """Parameters of a :class:`TTTMemory` with ``cfg`` (without building it)."""
    dim, heads, d, h = cfg.dim, cfg.num_heads, cfg.head_dim, cfg.hidden_dim
    linears = 4 + (2 if cfg.lag_distance > 0 else 0)
    n = linears * (dim * dim + dim)
    n += heads * dim + heads + 2 * heads * d
    n += heads * (d * h + h + h * d + d)
    n += 2 * dim + dim
    n += heads if cfg.update == "muon" else 0
    return n


def flop_count(cfg: TTTConfig, tokens: int, backward: bool = False) -> float:
    """Matmul FLOPs of one call over ``tokens`` tokens (padded to the mini-batch; elementwise work is < 1 %).

    Per mini-batch of N tokens, F = 4 N d_h h H (one fast-weight MLP forward, all heads): sgd = 3.5F
    (forward on the keys 1F, gradient 1.5F, read-out 1F), hf = 3.5F + 3F per CG iteration (one
    Gauss-Newton product = 3 matmuls for J v + 3 for J^T u), muon = 3.5F + 5 Newton-Schulz steps on W1
    and W2. Projections: 2 T D^2 per Linear (q, k, v, o, and lag, lag_key with the lag objective) plus
    the learning-rate gate 2 T D H. ``backward=True`` counts forward + backward as 3x the forward.
    This is the count of ``docs/ttt_math.md`` §6 and of the anchors (``anchors_ttt.md`` §6).
    """
    padded = -(-tokens // cfg.mini_batch) * cfg.mini_batch
    d, h, heads = cfg.head_dim, cfg.hidden_dim, cfg.num_heads
    n_mb = padded // cfg.mini_batch
    unit = 4 * cfg.mini_batch * d * h * heads * n_mb
    inner = 3.5 * unit
    if cfg.update == "hf":
        inner += 3 * unit * cfg.cg_iters
    elif cfg.update == "muon":
        a, b = min(d, h), max(d, h)
        inner += 2 * heads * n_mb * cfg.ns_steps * (4 * a * a * b + 2 * a ** 3)
    linears = 4 + (2 if cfg.lag_distance else 0)
    total = inner + linears * 2 * padded * cfg.dim ** 2 + 2 * padded * cfg.dim * heads
    return 3 * total if backward else total
