"""Sampling and stop sequences of the server's answers (``temperature``, ``top_p``, ``seed``, ``stop``).

:class:`Sampling` holds a request's decoding settings (validated); :meth:`Sampling.picker` is the token choice
``logits [V] -> id`` handed to :meth:`avmem.session.StreamSession.ask_stream` (None: greedy). :class:`StopFilter`
cuts the streamed text at the first stop sequence, holding back only what could still begin one.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

MAX_STOPS = 4
MAX_STOP_CHARS = 256


class SamplingError(ValueError):
    """A decoding setting out of range (HTTP 400); the message names the field."""


@dataclass
class Sampling:
    """How answer tokens are chosen.

    Attributes:
        temperature: 0 (or None) decodes greedily; > 0 samples from softmax(logits / temperature).
        top_p: nucleus sampling: only the most likely tokens whose probabilities add up to ``top_p`` (1: all).
        seed: seeds the sampler's generator (same seed, memory and question: same answer); None: a random seed.
        stop: strings that end the answer (not included in it), at most :data:`MAX_STOPS`.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def from_request(cls, body: dict) -> Sampling:
        """The settings of a JSON request (``temperature``, ``top_p``, ``seed``, ``stop`` as in OpenAI's API).

        Raises:
            SamplingError: a value of the wrong type or out of range.
        """
        def number(name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
            v = body.get(name)
            if v is None:
                return default
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or not (low < v if low_open else low <= v) or v > high:
                raise SamplingError(f"'{name}' must be a number in {'(' if low_open else '['}{low:g}, {high:g}], "
                                    f"got {v!r}")
            return float(v)

        temperature = number("temperature", 0.0, 0.0, 2.0)
        top_p = number("top_p", 1.0, 0.0, 1.0, low_open=True)
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
            raise SamplingError(f"'seed' must be an integer in 0 .. 2**63-1, got {seed!r}")
        stop = body.get("stop")
        if stop is None:
            stops: list[str] = []
        elif isinstance(stop, str):
            stops = [stop]
        elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
            stops = list(stop)
        else:
            raise SamplingError("'stop' must be a string or a list of strings")
        if len(stops) > MAX_STOPS or any(not s or len(s) > MAX_STOP_CHARS for s in stops):
            raise SamplingError(f"'stop': at most {MAX_STOPS} non-empty strings of at most {MAX_STOP_CHARS} "
                                f"characters")
        return cls(temperature, top_p, seed, stops)

    def picker(self, device: torch.device | str) -> Callable[[Tensor], int] | None:
        """The token choice for one answer (None when greedy): a sampler with its own ``torch.Generator`` on
        ``device`` (the logits' device), seeded with ``seed`` or a random seed."""
        if self.greedy:
            return None
        generator = torch.Generator(device=device)
        generator.manual_seed(self.seed if self.seed is not None else secrets.randbits(63))
        temperature, top_p = self.temperature, self.top_p

        def pick(logits: Tensor) -> int:
            return sample_token(logits, temperature, top_p, generator)

        return pick


def nucleus_probs(logits: Tensor, temperature: float, top_p: float) -> Tensor:
    """Probabilities [V] (float32) of softmax(logits [V] / temperature) kept to the smallest set of most likely
    tokens whose mass reaches ``top_p`` (always at least the most likely token), renormalised."""
    probs = torch.softmax(logits.float().reshape(-1) / temperature, dim=-1)
    if top_p >= 1.0:
        return probs
    sorted_p, order = torch.sort(probs, descending=True)
    before = torch.cumsum(sorted_p, dim=-1) - sorted_p  # mass of the more likely tokens
    sorted_p = torch.where(before < top_p, sorted_p, torch.zeros_like(sorted_p))
    kept = torch.zeros_like(probs).scatter(0, order, sorted_p)
    return kept / kept.sum()


def sample_token(logits: Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """One token id drawn from :func:`nucleus_probs` with ``generator`` (on the logits' device)."""
    probs = nucleus_probs(logits, temperature, top_p)
    return int(torch.multinomial(probs, 1, generator=generator))


class StopFilter:
    """The answer text cut at the first stop sequence, as it streams.

    :meth:`feed` takes the next text piece and returns what may be sent now (text that can no longer be part of a
    stop sequence); :attr:`stopped` turns True at the first stop sequence (generation should end), and
    :meth:`flush` returns the held-back rest at the end of the answer. With no stop sequences every piece passes
    through unchanged.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = list(stops)
        self.text = ""  # everything the model wrote so far (before cutting)
        self.sent = 0  # characters of ``text`` handed out
        self.stopped = False

    def _cut(self) -> int | None:
        found = [i for i in (self.text.find(s) for s in self.stops) if i >= 0]
        return min(found) if found else None

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.text += piece
        cut = self._cut()
        if cut is not None:
            self.stopped = True
            out, self.sent = self.text[self.sent:cut], max(self.sent, cut)
            return out
        hold = 0  # the longest tail of the text that begins a stop sequence
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text)), hold, -1):
                if self.text.endswith(s[:k]):
                    hold = k
                    break
        safe = max(self.sent, len(self.text) - hold)
        out, self.sent = self.text[self.sent:safe], safe
        return out

    def flush(self) -> str:
        """The text held back at the end of an answer that met no stop sequence."""
        if self.stopped:
            return ""
        out, self.sent = self.text[self.sent:], len(self.text)
        return out

    def answer(self) -> str:
        """The answer as sent: the text before the first stop sequence (all of it without one)."""
        cut = self._cut()
        return self.text if cut is None else self.text[:cut]
