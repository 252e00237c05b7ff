"""The chunked KV policies of :mod:`avmem.memory.kv.omnimem` behind the session interface, under the
settings' per-layer budgets (``budget_file`` or ``read_tokens`` everywhere) with chunks of ``read_chunk``."""

from __future__ import annotations

from .. import omnimem
from ..reader import ReadResult
from . import MemoryKV, MemoryPrompt, Reader, budgets, register_reader


class PolicyReader(Reader):
    """A :class:`~avmem.memory.kv.omnimem.ChunkedKVPolicy` as a reader; subclasses set :meth:`policy`."""

    uses_budgets = True

    def policy(self) -> omnimem.ChunkedKVPolicy:
        raise NotImplementedError

    def read(self, backbone, prompt: MemoryPrompt, memory_kv: MemoryKV) -> ReadResult:
        return self.policy().read(backbone, prompt.embeds, prompt.positions, prompt.modality, prompt.question,
                                  prompt.question_positions, prompt.deepstack_mask, prompt.deepstack,
                                  next_position=prompt.next_position)


@register_reader("omnimem")
class OmniMem(PolicyReader):
    """OmniMem: perturbation-aware score with attention exponent ``omni_lambda``."""

    def policy(self) -> omnimem.ChunkedKVPolicy:
        s = self.settings
        return omnimem.OmniMemPolicy(budgets(s, self.model), s.read_chunk, s.omni_lambda)


@register_reader("recent")
class Recent(PolicyReader):
    """StreamingVLM-style: attention sinks and the most recent entries."""

    def policy(self) -> omnimem.ChunkedKVPolicy:
        return omnimem.RecentWindowPolicy(budgets(self.settings, self.model), self.settings.read_chunk)


@register_reader("similarity")
class Similarity(PolicyReader):
    """MovieChat-style similarity discard on the KV."""

    def policy(self) -> omnimem.ChunkedKVPolicy:
        return omnimem.SimilarityDiscardPolicy(budgets(self.settings, self.model), self.settings.read_chunk)


@register_reader("similarity-merge")
class SimilarityMerge(PolicyReader):
    """MovieChat-style merging of the most similar adjacent pair on the KV."""

    def policy(self) -> omnimem.ChunkedKVPolicy:
        return omnimem.SimilarityMergePolicy(budgets(self.settings, self.model), self.settings.read_chunk)


@register_reader("infinipot")
class InfiniPot(PolicyReader):
    """InfiniPot-V-style temporal novelty + value norm."""

    def policy(self) -> omnimem.ChunkedKVPolicy:
        return omnimem.InfiniPotVPolicy(budgets(self.settings, self.model), self.settings.read_chunk)
