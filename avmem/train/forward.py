"""One training sample's loss: the streaming pipeline with gradients, then next-token loss on the answers.

    frames -> vision tower (frozen) -> TTT block (trained, graph kept across chunks) -> video bank
    audio  -> Whisper + window Q-Former (frozen)                                      -> audio bank
    banks + conversation -> LLM (LoRA) -> cross-entropy on the answer tokens (and their <|im_end|>)

The token banks select without gradient; the kept tokens keep theirs. With an OmniMem policy the loss
runs through the compressed forward (budget-aware fine-tuning, official_omnimem.md §5): chunked prefill
with per-layer selection, then the conversation over the kept keys/values, gradients flowing back through
them into earlier chunks.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import Tensor, nn

from ..memory.kv.omnimem import ChunkedKVPolicy
from ..memory.kv.selection import AUDIO, TEXT, VISUAL
from ..model import AVMemModel
from ..session import SessionSettings, StreamSession
from .data import Sample, Skipped

IGNORE = -100


def conversation_tail(session: StreamSession, turns: tuple[tuple[str, str], ...]) -> tuple[list[int], list[int]]:
    """Token ids placed after the memory and their targets: target[i] is the id row i must predict (an answer
    token or the ``<|im_end|>`` closing it) or ``IGNORE``. Same chat layout as :meth:`StreamSession.ask`."""
    if not turns:
        raise ValueError("a conversation needs at least one question/answer pair")
    tok = session.model.backbone.tokens
    ids: list[int] = []
    labelled: list[bool] = []

    def add(piece: list[int], label: bool) -> None:
        ids.extend(piece)
        labelled.extend([label] * len(piece))

    for k, (question, answer) in enumerate(turns):
        opener = session._text_ids("\n" + question.strip()) if k == 0 else (
            [tok.im_start] + session._text_ids("user\n" + question.strip()))
        add(opener + [tok.im_end] + session._text_ids("\n") + [tok.im_start] + session._text_ids("assistant\n"),
            False)
        add(session._text_ids(answer.strip()) + [tok.im_end], True)
        add(session._text_ids("\n"), False)
    targets = [ids[i + 1] if labelled[i + 1] else IGNORE for i in range(len(ids) - 1)] + [IGNORE]
    return ids, targets


class TrainableAVMem(nn.Module):
    """The trained parts (LLM with its adapters, TTT block) and the frozen rest; ``forward(sample)`` is the mean
    answer-token loss of one sample.

    Args:
        model: the loaded model (adapters already injected into ``model.backbone.model``).
        settings: memory settings of the streaming pass (fps is taken per sample from its frame times).
        policy: an OmniMem-style KV policy for budget-aware fine-tuning, or None (whole memory).
    """

    def __init__(self, model: AVMemModel, settings: SessionSettings, policy: ChunkedKVPolicy | None = None,
                 train_vision: bool = False, train_audio: bool = False) -> None:
        super().__init__()
        self.llm = model.backbone.model
        self.ttt = model.ttt
        self.audio = model.audio
        object.__setattr__(self, "avmem", model)
        self.settings = settings
        self.policy = policy
        self.train_vision, self.train_audio = train_vision, train_audio

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """The parameters an optimiser updates, by part: ttt, lora, llm (whole language model), vision, audio."""
        groups: dict[str, list[nn.Parameter]] = {"ttt": [], "lora": [], "llm": [], "vision": [], "audio": []}
        for name, p in self.llm.named_parameters():
            if not p.requires_grad:
                continue
            part = "lora" if "lora_" in name else "vision" if name.startswith("model.visual.") else "llm"
            groups[part].append(p)
        if self.ttt is not None and self.settings.use_ttt:
            groups["ttt"] = [p for p in self.ttt.parameters() if p.requires_grad]
        if self.audio is not None:
            groups["audio"] = [p for p in self.audio.parameters() if p.requires_grad]
        return groups

    def zero_loss(self) -> Tensor:
        """A zero that touches every trainable parameter (a skipped sample still joins the gradient all-reduce)."""
        params = [p for group in self.trainable_parameters().values() for p in group]
        return sum(p.sum() for p in params) * 0.0

    def forward(self, sample: Sample | Skipped) -> Tensor:
        if isinstance(sample, Skipped):
            return self.zero_loss()
        total, count = self.loss_terms(sample)
        return total / count

    def loss_terms(self, sample: Sample) -> tuple[Tensor, int]:
        """(sum of answer-token losses, number of answer tokens) of one sample."""
        model = self.avmem
        times = np.asarray(sample.times, dtype=np.float64)
        fps = self.settings.fps
        if len(times) > 1:
            fps = float(min(30.0, max(1e-3, (len(times) - 1) / max(times[-1] - times[0], 1e-6))))
        session = StreamSession(model, replace(self.settings, fps=fps))
        session.trainable = True
        session.train_vision, session.train_audio = self.train_vision, self.train_audio
        if len(times):
            session.feed(frames=list(sample.frames), t=[float(t) for t in times])
        if sample.audio is not None and len(sample.audio) and session.settings.use_audio:
            session.feed(audio=sample.audio, audio_t=float(sample.audio_start))
        st = session._flushed()
        tail, tail_targets = conversation_tail(session, sample.turns)
        embeds, positions, visual, deepstack, selectable, n_tail = session._prompt(st, tail)
        bb = model.backbone
        if self.policy is None:
            targets = torch.full((embeds.shape[0],), IGNORE, dtype=torch.long, device=embeds.device)
            targets[-n_tail:] = torch.tensor(tail_targets, device=embeds.device)
            return bb.answer_loss(embeds, positions, targets, None, None if deepstack is None else visual, deepstack)
        cut = embeds.shape[0] - n_tail
        modality = torch.full((cut,), TEXT, dtype=torch.long, device=embeds.device)
        modality[selectable[:cut]] = AUDIO
        modality[visual[:cut]] = VISUAL
        cache, _, _ = self.policy.compress(bb, embeds[:cut], positions[:, :cut], modality,
                                           None if deepstack is None else visual[:cut], deepstack)
        return bb.answer_loss(embeds[cut:], positions[:, cut:], torch.tensor(tail_targets, device=embeds.device), cache)
