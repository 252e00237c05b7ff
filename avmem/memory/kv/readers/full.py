"""``full``: the whole memory and the question go through the LLM (with ``incremental``, the memory's KV is
kept between questions and only what changed is prefilled)."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from ..reader import ReadResult
from . import MemoryKV, MemoryPrompt, Reader, register_reader


@register_reader("full")
class FullReader(Reader):
    """No selection: every memory row reaches the LLM."""

    supports_incremental = True

    @torch.no_grad()
    def read(self, backbone, prompt: MemoryPrompt, memory_kv: MemoryKV) -> ReadResult:
        if self.settings.incremental:
            cache = memory_kv.cache(backbone, prompt.embeds, prompt.positions, prompt.visual_mask, prompt.deepstack)
            logits = backbone.forward_embeds(prompt.question, prompt.question_positions, cache, None, None)
            return ReadResult(cache=cache, logits=logits, next_position=prompt.next_position, kept=None)
        cache = DynamicCache(config=backbone.model.config.text_config)
        embeds = torch.cat([prompt.embeds, prompt.question])
        positions = torch.cat([prompt.positions, prompt.question_positions], dim=1)
        mask = prompt.deepstack_mask
        if mask is not None:
            mask = torch.cat([mask, mask.new_zeros(prompt.question.shape[0])])
        logits = backbone.forward_embeds(embeds, positions, cache, mask, prompt.deepstack)
        return ReadResult(cache=cache, logits=logits, next_position=prompt.next_position, kept=None)
