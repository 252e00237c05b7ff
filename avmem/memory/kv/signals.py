"""Per-layer statistics for OmniMem budgets (official_omnimem.md §2.2).

The released code that produced its signal files is not public; its field names say what they are and
we measure exactly that, chunk by chunk over a memory (the full memory is kept, nothing is pruned):

* ``entropy_all[li]``: entropy of each chunk query's attention over all keys (per head, then averaged
  over heads and queries);
* ``entropy_audio[li]`` / ``entropy_visual[li]``: the same with the attention restricted to audio / visual
  keys and renormalised;
* ``cos_audio[li]`` / ``cos_visual[li]``: mean cosine similarity of consecutive tokens of that modality in
  the layer-input hidden states.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import DynamicCache

from ...backbones.attention import capturing
from ...backbones.qwen import deepstack_slice
from .budgets import LayerSignals
from .selection import AUDIO, VISUAL


def _entropy(p: Tensor) -> Tensor:
    return -(p * torch.log(p.clamp_min(1e-30))).sum(-1)


@dataclass
class _SignalCapture:
    """Accumulates attention entropies per layer for the keys' modalities (set per chunk)."""

    modality: Tensor | None = None
    sums: dict[int, Tensor] = field(default_factory=dict)
    counts: dict[int, Tensor] = field(default_factory=dict)

    def record(self, layer: int, query: Tensor, key: Tensor) -> None:
        heads, rows, d = query.shape
        k = key.repeat_interleave(heads // key.shape[0], dim=0).float()
        n = k.shape[1]
        logits = query.float() @ k.transpose(-2, -1) / math.sqrt(d)
        visible = torch.ones(rows, n, dtype=torch.bool, device=query.device).tril(n - rows)
        logits = logits.masked_fill(~visible, float("-inf"))
        mods = self.modality[:n].to(query.device)
        sums = torch.zeros(3, dtype=torch.float64, device=query.device)
        counts = torch.zeros(3, dtype=torch.float64, device=query.device)
        sums[0] = _entropy(torch.softmax(logits, -1)).mean().double()
        counts[0] = 1
        for slot, kind in ((1, AUDIO), (2, VISUAL)):
            allowed = (mods == kind).view(1, 1, -1) & visible
            has = allowed.any(-1)  # [1?, rows]
            if bool(has.any()):
                p = torch.softmax(logits.masked_fill(~allowed, float("-inf")), -1)
                ent = torch.nan_to_num(_entropy(p), nan=0.0)
                sums[slot] = ent[has.expand_as(ent)].mean().double()
                counts[slot] = 1
        host = torch.stack([sums, counts]).cpu()  # running totals live on the host (one copy per layer)
        self.sums[layer] = self.sums.get(layer, torch.zeros(3, dtype=torch.float64, device="cpu")) + host[0]
        self.counts[layer] = self.counts.get(layer, torch.zeros(3, dtype=torch.float64, device="cpu")) + host[1]


@dataclass
class SignalTotals:
    """Running sums over chunks and videos, per layer (host tensors): entropy sums/counts [3] (all, audio,
    visual) and cosine sums/counts [2] (audio, visual)."""

    entropy_sum: list[Tensor]
    entropy_count: list[Tensor]
    cos_sum: list[Tensor]
    cos_count: list[Tensor]

    @classmethod
    def empty(cls, layers: int) -> "SignalTotals":
        def zeros(n: int) -> list[Tensor]:
            return [torch.zeros(n, dtype=torch.float64, device="cpu") for _ in range(layers)]

        return cls(zeros(3), zeros(3), zeros(2), zeros(2))

    def signals(self) -> LayerSignals:
        """Averages; raises ValueError when a modality was never seen."""
        ent = [s / c.clamp_min(1) for s, c in zip(self.entropy_sum, self.entropy_count)]
        cos = [s / c.clamp_min(1) for s, c in zip(self.cos_sum, self.cos_count)]
        if any(float(c[1]) == 0 or float(c[2]) == 0 for c in self.entropy_count):
            raise ValueError("budgets need both audio and visual tokens in the measured memories")
        return LayerSignals(
            entropy_all=tuple(float(e[0]) for e in ent), entropy_audio=tuple(float(e[1]) for e in ent),
            entropy_visual=tuple(float(e[2]) for e in ent), cos_audio=tuple(float(c[0]) for c in cos),
            cos_visual=tuple(float(c[1]) for c in cos))


@torch.no_grad()
def measure_signals(backbone, memory: Tensor, positions: Tensor, modality: Tensor, chunk_tokens: int,
                    totals: SignalTotals | None = None, visual_mask: Tensor | None = None,
                    deepstack: Tensor | None = None) -> SignalTotals:
    """Prefill ``memory`` [L, D] (positions [3, L], modality [L]) in chunks and add its statistics to ``totals``."""
    model = backbone.model
    layers = model.config.text_config.num_hidden_layers
    totals = totals or SignalTotals.empty(layers)
    capture = _SignalCapture(modality=modality)
    inputs: dict[int, Tensor] = {}
    cache = DynamicCache(config=model.config.text_config)
    with capturing(model, capture, inputs):
        for start in range(0, memory.shape[0], chunk_tokens):
            stop = min(start + chunk_tokens, memory.shape[0])
            mask, ds = deepstack_slice(visual_mask, deepstack, start, stop)
            capture.sums.clear()
            capture.counts.clear()
            backbone.forward_embeds(memory[start:stop], positions[:, start:stop], cache, mask, ds)
            for li in range(layers):
                totals.entropy_sum[li] += capture.sums[li]
                totals.entropy_count[li] += capture.counts[li]
                hidden = F.normalize(inputs[li].float(), dim=-1)
                mods = modality[start:stop].to(hidden.device)
                for slot, kind in ((0, AUDIO), (1, VISUAL)):
                    rows = hidden[mods == kind]
                    if rows.shape[0] > 1:
                        totals.cos_sum[li][slot] += float((rows[1:] * rows[:-1]).sum(-1).sum())
                        totals.cos_count[li][slot] += rows.shape[0] - 1
    return totals
