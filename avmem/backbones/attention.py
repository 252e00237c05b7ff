"""The attention function avmem runs the LLM with ("avmem").

Scaled dot-product attention whose causal mask is built from each layer's own key length
(bottom-right aligned: query row i sees keys [0, k_len - q_len + i]), because layers of a compressed
KV cache may hold different numbers of entries (joint selection across layers, OmniMem per-layer
budgets). Batch size 1, no padding. On request it also records, per layer, the prompt importance of
every key (seed 001 eq. 9) from the last rows of the queries, computed over key blocks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.bias import causal_lower_right
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

NAME = "avmem"


@dataclass
class Capture:
    """Request: prompt importance of the keys (seed 001 eq. 9) for the last ``rows`` query rows, per layer."""

    rows: int
    block: int
    importance: dict[int, Tensor] = field(default_factory=dict)

    def record(self, layer: int, query: Tensor, key: Tensor) -> None:
        """query [H, q, d], key [H_kv, k, d]."""
        from ..memory.kv.selection import prompt_importance

        self.importance[layer] = prompt_importance(query[:, -self.rows:], key, block=self.block)


@dataclass
class ChunkCapture:
    """Request: OmniMem attention importance of the keys from the chunk's own (causal) queries, per layer."""

    importance: dict[int, Tensor] = field(default_factory=dict)

    def record(self, layer: int, query: Tensor, key: Tensor) -> None:
        from ..memory.kv.selection import chunk_importance

        self.importance[layer] = chunk_importance(query, key)


def avmem_attention(module, query: Tensor, key: Tensor, value: Tensor, attention_mask, dropout: float = 0.0,
                    scaling: float | None = None, **kwargs) -> tuple[Tensor, None]:
    """query [1, H, q, d], key/value [1, H_kv, k, d] -> output [1, q, H, d]."""
    capture: Capture | ChunkCapture | None = getattr(module, "avmem_capture", None)
    if capture is not None:
        with torch.no_grad():
            capture.record(module.layer_idx, query[0], key[0])
    q_len, k_len = query.shape[-2], key.shape[-2]
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    if q_len == 1:
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=scaling)
    elif q_len == k_len:
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=scaling, is_causal=True)
    else:  # bottom-right aligned causal bias: the efficient kernels, no dense mask
        bias = causal_lower_right(q_len, k_len)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=dropout, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def no_mask(*args, **kwargs) -> None:
    """The mask function of the "avmem" attention: none. :func:`avmem_attention` derives each layer's causal mask
    from its own key length and ignores ``attention_mask``, so the dense [q, k] mask transformers would build per
    forward (0.5 GB for a 16k-row chunk over 32k keys) is not built."""
    return None


AttentionInterface.register(NAME, avmem_attention)
AttentionMaskInterface.register(NAME, no_mask)


@contextmanager
def capturing(model, capture: Capture | ChunkCapture | object | None,
              layer_inputs: dict[int, Tensor] | None = None) -> Iterator[None]:
    """Within the block, every attention layer of ``model``'s LLM reports to ``capture`` (if given) and, with
    ``layer_inputs``, each decoder layer's input hidden states [rows, D] are stored there by layer index."""
    decoder = model.model.language_model.layers

    def grab(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        layer_inputs[module.self_attn.layer_idx] = hidden[0].detach()

    hooks = [layer.register_forward_pre_hook(grab, with_kwargs=True) for layer in decoder] \
        if layer_inputs is not None else []
    for layer in decoder:
        layer.self_attn.avmem_capture = capture
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        for layer in decoder:
            layer.self_attn.avmem_capture = None
