"""A tiny video-SALMONN S release with the official layout: base/ (Qwen3-VL + model.audio.*) + LoRA/TTT adapter."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from avmem.backbones.tiny import save_tiny_backbone
from avmem.encoders.audio import AudioEncoder, tiny_audio_encoder_config
from avmem.memory.ttt import TTTConfig, TTTMemory

HIDDEN = 64
RANK = 4


def write_tiny_release(root: Path, seed: int = 0) -> tuple[Path, dict[str, torch.Tensor]]:
    """Write ``root/base`` and ``root/video_salmonn_s_ttt_lora``; returns root and the adapter tensors."""
    torch.manual_seed(seed)
    base = save_tiny_backbone(root / "base", "qwen3_vl", seed=seed)
    audio_cfg = tiny_audio_encoder_config(HIDDEN)
    audio = AudioEncoder(audio_cfg)
    weights = load_file(str(base / "model.safetensors"))
    weights.update({k: v.contiguous() for k, v in audio.official_state_dict().items()})
    save_file(weights, str(base / "model.safetensors"), metadata={"format": "pt"})
    w, q = audio_cfg.whisper, audio_cfg.qformer
    config = json.loads((base / "config.json").read_text())
    config["audio_config"] = {
        "num_mel_bins": w.num_mel_bins, "encoder_layers": w.num_layers, "d_model": w.d_model,
        "encoder_attention_heads": w.num_heads, "encoder_ffn_dim": w.ffn_dim, "max_source_positions": 1500,
        "second_per_window": 0.5, "second_stride": 0.5,
        "qformer_config": {"hidden_size": q.hidden_size, "num_hidden_layers": q.num_layers,
                           "num_attention_heads": q.num_heads, "intermediate_size": q.intermediate_size,
                           "encoder_width": w.d_model, "query_length": 1},
    }
    (base / "config.json").write_text(json.dumps(config))

    adapter = root / "video_salmonn_s_ttt_lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": 2 * RANK, "lora_dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj"], "modules_to_save": ["ttt_layers", "ttt_gating"],
    }))
    tensors: dict[str, torch.Tensor] = {}
    kv = config["text_config"]["num_key_value_heads"] * config["text_config"]["head_dim"]
    for layer in range(config["text_config"]["num_hidden_layers"]):
        for proj, out in (("q_proj", HIDDEN), ("k_proj", kv), ("v_proj", kv)):
            prefix = f"base_model.model.model.language_model.layers.{layer}.self_attn.{proj}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(RANK, HIDDEN) * 0.1
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out, RANK) * 0.1
    ttt = TTTMemory(TTTConfig(dim=HIDDEN, num_heads=4, mini_batch=1024, lag_distance=1024))
    for name, value in ttt.state_dict().items():
        official = f"ttt_layers.{name}" if name.startswith("ttt.") else "ttt_gating.gating_alpha"
        tensors[f"base_model.model.model.{official}"] = value + 0.01 * torch.randn_like(value)
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    return root, tensors
