"""``pd`` (prompt-dependent reading, seed 001 §3.3) and ``snapkv`` (SnapKV-style per-layer top-k with
pooling): :class:`~avmem.memory.kv.reader.PromptDependentReader` behind the session interface."""

from __future__ import annotations

from ..reader import PromptDependentReader, ReadResult
from . import MemoryKV, MemoryPrompt, Reader, register_reader
from .full import FullReader


@register_reader("pd")
class PromptDependent(Reader):
    """Chunks of ``read_chunk`` followed by the question; ``read_tokens`` entries per layer on average, ranked
    jointly across layers (``read_joint``) or per layer. A memory no larger than the budget is read in full."""

    read_within_memory = True

    def engine(self) -> PromptDependentReader:
        s = self.settings
        return PromptDependentReader(s.read_chunk, s.read_tokens, s.read_joint)

    def read(self, backbone, prompt: MemoryPrompt, memory_kv: MemoryKV) -> ReadResult:
        if prompt.memory_count() <= self.settings.read_tokens:
            return FullReader(self.settings, self.model).read(backbone, prompt, memory_kv)
        return self.engine().read(backbone, prompt.embeds, prompt.positions, prompt.selectable, prompt.question,
                                  prompt.question_positions, prompt.deepstack_mask, prompt.deepstack,
                                  next_position=prompt.next_position)


@register_reader("snapkv")
class SnapKV(PromptDependent):
    """SnapKV-style baseline: per-layer query-attention top-k with max-pooling over 7 neighbours."""

    def engine(self) -> PromptDependentReader:
        s = self.settings
        return PromptDependentReader(s.read_chunk, s.read_tokens, joint=False, pool=7)
