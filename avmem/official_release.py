"""Loader for the official video-SALMONN S release (reference §5.1-§5.5).

The release is a Hugging Face base folder (Qwen3-VL-8B with the Whisper + Q-Former audio encoder
under ``model.audio.*`` and ``audio_config`` in ``config.json``) plus a PEFT adapter folder
(``adapter_config.json`` + ``adapter_model.safetensors``) holding LoRA pairs for the LLM's q/k/v
projections and the TTT block and gate as ``modules_to_save``. The official code loads the adapter
with ``strict=False``, so a missing TTT tensor silently stays random; this loader refuses instead:
every TTT, gate and audio tensor must be present with the right shape, and every LoRA pair must
match a base weight.

Merging follows PEFT: ``W <- W + s * B @ A`` with ``s = lora_alpha / r`` (``lora_alpha / sqrt(r)`` with
``use_rslora``), computed in float32.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .backbones.qwen import backbone_class
from .encoders.audio import AudioEncoder, AudioEncoderConfig
from .memory.ttt import TTTConfig, TTTMemory
from .memory.ttt.official import infer_config_fields, native_key, official_key
from .model import AVMemModel, ModelSpec, load_safetensors

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TTT_CONFIG = "avmem_ttt.json"
BASE_TYPES = ("qwen3_vl", "qwen2_5_vl")
_LORA = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.default)?\.weight$")


def find_release(path: Path) -> tuple[Path, Path] | None:
    """(base, adapter) folders if ``path`` is laid out as the release (``base/`` + one adapter folder)."""
    base = path / "base"
    if not (base / "config.json").is_file():
        return None
    adapters = sorted(p for p in path.iterdir() if (p / ADAPTER_CONFIG).is_file())
    if len(adapters) != 1:
        raise ValueError(f"{path}: expected exactly one adapter folder (with {ADAPTER_CONFIG}) beside base/, "
                         f"found {len(adapters)}")
    return base, adapters[0]


def load_official_release(base: str | Path, adapter: str | Path, cg_iters: int | None = None,
                          device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> AVMemModel:
    """Build the full model from the release folders (or from an avmem training run, which writes the same
    layout: ``base/`` + an adapter folder that also holds ``avmem_ttt.json``, the exact TTT configuration).

    Args:
        base: the base folder (``models/video_SALMONN_S/base``).
        adapter: the PEFT adapter folder (``models/video_SALMONN_S/video_salmonn_s_ttt_lora``).
        cg_iters: CG iterations of the TTT update; None keeps the adapter's recorded value, or for the
            release (which records none) its script's 0 (a plain gradient step; the paper's TTT_HF uses 3).
        device, dtype: where and in which precision to run (the release runs bf16).

    Raises:
        ValueError: naming the first missing or mis-shaped tensor or file.
    """
    base, adapter = Path(base), Path(adapter)
    model_type, backbone, audio, audio_cfg = _load_base(base, device, dtype)
    hidden = backbone.hidden_size

    adapter_cfg = _read_json(adapter / ADAPTER_CONFIG)
    weights = adapter / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise ValueError(f"{adapter}: missing {ADAPTER_WEIGHTS}")
    tensors = load_safetensors(weights)
    foreign = sorted(k for k in tensors if not _LORA.match(k) and native_key(k) is None)
    if foreign:
        raise ValueError(f"{weights}: holds tensors that are neither LoRA nor the TTT block/gate, e.g. '{foreign[0]}' "
                         f"({len(foreign)} in all); other modules_to_save are not supported")
    merged = merge_lora(backbone.model, tensors, adapter_cfg)

    recorded = _read_json(adapter / TTT_CONFIG) if (adapter / TTT_CONFIG).is_file() else {}
    if recorded is None:  # an avmem run trained without a TTT block
        if any(native_key(k) is not None for k in tensors):
            raise ValueError(f"{adapter / TTT_CONFIG} says the run had no TTT block, but {weights} holds TTT tensors")
        spec = ModelSpec(backbone_type=model_type, audio=None if audio_cfg is None else audio_cfg.to_dict())
        return AVMemModel(backbone=backbone, ttt=None, audio=audio, spec=spec, source=f"{base} + {adapter}",
                          extras={"lora_pairs": merged})
    if recorded:
        ttt_cfg = TTTConfig.from_dict(recorded)
        if cg_iters is not None:
            ttt_cfg = replace(ttt_cfg, cg_iters=cg_iters)
    else:
        # the release uses the lag objective ('forward_usekey_carryover', distance 1024): its tensors are required
        fields = {**infer_config_fields(tensors), "lag_distance": 1024}
        ttt_cfg = TTTConfig(**fields, mini_batch=1024, base_lr=0.1, update="hf", cg_iters=cg_iters or 0,
                            lag_weight=0.1, compat="official")
    if ttt_cfg.dim != hidden:
        raise ValueError(f"{weights}: TTT width {ttt_cfg.dim} does not match the LLM hidden size {hidden}")
    ttt = TTTMemory.from_official_state_dict(tensors, ttt_cfg).to(device=backbone.device, dtype=backbone.dtype)
    spec = ModelSpec(backbone_type=model_type, ttt=ttt_cfg.to_dict(),
                     audio=None if audio_cfg is None else audio_cfg.to_dict())
    return AVMemModel(backbone=backbone, ttt=ttt, audio=audio, spec=spec, source=f"{base} + {adapter}",
                      extras={"lora_pairs": merged})


def is_release_base(path: Path) -> bool:
    """Whether ``path`` is a base folder with an audio encoder (``audio_config`` in its config.json)."""
    try:
        return "audio_config" in json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False


def load_release_base(base: str | Path, device: str | torch.device = "cpu",
                      dtype: torch.dtype | None = None) -> AVMemModel:
    """A release base folder alone (backbone + audio encoder, no TTT block): the starting point for training a
    new TTT memory (``new_ttt`` in the training config) or for audio-visual answering without one."""
    model_type, backbone, audio, audio_cfg = _load_base(Path(base), device, dtype)
    spec = ModelSpec(backbone_type=model_type, audio=audio_cfg.to_dict())
    return AVMemModel(backbone=backbone, ttt=None, audio=audio, spec=spec, source=str(base))


def _load_base(base: Path, device, dtype):
    config = _read_json(base / "config.json")
    model_type = config.get("model_type")
    if model_type not in BASE_TYPES:
        raise ValueError(f"{base}: a release base is a {' or '.join(BASE_TYPES)} model, got model_type {model_type!r}")
    if "audio_config" not in config:  # a video-only base (avmem runs without audio write these)
        backbone = backbone_class(model_type).from_pretrained(base, need_audio=False, dtype=dtype, device=device)
        return model_type, backbone, None, None
    backbone = backbone_class(model_type).from_pretrained(base, need_audio=True, dtype=dtype, device=device)
    audio_cfg = AudioEncoderConfig.from_official(config["audio_config"], llm_dim=backbone.hidden_size,
                                                 qformer_config=config.get("qformer_config"))
    audio = AudioEncoder(audio_cfg)
    audio.load_official_state_dict(_base_tensors(base, prefix="model.audio."))
    audio = audio.to(device=backbone.device, dtype=backbone.dtype).eval()
    return model_type, backbone, audio, audio_cfg


def save_release_base(model: AVMemModel, folder: str | Path) -> Path:
    """Write ``model``'s backbone and audio encoder as a release base folder (§5.1): the Hugging Face folder,
    the audio encoder's tensors under ``model.audio.*`` (in ``audio.safetensors``) and ``audio_config`` in
    ``config.json``. Call it before adapters are injected into the backbone."""
    folder = Path(folder)
    if any("lora_" in name for name, _ in model.backbone.model.named_parameters()):
        raise ValueError("save_release_base: the backbone already carries LoRA layers")
    model.save_backbone(folder)
    if model.audio is None:  # video only: a plain Hugging Face folder
        return folder
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.audio.official_state_dict().items()}
    save_file(tensors, str(folder / "audio.safetensors"), metadata={"format": "pt"})
    config = _read_json(folder / "config.json")
    config["audio_config"] = model.audio.audio_config.to_official()
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def save_release_adapter(folder: str | Path, lora: dict[str, torch.Tensor], ttt: dict[str, torch.Tensor],
                         ttt_config: TTTConfig | None, adapter_config: dict) -> Path:
    """Write a PEFT adapter folder in the release layout (§5.4): LoRA pairs as
    ``base_model.model.<module>.lora_{A,B}.weight``, the TTT block and gate as ``modules_to_save``
    (``base_model.model.model.ttt_layers.ttt.<name>``, ``…ttt_gating.gating_alpha``), ``adapter_config.json``,
    and ``avmem_ttt.json`` (the TTT configuration, which the release does not record; ``null`` for a run
    without a TTT block).

    ``lora`` maps backbone parameter names (``model.language_model.layers.0.self_attn.q_proj.lora_A.default
    .weight`` as PEFT names them, or without ``.default``) to tensors; ``ttt`` is the TTT layer's state dict
    (``ttt.W1``, ``gating_alpha``, ...) and ``ttt_config`` its configuration.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, value in lora.items():
        m = _LORA.match(name)
        if m is None:
            raise ValueError(f"'{name}' is not a LoRA weight name")
        tensors[f"base_model.model.{m.group('module')}.lora_{m.group('ab')}.weight"] = value
    for name, value in ttt.items():
        tensors[official_key(name)] = value
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(folder / ADAPTER_WEIGHTS),
              metadata={"format": "pt"})
    (folder / ADAPTER_CONFIG).write_text(json.dumps(adapter_config, indent=2))
    (folder / TTT_CONFIG).write_text(json.dumps(None if ttt_config is None else ttt_config.to_dict(), indent=2))
    return folder


def merge_lora(model: torch.nn.Module, tensors: dict[str, torch.Tensor], adapter_config: dict) -> int:
    """Fold every LoRA pair of ``tensors`` into ``model``'s weights in place; returns the number merged.

    Every language-model layer must carry a pair for each name in ``target_modules`` (the release:
    q_proj, k_proj, v_proj).
    """
    r = adapter_config.get("r")
    alpha = adapter_config.get("lora_alpha")
    if not isinstance(r, int) or r <= 0 or not isinstance(alpha, (int, float)):
        raise ValueError(f"{ADAPTER_CONFIG}: needs a positive int 'r' and a number 'lora_alpha', got r={r!r}, "
                         f"lora_alpha={alpha!r}")
    for unsupported in ("use_dora", "alpha_pattern", "rank_pattern"):
        if adapter_config.get(unsupported):
            raise ValueError(f"{ADAPTER_CONFIG}: '{unsupported}' adapters are not supported")
    scale = alpha / math.sqrt(r) if adapter_config.get("use_rslora") else alpha / r
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        m = _LORA.match(key)
        if m:
            pairs.setdefault(m.group("module"), {})[m.group("ab")] = value
    params = dict(model.named_parameters())
    targets = adapter_config.get("target_modules") or []
    if isinstance(targets, str):
        raise ValueError(f"{ADAPTER_CONFIG}: regex target_modules are not supported, got {targets!r}")
    for name in params:
        m = re.match(r"^(model\.language_model\.layers\.\d+\.self_attn\.(\w+))\.weight$", name)
        if m and m.group(2) in targets and m.group(1) not in pairs:
            raise ValueError(f"adapter has no LoRA pair for '{m.group(1)}' (target_modules {targets})")
    if not pairs:
        raise ValueError("adapter holds no LoRA pairs (expected q/k/v_proj lora_A/lora_B of the language model)")
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            missing = "lora_B" if "A" in ab else "lora_A"
            raise ValueError(f"adapter has no {missing} for '{module}'")
        target = params.get(f"{module}.weight")
        if target is None:
            raise ValueError(f"adapter LoRA targets '{module}', which the base model does not have")
        a, b = ab["A"].float(), ab["B"].float()
        if a.shape[0] != r or b.shape[1] != r or (b.shape[0], a.shape[1]) != tuple(target.shape):
            raise ValueError(f"LoRA pair for '{module}' has shapes A {list(a.shape)}, B {list(b.shape)}; expected "
                             f"A [{r}, {target.shape[1]}], B [{target.shape[0]}, {r}]")
        with torch.no_grad():
            target.copy_((target.float() + scale * (b @ a).to(target.device)).to(target.dtype))
    return len(pairs)


def _base_tensors(base: Path, prefix: str) -> dict[str, torch.Tensor]:
    files = sorted(base.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{base}: no .safetensors weight files")
    out: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    if key.startswith(prefix):
                        out[key] = handle.get_tensor(key)
        except (SafetensorError, OSError):
            load_safetensors(file)  # raises the one-line reason (e.g. a pickle-based file)
            raise
    if not out:
        raise ValueError(f"{base}: no '{prefix}*' tensors (the audio encoder is missing from the base weights)")
    return out


def _read_json(path: Path):
    if not path.is_file():
        raise ValueError(f"{path}: missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc})") from None
