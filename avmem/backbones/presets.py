"""Full-size backbones with the released architectures and *random* weights, built in memory.

Used by the ``random-qwen3-vl-8b`` / ``random-qwen2.5-vl-7b`` presets of :func:`avmem.load_model`: the real
``transformers`` classes with the exact published configurations, constructed directly on the target device
and dtype (no default initialisation, then one seeded normal fill on the device), no download, no disk
write. On ``device="meta"`` nothing is allocated (for inspecting shapes and parameter counts).

Sources of the numbers:

* Qwen3-VL-8B-Instruct: the ``config.json`` of ``Qwen/Qwen3-VL-8B-Instruct`` on the Hugging Face hub
  (``transformers_version`` 4.57.0.dev0): text hidden 4096, 36 layers, 32 heads, 8 KV heads, head_dim 128,
  MLP 12288, vocab 151936, rms_norm_eps 1e-6, max positions 262144, ``rope_theta`` 5e6, interleaved MRoPE
  sections [24, 20, 20], untied LM head, bos/eos 151643/151645; vision depth 27, hidden 1152, MLP 4304,
  16 heads, ``gelu_pytorch_tanh``, patch 16, temporal patch 2, merge 2, 2304 position embeddings,
  output 4096, DeepStack taps [8, 16, 24]; token ids image 151655, video 151656, vision start/end
  151652/151653. The same text/vision sizes are quoted by the video-SALMONN S specification (reference
  ``official_vsalmonn_s.md`` §1.2) and match ``transformers``' ``Qwen3VLVisionConfig`` defaults. Total
  8,767,123,696 parameters (the hub's "8.77B").
* Qwen2.5-VL-7B-Instruct: the ``config.json`` of ``Qwen/Qwen2.5-VL-7B-Instruct`` (flat legacy layout,
  ``transformers_version`` 4.41.2): hidden 3584, 28 layers, 28 heads, 4 KV heads, MLP 18944, vocab 152064,
  rms_norm_eps 1e-6, max positions 128000, ``rope_theta`` 1e6, MRoPE sections [16, 24, 24], sliding window
  32768 unused (``use_sliding_window`` false, ``max_window_layers`` 28), untied LM head, bos/eos
  151643/151645; vision depth 32, hidden 1280, MLP 3420, 16 heads, ``silu``, patch 14, temporal patch 2,
  merge 2, window 112, full-attention blocks [7, 15, 23, 31], 2 tokens per second, output 3584; the same
  token ids. Total 8,292,166,656 parameters.

The tokenizer is avmem's small offline BPE (:func:`~avmem.backbones.tokenizer.build_tiny_tokenizer`) with
its special tokens moved to the real Qwen ids (:data:`RELEASE_TOKEN_IDS`), so prompts carry the ids the
released embeddings are indexed by. Ordinary text uses ids 0..503 only; the other ids of the vocabulary
decode to nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen3VLConfig

from .tokenizer import SPECIAL_TOKENS, build_tiny_tokenizer

RELEASE_TOKEN_IDS: dict[str, int] = {
    "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
    "<|vision_end|>": 151653, "<|image_pad|>": 151655, "<|video_pad|>": 151656, "<|audio_pad|>": 151669,
}
"""Qwen's ids of the prompt's special tokens (Qwen2/Qwen3 ``tokenizer_config.json`` ``added_tokens_decoder``),
and ``<|audio_pad|>`` = 151669 as the video-SALMONN S release defines it (reference §1.2); the Qwen2.5-VL
preset uses the same id (no release defines one for it; it fits its 152064-row vocabulary)."""

RELEASE_KINDS = ("qwen3_vl", "qwen2_5_vl")
INIT_STD = 0.02
"""Standard deviation of the random weights (both configs' ``initializer_range``)."""


def qwen3_vl_8b_config(**overrides: Any) -> Qwen3VLConfig:
    """The Qwen3-VL-8B-Instruct configuration (module docstring). ``overrides`` replace fields:
    ``text_<field>=`` / ``vision_<field>=`` (e.g. ``text_num_hidden_layers=1``), for reduced test variants."""
    text = dict(
        vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, hidden_act="silu", max_position_embeddings=262144,
        initializer_range=INIT_STD, rms_norm_eps=1e-6, attention_bias=False, attention_dropout=0.0,
        rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                         "mrope_interleaved": True},
        bos_token_id=151643, eos_token_id=151645,
    )
    vision = dict(
        depth=27, hidden_size=1152, hidden_act="gelu_pytorch_tanh", intermediate_size=4304, num_heads=16,
        in_channels=3, patch_size=16, spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=4096,
        num_position_embeddings=2304, deepstack_visual_indexes=[8, 16, 24], initializer_range=INIT_STD,
    )
    text, vision = _apply(text, vision, overrides)
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **_ids())


def qwen2_5_vl_7b_config(**overrides: Any) -> Qwen2_5_VLConfig:
    """The Qwen2.5-VL-7B-Instruct configuration (module docstring); ``overrides`` as in :func:`qwen3_vl_8b_config`."""
    text = dict(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, hidden_act="silu", max_position_embeddings=128000, initializer_range=INIT_STD,
        rms_norm_eps=1e-6, use_sliding_window=False, sliding_window=32768, max_window_layers=28,
        attention_dropout=0.0, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                                "mrope_section": [16, 24, 24]},
        bos_token_id=151643, eos_token_id=151645,
    )
    vision = dict(
        depth=32, hidden_size=1280, hidden_act="silu", intermediate_size=3420, num_heads=16, in_channels=3,
        patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, out_hidden_size=3584, initializer_range=INIT_STD,
    )
    text, vision = _apply(text, vision, overrides)
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **_ids())


RELEASE_CONFIGS = {"qwen3_vl": qwen3_vl_8b_config, "qwen2_5_vl": qwen2_5_vl_7b_config}


def _ids() -> dict[str, int]:
    return dict(image_token_id=RELEASE_TOKEN_IDS["<|image_pad|>"], video_token_id=RELEASE_TOKEN_IDS["<|video_pad|>"],
                vision_start_token_id=RELEASE_TOKEN_IDS["<|vision_start|>"],
                vision_end_token_id=RELEASE_TOKEN_IDS["<|vision_end|>"])


def _apply(text: dict, vision: dict, overrides: Mapping[str, Any]) -> tuple[dict, dict]:
    for key, value in overrides.items():
        part, _, name = key.partition("_")
        target = {"text": text, "vision": vision}.get(part)
        if target is None or name not in target:
            raise ValueError(f"unknown config override {key!r} (use text_<field> or vision_<field> of the config)")
        target[name] = value
    return text, vision


def release_tokenizer() -> PreTrainedTokenizerFast:
    """avmem's offline BPE tokenizer with the special tokens at :data:`RELEASE_TOKEN_IDS` (text ids 0..503)."""
    tiny = build_tiny_tokenizer()
    data = json.loads(tiny.backend_tokenizer.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    special = set(SPECIAL_TOKENS)
    text_tokens = sorted((t for t in vocab if t not in special), key=vocab.__getitem__)
    data["model"]["vocab"] = {**{t: i for i, t in enumerate(text_tokens)},
                              **{t: RELEASE_TOKEN_IDS[t] for t in SPECIAL_TOKENS}}
    for added in data["added_tokens"]:
        added["id"] = RELEASE_TOKEN_IDS[added["content"]]
    from tokenizers import Tokenizer

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)), eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<|im_end|>", "<|endoftext|>")],
    )


_NORM_NAMES = ("Norm",)


@torch.no_grad()
def random_init_(module: nn.Module, generator: torch.Generator | None, std: float = INIT_STD) -> nn.Module:
    """Fill every parameter of ``module`` in place: Linear / Conv / Embedding weights and any other parameter
    ~ N(0, ``std``) drawn from ``generator`` (on the parameters' device), biases 0, normalisation weights 1
    (modules whose class name contains "Norm"). Meta parameters are left alone. Returns ``module``."""
    for sub in module.modules():
        is_norm = any(n in type(sub).__name__ for n in _NORM_NAMES)
        for name, p in sub.named_parameters(recurse=False):
            if p.is_meta:
                continue
            if name == "bias":
                p.zero_()
            elif is_norm:
                p.fill_(1.0)
            else:
                p.normal_(0.0, std, generator=generator)
    return module


def device_generator(device: torch.device, seed: int) -> torch.Generator | None:
    """A generator on ``device`` seeded with ``seed`` (None on the meta device)."""
    if device.type == "meta":
        return None
    return torch.Generator(device=device).manual_seed(seed)
