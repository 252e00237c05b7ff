"""The memory's KV cache kept between questions (incremental reading, ReKV).

Rows are identified by their (t, h, w) position (unique in the session's layout) and compared by content:

* ``exact``: the kept cache covers the memory exactly, or the memory only gained rows after all of it (the
  result equals prefilling from scratch);
* ``approximate``: rows were also dropped (evicted tokens, emptied patch wrappers): the kept rows'
  keys/values were computed while the dropped rows were still there;
* ``recomputed``: rows changed content (e.g. merged audio) or were added in the middle.

The matching is vectorised on the device (a sort and a binary search over encoded positions, one row-wise
comparison), and an unchanged memory is recognised by two whole-tensor comparisons. Caches are handed out as
shallow copies: a :class:`~transformers.DynamicCache` grows by concatenation and the readers replace rows by
``index_select``, so the kept tensors are never written to.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import DynamicCache

from ...backbones.qwen import deepstack_slice


def shallow_copy(cache: DynamicCache) -> DynamicCache:
    """A cache object of its own (own layer objects) sharing ``cache``'s key/value tensors.

    Safe while nobody writes into those tensors in place: extending or pruning the copy replaces its
    layers' tensors and leaves ``cache`` as it was.
    """
    new = copy.copy(cache)
    new.layers = [copy.copy(layer) for layer in cache.layers]
    return new


def position_keys(positions: Tensor, span: int) -> Tensor:
    """One int64 per (t, h, w) column of ``positions`` [3, M]: rows are (t, t + row, t + col) with
    0 <= row, col < ``span``, so ``(t * span + row) * span + col`` is unique. [M]."""
    t = positions[0]
    return (t * span + (positions[1] - t)) * span + (positions[2] - t)


@dataclass
class _Kept:
    positions: Tensor  # [3, M]
    embeds: Tensor  # [M, D]
    cache: DynamicCache


class MemoryKV:
    """Store of the memory part's KV cache between questions; :attr:`mode` says how the last call reused it."""

    def __init__(self) -> None:
        self._kept: _Kept | None = None
        self.mode: str | None = None

    def clear(self) -> None:
        """Forget the kept cache."""
        self._kept, self.mode = None, None

    def _match(self, embeds: Tensor, positions: Tensor) -> tuple[str, int, Tensor | None]:
        """(mode, rows reused from the start of the new memory, old rows to keep or None for all)."""
        old = self._kept
        if old is None:
            return "recomputed", 0, None
        if old.positions.shape == positions.shape and torch.equal(old.positions, positions) \
                and torch.equal(old.embeds, embeds):
            return "exact", positions.shape[1], None
        if old.positions.shape[1] == 0 or positions.shape[1] == 0:
            return "recomputed", 0, None
        both = torch.cat([old.positions, positions], dim=1)
        span = int((both[1:] - both[:1]).max()) + 1
        old_keys, perm = torch.sort(position_keys(old.positions, span))
        new_keys = position_keys(positions, span)
        at = torch.searchsorted(old_keys, new_keys).clamp(max=old_keys.shape[0] - 1)
        j = perm[at]  # the old row with the same position, where there is one
        same = (old_keys[at] == new_keys) & (embeds == old.embeds[j]).all(dim=-1)
        count = int(same.sum())
        if count == 0 or not bool(same[:count].all()):
            return "recomputed", 0, None
        kept_old = j[:count]
        if count > 1 and not bool((kept_old[1:] > kept_old[:-1]).all()):
            return "recomputed", 0, None
        if count < old.positions.shape[1]:
            return "approximate", count, kept_old
        return "exact", count, None

    @torch.no_grad()
    def cache(self, backbone, embeds: Tensor, positions: Tensor, visual_mask: Tensor | None,
              deepstack: Tensor | None) -> DynamicCache:
        """A KV cache of the memory rows (embeddings [M, D], positions [3, M], visual mask [M], DeepStack rows
        [k, n_visual, D] or None), reusing the kept one where possible; the kept cache becomes this memory's.

        The returned cache is the caller's to extend (the question, decoding).
        """
        from .reader import keep_rows

        device = backbone.device  # inputs made elsewhere (e.g. on the host) move to the model
        embeds, positions = embeds.to(device), positions.to(device)
        if visual_mask is not None:
            visual_mask = visual_mask.to(device)
        if deepstack is not None:
            deepstack = deepstack.to(device)
        mode, start, rows = self._match(embeds, positions)
        if self._kept is not None and start > 0:
            cache = shallow_copy(self._kept.cache)
            if rows is not None:
                for layer in cache.layers:
                    keep_rows(layer, rows)
        else:
            cache = DynamicCache(config=backbone.model.config.text_config)
        if start < embeds.shape[0]:
            mask, ds = deepstack_slice(visual_mask, deepstack, start)
            backbone.forward_embeds(embeds[start:], positions[:, start:], cache, mask, ds)
        self.mode = mode
        if mode == "exact" and start == embeds.shape[0]:
            return cache  # unchanged memory: already a copy of the kept cache
        self._kept = _Kept(positions=positions.clone(), embeds=embeds.clone(), cache=cache)
        return shallow_copy(cache)
