"""Configuration of the TTT memory layer (video-SALMONN S, seed 001 §3.2, reference §2)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

UpdateName = Literal["hf", "sgd", "muon"]
CompatName = Literal["official", "clean"]
CurvatureName = Literal["mlp", "ln"]
FastName = Literal["auto", "off", "fused", "compile", "autotune", "graphs"]
FAST_MODES = ("auto", "off", "fused", "compile", "autotune", "graphs")


@dataclass(frozen=True)
class TTTConfig:
    """Hyper-parameters of :class:`~avmem.memory.ttt.TTTMemory`.

    Defaults are the released video-SALMONN S configuration (reference §2.1) except ``update``,
    which is the paper's TTT_HF (the released script runs ``cg_iters=0``).

    Attributes:
        dim: model width d (the LLM hidden size). Must be divisible by ``num_heads``.
        num_heads: number of fast-weight heads H; head width d_h = dim / H must be a multiple of 16
            (the 3-D RoPE splits each head into t/h/w bands of d_h/4, 3d_h/8, 3d_h/8).
        hidden_mult: fast-weight MLP hidden width = hidden_mult * d_h.
        mini_batch: tokens per fast-weight update (update-then-read inside a mini-batch).
        base_lr: base inner learning rate; eta = base_lr * sigmoid(w.x + b) / d_h / mini_batch.
        update: "hf" (conjugate gradient on the Gauss-Newton matrix), "sgd" or "muon".
        cg_iters: maximum CG iterations for "hf" (0 gives the plain eta-weighted gradient step,
            which is what the released script runs).
        lag_distance: distance T of the long-span (lag) objective; 0 disables it and its parameters.
        lag_weight: weight lambda of the lag term (the official ``ema_factor``).
        compat: "official" reproduces the released code including its quirks; "clean" is the
            paper's version (padding masked, real carry-over, textbook CG indicator).
        curvature: "mlp" (B_MLP, paper and official) or "ln" (B_LN, through the LayerNorm); clean only.
        damping: Levenberg-Marquardt damping added to the curvature (G + damping*I); clean only.
        rope_theta: RoPE base.
        gate_init: initial value of the tanh gate parameter alpha.
        muon_step_init: initial Muon step size eta^Muon (per head, learnable).
        ns_steps: Newton-Schulz iterations for "muon".
        checkpoint_group: when > 0 and gradients are enabled, recompute groups of this many
            mini-batches in the backward pass (activation checkpointing).
        fast: execution path (same maths; ``docs/ttt_math.md`` §7): "off" = the eager reference;
            "fused" = the pure fused functions of ``fused.py`` run eagerly; "compile" = those under
            ``torch.compile``; "autotune" = compiled with ``max-autotune-no-cudagraphs``; "graphs" =
            compiled with CUDA graphs (``reduce-overhead``) for the step when gradients are off (with
            gradients it is "compile"). "auto" (default) = "compile" for CUDA parameters, else "off".
        fast_fp32: on the fused path, keep a step's activations and CG vectors in fp32 with
            model-dtype matmul operands (default False: everything in the model dtype, as the
            reference and the official code).
    """

    dim: int = 4096
    num_heads: int = 8
    hidden_mult: int = 1
    mini_batch: int = 1024
    base_lr: float = 0.1
    update: UpdateName = "hf"
    cg_iters: int = 3
    lag_distance: int = 1024
    lag_weight: float = 0.1
    compat: CompatName = "official"
    curvature: CurvatureName = "mlp"
    damping: float = 0.0
    rope_theta: float = 10000.0
    gate_init: float = 0.1
    muon_step_init: float = 0.01
    ns_steps: int = 5
    checkpoint_group: int = 0
    fast: FastName = "auto"
    fast_fp32: bool = False

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"TTTConfig: {msg}")

        for name in ("dim", "num_heads", "hidden_mult", "mini_batch"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                 f"{name} must be a positive int, got {value!r}")
        for name in ("cg_iters", "lag_distance", "ns_steps", "checkpoint_group"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                 f"{name} must be an int >= 0, got {value!r}")
        need(self.dim % self.num_heads == 0,
             f"dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        need(self.head_dim % 16 == 0,
             f"head width dim/num_heads = {self.head_dim} must be a multiple of 16 for the 3-D RoPE")
        need(self.update in ("hf", "sgd", "muon"), f"update must be 'hf', 'sgd' or 'muon', got {self.update!r}")
        need(self.compat in ("official", "clean"), f"compat must be 'official' or 'clean', got {self.compat!r}")
        need(self.fast in FAST_MODES, f"fast must be one of {FAST_MODES}, got {self.fast!r}")
        need(isinstance(self.fast_fp32, bool), f"fast_fp32 must be a bool, got {self.fast_fp32!r}")
        need(self.curvature in ("mlp", "ln"), f"curvature must be 'mlp' or 'ln', got {self.curvature!r}")
        for name in ("base_lr", "lag_weight", "damping", "rope_theta", "muon_step_init"):
            value = getattr(self, name)
            need(isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
                 and abs(value) != float("inf"), f"{name} must be a finite number, got {value!r}")
        need(self.base_lr > 0, f"base_lr must be > 0, got {self.base_lr}")
        need(self.lag_weight >= 0, f"lag_weight must be >= 0, got {self.lag_weight}")
        need(self.damping >= 0, f"damping must be >= 0, got {self.damping}")
        need(self.rope_theta > 0, f"rope_theta must be > 0, got {self.rope_theta}")
        need(self.muon_step_init > 0, f"muon_step_init must be > 0, got {self.muon_step_init}")
        if self.compat == "official":
            need(self.curvature == "mlp",
                 "the official code uses B_MLP; curvature='ln' needs compat='clean'")
            need(self.damping == 0.0, "the official code has no damping; damping > 0 needs compat='clean'")
        if self.update != "hf":
            need(self.curvature == "mlp" and self.damping == 0.0,
                 f"curvature/damping only apply to update='hf', not {self.update!r}")

    @property
    def head_dim(self) -> int:
        """Per-head width d_h."""
        return self.dim // self.num_heads

    @property
    def hidden_dim(self) -> int:
        """Fast-weight MLP hidden width."""
        return self.hidden_mult * self.head_dim

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable) of all fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TTTConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"TTTConfig: unknown keys {unknown}")
        return cls(**data)
