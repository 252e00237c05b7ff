"""Chunked KV memory policies over the LLM's own cache (official_omnimem.md §1.5, §2-§3).

The memory sequence is prefilled in chunks; after every chunk, in every layer, the entries of
(memory of that layer) ∪ (chunk) compete under that layer's hard budget: every text entry is kept,
plus the best audio and visual entries (separately for an ``[audio, visual]`` budget, together for an
int budget) by the policy's score. Entries keep their original positions: the cache holds their
keys/values as computed (functionally the released code's hidden-state memory, which recomputes them at
the same positions). A last pass runs the question on the per-layer memories.

Policies (one class each, behind :class:`ChunkedKVPolicy`):

* :class:`OmniMemPolicy` — score_i = sqrt(1 - s_i / 2) * a_i ** lambda, s_i the cosine redundancy of the
  layer-input hidden states to their sequence neighbours, a_i the attention the chunk's queries pay to
  entry i (averaged with its previous value for older entries).
* :class:`RecentWindowPolicy` — StreamingVLM-style: the first ``sinks`` entries of each modality
  (attention sinks) and then the most recent ones.
* :class:`SimilarityDiscardPolicy` / :class:`SimilarityMergePolicy` — MovieChat-style: drop, or average
  into its neighbour, the entry most similar to its neighbour of the same modality.
* :class:`InfiniPotVPolicy` — InfiniPot-V-style temporal novelty + value norm.
"""

from __future__ import annotations

import heapq

import numpy as np

import torch
from torch import Tensor
from transformers import DynamicCache

from dataclasses import dataclass

from ...backbones.attention import ChunkCapture, capturing
from ...backbones.qwen import deepstack_slice
from .budgets import BudgetSchedule, LayerBudget
from .reader import ReadResult, keep_rows
from .selection import AUDIO, TEXT, VISUAL, omnimem_score, redundancy, select_with_budget


@dataclass
class Entries:
    """The N entries competing in one layer, in sequence order.

    Attributes:
        hidden: layer-input hidden states [N, D]; attention: importance from the chunk's queries [N];
        order: memory index [N]; modality: TEXT/AUDIO/VISUAL [N]; positions: (t, h, w) [3, N];
        values: the layer's value vectors, heads flattened [N, H_kv * d].
    """

    hidden: Tensor
    attention: Tensor
    order: Tensor
    modality: Tensor
    positions: Tensor
    values: Tensor


class ChunkedKVPolicy:
    """Per-layer, per-modality hard budgets over the LLM's KV cache; subclasses define :meth:`score`.

    Args:
        budgets: one :class:`~avmem.memory.kv.budgets.LayerBudget` per LLM layer.
        chunk_tokens: memory tokens prefilled per chunk (the released ``memgroupsize``).
    """

    def __init__(self, budgets: BudgetSchedule, chunk_tokens: int) -> None:
        if not isinstance(chunk_tokens, int) or isinstance(chunk_tokens, bool) or chunk_tokens <= 0:
            raise ValueError(f"chunk_tokens must be a positive int, got {chunk_tokens!r}")
        self.budgets, self.chunk_tokens = budgets, chunk_tokens

    def score(self, entries: "Entries") -> Tensor:
        """Scores [N] of the entries competing in one layer (higher is kept)."""
        raise NotImplementedError

    def reduce(self, entries: "Entries", layer, budget: LayerBudget) -> Tensor:
        """Rows of one layer kept under ``budget`` (sorted indices into the N entries).

        The default ranks by :meth:`score`; a policy may also rewrite kept rows of the cache ``layer``
        and of ``entries.hidden`` in place (merging), before the other rows are dropped.
        """
        return select_with_budget(self.score(entries), entries.modality, budget)

    @torch.no_grad()
    def read(self, backbone, memory: Tensor, memory_positions: Tensor, modality: Tensor, prompt: Tensor,
             prompt_positions: Tensor, visual_mask: Tensor | None = None,
             deepstack: Tensor | None = None, next_position: int | None = None) -> ReadResult:
        """Compress ``memory`` [L, D] (positions [3, L], modality [L] of TEXT/AUDIO/VISUAL) and run ``prompt``;
        ``next_position`` (the first decoding position) is computed from the positions when not given.

        Returns the cache after the prompt pass, the first answer logits, the next position, and the
        audio+visual entries each layer holds.

        Raises:
            ValueError: a budget file whose layer count differs from the model's, or mismatched shapes.
        """
        cache, held_mod, held_idx = self.compress(backbone, memory, memory_positions, modality, visual_mask, deepstack)
        logits = backbone.forward_embeds(prompt.to(backbone.device), prompt_positions.to(backbone.device), cache, None,
                                         None)
        kept = torch.stack([((m == AUDIO) | (m == VISUAL)).sum() for m in held_mod]).tolist()
        if next_position is None:
            next_position = int(torch.cat([memory_positions, prompt_positions], dim=1).max()) + 1
        return ReadResult(cache=cache, logits=logits, next_position=next_position, kept=kept,
                          modality=[m.clone() for m in held_mod], entries=[i.clone() for i in held_idx])

    def compress(self, backbone, memory: Tensor, memory_positions: Tensor, modality: Tensor,
                 visual_mask: Tensor | None = None,
                 deepstack: Tensor | None = None) -> tuple[DynamicCache, list[Tensor], list[Tensor]]:
        """The chunked prefill with per-layer selection: (cache holding each layer's kept entries, their
        modality per layer, their memory index per layer). Runs in the caller's grad mode: with gradients
        on (budget-aware fine-tuning) the kept keys/values keep their graph back through earlier chunks;
        the selection itself carries none. Scores and indices stay on the memory's device.
        """
        model = backbone.model
        layers = model.config.text_config.num_hidden_layers
        if len(self.budgets) != layers:
            raise ValueError(f"the budget schedule has {len(self.budgets)} layers, the model has {layers}")
        length = memory.shape[0]
        if memory_positions.shape != (3, length) or modality.shape != (length,):
            raise ValueError("memory, positions and modality do not match")
        device = backbone.device  # inputs made elsewhere (e.g. on the host) move to the model
        memory, modality, memory_positions = memory.to(device), modality.to(device), memory_positions.to(device)
        if visual_mask is not None:
            visual_mask = visual_mask.to(device)
        if deepstack is not None:
            deepstack = deepstack.to(device)
        capture = ChunkCapture()
        inputs: dict[int, Tensor] = {}
        cache = DynamicCache(config=model.config.text_config)
        held_h: list[Tensor | None] = [None] * layers
        held_mod: list[Tensor] = [modality.new_zeros(0)] * layers
        held_a: list[Tensor] = [torch.zeros(0, device=device)] * layers
        held_idx: list[Tensor] = [torch.zeros(0, dtype=torch.long, device=device)] * layers
        with capturing(model, capture, inputs):
            for start in range(0, length, self.chunk_tokens):
                stop = min(start + self.chunk_tokens, length)
                mask, ds = deepstack_slice(visual_mask, deepstack, start, stop)
                capture.importance.clear()
                backbone.forward_embeds(memory[start:stop], memory_positions[:, start:stop], cache, mask, ds)
                chunk_mod = modality[start:stop]
                for li in range(layers):
                    old = held_mod[li].shape[0]
                    hidden = inputs[li][-(stop - start):]
                    h = hidden if held_h[li] is None else torch.cat([held_h[li], hidden.to(held_h[li].dtype)])
                    mods = torch.cat([held_mod[li], chunk_mod])
                    order = torch.cat([held_idx[li], torch.arange(start, stop, device=device)])
                    a = capture.importance[li].float().to(device)
                    a[:old] = (a[:old] + held_a[li]) / 2
                    values = cache.layers[li].values[0].transpose(0, 1).reshape(len(order), -1).float().to(device)
                    entries = Entries(hidden=h, attention=a, order=order, modality=mods,
                                      positions=memory_positions[:, order], values=values)
                    keep = self.reduce(entries, cache.layers[li], self.budgets[li]).to(device)
                    keep_rows(cache.layers[li], keep)
                    h = entries.hidden
                    held_h[li], held_mod[li], held_a[li] = h[keep.to(h.device)], mods[keep], a[keep]
                    held_idx[li] = order[keep]
        return cache, held_mod, held_idx


class OmniMemPolicy(ChunkedKVPolicy):
    """OmniMem's perturbation-aware selection; ``lam`` is the attention exponent (released best: 0.02)."""

    def __init__(self, budgets: BudgetSchedule, chunk_tokens: int, lam: float = 0.02) -> None:
        super().__init__(budgets, chunk_tokens)
        if not lam >= 0:
            raise ValueError(f"lambda must be >= 0, got {lam}")
        self.lam = float(lam)

    def score(self, entries: Entries) -> Tensor:
        return omnimem_score(redundancy(entries.hidden), entries.attention, self.lam)


class RecentWindowPolicy(ChunkedKVPolicy):
    """StreamingVLM-style: keep the first ``sinks`` entries of each modality, then the most recent."""

    def __init__(self, budgets: BudgetSchedule, chunk_tokens: int, sinks: int = 4) -> None:
        super().__init__(budgets, chunk_tokens)
        if not isinstance(sinks, int) or sinks < 0:
            raise ValueError(f"sinks must be an int >= 0, got {sinks!r}")
        self.sinks = sinks

    def score(self, entries: Entries) -> Tensor:
        score = entries.order.double()
        for kind in (AUDIO, VISUAL):
            rows = torch.nonzero(entries.modality == kind).flatten()
            first = rows[torch.argsort(entries.order[rows])][: self.sinks]
            score[first] = float("inf")
        return score


class SimilarityDiscardPolicy(ChunkedKVPolicy):
    """MovieChat-style on the KV cache: drop the entries most similar to their previous entry of the same
    modality (layer-input hidden states)."""

    def score(self, entries: Entries) -> Tensor:
        score = torch.zeros(len(entries.order), dtype=torch.float64, device=entries.hidden.device)
        unit = torch.nn.functional.normalize(entries.hidden.float(), dim=-1)
        for kind in (AUDIO, VISUAL):
            rows = torch.nonzero(entries.modality == kind).flatten()
            if len(rows) > 1:
                score[rows[1:]] = -(unit[rows[1:]] * unit[rows[:-1]]).sum(-1).double()
                score[rows[0]] = float("inf")
        return score


class SimilarityMergePolicy(ChunkedKVPolicy):
    """MovieChat-style merging on the KV cache: while a layer holds more entries than its budget, the most
    similar adjacent pair of the same modality (cosine of the layer-input hidden states, consecutive entries
    of that modality in sequence order) is replaced by its mean: keys, values and hidden state of the pair
    averaged into the earlier entry (which keeps its position), the later entry dropped. A merged entry may
    merge again (plain pairwise mean, as MovieChat). With an int budget audio and visual entries share the
    slots but only merge within their modality; should the budget be smaller than the number of modalities
    present, the entries standing for the most originals are kept.
    """

    def reduce(self, entries: Entries, layer, budget: LayerBudget) -> Tensor:
        modality = entries.modality
        keep = [torch.nonzero(modality == TEXT).flatten()]
        groups = [((AUDIO, VISUAL), budget.total)] if not budget.per_modality else [
            ((AUDIO,), budget.audio), ((VISUAL,), budget.visual)]
        for kinds, limit in groups:
            runs = [torch.nonzero(modality == kind).flatten().tolist() for kind in kinds]
            keep.append(self._merge_group(entries.hidden, layer, [r for r in runs if r], limit))
        return torch.sort(torch.cat(keep)).values

    @staticmethod
    def _merge_group(hidden: Tensor, layer, runs: list[list[int]], limit: int) -> Tensor:
        """Merge within each run (rows of one modality in order) until at most ``limit`` rows remain.

        The greedy loop runs on host copies of the hidden states; every surviving row then becomes one
        weighted sum of the originals it absorbed (pairwise means compose into halving coefficients), applied
        to the cache's keys/values and to ``hidden`` in a single scatter each.
        """
        count = sum(len(r) for r in runs)
        device = hidden.device
        if count <= limit:
            return torch.tensor([i for r in runs for i in r], dtype=torch.long, device=device)
        vec = hidden.detach().double().cpu().numpy().copy()
        unit = vec / np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12)
        nxt: dict[int, int | None] = {}
        prv: dict[int, int | None] = {}
        members = {i: [i] for r in runs for i in r}
        coef = np.ones(len(vec))
        version = dict.fromkeys(members, 0)
        heap: list[tuple[float, int, int, int, int]] = []

        def push(i: int, j: int) -> None:
            heapq.heappush(heap, (-float(unit[i] @ unit[j]), i, j, version[i], version[j]))

        for run in runs:
            for a, b in zip([None] + run[:-1], run):
                prv[b] = a
            for a, b in zip(run, run[1:] + [None]):
                nxt[a] = b
                if b is not None:
                    push(a, b)
        while count > limit and heap:
            _, i, j, vi, vj = heapq.heappop(heap)
            if j not in members or i not in members or nxt[i] != j or (vi, vj) != (version[i], version[j]):
                continue
            vec[i] = (vec[i] + vec[j]) / 2
            unit[i] = vec[i] / max(np.linalg.norm(vec[i]), 1e-12)
            group = members[i] + members.pop(j)
            coef[group] /= 2
            members[i] = group
            version[i] += 1
            count -= 1
            nxt[i] = nxt[j]
            if nxt[i] is not None:
                prv[nxt[i]] = i
                push(i, nxt[i])
            if prv[i] is not None:
                push(prv[i], i)
        rows = sorted(sorted(members, key=lambda r: -len(members[r]))[:limit])
        merged = [r for r in rows if len(members[r]) > 1]
        if merged:
            src_list = [m for r in merged for m in members[r]]
            src = torch.tensor(src_list, dtype=torch.long, device=device)
            dst = torch.tensor([r for r in merged for _ in members[r]], dtype=torch.long, device=device)
            w = torch.from_numpy(coef[src_list]).to(device)
            for t in (layer.keys, layer.values):
                _mix_rows(t, src, dst, w, dim=t.dim() - 2)
            _mix_rows(hidden, src, dst, w, dim=0)
        return torch.tensor(rows, dtype=torch.long, device=device)


def _mix_rows(t: Tensor, src: Tensor, dst: Tensor, weight: Tensor, dim: int) -> None:
    """In place: row ``dst[k]`` of ``t`` along ``dim`` becomes sum_k weight[k] * row src[k] (rows in dst reset)."""
    src, dst = src.to(t.device), dst.to(t.device)
    shape = [1] * t.dim()
    shape[dim] = len(src)
    parts = t.index_select(dim, src).double() * weight.to(t.device).view(shape)
    rows, inverse = torch.unique(dst, return_inverse=True)
    out = torch.zeros_like(t.index_select(dim, rows), dtype=torch.float64)
    out.index_add_(dim, inverse, parts)
    t.index_copy_(dim, rows, out.to(t.dtype))


class InfiniPotVPolicy(ChunkedKVPolicy):
    """InfiniPot-V-style: keep visual entries that changed most since the previous frame at the same spatial
    location (1 - cosine of the layer inputs; the first time a location is seen counts as fully new),
    mixed with the value norm: score = alpha * temporal novelty + (1 - alpha) * normalised value norm.
    Audio entries use their value norm."""

    def __init__(self, budgets: BudgetSchedule, chunk_tokens: int, alpha: float = 0.5) -> None:
        super().__init__(budgets, chunk_tokens)
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = alpha

    def score(self, entries: Entries) -> Tensor:
        norm = entries.values.norm(dim=-1).double()
        norm = norm / norm.max().clamp_min(1e-12)
        return self.alpha * temporal_novelty(entries) + (1 - self.alpha) * norm


def temporal_novelty(entries: Entries) -> Tensor:
    """1 - cosine (layer inputs) of each visual entry to the previous visual entry (in entry order) at the same
    spatial location (row, col) = (h - t, w - t); 1 where there is none and for non-visual entries. [N] float64.

    Vectorised: a stable sort by location keeps entry order within a location, so the previous entry at the
    same location is the sorted neighbour.
    """
    device = entries.hidden.device
    novelty = torch.ones(len(entries.order), dtype=torch.float64, device=device)
    rows = torch.nonzero(entries.modality == VISUAL).flatten()
    if len(rows) < 2:
        return novelty
    pos = entries.positions.to(device)[:, rows]
    dh, dw = pos[1] - pos[0], pos[2] - pos[0]
    dh, dw = dh - dh.min(), dw - dw.min()
    where = dh * (int(dw.max()) + 1) + dw
    where, perm = torch.sort(where, stable=True)
    ordered = rows[perm]
    unit = torch.nn.functional.normalize(entries.hidden.float(), dim=-1)
    cos = (unit[ordered[1:]] * unit[ordered[:-1]]).sum(-1)
    repeat = where[1:] == where[:-1]
    novelty[ordered[1:][repeat]] = 1 - cos[repeat].double()
    return novelty
