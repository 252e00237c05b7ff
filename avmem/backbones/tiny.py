"""Tiny randomly initialised backbones of the real ``transformers`` classes, for tests and the
synthetic benchmark (no downloads). They are saved as ordinary Hugging Face folders so the real
``from_pretrained`` loading path is the one exercised.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import Qwen2_5_VLConfig, Qwen3VLConfig

from .qwen import BACKBONES, CLIP_MEAN, CLIP_STD, HALF
from .tokenizer import build_tiny_tokenizer

TINY_KINDS = ("qwen2_5_vl", "qwen3_vl")


SIZES = {"tiny": dict(hidden=64, layers=2, vision=32), "small": dict(hidden=192, layers=4, vision=64)}


def tiny_backbone_config(kind: str, vocab_size: int, token_ids: dict[str, int], hidden: int = 64, layers: int = 2,
                         vision_hidden: int = 32):
    """A few-layer config of ``kind`` ("qwen2_5_vl" | "qwen3_vl") with the given special-token ids."""
    text = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, max_position_embeddings=65536,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                bos_token_id=None, eos_token_id=token_ids["<|im_end|>"], pad_token_id=token_ids["<|endoftext|>"])
    ids = dict(image_token_id=token_ids["<|image_pad|>"], video_token_id=token_ids["<|video_pad|>"],
               vision_start_token_id=token_ids["<|vision_start|>"], vision_end_token_id=token_ids["<|vision_end|>"])
    if kind == "qwen2_5_vl":
        vision = dict(depth=2, hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_heads=2, patch_size=14, spatial_merge_size=2,
                      temporal_patch_size=2, out_hidden_size=hidden, window_size=56, fullatt_block_indexes=[1],
                      tokens_per_second=2)
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, bos_token_id=None,
                                eos_token_id=token_ids["<|im_end|>"], **ids)
    if kind == "qwen3_vl":
        vision = dict(depth=2, hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_heads=2, patch_size=16, spatial_merge_size=2,
                      temporal_patch_size=2, out_hidden_size=hidden, num_position_embeddings=256,
                      deepstack_visual_indexes=[0, 1])
        return Qwen3VLConfig(text_config=text, vision_config=vision, **ids)
    raise ValueError(f"unknown tiny backbone kind '{kind}' (choose from {TINY_KINDS})")


def save_tiny_backbone(path: str | Path, kind: str, seed: int = 0, size: str = "tiny") -> Path:
    """Write a randomly initialised ``size`` ("tiny" | "small", :data:`SIZES`) backbone (weights, config,
    tokenizer, preprocessor config)."""
    path = Path(path)
    tokenizer = build_tiny_tokenizer()
    token_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in tokenizer.all_special_tokens}
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r} (choose from {sorted(SIZES)})")
    dims = SIZES[size]
    config = tiny_backbone_config(kind, len(tokenizer), token_ids, dims["hidden"], dims["layers"], dims["vision"])
    torch.manual_seed(seed)
    model = BACKBONES[kind].model_class(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    mean, std = (CLIP_MEAN, CLIP_STD) if kind == "qwen2_5_vl" else (HALF, HALF)
    (path / "preprocessor_config.json").write_text(json.dumps({"image_mean": list(mean), "image_std": list(std)}))
    return path
