"""``rekv`` (ReKV-style retrieval): the memory's full KV is kept between questions (the session's
:class:`~avmem.memory.kv.reuse.MemoryKV`) and each layer answers from the ``read_tokens // block_tokens``
blocks of ``block_tokens`` entries the question attends to most."""

from __future__ import annotations

from ..reader import BlockRetrievalReader, ReadResult
from . import MemoryKV, MemoryPrompt, Reader, register_reader


@register_reader("rekv")
class ReKV(Reader):
    """Block retrieval over the kept full memory KV; a memory no larger than the budget is read in full."""

    def read(self, backbone, prompt: MemoryPrompt, memory_kv: MemoryKV) -> ReadResult:
        full = memory_kv.cache(backbone, prompt.embeds, prompt.positions, prompt.visual_mask, prompt.deepstack)
        if prompt.memory_count() <= self.settings.read_tokens:
            logits = backbone.forward_embeds(prompt.question, prompt.question_positions, full, None, None)
            return ReadResult(cache=full, logits=logits, next_position=prompt.next_position, kept=None)
        reader = BlockRetrievalReader(self.settings.block_tokens, self.settings.read_tokens)
        return reader.read(backbone, full, prompt.selectable, prompt.question, prompt.question_positions,
                           prompt.next_position)
