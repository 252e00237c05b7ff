"""Training configuration (``avmem train CONFIG.yaml``): one flat YAML mapping plus a ``lora`` section.

Unknown keys, wrong types and bad values are rejected before anything is loaded, with a one-line
message naming the key. Defaults follow the paper's recipe (seed 001 §4.1, §4.3): LoRA r=128,
alpha=256, dropout 0.05 on the LLM's q/k/v projections, the TTT block trainable, lr 2e-5, 4 FPS with at
most 1024 frames per video, one epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

UPDATES = ("hf", "sgd", "muon")
READERS = ("full", "omnimem")
PRECISIONS = ("auto", "fp32", "bf16")
REPORTERS = ("tensorboard", "none")


@dataclass
class LoraSettings:
    """LoRA on the language model: rank, alpha, dropout and the projection names it wraps."""

    r: int = 128
    alpha: float = 256.0
    dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj"])


@dataclass
class TrainConfig:
    """Everything one training run needs.

    Attributes (besides the obvious):
        model: a :func:`avmem.load_model` source (preset, avmem folder, release folder, Qwen folder or hub id).
        data: official-format JSON/JSONL files (a list, or one comma-separated string).
        new_ttt: a freshly initialised TTT block (the paper's recipe on a base without one; it replaces a block
            the model already has) with
            ``ttt_heads`` heads, mini-batches of ``ttt_mini_batch`` tokens and the lag objective at distance
            ``ttt_lag`` (release architecture: 8, 1024, 1024).
        memory_layer: with ``new_ttt``, "ttt" or "mamba2" (a Mamba-2 layer with ``ttt_heads`` heads in its
            place: the memory study's comparison; saved as an avmem model folder, so ``use_lora: false``).
        ttt_update / cg_iters: override the TTT update rule (hf | sgd | muon) and its CG iterations.
        ttt_checkpoint_group: recompute groups of this many TTT mini-batches in backward (0: keep all).
        ttt_only_steps: two-stage schedule: the first steps train only the TTT block (LoRA lr held at 0).
        use_lora: LoRA on the LLM (the paper); train_llm / train_vision / train_audio: train every weight of
            the language model / vision tower / audio encoder instead (OmniMem's ``--train_llm``; small models
            trained from scratch, such as the demo model). Runs that train whole parts are saved as avmem model
            folders (``OUT/model``) rather than release adapters.
        reader: "full" (the whole memory reaches the LLM) or "omnimem" (budget-aware fine-tuning: the
            loss runs through OmniMem's compressed forward with ``budget_file`` / ``read_tokens``).
        precision: "auto" = bf16 frozen weights on CUDA (trainable weights in fp32), fp32 on CPU.
        video_policy / bank_step: the video token memory's compression (see :class:`avmem.SessionSettings`).
        resume: continue from the newest ``checkpoint-N`` in ``output_dir`` ("latest") or a given folder.
        validate_samples: decode-probe this many samples before training starts.
    """

    model: str = ""
    data: list[str] = field(default_factory=list)
    output_dir: str = ""
    fps: float = 4.0
    max_frames: int = 1024
    max_pixels: int = 176400
    min_pixels: int = 784
    video_tokens: int = 16384
    audio_tokens: int = 4096
    video_policy: str = "discard"
    bank_step: int = 4096
    use_audio: bool = True
    use_ttt: bool = True
    new_ttt: bool = False
    memory_layer: str = "ttt"
    ttt_heads: int = 8
    ttt_mini_batch: int = 1024
    ttt_lag: int = 1024
    ttt_update: str | None = None
    cg_iters: int | None = None
    ttt_checkpoint_group: int = 16
    gradient_checkpointing: bool = False
    use_lora: bool = True
    train_llm: bool = False
    train_vision: bool = False
    train_audio: bool = False
    lora: LoraSettings = field(default_factory=LoraSettings)
    lr: float = 2e-5
    ttt_lr: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    epochs: int = 1
    max_steps: int | None = None
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    ttt_only_steps: int = 0
    reader: str = "full"
    budget_file: str | None = None
    read_tokens: int = 16384
    read_chunk: int = 16384
    omni_lambda: float = 0.02
    precision: str = "auto"
    seed: int = 0
    num_workers: int = 2
    logging_steps: int = 10
    save_steps: int = 500
    report_to: str = "tensorboard"
    resume: str | None = None
    validate_samples: int = 8

    def check(self) -> None:
        """Raise ValueError naming the first bad value."""
        if not self.model:
            raise ValueError("config: 'model' is required")
        if not self.data:
            raise ValueError("config: 'data' is required (official-format JSON/JSONL files)")
        if not self.output_dir:
            raise ValueError("config: 'output_dir' is required")
        positive = ("ttt_heads", "ttt_mini_batch", "fps", "max_frames", "max_pixels", "min_pixels", "video_tokens", "audio_tokens", "bank_step", "epochs",
                    "grad_accum", "read_tokens", "read_chunk", "logging_steps", "save_steps")
        for name in positive:
            value = getattr(self, name)
            if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
                raise ValueError(f"config: '{name}' must be > 0, got {value}")
        for name in ("lr", "weight_decay", "max_grad_norm", "omni_lambda", "ttt_checkpoint_group", "ttt_only_steps",
                     "num_workers", "validate_samples", "ttt_lag"):
            value = getattr(self, name)
            if not value >= 0 or not math.isfinite(value):
                raise ValueError(f"config: '{name}' must be >= 0, got {value}")
        if self.ttt_lr is not None and not (self.ttt_lr >= 0 and math.isfinite(self.ttt_lr)):
            raise ValueError(f"config: 'ttt_lr' must be >= 0, got {self.ttt_lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"config: 'warmup_ratio' must be in [0, 1), got {self.warmup_ratio}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"config: 'max_steps' must be > 0, got {self.max_steps}")
        if self.cg_iters is not None and self.cg_iters < 0:
            raise ValueError(f"config: 'cg_iters' must be >= 0, got {self.cg_iters}")
        if self.fps > 30:
            raise ValueError(f"config: 'fps' must be <= 30, got {self.fps}")
        if self.reader == "omnimem" and self.gradient_checkpointing:
            raise ValueError("config: gradient_checkpointing does not work with reader: omnimem (the compressed "
                             "forward needs the per-layer KV cache, which checkpointed layers do not keep)")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"config: min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")
        for name, allowed in (("ttt_update", UPDATES), ("reader", READERS), ("precision", PRECISIONS),
                              ("report_to", REPORTERS)):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ValueError(f"config: '{name}' must be one of {', '.join(allowed)}; got {value!r}")
        if self.use_lora and self.train_llm:
            raise ValueError("config: train_llm trains every LLM weight; set use_lora: false")
        if not (self.use_lora or self.use_ttt or self.train_llm or self.train_vision or self.train_audio):
            raise ValueError("config: nothing to train (use_lora, use_ttt, train_llm, train_vision, train_audio "
                             "are all off)")
        if self.use_lora and (self.train_vision or self.train_audio):
            raise ValueError("config: train_vision / train_audio save whole models, which cannot hold LoRA layers; "
                             "set use_lora: false (with train_llm: true to train the LLM too)")
        from ..session import POLICIES

        if self.video_policy not in POLICIES:
            raise ValueError(f"config: 'video_policy' must be one of {', '.join(POLICIES)}, got {self.video_policy!r}")
        if self.memory_layer not in ("ttt", "mamba2"):
            raise ValueError(f"config: 'memory_layer' must be ttt or mamba2, got {self.memory_layer!r}")
        if self.memory_layer == "mamba2" and (not self.new_ttt or self.use_lora):
            raise ValueError("config: memory_layer: mamba2 needs new_ttt: true and use_lora: false")
        if self.train_audio and not self.use_audio:
            raise ValueError("config: train_audio needs use_audio: true")
        if self.budget_file is not None and self.reader != "omnimem":
            raise ValueError("config: 'budget_file' only applies with reader: omnimem")
        lora = self.lora
        if lora.r <= 0 or not lora.alpha > 0 or not 0 <= lora.dropout < 1:
            raise ValueError(f"config: lora needs r > 0, alpha > 0, 0 <= dropout < 1; got r={lora.r}, "
                             f"alpha={lora.alpha}, dropout={lora.dropout}")
        if not lora.targets or not all(isinstance(t, str) and t.isidentifier() for t in lora.targets):
            raise ValueError(f"config: lora.targets must be a non-empty list of module names, got {lora.targets!r}")


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """Check one YAML value against the field's annotation (a string, as the module uses postponed annotations)."""
    kind = str(kind)
    optional = "None" in kind
    if value is None:
        if optional:
            return None
        raise ValueError(f"config: '{key}' must not be empty")
    base = kind.replace(" | None", "")
    if base == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"config: '{key}' must be true or false, got {value!r}")
        return value
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config: '{key}' must be an integer, got {value!r}")
        return value
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config: '{key}' must be a number, got {value!r}")
        return float(value)
    if base == "str":
        if not isinstance(value, str):
            raise ValueError(f"config: '{key}' must be a string, got {value!r}")
        return value
    if base == "list[str]":
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"config: '{key}' must be a list of strings, got {value!r}")
        return value
    raise AssertionError(f"unhandled config type {kind} for {key}")


def config_from_dict(data: dict) -> TrainConfig:
    """Build and check a :class:`TrainConfig`. Relative paths (model, data, output_dir, budget_file, resume) are
    relative to the working directory, as for every other avmem command."""
    if not isinstance(data, dict):
        raise ValueError("config: the file must hold a mapping of keys to values")
    known = {f.name: f for f in fields(TrainConfig)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"config: unknown key '{unknown[0]}' (known: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key == "lora":
            values["lora"] = _lora_from_dict(value)
        else:
            values[key] = _coerce(key, value, known[key].type)
    cfg = TrainConfig(**values)
    cfg.check()
    return cfg


def _lora_from_dict(value: Any) -> LoraSettings:
    if not isinstance(value, dict):
        raise ValueError(f"config: 'lora' must be a mapping (r, alpha, dropout, targets), got {value!r}")
    known = {f.name: f for f in fields(LoraSettings)}
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ValueError(f"config: unknown key 'lora.{unknown[0]}' (known: {', '.join(sorted(known))})")
    return LoraSettings(**{k: _coerce(f"lora.{k}", v, known[k].type) for k, v in value.items()})


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML training config (see ``avmem/train/configs/``)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    try:
        return config_from_dict(data if data is not None else {})
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
