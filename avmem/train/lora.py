"""LoRA on the language model's projections (peft), and the adapter in the release layout.

The adapters are injected in place (``peft.inject_adapter_in_model``), so the backbone keeps its own
module tree and the streaming code runs unchanged; only the LLM layers' ``targets`` are wrapped (the
vision tower's ``qkv`` and the audio encoder live elsewhere or under other names).
"""

from __future__ import annotations

import re

from torch import nn

from ..model import AVMemModel
from .config import LoraSettings


def add_lora(model: AVMemModel, settings: LoraSettings) -> dict:
    """Inject LoRA into ``model.backbone.model`` (all other LLM weights frozen); returns the PEFT
    ``adapter_config.json`` dict in the release's form (explicit target list, TTT as modules_to_save)."""
    from peft import LoraConfig, inject_adapter_in_model

    llm = model.backbone.model
    if any("lora_" in n for n, _ in llm.named_parameters()):
        raise ValueError("the backbone already carries LoRA layers")
    names = "|".join(settings.targets)
    pattern = rf"model\.language_model\.layers\.\d+\.self_attn\.({names})"
    found = [n for n, _ in llm.named_modules() if re.fullmatch(pattern, n)]
    for target in settings.targets:
        if not any(n.endswith("." + target) for n in found):
            raise ValueError(f"lora.targets: '{target}' is not an attention projection of the language model's "
                             f"layers (have e.g. q_proj, k_proj, v_proj, o_proj)")
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=pattern, bias="none")
    for p in llm.parameters():
        p.requires_grad_(False)
    inject_adapter_in_model(config, llm)
    for name, p in llm.named_parameters():
        p.requires_grad_("lora_" in name)
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": settings.r, "lora_alpha": settings.alpha,
        "lora_dropout": settings.dropout, "target_modules": list(settings.targets), "bias": "none",
        "use_rslora": False, "use_dora": False, "modules_to_save": ["ttt_layers", "ttt_gating"],
        "base_model_name_or_path": model.source, "inference_mode": True,
    }


def lora_state(llm: nn.Module | dict) -> dict:
    """The LoRA tensors of a module (or of a state dict), by parameter name."""
    items = llm.items() if isinstance(llm, dict) else llm.state_dict().items()
    return {n: t for n, t in items if ".lora_A." in n or ".lora_B." in n}

