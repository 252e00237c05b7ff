"""Session readers: how a question reads the memory, behind one interface and a registry.

A reader turns a :class:`MemoryPrompt` (the memory part of the LLM input and the question, built by the
session) into a :class:`~avmem.memory.kv.reader.ReadResult` (the cache to decode from, the first answer
logits, the next position, the audio/visual entries kept per layer). Readers register by name::

    @register_reader("my-reader")
    class MyReader(Reader):
        def read(self, backbone, prompt, memory_kv):
            ...

A new reader is one module in this package (every module here is imported when the registry is first
used); :class:`~avmem.session.SessionSettings` takes the names from :func:`reader_names`. The CLI checks
``--reader`` before importing torch, against the light table :data:`avmem.reader_catalog.READERS`: a new reader
gets a row there too (``tests/test_cli_fail_fast.py`` keeps the two equal).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from ....registry import Registry
from ..reader import ReadResult
from ..reuse import MemoryKV
from ..selection import AUDIO, TEXT, VISUAL

if TYPE_CHECKING:
    from ..budgets import BudgetSchedule

__all__ = ["MemoryPrompt", "Reader", "ReadResult", "MemoryKV", "register_reader", "get_reader", "reader_names"]


@dataclass
class MemoryPrompt:
    """The LLM input of one question, split where the memory ends; every tensor on the backbone's device.

    Attributes:
        embeds: memory rows [L, D] (timestamps and wrappers included).
        positions: multimodal RoPE positions of the memory rows [3, L] (long).
        modality: TEXT/AUDIO/VISUAL of every memory row [L] (long).
        visual_mask: video rows of the memory [L] (bool).
        deepstack: DeepStack rows [k, n_visual, D] of the video rows (Qwen3-VL) or None.
        question: rows after the memory [S, D] (question, end of turn, assistant header).
        question_positions: their positions [3, S].
        next_position: first free position after the question (decoding starts there).
    """

    embeds: Tensor
    positions: Tensor
    modality: Tensor
    visual_mask: Tensor
    deepstack: Tensor | None
    question: Tensor
    question_positions: Tensor
    next_position: int

    @property
    def selectable(self) -> Tensor:
        """Audio/visual rows [L] (bool): what a reader may drop."""
        return self.modality != TEXT

    @property
    def deepstack_mask(self) -> Tensor | None:
        """The visual mask where DeepStack rows exist (what ``forward_embeds`` takes), else None."""
        return None if self.deepstack is None else self.visual_mask

    def memory_count(self) -> int:
        """Number of audio/visual rows (one host sync)."""
        return int(self.selectable.sum())

    @staticmethod
    def modality_of(selectable: Tensor, visual_mask: Tensor) -> Tensor:
        """TEXT/AUDIO/VISUAL [L] from the selectable and visual masks [L] (on their device)."""
        modality = torch.full(selectable.shape, TEXT, dtype=torch.long, device=selectable.device)
        modality[selectable] = AUDIO
        modality[visual_mask] = VISUAL
        return modality


class Reader:
    """One way of reading the memory. Subclasses set the class attributes they need and implement :meth:`read`.

    Class attributes:
        name: registered name (set by :func:`register_reader`).
        uses_budgets: reads under the per-layer :class:`~avmem.memory.kv.budgets.BudgetSchedule`
            (``budget_file`` / ``read_tokens``) of the settings.
        supports_incremental: honours ``settings.incremental`` (keeps the memory's KV between questions).
        read_within_memory: ``read_tokens`` may not exceed the memory's capacity.

    Args:
        settings: the session's :class:`~avmem.session.SessionSettings`.
        model: the :class:`~avmem.model.AVMemModel`.
    """

    name: ClassVar[str] = ""
    uses_budgets: ClassVar[bool] = False
    supports_incremental: ClassVar[bool] = False
    read_within_memory: ClassVar[bool] = False

    def __init__(self, settings, model) -> None:
        self.settings = settings
        self.model = model

    @classmethod
    def check(cls, settings, model) -> None:
        """Raise ValueError naming a setting this reader cannot work with (the generic checks are done)."""
        if cls.read_within_memory and settings.read_tokens > settings.video_tokens + settings.audio_tokens:
            raise ValueError(f"read_tokens ({settings.read_tokens}) is more than the memory holds "
                             f"({settings.video_tokens} video + {settings.audio_tokens} audio tokens)")
        if cls.uses_budgets:
            budgets(settings, model)  # validates a budget file against the model

    def read(self, backbone, prompt: MemoryPrompt, memory_kv: MemoryKV) -> ReadResult:
        """Answer-ready cache for ``prompt``; ``memory_kv`` is the session's store of the memory's KV cache
        between questions (readers that keep the full memory KV use it)."""
        raise NotImplementedError


def budgets(settings, model) -> "BudgetSchedule":
    """The KV budget schedule of ``settings``: ``budget_file``, or ``read_tokens`` in every layer."""
    from ..budgets import BudgetSchedule

    layers = model.backbone.model.config.text_config.num_hidden_layers
    if settings.budget_file is not None:
        return BudgetSchedule.load(settings.budget_file, num_layers=layers)
    return BudgetSchedule.uniform(layers, settings.read_tokens)


_READERS: Registry[Reader] = Registry("reader", Reader, __name__)


def register_reader(name: str):
    """Class decorator: register a :class:`Reader` subclass under ``name`` (unique)."""
    return _READERS.register(name)


def reader_names() -> tuple[str, ...]:
    """Registered reader names, ``full`` first."""
    return tuple(sorted(_READERS.names(), key=lambda n: (n != "full", n)))


def get_reader(name: str) -> type[Reader]:
    """The reader class registered as ``name``; ValueError listing the names otherwise."""
    cls = _READERS.lookup(name)
    if cls is None:
        raise ValueError(f"reader must be one of {reader_names()}, got {name!r}")
    return cls
