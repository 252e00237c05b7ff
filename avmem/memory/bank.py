"""Fixed-size token memory (seed 001 §3.1; official ``recursive_attention``, reference §2.8).

The bank holds at most N tokens in stream order together with their global indices, so a kept token
keeps its original position. When an append overflows it, a :class:`CompressionPolicy` reduces the
tokens back to N, either in one go or, as the official code does, absorbing ``step`` new tokens at a
time. Tokens may carry extra feature axes (e.g. [n, 4, d] for the main embedding plus three DeepStack
features); similarities are computed on the flattened features, as the official code compares the
concatenation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class BankState:
    """Tokens [n, *feat] in stream order and their global indices ids [n] (strictly increasing)."""

    tokens: Tensor
    ids: Tensor

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def nbytes(self) -> int:
        return self.tokens.numel() * self.tokens.element_size() + self.ids.numel() * self.ids.element_size()


def neighbour_similarity(tokens: Tensor, block: int = 512) -> Tensor:
    """cos(x_i, x_{i+1}) for i = 0..n-2 on flattened features, [n-1] (no graph: it only ranks).

    Computed in float32 (float64 stays float64) even for bf16 tokens: the released code ranks in the
    model dtype, where near-ties can order differently; we prefer the stable ranking. Rows are converted
    ``block`` at a time, so the extra memory is O(block * features) rather than three float32 copies of the
    whole bank (4 GB for a full 16k-token Qwen3-VL bank with DeepStack rows); the values equal
    :func:`neighbour_similarity_reference`.
    """
    flat = tokens.detach().reshape(tokens.shape[0], -1)
    acc = flat.dtype if flat.dtype in (torch.float32, torch.float64) else torch.float32
    n = flat.shape[0]
    out = torch.empty(max(n - 1, 0), dtype=acc, device=flat.device)
    for start in range(0, n - 1, block):
        stop = min(start + block, n - 1)
        unit = F.normalize(flat[start:stop + 1].to(acc), dim=-1)
        out[start:stop] = (unit[:-1] * unit[1:]).sum(-1)
    return out


def neighbour_similarity_reference(tokens: Tensor) -> Tensor:
    """The whole-bank form of :func:`neighbour_similarity` (the reference its blocks are tested against)."""
    flat = tokens.detach().reshape(tokens.shape[0], -1)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    unit = F.normalize(flat, dim=-1)
    return (unit[:-1] * unit[1:]).sum(-1)


class CompressionPolicy(ABC):
    """Reduces n > capacity tokens in stream order to exactly ``capacity`` tokens."""

    @abstractmethod
    def select(self, tokens: Tensor, ids: Tensor, capacity: int) -> tuple[Tensor, Tensor]:
        """Return (tokens [capacity, *feat], ids [capacity])."""


class NextSimilarityDiscard(CompressionPolicy):
    """Paper §3.1: discard the n - N tokens most cosine-similar to their *next* token.

    The last token has no next token and is always kept; of a near-duplicate pair (i, i+1) the earlier
    token is dropped.
    """

    def select(self, tokens: Tensor, ids: Tensor, capacity: int) -> tuple[Tensor, Tensor]:
        score = neighbour_similarity(tokens)
        score = torch.cat([score, score.new_full((1,), -float("inf"))])
        keep = torch.sort(torch.topk(-score, capacity).indices).values
        return tokens[keep], ids[keep]


class PreviousSimilarityDiscard(CompressionPolicy):
    """Official video mode (``simsample``): keep the N tokens *least* similar to their previous token.

    Token 0 of what is compressed is always dropped (it has no previous token, and the official code
    only ranks tokens 1..n-1); of a near-duplicate pair (i, i+1) the later token is dropped.
    """

    def select(self, tokens: Tensor, ids: Tensor, capacity: int) -> tuple[Tensor, Tensor]:
        keep = official_boundaries(tokens, capacity)
        return tokens[keep], ids[keep]


class SegmentMerge(CompressionPolicy):
    """Official averaging mode (``sim``, used for all audio): average segments between boundaries.

    With S the N sorted boundaries of :class:`PreviousSimilarityDiscard`, output m is the mean of
    tokens [S_{m-1}, S_m) (S_{-1} = 0) and takes the id S_m, the token *after* the segment; tokens from
    S_{N-1} to the end are dropped (official quirk, reference §2.8).
    """

    def select(self, tokens: Tensor, ids: Tensor, capacity: int) -> tuple[Tensor, Tensor]:
        bounds = official_boundaries(tokens, capacity)
        positions = torch.arange(tokens.shape[0], device=tokens.device)
        segment = torch.searchsorted(bounds, positions, right=True)
        inside = segment < capacity
        flat = tokens.reshape(tokens.shape[0], -1)
        acc_dtype = torch.float64 if flat.dtype == torch.float64 else torch.float32
        sums = flat.new_zeros(capacity, flat.shape[1], dtype=acc_dtype)
        sums.index_add_(0, segment[inside], flat[inside].to(acc_dtype))
        counts = torch.bincount(segment[inside], minlength=capacity).to(acc_dtype)
        merged = (sums / counts.unsqueeze(-1)).to(tokens.dtype).reshape(capacity, *tokens.shape[1:])
        return merged, ids[bounds]


def official_boundaries(tokens: Tensor, capacity: int) -> Tensor:
    """Sorted indices (in 1..n-1) of the ``capacity`` tokens least similar to their predecessor."""
    score = neighbour_similarity(tokens)
    return torch.sort(torch.topk(-score, capacity).indices + 1).values


class TokenBank:
    """Fixed-capacity token memory.

    Args:
        capacity: N, the most tokens ever held (hard guarantee).
        policy: how to shrink an overflowing memory.
        step: absorb at most this many new tokens per compression (the official ``stepsize``, 4096);
            None compresses everything in one go.
    """

    def __init__(self, capacity: int, policy: CompressionPolicy, step: int | None = None) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity <= 0:
            raise ValueError(f"TokenBank: capacity must be a positive int, got {capacity!r}")
        if step is not None and (not isinstance(step, int) or isinstance(step, bool) or step <= 0):
            raise ValueError(f"TokenBank: step must be a positive int or None, got {step!r}")
        if not isinstance(policy, CompressionPolicy):
            raise ValueError(f"TokenBank: policy must be a CompressionPolicy, got {type(policy).__name__}")
        self.capacity = capacity
        self.policy = policy
        self.step = step

    def append(self, state: BankState | None, tokens: Tensor, ids: Tensor) -> BankState:
        """Add tokens [k, *feat] with global ids [k] after the held ones; compress to <= capacity.

        Raises:
            ValueError: on wrong shapes or dtypes, NaN/Inf, or ids that do not continue the stream.
        """
        self._check(state, tokens, ids)
        if state is not None:
            tokens = torch.cat([state.tokens, tokens])
            ids = torch.cat([state.ids, ids])
        n = tokens.shape[0]
        if n > self.capacity:
            cap = self.capacity
            step = self.step or (n - cap)
            held_t, held_i = tokens[:cap], ids[:cap]
            for start in range(cap, n, step):
                held_t = torch.cat([held_t, tokens[start:start + step]])
                held_i = torch.cat([held_i, ids[start:start + step]])
                held_t, held_i = self.policy.select(held_t, held_i, cap)
            tokens, ids = held_t, held_i
        assert tokens.shape[0] <= self.capacity
        return BankState(tokens=tokens, ids=ids)

    def _check(self, state: BankState | None, tokens: Tensor, ids: Tensor) -> None:
        if not isinstance(tokens, Tensor) or tokens.dim() < 2 or not tokens.dtype.is_floating_point:
            raise ValueError("TokenBank.append: tokens must be a floating tensor [k, *feat] with k >= 1")
        if tokens.shape[0] == 0:
            raise ValueError("TokenBank.append: no tokens given")
        if not isinstance(ids, Tensor) or ids.dim() != 1 or ids.dtype != torch.long:
            raise ValueError("TokenBank.append: ids must be a LongTensor [k]")
        if ids.shape[0] != tokens.shape[0]:
            raise ValueError(f"TokenBank.append: {tokens.shape[0]} tokens but {ids.shape[0]} ids")
        if ids.device != tokens.device:
            raise ValueError("TokenBank.append: tokens and ids are on different devices")
        if not bool(torch.isfinite(tokens).all()):
            raise ValueError("TokenBank.append: tokens contain NaN or Inf")
        if ids.shape[0] > 1 and not bool((ids[1:] > ids[:-1]).all()):
            raise ValueError("TokenBank.append: ids must be strictly increasing")
        if state is not None and len(state) > 0:
            if state.tokens.shape[1:] != tokens.shape[1:] or state.tokens.dtype != tokens.dtype:
                raise ValueError(
                    f"TokenBank.append: tokens {list(tokens.shape[1:])} {tokens.dtype} do not match the bank's "
                    f"{list(state.tokens.shape[1:])} {state.tokens.dtype}"
                )
            if state.tokens.device != tokens.device:
                raise ValueError("TokenBank.append: tokens are on a different device than the bank")
            if not bool(ids[0] > state.ids[-1]):
                raise ValueError(
                    f"TokenBank.append: ids must continue the stream (first new id {int(ids[0])} <= last held "
                    f"id {int(state.ids[-1])})"
                )
