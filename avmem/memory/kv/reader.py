"""Prompt-dependent memory reading (seed 001 §3.3, eq. 8-12) on the backbone's own KV cache.

The memory sequence is prefilled in chunks of ``chunk_tokens``; each chunk is followed by the prompt
and attends to the compressed KV carried so far (eq. 8). In every layer the attention of the prompt
rows to the chunk's keys, averaged over heads and summed over prompt tokens (eq. 9), is captured by a
the backbone's attention function (``avmem.backbones.attention``) over key blocks (no full attention matrix). The chunk's
selectable (audio/visual) entries are then ranked — jointly across layers (eq. 10-11, ``joint=True``)
or per layer (the released variant) — and each layer's cache keeps its earlier entries, the chosen
chunk entries and every text entry; the prompt rows are dropped. A last pass runs the prompt on the
compressed cache, and generation continues from it (eq. 12).

Budget: ``read_tokens`` M is the average number of selectable entries kept per layer; a chunk holding
m of the memory's N selectable entries contributes K' = round(m * L * M / N) entries over all layers
(per layer round(m * M / N) in the per-layer variant), so no layer keeps more than M on average and,
per layer, never more than M in the per-layer variant.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import DynamicCache

from ...backbones.attention import Capture, capturing
from ...backbones.qwen import deepstack_slice
from .selection import joint_topk, per_layer_topk


@dataclass
class ReadResult:
    """The compressed cache after the prompt pass, the logits of the first answer token, and the
    next decoding position; ``kept`` holds the selectable entries kept per layer; where the policy tracks
    them, ``modality`` and ``entries`` give the modality and memory index of every entry each layer holds
    before the prompt; ``kept`` is None for a reader that keeps everything."""

    cache: DynamicCache
    logits: Tensor
    next_position: int
    kept: list[int] | None
    modality: list[Tensor] | None = None
    entries: list[Tensor] | None = None


class PromptDependentReader:
    """Eq. 8-12 over a backbone adapter (:class:`avmem.backbones.qwen.QwenVLBackbone`).

    Args:
        chunk_tokens: m, memory tokens per prefill chunk.
        read_tokens: M, selectable entries kept per layer on average.
        joint: rank across all layers together (paper) or per layer (released code).
        block: key block of the importance computation.
        pool: max-pool the importance over ``pool`` neighbouring chunk entries before ranking (odd; 1 = off).
            ``joint=False, pool=7`` is the SnapKV-style baseline (query-attention top-k with pooling).
    """

    def __init__(self, chunk_tokens: int, read_tokens: int, joint: bool = True, block: int = 4096,
                 pool: int = 1) -> None:
        for name, value in (("chunk_tokens", chunk_tokens), ("read_tokens", read_tokens), ("block", block),
                            ("pool", pool)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if pool % 2 == 0:
            raise ValueError(f"pool must be odd, got {pool}")
        self.chunk_tokens, self.read_tokens, self.joint, self.block = chunk_tokens, read_tokens, joint, block
        self.pool = pool

    def _pooled(self, importance: Tensor) -> Tensor:
        if self.pool == 1:
            return importance
        return torch.nn.functional.max_pool1d(importance.view(1, 1, -1), self.pool, stride=1,
                                              padding=self.pool // 2).view(-1)

    @torch.no_grad()
    def read(self, backbone, memory: Tensor, memory_positions: Tensor, selectable: Tensor, prompt: Tensor,
             prompt_positions: Tensor, visual_mask: Tensor | None = None,
             deepstack: Tensor | None = None, next_position: int | None = None) -> ReadResult:
        """Compress the memory for ``prompt``.

        Args:
            memory: embeddings [L, D] of the memory part of the input (text wrappers included).
            memory_positions: [3, L]; selectable: bool [L] (audio/visual entries that may be dropped).
            prompt: embeddings [S, D] of the question part; prompt_positions: [3, S].
            visual_mask: bool [L] video positions of the memory; deepstack: [k, n_visual, D] (Qwen3-VL).
            next_position: first decoding position (computed from the positions when not given).

        Every index is made on the device of the memory; the selection never leaves it.

        Raises:
            ValueError: shapes that do not match, or a read budget larger than the memory.
        """
        device = backbone.device  # inputs made elsewhere (e.g. on the host) move to the model
        memory, memory_positions, selectable = memory.to(device), memory_positions.to(device), selectable.to(device)
        prompt, prompt_positions = prompt.to(device), prompt_positions.to(device)
        if visual_mask is not None:
            visual_mask = visual_mask.to(device)
        if deepstack is not None:
            deepstack = deepstack.to(device)
        n_sel = int(selectable.sum())
        length = memory.shape[0]
        if memory_positions.shape != (3, length) or selectable.shape != (length,) or prompt.dim() != 2:
            raise ValueError("memory, positions and selectable mask do not match")
        if self.read_tokens > n_sel:
            raise ValueError(f"cannot read {self.read_tokens} tokens per layer from a memory of {n_sel}")
        model = backbone.model
        layers = model.config.text_config.num_hidden_layers
        capture = Capture(rows=prompt.shape[0], block=self.block)
        cache = DynamicCache(config=model.config.text_config)
        kept = [0] * layers
        with capturing(model, capture):
            for start in range(0, length, self.chunk_tokens):
                stop = min(start + self.chunk_tokens, length)
                sel = selectable[start:stop]
                before = [cache.layers[li].keys.shape[-2] if li < len(cache.layers) and cache.layers[li].is_initialized
                          else 0 for li in range(layers)]
                embeds = torch.cat([memory[start:stop], prompt])
                positions = torch.cat([memory_positions[:, start:stop], prompt_positions], dim=1)
                mask, ds = deepstack_slice(visual_mask, deepstack, start, stop)
                if mask is not None:
                    mask = torch.cat([mask, mask.new_zeros(prompt.shape[0])])
                capture.importance.clear()
                backbone.forward_embeds(embeds, positions, cache, mask, ds)
                candidates = torch.nonzero(sel).flatten()
                quota = round(len(candidates) * self.read_tokens / n_sel * (layers if self.joint else 1))
                scores = [self._pooled(capture.importance[li][before[li]:before[li] + (stop - start)])
                          [candidates.to(capture.importance[li].device)] for li in range(layers)]
                chosen = (joint_topk(scores, quota) if self.joint else per_layer_topk(scores, quota))
                text = torch.nonzero(~sel).flatten()
                for li in range(layers):
                    rows = torch.sort(torch.cat([text, candidates[chosen[li].to(device)]])).values
                    keep_rows(cache.layers[li], torch.cat([torch.arange(before[li], device=device),
                                                           before[li] + rows]))
                    kept[li] += len(chosen[li])
        logits = backbone.forward_embeds(prompt, prompt_positions, cache, None, None)
        if next_position is None:
            next_position = int(torch.cat([memory_positions, prompt_positions], dim=1).max()) + 1
        return ReadResult(cache=cache, logits=logits, next_position=next_position, kept=kept)


def keep_rows(layer, rows: Tensor, device: torch.device | None = None) -> None:
    """Keep only entries ``rows`` (indices into the sequence axis) of one cache layer, optionally moving them."""
    rows = rows.to(layer.keys.device)
    layer.keys = layer.keys.index_select(-2, rows).to(device or layer.keys.device)
    layer.values = layer.values.index_select(-2, rows).to(device or layer.values.device)


def copy_cache(cache: DynamicCache) -> DynamicCache:
    """An independent copy of ``cache`` (detached tensors)."""
    import copy

    memo = {}
    for layer in cache.layers:
        for t in (layer.keys, layer.values):
            if isinstance(t, Tensor):
                memo[id(t)] = t.detach().clone()
    return copy.deepcopy(cache, memo)


class BlockRetrievalReader:
    """ReKV-style retrieval: the memory's full KV cache is kept (on the host with ``offload``), the question
    scores blocks of ``block_tokens`` memory entries by the mean attention its tokens pay them (eq. 9 per
    layer), and each layer answers from its ``read_tokens // block_tokens`` best blocks plus every text entry.

    Args:
        block_tokens: entries per retrieval block.
        read_tokens: audio/visual entries per layer to retrieve (whole blocks).
        offload: keep the full cache in host memory between questions (moved to the device per question).
    """

    def __init__(self, block_tokens: int, read_tokens: int, offload: bool = True) -> None:
        for name, value in (("block_tokens", block_tokens), ("read_tokens", read_tokens)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.block_tokens, self.read_tokens, self.offload = block_tokens, read_tokens, offload

    @torch.no_grad()
    def read(self, backbone, full_cache: DynamicCache, selectable: Tensor, prompt: Tensor,
             prompt_positions: Tensor, next_position: int) -> ReadResult:
        """Answer-ready cache from ``full_cache`` (the whole memory's KV, rows in memory order).

        ``selectable`` [L] marks audio/visual rows; the cache returned holds the retrieved rows and the prompt.
        """
        model = backbone.model
        layers = model.config.text_config.num_hidden_layers
        length = selectable.shape[0]
        if any(layer.keys.shape[-2] != length for layer in full_cache.layers):
            raise ValueError("the cache does not cover the memory rows")
        from .reuse import shallow_copy

        device = backbone.device
        probe = shallow_copy(full_cache)  # the prompt pass replaces the copy's tensors, never writes into them
        if self.offload:
            for layer in probe.layers:
                layer.keys, layer.values = layer.keys.to(device), layer.values.to(device)
        capture = Capture(rows=prompt.shape[0], block=4096)
        prompt, prompt_positions = prompt.to(device), prompt_positions.to(device)
        with capturing(model, capture):
            backbone.forward_embeds(prompt, prompt_positions, probe, None, None)
        del probe
        selectable, prompt, prompt_positions = selectable.to(device), prompt.to(device), prompt_positions.to(device)
        sel_rows = torch.nonzero(selectable).flatten()
        text_rows = torch.nonzero(~selectable).flatten()
        n_sel = len(sel_rows)
        n_blocks = -(-n_sel // self.block_tokens)
        take = min(n_blocks, max(1, self.read_tokens // self.block_tokens))
        starts = torch.arange(n_blocks, device=device) * self.block_tokens
        sizes = (n_sel - starts).clamp(max=self.block_tokens).float()  # the last block may be short
        cache = shallow_copy(full_cache)  # keep_rows replaces the copy's tensors
        kept = []
        for li in range(layers):
            imp = capture.importance[li][:length].to(device)[sel_rows].float()
            pad = n_blocks * self.block_tokens - len(imp)
            block_score = torch.nn.functional.pad(imp, (0, pad)).view(n_blocks, self.block_tokens).sum(-1)
            best = torch.sort(torch.topk(block_score / sizes, take).indices).values
            members = (best[:, None] * self.block_tokens + torch.arange(self.block_tokens, device=device)).flatten()
            rows = sel_rows[members[members < n_sel]]
            keep_rows(cache.layers[li], torch.sort(torch.cat([text_rows, rows])).values, device)
            kept.append(len(rows))
        logits = backbone.forward_embeds(prompt, prompt_positions, cache, None, None)
        return ReadResult(cache=cache, logits=logits, next_position=next_position, kept=kept)
