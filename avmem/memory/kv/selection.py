"""Importance scores and hard-budget selection of KV entries.

* :func:`prompt_importance` — prompt-dependent reading (seed 001 eq. 9): attention from the prompt
  tokens to each key, averaged over heads and summed over prompt tokens, computed over key blocks
  (two passes: log-sum-exp, then probabilities) without materialising the full attention matrix.
* :func:`joint_topk` / :func:`per_layer_topk` — eq. 10-11 (keep K' entries across all layers jointly)
  and the released per-layer variant.
* :func:`redundancy`, :func:`omnimem_score`, :func:`select_with_budget` — OmniMem's perturbation-aware
  score and its modality-aware top-k with hard per-modality budgets (official_omnimem.md §2.1, §3).

Shapes: queries [H, S, d], keys [H_kv, N, d] (grouped-query attention: H is a multiple of H_kv).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .budgets import LayerBudget

TEXT, AUDIO, VISUAL = 0, 1, 2


def _expand_kv(keys: Tensor, heads: int) -> Tensor:
    if keys.dim() != 3 or heads % keys.shape[0]:
        raise ValueError(f"keys must be [H_kv, N, d] with H_kv dividing {heads}, got {list(keys.shape)}")
    return keys.repeat_interleave(heads // keys.shape[0], dim=0)


def prompt_importance(queries: Tensor, keys: Tensor, block: int = 4096) -> Tensor:
    """Eq. 9: a_j = sum_s (1/H) sum_h softmax_j(q_s^h . k_j^h / sqrt(d)), [N] (float32).

    Every prompt query attends to all N keys (the prompt follows the memory). Computed over key
    blocks of ``block``: memory O(H * S * block), never O(H * S * N).
    """
    if queries.dim() != 3 or queries.shape[-1] != keys.shape[-1]:
        raise ValueError(f"queries must be [H, S, d] matching keys' d, got {list(queries.shape)}")
    if block <= 0:
        raise ValueError(f"block must be > 0, got {block}")
    heads, _, d = queries.shape
    k = _expand_kv(keys, heads).float()
    q = queries.float() / math.sqrt(d)
    n = k.shape[1]
    lse = None
    for start in range(0, n, block):
        part = torch.logsumexp(q @ k[:, start:start + block].transpose(-2, -1), dim=-1)
        lse = part if lse is None else torch.logaddexp(lse, part)
    out = torch.empty(n, dtype=torch.float32, device=queries.device)
    for start in range(0, n, block):
        probs = torch.exp(q @ k[:, start:start + block].transpose(-2, -1) - lse.unsqueeze(-1))
        out[start:start + block] = probs.sum(dim=1).mean(dim=0)
    return out


def chunk_importance(queries: Tensor, keys: Tensor) -> Tensor:
    """OmniMem attention importance (official_omnimem.md §3.1), [N] float32.

    The chunk's q queries are the last rows of the N keys; with the head-averaged logit
    l_ij = sum_h q_i^h . k_j^h / (sqrt(d) H), causal (query i sees keys up to its own position), the
    importance is a_j = sum_i softmax_j(l_i). Memory O(q * N) per layer.
    """
    heads, rows, d = queries.shape
    _expand_kv(keys[:, :0], heads)  # shape check
    kv_heads, n = keys.shape[0], keys.shape[1]
    # sum_h q^h . k^{g(h)} = sum_g (sum_{h in g} q^h) . k^g: no expanded keys, H_kv / H of the work
    grouped = queries.float().view(kv_heads, heads // kv_heads, rows, d).sum(1)
    logits = torch.einsum("gqd,gnd->qn", grouped, keys.float()) / (math.sqrt(d) * heads)
    visible = torch.ones(rows, n, dtype=torch.bool, device=queries.device).tril(n - rows)
    return torch.softmax(logits.masked_fill(~visible, float("-inf")), dim=-1).sum(dim=0)


def joint_topk(importance: list[Tensor], k: int) -> list[Tensor]:
    """Eq. 10-11: the ``k`` largest entries over all layers together; sorted indices per layer."""
    sizes = [len(a) for a in importance]
    if k < 0 or k > sum(sizes):
        raise ValueError(f"cannot keep {k} of {sum(sizes)} entries")
    flat = torch.cat([a.float() for a in importance])
    chosen = torch.sort(torch.topk(flat, k).indices).values
    bounds = [0, *itertools.accumulate(sizes)]
    cuts = torch.searchsorted(chosen, torch.tensor(bounds, device=chosen.device)).tolist()  # one host sync
    return [chosen[a:b] - lo for a, b, lo in zip(cuts[:-1], cuts[1:], bounds[:-1])]


def per_layer_topk(importance: list[Tensor], k: int) -> list[Tensor]:
    """The released variant: each layer keeps its own ``k`` largest entries (sorted indices)."""
    if k < 0 or any(k > len(a) for a in importance):
        raise ValueError(f"cannot keep {k} entries in a layer holding {min(len(a) for a in importance)}")
    return [torch.sort(torch.topk(a.float(), k).indices).values for a in importance]


def redundancy(hidden: Tensor) -> Tensor:
    """s_i = cos(x_i, x_{i-1}) + cos(x_i, x_{i+1}) in sequence order; a missing neighbour counts as 1. [N]."""
    if hidden.dim() != 2 or hidden.shape[0] == 0:
        raise ValueError(f"hidden states must be [N, D] with N >= 1, got {list(hidden.shape)}")
    unit = F.normalize(hidden.float(), dim=-1)
    cos = (unit[1:] * unit[:-1]).sum(-1)
    one = cos.new_ones(1)
    return torch.cat([one, cos]) + torch.cat([cos, one])


def omnimem_score(redundancy_: Tensor, attention: Tensor, lam: float) -> Tensor:
    """score_i = sqrt(1 - s_i / 2) * a_i ** lam (official default form). [N]."""
    if lam < 0 or not math.isfinite(lam):
        raise ValueError(f"lambda must be a finite number >= 0, got {lam}")
    distance = torch.sqrt(torch.clamp(1 - redundancy_ / 2, min=0))
    return distance * attention.clamp(min=0) ** lam if lam else distance


def select_with_budget(score: Tensor, modality: Tensor, budget: LayerBudget) -> Tensor:
    """Indices kept in one layer, sorted: every text token, plus the best non-text tokens within budget.

    With a pair budget, audio and visual tokens are ranked separately (``min(count, B_a)`` audio and
    ``min(count, B_v)`` visual); with a total budget they compete for ``min(count, B)`` slots. The kept
    non-text count never exceeds the budget.
    """
    if score.shape != modality.shape or score.dim() != 1:
        raise ValueError(f"score and modality must be [N] of equal length, got {list(score.shape)}, "
                         f"{list(modality.shape)}")
    keep = [torch.nonzero(modality == TEXT).flatten()]
    groups = [(modality != TEXT, budget.total)] if not budget.per_modality else [
        (modality == AUDIO, budget.audio), (modality == VISUAL, budget.visual)]
    for mask, limit in groups:
        candidates = torch.nonzero(mask).flatten()
        take = min(len(candidates), limit)
        if take:
            keep.append(candidates[torch.topk(score[candidates].float(), take).indices])
    return torch.sort(torch.cat(keep)).values
