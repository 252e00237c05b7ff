"""Explicit streaming state of :class:`~avmem.memory.ttt.TTTMemory`."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .fast_mlp import FastWeights


@dataclass
class TTTState:
    """Everything the layer carries from one call to the next.

    Attributes:
        fast: fast weights after the last mini-batch (W1 [B,H,d,h], b1 [B,H,1,h], W2 [B,H,h,d],
            b2 [B,H,1,d]).
        lag_tail: inputs the next call's lag objective pairs with, [B, n <= lag_distance, dim], or None
            before the first call. Official mode keeps the last rows of the previous call's *padded*
            input (zero rows included); clean mode keeps the last real tokens over all calls.
        tokens: real tokens consumed so far.
        last_loss: mean pre-update reconstruction loss of the last call's real tokens, [B]
            (telemetry, detached), or None before the first call.
    """

    fast: FastWeights
    lag_tail: Tensor | None = None
    tokens: int = 0
    last_loss: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.fast.W1.shape[0]

    def detach(self) -> "TTTState":
        """Cut the autograd graph (truncated back-propagation between calls)."""
        return replace(
            self,
            fast=self.fast.map(torch.Tensor.detach),
            lag_tail=None if self.lag_tail is None else self.lag_tail.detach(),
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "TTTState":
        """Move (and optionally cast) every tensor."""

        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        return replace(
            self,
            fast=self.fast.map(move),
            lag_tail=move(self.lag_tail),
            last_loss=move(self.last_loss),
        )

    def tensors(self) -> dict[str, Tensor]:
        """Flat name -> tensor map (for saving); inverse of :meth:`from_tensors`."""
        out = {f"fast.{n}": t for n, t in zip(("W1", "b1", "W2", "b2"), self.fast.tensors())}
        if self.lag_tail is not None:
            out["lag_tail"] = self.lag_tail
        if self.last_loss is not None:
            out["last_loss"] = self.last_loss
        out["tokens"] = torch.tensor(self.tokens, dtype=torch.long, device="cpu")
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> "TTTState":
        missing = [k for k in ("fast.W1", "fast.b1", "fast.W2", "fast.b2", "tokens") if k not in tensors]
        if missing:
            raise ValueError(f"TTTState: missing tensors {missing}")
        return cls(
            fast=FastWeights(*(tensors[f"fast.{n}"] for n in ("W1", "b1", "W2", "b2"))),
            lag_tail=tensors.get("lag_tail"),
            tokens=int(tensors["tokens"]),
            last_loss=tensors.get("last_loss"),
        )
