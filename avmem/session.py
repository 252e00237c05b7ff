"""StreamSession: feed a stream, ask questions at any time, save and restore the memory exactly.

Memory layout (video-SALMONN S, reference §1.5-§1.6): frames at ``fps`` are grouped in temporal patches
of 2 frames; each patch contributes Hm*Wm video tokens (after the TTT memory) and, with audio, the
audio tokens of its time span (2 per second). At question time the prompt is

    <|im_start|>user\\n  { <ts seconds><|vision_start|> kept video tokens  kept audio tokens <|vision_end|> }*
    \\n question <|im_end|>\\n<|im_start|>assistant\\n

with one wrapper per temporal patch that still holds tokens, at most ``max_wrappers`` (past that, consecutive
patches share one; the released code keeps every wrapper up to 6000 patches, so its context grows with the video;
we keep the context bounded by the settings). Every kept token keeps the
multimodal RoPE position it has in the full, uncompressed layout (text tokens advance t=h=w by one;
a patch's video block sits at (p, p + row, p + col) and advances p by max(Hm, Wm)).

Asking never changes the memory: pending frames and audio are absorbed into a copy.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .backbones.qwen import resize_frames_tensor
from .media import smart_resize
from .memory.bank import (
    BankState,
    CompressionPolicy,
    NextSimilarityDiscard,
    PreviousSimilarityDiscard,
    SegmentMerge,
    TokenBank,
)
from .memory.kv.reuse import shallow_copy
from .memory.kv.readers import MemoryKV, MemoryPrompt, get_reader, reader_names
from .memory.kv.readers import budgets as reader_budgets
from .memory.ssm import Mamba2State
from .memory.ttt import TTTMemory, TTTState, official_positions
from .model import AVMemModel

SESSION_FORMAT = "avmem-session/2"
AUDIO_RATE = 16000
AUDIO_TOKENS_PER_SECOND = 2
DECODE_QUEUE_ITEMS = 32
"""Media items ``feed_file`` decodes ahead of the model (a bounded queue: a few frames and audio chunks)."""
DECODE_PIXELS = 4096 * 2160
"""Frames larger than this (and than 16 x the pixel budget) are scaled down while decoding (``media``), so a huge
frame never becomes a full-size RGB array; the session's own resize to the budget follows."""
STAGES = ("decode_wait", "resize", "vision", "ttt", "bank", "audio")
"""Ingestion steps timed in ``StreamSession.stage_seconds``."""
POLICIES: dict[str, type[CompressionPolicy]] = {
    "discard": NextSimilarityDiscard,
    "discard-prev": PreviousSimilarityDiscard,
    "merge": SegmentMerge,
}


@dataclass
class SessionSettings:
    """Memory and reading settings of a session.

    Attributes:
        fps: frames per second taken from the stream.
        max_pixels / min_pixels: per-frame pixel budget (360p-class default, the released 420^2).
        video_tokens / audio_tokens: capacities of the two token memories.
        use_audio: absorb audio (needs a model with an audio encoder).
        use_ttt: pass video tokens through the TTT memory (needs a model with one).
        video_policy / audio_policy: "discard" (paper), "discard-prev" (released video rule), "merge"
            (released audio averaging).
        bank_step: absorb this many new tokens per compression (released: 4096).
        chunk_frames: frames per TTT call and bank update (released: 128 = 64 temporal patches).
        vision_patches: temporal patches (2 frames each) per vision-tower call; bounds the tower's activations.
        audio_pieces: 30 s audio pieces per audio-encoder call (log-mel + Whisper + Q-Former); bounds its
            activations. Audio is encoded once this many pieces are pending (1: each piece as it completes;
            more: fewer, larger calls, while questions re-encode up to that much pending audio each time).
        max_new_tokens: answer length limit.
        max_wrappers: most timestamp + vision_start/end wrappers in a question's input. Each temporal patch that
            still holds tokens gets its own; past this many (long streams whose kept tokens are spread thin, e.g.
            hours of a still scene), consecutive kept patches share one, headed by the first one's timestamp, and
            every token keeps its full-layout position. Bounds the input at about video_tokens + audio_tokens +
            12 * max_wrappers rows whatever the stream holds (default: ~28k rows at the released budgets). The
            released code wraps every patch up to 6000 (6000 comes closest; coarser timestamps are the price of
            a lower cap on streams longer than ~34 min at 1 FPS).
        reader: a registered reader (:mod:`avmem.memory.kv.readers`; ``reader_names()`` lists them): "full" (the whole memory goes to the LLM) or "pd" (prompt-dependent reading, seed 001 §3.3:
            the memory is prefilled in chunks of ``read_chunk`` tokens with the question and only
            ``read_tokens`` audio/visual KV entries per layer on average are kept, ranked jointly across
            layers or, with ``read_joint=False``, per layer as in the released code), or "omnimem"
            (per-layer, per-modality KV budgets from ``budget_file`` in the released format, or
            ``read_tokens`` per layer without one; attention exponent ``omni_lambda``; chunks of
            ``read_chunk``), "snapkv" (SnapKV-style baseline: per-layer query-attention top-k with
            max-pooling over 7 neighbours), or the KV baselines under the same budgets as "omnimem":
            "recent" (StreamingVLM: attention sinks + the most recent entries), "similarity" (MovieChat-style
            similarity discard), "similarity-merge" (MovieChat-style averaging of the most similar adjacent
            pair), "infinipot" (InfiniPot-V-style temporal novelty + value norm).
        block_tokens: retrieval block of ``reader="rekv"`` (ReKV-style: the memory's full KV is kept
            between questions and each layer answers from the ``read_tokens // block_tokens`` blocks the
            question attends to most).
        incremental: with ``reader="full"``, keep the memory's KV cache between questions so a question
            costs a prefill of the question and of what was added since (see
            :class:`~avmem.memory.kv.reuse.MemoryKV`).
    """

    fps: float = 1.0
    max_pixels: int = 176400
    min_pixels: int = 784
    video_tokens: int = 16384
    audio_tokens: int = 4096
    use_audio: bool = True
    use_ttt: bool = True
    video_policy: str = "discard"
    audio_policy: str = "merge"
    bank_step: int | None = 4096
    chunk_frames: int = 128
    vision_patches: int = 16
    audio_pieces: int = 1
    max_new_tokens: int = 64
    max_wrappers: int = 1024
    reader: str = "full"
    read_tokens: int = 16384
    read_chunk: int = 16384
    read_joint: bool = True
    budget_file: str | None = None
    omni_lambda: float = 0.02
    incremental: bool = False
    block_tokens: int = 64

    def budgets(self, model: AVMemModel):
        """The KV budget schedule: ``budget_file``, or ``read_tokens`` in every layer."""
        return reader_budgets(self, model)

    def check(self, model: AVMemModel) -> None:
        """Raise ValueError naming the first bad setting."""
        if not (0 < self.fps <= 30):
            raise ValueError(f"fps must be in (0, 30], got {self.fps}")
        if not (self.min_pixels >= 1 and self.max_pixels >= self.min_pixels and self.max_pixels <= 4096 * 4096):
            raise ValueError(f"pixel budget must satisfy 1 <= min_pixels <= max_pixels <= 4096^2, "
                             f"got {self.min_pixels}, {self.max_pixels}")
        for name in ("video_tokens", "audio_tokens", "chunk_frames", "vision_patches", "audio_pieces", "max_new_tokens",
                     "max_wrappers", "read_tokens", "read_chunk", "block_tokens"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.bank_step is not None and int(self.bank_step) <= 0:
            raise ValueError(f"bank_step must be > 0, got {self.bank_step}")
        if self.chunk_frames % 2:
            raise ValueError(f"chunk_frames must be even (2 frames per temporal patch), got {self.chunk_frames}")
        for name in ("video_policy", "audio_policy"):
            if getattr(self, name) not in POLICIES:
                raise ValueError(f"{name} must be one of {sorted(POLICIES)}, got {getattr(self, name)!r}")
        reader = get_reader(self.reader)  # ValueError listing the registered names
        if self.incremental and not reader.supports_incremental:
            names = [n for n in reader_names() if get_reader(n).supports_incremental]
            raise ValueError(f"incremental applies to readers {names} only, not {self.reader!r}")
        if self.budget_file is not None and not reader.uses_budgets:
            raise ValueError(f"budget_file only applies to readers "
                             f"{[n for n in reader_names() if get_reader(n).uses_budgets]}")
        reader.check(self, model)
        if self.use_audio and model.audio is None:
            raise ValueError("this model has no audio encoder: use use_audio=False (--no-audio)")
        if self.use_ttt and model.ttt is None:
            raise ValueError("this model has no trained TTT memory: use use_ttt=False (--no-ttt)")


@dataclass
class PatchLog:
    """Compact log of every temporal patch seen (a few ints per 2 s of video).

    Attributes:
        times: timestamp shown for the patch (mean time of its 2 frames), seconds [n].
        grid: merged grid (Hm, Wm) [n, 2].
        first_id: global id of the patch's first video token [n].
        n_ts: number of tokens of its timestamp text [n].
    """

    times: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))
    grid: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))
    first_id: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    n_ts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.times)

    def appended(self, times: list[float], grid: tuple[int, int], first_id: int, n_ts: list[int]) -> "PatchLog":
        """A new log with ``len(times)`` patches of one grid added (ids consecutive from ``first_id``)."""
        k = len(times)
        hm, wm = grid
        return PatchLog(
            times=np.concatenate([self.times, np.asarray(times, dtype=np.float64)]),
            grid=np.concatenate([self.grid, np.tile(np.array([[hm, wm]], dtype=np.int64), (k, 1))]),
            first_id=np.concatenate([self.first_id, first_id + hm * wm * np.arange(k, dtype=np.int64)]),
            n_ts=np.concatenate([self.n_ts, np.asarray(n_ts, dtype=np.int64)]),
        )


@dataclass
class AudioLog:
    """Where each encoded piece of audio starts: token ids from ``first_id[i]`` cover audio from
    ``start[i]`` seconds (video clock) at 2 tokens per second."""

    first_id: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    start: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))

    def appended(self, first_id: int, start: float) -> "AudioLog":
        return AudioLog(np.append(self.first_id, first_id), np.append(self.start, start))

    def times(self, ids: np.ndarray) -> np.ndarray:
        """Start time (s) of the audio each token id covers."""
        piece = np.searchsorted(self.first_id, ids, side="right") - 1
        return self.start[piece] + (ids - self.first_id[piece]) / AUDIO_TOKENS_PER_SECOND


@dataclass
class SessionStats:
    """Telemetry (``StreamSession.stats()``)."""

    frames: int = 0
    seconds: float = 0.0
    audio_seconds: float = 0.0
    video_tokens_in: int = 0
    audio_tokens_in: int = 0
    video_tokens_held: int = 0
    audio_tokens_held: int = 0
    memory_bytes: int = 0  # token memories + the memory layer's state
    memory_layer_bytes: int = 0  # the memory layer's state (TTT fast weights / Mamba-2 SSM state) alone
    drops: int = 0
    frames_per_second: float = 0.0
    questions: int = 0
    read_per_layer: list[int] | None = None
    kv_reuse: str | None = None


@dataclass
class SessionState:
    """Everything a session carries (saved and restored exactly)."""

    ttt: TTTState | Mamba2State | None = None
    video: BankState | None = None
    audio: BankState | None = None
    patches: PatchLog = field(default_factory=PatchLog)
    audio_log: AudioLog = field(default_factory=AudioLog)
    pending_frames: list[tuple[float, Tensor]] = field(default_factory=list)  # resized uint8 [H, W, 3], model device
    pending_audio: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    pending_audio_start: float | None = None
    video_ids: int = 0
    audio_ids: int = 0
    audio_samples: int = 0
    frames: int = 0
    last_time: float | None = None
    drops: int = 0


class DeviceMemoryError(RuntimeError):
    """The device (or host) ran out of memory in a session step. The message is one line naming the step and the
    setting to lower; the session is left exactly as it was before the call, and stays usable."""


_OOM = (torch.OutOfMemoryError, MemoryError)


RUNTIME_TTT_KEYS = ("fast", "fast_fp32")  # how the TTT layer runs, not what it computes
ANSWER_STEPS = ("ask", "choose", "score_answers", "continuation_logprob")  # the asking steps (out-of-memory hints)
TOKEN_CACHE_ENTRIES = 1 << 15  # tokenized timestamps kept per session (more than a full memory's patches)


def without_runtime(ttt: dict | None) -> dict | None:
    """A TTT configuration without its execution-path fields (sessions move between devices and paths)."""
    return None if ttt is None else {k: v for k, v in ttt.items() if k not in RUNTIME_TTT_KEYS}


def _atomic(fn):
    """Make a session step atomic: on any exception the session is put back as it was before the call; running
    out of memory is raised as one :class:`DeviceMemoryError` naming the setting to lower (after the failed
    step's tensors are released and the allocator's cache is emptied)."""

    @functools.wraps(fn)
    def run(self: "StreamSession", *args, **kwargs):
        if self._depth:  # inside another step (feed_item -> feed): that one is atomic
            return fn(self, *args, **kwargs)
        saved = self._snapshot()
        self._depth, self._oom_stage = 1, None
        oom: type[BaseException] | None = None
        try:
            return fn(self, *args, **kwargs)
        except _OOM as exc:
            oom = type(exc)  # the exception itself is dropped here: its traceback holds the step's tensors
        except BaseException:
            self._restore(saved)
            raise
        finally:
            self._depth = 0
        self._restore(saved)
        if self.model.device.type == "cuda":
            torch.cuda.empty_cache()
        raise DeviceMemoryError(self._oom_message(oom, fn.__name__))

    return run


class AnswerStream:
    """Decoding from a prefilled cache, one token per step, as text pieces (:meth:`StreamSession.ask_stream`):
    greedy, or the token ``pick(logits [V]) -> id`` chooses (a sampler, e.g. :mod:`avmem.serve.sampling`).

    Attributes:
        tokens: ids generated so far.
        hit_limit: True once generation stopped at ``max_new_tokens`` (not at an end-of-turn token).
        prompt_tokens: rows of the prompt the answer was read from (memory + question), 0 when not known.
    """

    def __init__(self, backbone, cache, logits: Tensor, position: int, max_new_tokens: int,
                 pick: Callable[[Tensor], int] | None = None, prompt_tokens: int = 0) -> None:
        self._bb, self._cache, self._logits, self._position = backbone, cache, logits, position
        self._limit = int(max_new_tokens)
        self._pick = pick
        self.prompt_tokens = int(prompt_tokens)
        self._sent = ""
        self._done = False
        self.tokens: list[int] = []
        self.hit_limit = False

    def __iter__(self) -> AnswerStream:
        return self

    def _step(self) -> bool:
        """Generate one token; False at the end (end-of-turn token or the length limit)."""
        bb = self._bb
        if len(self.tokens) >= self._limit:
            self.hit_limit = True
            return False
        tok = int(torch.argmax(self._logits)) if self._pick is None else int(self._pick(self._logits))
        if tok in bb.tokens.eos:
            return False
        self.tokens.append(tok)
        with torch.no_grad():
            emb = bb.embed(torch.tensor([tok], device=bb.device))
            pos = torch.full((3, 1), self._position, dtype=torch.long, device=bb.device)
            self._logits = bb.forward_embeds(emb, pos, self._cache, None, None)
        self._position += 1
        return True

    def __next__(self) -> str:
        while not self._done:
            self._done = not self._step()
            text = self._bb.tokenizer.decode(self.tokens, skip_special_tokens=True).strip()
            if not self._done and text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next token
                continue
            if text.startswith(self._sent) and len(text) > len(self._sent):
                piece, self._sent = text[len(self._sent):], text
                return piece
        raise StopIteration

    def text(self) -> str:
        """Everything generated so far (the whole answer once iteration has ended)."""
        return self._sent


def _same_tensors(a: tuple[Tensor, ...], b: tuple[Tensor, ...]) -> bool:
    """True when both tuples hold the very same tensor objects."""
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


class _RepeatMemo:
    """Work a session reuses for repeated frames: the last fed frame's array and its budget-sized tensor, and the
    last temporal patch's frames and vision features. A memo only (pure functions of its keys while the vision
    tower is frozen), so it is not part of the session state."""

    def __init__(self) -> None:
        self.source: np.ndarray | None = None
        self.tensor: Tensor | None = None
        self.patch: tuple[tuple[Tensor, ...], object] | None = None

    def fitted_for(self, image: np.ndarray) -> Tensor | None:
        """The tensor of ``image`` when it is the array fed last, else None."""
        return self.tensor if image is self.source and self.tensor is not None else None

    def fitted(self, image: np.ndarray, tensor: Tensor) -> Tensor:
        """Remember ``tensor`` as ``image``'s; returns the previous tensor instead when it holds the same pixels
        (an identical frame decoded again), so identical frames share one tensor object."""
        last = self.tensor
        if last is not None and last is not tensor and last.shape == tensor.shape and last.device == tensor.device \
                and torch.equal(last, tensor):
            tensor = last
        self.source, self.tensor = image, tensor
        return tensor


class StreamSession:
    """A live memory over one stream.

    Example::

        s = StreamSession(load_model("tiny-qwen3-vl"), video_tokens=2048)
        s.feed_file("talk.mp4")
        print(s.ask("What did the speaker say about X?"))
    """

    def __init__(self, model: AVMemModel, settings: SessionSettings | None = None, **overrides) -> None:
        settings = replace(settings or SessionSettings(), **overrides)
        settings.check(model)
        self.model = model
        self.settings = settings
        self.state = SessionState()
        self._busy_seconds = 0.0
        self._video_bank = TokenBank(settings.video_tokens, POLICIES[settings.video_policy](), settings.bank_step)
        self._audio_bank = TokenBank(settings.audio_tokens, POLICIES[settings.audio_policy](), settings.bank_step)
        self._questions = 0
        self._last_read: list[int] | None = None
        self.last_prompt_tokens = 0  # rows of the last question's prompt (memory + question)
        self._memory_kv = MemoryKV()  # the memory's KV between questions (incremental reading, ReKV)
        self._asked: tuple | None = None  # (state, its counters, flushed copy) of the last question
        self._token_ids: dict[str, list[int]] = {}  # tokenized timestamps and prompt pieces
        self.trainable = False
        self.train_vision = False
        self.train_audio = False
        self.profile = False
        self.stage_seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self._depth = 0
        self._oom_stage: str | None = None
        self._repeats = _RepeatMemo()  # reused work for repeated / identical frames
        self.reuse_repeats = True  # False: every frame resized and encoded on its own (the reference path)

    # steps: atomicity, out-of-memory messages, stage timing ------------------------------------------

    def _snapshot(self) -> tuple:
        """What a step may change (the state is copied shallowly: steps replace its fields, never mutate their
        values, except ``pending_frames``, which is copied)."""
        st = self.state
        return (replace(st, pending_frames=list(st.pending_frames)), self._questions, self._last_read, self._kv,
                self._kv_mode, self._busy_seconds)

    def _restore(self, saved: tuple) -> None:
        (self.state, self._questions, self._last_read, self._kv, self._kv_mode, self._busy_seconds) = saved

    def _oom_message(self, error: type[BaseException], step: str) -> str:
        """One line: where memory ran out and which setting to lower."""
        s = self.settings
        where = "host memory" if error is MemoryError else (
            "GPU memory" if self.model.device.type == "cuda" else f"{self.model.device.type} memory")
        hints = {
            "resize": ("resizing frames", f"max_pixels (now {s.max_pixels})"),
            "vision": ("the vision tower", f"vision_patches (now {s.vision_patches} temporal patches per call) or "
                                           f"max_pixels (now {s.max_pixels})"),
            "ttt": ("the TTT memory", f"chunk_frames (now {s.chunk_frames} frames per call)"),
            "bank": ("the token memory", f"video_tokens / audio_tokens (now {s.video_tokens} / {s.audio_tokens}) "
                                         f"or chunk_frames (now {s.chunk_frames})"),
            "audio": ("the audio encoder", f"audio_pieces (now {s.audio_pieces} pieces of 30 s per call)"),
            "answer": ("the language model", f"the memory tokens video_tokens / audio_tokens (now {s.video_tokens} / "
                                             f"{s.audio_tokens}) or read with a chunked reader (--reader pd, omnimem, "
                                             f"...) and a smaller read_chunk (now {s.read_chunk})"),
        }
        stage = self._oom_stage or ("answer" if step in ANSWER_STEPS else None)
        doing = "answering" if step in ANSWER_STEPS else "feeding"
        if stage is None:
            what, lower = "ingestion", ("vision_patches, audio_pieces, chunk_frames or max_pixels (now "
                                        f"{s.vision_patches}, {s.audio_pieces}, {s.chunk_frames}, {s.max_pixels})")
        else:
            what, lower = hints[stage]
        return (f"out of {where} in {what} while {doing}: lower {lower}; the session is as it was before this call "
                f"(nothing fed earlier is lost)")

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        """Time an ingestion step in ``stage_seconds[name]`` (waiting for the device first and after when
        ``profile`` is on, so the time is the step's own) and remember it as where memory ran out."""
        sync = self.profile and self.model.device.type == "cuda"
        if sync:
            torch.cuda.synchronize(self.model.device)
        start = time.perf_counter()
        try:
            yield
        except _OOM:
            if self._oom_stage is None:
                self._oom_stage = name
            raise
        finally:
            if sync:
                torch.cuda.synchronize(self.model.device)
            self.stage_seconds[name] += time.perf_counter() - start

    # feeding -----------------------------------------------------------------------------------------

    @_atomic
    def feed(self, frames: np.ndarray | list[np.ndarray] | None = None, t: float | list[float] | None = None,
             audio: np.ndarray | None = None, audio_rate: int = AUDIO_RATE, audio_t: float | None = None) -> None:
        """Add frames (RGB uint8 [H, W, 3], or a list/array [N, H, W, 3]) at times ``t`` (seconds, increasing)
        and/or mono audio samples at ``audio_rate`` (starting at ``audio_t``, default: right after the
        audio fed so far). Frames are taken as already sampled at the session's rate.

        Atomic: if it fails (bad input, :class:`DeviceMemoryError`), the session is as it was before the call.
        """
        start = time.perf_counter()
        if frames is not None:
            frames_list = [frames] if isinstance(frames, np.ndarray) and frames.ndim == 3 else list(frames)
            times = [t] if not isinstance(t, (list, tuple, np.ndarray)) else list(t)
            if t is None or len(times) != len(frames_list):
                raise ValueError(f"feed: {len(frames_list)} frames need as many times t, got {t!r}")
            for ft, frame in zip(times, frames_list):
                self._add_frame(float(ft), frame)
        if audio is not None:
            self._add_audio(audio, audio_rate, audio_t)
        self._busy_seconds += time.perf_counter() - start

    def media(self, path: str | Path, options: dict[str, str] | None = None):
        """A :class:`~avmem.media.FileSource` over a local file (or the URL of a recording) at the session's
        sampling (fps, audio if the session uses it), yielding frames and audio in time order. Frames come at
        their upright display size (frames over :data:`DECODE_PIXELS` are scaled down while decoding): the session
        resizes them to its pixel budget on the model's device.
        Audio-only inputs are accepted when the session uses audio. ``options``: FFmpeg input options (a URL's
        ``http_proxy``, as ``avmem serve`` sets)."""
        from .media import FileSource, probe

        budget = dict(fps=self.settings.fps, max_pixels=self.settings.max_pixels, min_pixels=self.settings.min_pixels,
                      factor=self.model.backbone.vision.factor)
        has_video = probe(path, **budget, options=options).video is not None
        if not has_video and not self.settings.use_audio:
            raise ValueError(f"{path}: no video stream (and this session does not use audio)")
        return FileSource(path, video=has_video, audio=self.settings.use_audio, **{**budget, "max_pixels": None},
                          decode_pixels=max(16 * self.settings.max_pixels, DECODE_PIXELS), options=options)

    def feed_item(self, item) -> None:
        """Feed one item of a media source (a ``VideoFrame`` or an ``AudioChunk``).

        A frame marked ``repeat`` whose image is the array of the frame fed just before (a frame held over a gap,
        a still, a frozen live stream) reuses that frame's resized tensor; identical consecutive temporal patches
        reuse their vision features (see :meth:`_encode_patches`), so runs of repeated frames cost the memory
        layer and the bank only."""
        from .media import AudioChunk, VideoFrame

        if isinstance(item, VideoFrame):
            fitted = self._repeats.fitted_for(item.image) if item.repeat and self.reuse_repeats else None
            if fitted is None:
                self.feed(frames=item.image, t=item.t)
            else:
                self._feed_fitted(item.t, item.image, fitted)
        elif isinstance(item, AudioChunk):
            self.feed(audio=item.samples, audio_t=item.t)

    @_atomic
    def _feed_fitted(self, t: float, frame: np.ndarray, fitted: Tensor) -> None:
        """``feed`` of one frame whose budget-sized tensor is already known (a repeat of the previous frame)."""
        start = time.perf_counter()
        self._add_frame(float(t), frame, fitted)
        self._busy_seconds += time.perf_counter() - start

    def feed_file(self, path: str | Path, progress=None):
        """Decode a local file (or the URL of a recording) at the session's fps and feed its frames and audio;
        ``progress`` is called with each media item. Returns the source's :class:`~avmem.media.SourceStats`
        (seconds decoded, the declared length, holes where damaged data was skipped, warnings).

        Decoding runs on a background thread at most :data:`DECODE_QUEUE_ITEMS` items ahead (so it overlaps the
        model's work and memory stays bounded); its errors are raised here with their usual messages. On any
        error (or an exception from ``progress``) the thread is stopped and joined, and the items fed before
        the failing one stay in the memory.
        """
        from .media.prefetch import Prefetch

        source = self.media(path)
        items = Prefetch(source, DECODE_QUEUE_ITEMS)
        try:
            for item in items:
                self.feed_item(item)
                if progress is not None:
                    progress(item)
        finally:
            items.close()
            self.stage_seconds["decode_wait"] += items.waited
        return source.stats

    def _add_frame(self, t: float, frame: np.ndarray, fitted: Tensor | None = None) -> None:
        """Validate a frame and queue it for the next absorb; ``fitted``: its budget-sized tensor when known."""
        if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"feed: frames must be uint8 [H, W, 3], got {getattr(frame, 'dtype', type(frame))} "
                             f"{list(getattr(frame, 'shape', []))}")
        h, w = frame.shape[:2]
        if min(h, w) < 2 or max(h, w) > 16384:
            raise ValueError(f"feed: absurd frame size {h}x{w}")
        if not math.isfinite(t) or t < 0:
            raise ValueError(f"feed: frame time must be a finite number >= 0, got {t}")
        st = self.state
        if st.last_time is not None and t <= st.last_time:
            raise ValueError(f"feed: frame times must increase (got {t} after {st.last_time})")
        tensor = self._fit_budget(frame) if fitted is None else fitted
        frame = self._repeats.fitted(frame, tensor) if self.reuse_repeats else tensor
        if st.pending_frames and st.pending_frames[0][1].shape != frame.shape:
            self.state = self._absorb(self.state, flush=True)
            st = self.state
        st.pending_frames.append((t, frame))
        st.last_time = t
        st.frames += 1
        if len(st.pending_frames) >= self.settings.chunk_frames:
            self.state = self._absorb(st, flush=False)

    def _encode_patches(self, frames: list[Tensor]) -> list:
        """Vision features of ``frames`` (uint8 [h, w, 3] tensors), one per temporal patch of 2 frames (the last
        one may be a single frame), in tower calls of at most ``vision_patches`` patches.

        A patch made of the same tensor objects as the patch before it (including the last patch of the previous
        call) reuses its features instead of running the tower again: repeated frames share one tensor
        (:class:`_RepeatMemo`), so a gap of hours held on one frame costs a single tower call. Not while the
        tower is trained (its features would have to carry a graph per patch)."""
        reuse = self.reuse_repeats and not (self.trainable and self.train_vision)
        pairs = [tuple(frames[i:i + 2]) for i in range(0, len(frames), 2)]
        memo = self._repeats.patch if reuse else None
        unique: list[tuple[Tensor, ...]] = []
        source: list[int] = []  # per pair: index into unique, -1 for the remembered patch
        last = memo[0] if memo is not None else None
        for pair in pairs:
            if not (reuse and last is not None and _same_tensors(pair, last)):
                unique.append(pair)
                last = pair
            source.append(len(unique) - 1)
        step = self.settings.vision_patches  # tower calls of vision_patches patches: bounded activations
        encoded = [p for i in range(0, len(unique), step)
                   for p in self.model.backbone.encode_frames(torch.stack([f for pair in unique[i:i + step]
                                                                           for f in pair]))]
        patches = [encoded[j] if j >= 0 else memo[1] for j in source]
        if reuse and patches:
            self._repeats.patch = (pairs[-1], patches[-1])
        return patches

    def _fit_budget(self, frame: np.ndarray) -> Tensor:
        """The frame as uint8 [h, w, 3] on the model's device, resized there to the session's pixel budget (the
        backbone processor's smart_resize; bicubic, :func:`~avmem.backbones.qwen.resize_frames_tensor`) if
        needed."""
        s = self.settings
        h, w = frame.shape[:2]
        try:
            size = smart_resize(h, w, self.model.backbone.vision.factor, s.min_pixels, s.max_pixels)
        except ValueError as exc:
            raise ValueError(f"feed: frame {h}x{w}: {exc}") from None
        with self._stage("resize"):
            x = torch.from_numpy(np.ascontiguousarray(frame)).to(self.model.device)
            return x if size == (h, w) else resize_frames_tensor(x[None], size)[0]

    def _add_audio(self, samples: np.ndarray, rate: int, start: float | None) -> None:
        if not self.settings.use_audio:
            return
        samples = np.asarray(samples)
        if samples.ndim != 1 or not np.issubdtype(samples.dtype, np.floating) or len(samples) == 0:
            raise ValueError(f"feed: audio must be non-empty mono float samples [n], got {samples.dtype} "
                             f"{list(samples.shape)}")
        if not np.isfinite(samples).all():
            raise ValueError("feed: audio contains NaN or Inf")
        if not isinstance(rate, int) or rate <= 0:
            raise ValueError(f"feed: audio_rate must be a positive int, got {rate!r}")
        if rate != AUDIO_RATE:
            from .media import resample_audio

            samples = resample_audio(samples, rate, AUDIO_RATE)
        samples = samples.astype(np.float32)
        st = self.state
        end = None if st.pending_audio_start is None else st.pending_audio_start + len(st.pending_audio) / AUDIO_RATE
        if start is not None and (not math.isfinite(start) or start < 0):
            raise ValueError(f"feed: audio_t must be a finite number >= 0, got {start}")
        if end is None:
            st.pending_audio_start = 0.0 if start is None else float(start)
        elif start is not None:
            gap = int(round((float(start) - end) * AUDIO_RATE))
            samples = np.concatenate([np.zeros(gap, dtype=np.float32), samples]) if gap > 0 else samples[-gap:]
        st.pending_audio = np.concatenate([st.pending_audio, samples])
        st.audio_samples += len(samples)
        piece = 30 * AUDIO_RATE
        if len(st.pending_audio) >= self.settings.audio_pieces * piece:
            n = len(st.pending_audio) // piece * piece
            self._encode_audio(st, st.pending_audio[:n])
            st.pending_audio = st.pending_audio[n:]

    # memory updates ---------------------------------------------------------------------------------

    def _absorb(self, st: SessionState, flush: bool) -> SessionState:
        """Run vision + TTT on the pending frames (all of them if ``flush``) and update the video bank.

        TTT and the bank keep a graph only when ``self.trainable``; the vision tower only when
        ``self.train_vision`` too (otherwise it is frozen and runs without one).
        """
        frames = st.pending_frames
        n = len(frames) if flush else len(frames) // 2 * 2
        if n == 0:
            return st
        with self._stage("vision"), torch.set_grad_enabled(self.trainable and self.train_vision):
            patches = self._encode_patches([f for _, f in frames[:n]])
        with torch.set_grad_enabled(self.trainable):
            return self._absorb_tokens(st, n, patches)

    def _absorb_tokens(self, st: SessionState, n: int, patches: list) -> SessionState:
        """TTT + video bank on the vision features of the first ``n`` pending frames."""
        model = self.model
        frames = st.pending_frames
        batch = frames[:n]
        main = torch.cat([p.tokens for p in patches])
        hm, wm = patches[0].grid_hw
        ttt_state = st.ttt
        if self.settings.use_ttt:
            pos = None
            if isinstance(model.ttt, TTTMemory):  # 3-D RoPE positions; a Mamba-2 layer orders by the stream
                mini = model.ttt.cfg.mini_batch
                pos = official_positions((hm, wm), st.video_ids, -(-main.shape[0] // mini) * mini).to(main.device)
            with self._stage("ttt"):
                y, ttt_state = model.ttt(main[None].to(model.ttt.dtype), pos, st.ttt)
                main = y[0].to(main.dtype)
        feats = main[:, None]
        if patches[0].deepstack is not None:
            feats = torch.cat([feats, torch.cat([p.deepstack for p in patches])], dim=1)
        ids = torch.arange(st.video_ids, st.video_ids + main.shape[0], device=main.device)
        times = [t for t, _ in batch]
        stamps = [(times[2 * i] + times[min(2 * i + 1, n - 1)]) / 2 for i in range(len(patches))]
        n_ts = [len(self._text_ids(f"<{ts:.1f} seconds>")) for ts in stamps]
        with self._stage("bank"):
            video = self._video_bank.append(st.video, feats, ids)
        return replace(st, ttt=ttt_state, video=video, pending_frames=frames[n:],
                       patches=st.patches.appended(stamps, (hm, wm), st.video_ids, n_ts),
                       video_ids=st.video_ids + main.shape[0])

    def _encode_audio(self, st: SessionState, samples: np.ndarray) -> None:
        """Encode ``samples`` (the oldest pending audio) into the audio bank, in place on ``st`` (with a graph only
        when ``self.trainable`` and ``self.train_audio``). The encoder takes ``audio_pieces`` 30 s pieces per call;
        the tokens enter the bank (and the audio log) piece by piece, exactly as if each piece came alone."""
        audio = self.model.audio
        with self._stage("audio"), torch.set_grad_enabled(self.trainable and self.train_audio):
            tokens = audio.encode(samples, max_batch_pieces=self.settings.audio_pieces).to(self.model.backbone.dtype)
        piece, used = 30 * AUDIO_RATE, 0
        with self._stage("bank"):
            for start in range(0, len(samples), piece):
                n = min(piece, len(samples) - start)
                part = tokens[used:used + audio.num_tokens(n)]
                used += part.shape[0]
                ids = torch.arange(st.audio_ids, st.audio_ids + part.shape[0], device=part.device)
                st.audio_log = st.audio_log.appended(st.audio_ids, st.pending_audio_start)
                st.audio_ids += part.shape[0]
                st.pending_audio_start += n / AUDIO_RATE
                st.audio = self._audio_bank.append(st.audio, part, ids)

    @_atomic
    def flush(self) -> None:
        """Absorb pending frames and audio now (end of a stream); later input starts new chunks."""
        self.state = self._flushed()

    def _flushed(self) -> SessionState:
        """A copy of the state with all pending frames and audio absorbed (the state itself is unchanged)."""
        st = self._absorb(replace(self.state, pending_frames=list(self.state.pending_frames)), flush=True)
        if st is self.state:
            st = replace(st)
        if self.settings.use_audio and len(st.pending_audio):
            self._encode_audio(st, st.pending_audio)
            st.pending_audio = np.zeros(0, dtype=np.float32)
        return st

    # asking ------------------------------------------------------------------------------------------

    def _text_ids(self, text: str) -> list[int]:
        return self.model.backbone.tokenizer(text, add_special_tokens=False).input_ids

    def _cached_ids(self, text: str) -> list[int]:
        """:meth:`_text_ids` of a text that recurs (timestamps, turn headers), tokenized once per session; the
        cache holds at most :data:`TOKEN_CACHE_ENTRIES` texts (the oldest go first), so it does not grow with the
        stream."""
        ids = self._token_ids.get(text)
        if ids is None:
            if len(self._token_ids) >= TOKEN_CACHE_ENTRIES:
                del self._token_ids[next(iter(self._token_ids))]
            ids = self._token_ids[text] = self._text_ids(text)
        return ids

    @property
    def _kv(self):
        """The memory KV kept between questions (what a failed step restores)."""
        return self._memory_kv._kept

    @_kv.setter
    def _kv(self, kept) -> None:
        self._memory_kv._kept = kept

    @property
    def _kv_mode(self) -> str | None:
        """How the last question reused the kept memory KV (``stats().kv_reuse``)."""
        return self._memory_kv.mode

    @_kv_mode.setter
    def _kv_mode(self, mode: str | None) -> None:
        self._memory_kv.mode = mode

    @_atomic
    @torch.no_grad()
    def ask(self, question: str, max_new_tokens: int | None = None, prefix: str = "",
            since: float | None = None) -> str:
        """Answer ``question`` from the memory (greedy decoding). ``prefix`` is put at the start of the answer
        (a benchmark's prefilled "Best Option: (", say); the return value is what the model wrote after it.
        ``since`` (seconds) reads only the memory of the stream from that time on (a benchmark's "last N
        seconds" context; see :meth:`_windowed`)."""
        cache, logits, next_position = self._answer_start(question, prefix, since)
        limit = max_new_tokens or self.settings.max_new_tokens
        out = self.model.backbone.decode(cache, logits, next_position, limit)
        return self.model.backbone.tokenizer.decode(out, skip_special_tokens=True).strip()

    @_atomic
    @torch.no_grad()
    def choose(self, question: str, options: list[str], prefix: str = "",
               since: float | None = None) -> tuple[int, list[float]]:
        """Multiple choice by likelihood: the index of the option whose first answer token the model rates
        highest right after ``question`` (and the answer ``prefix``, if any; e.g. options "A".."D" after a
        Video-MME prompt), and the log probabilities of those tokens. Options must start with different tokens."""
        if len(options) < 2:
            raise ValueError("choose: give at least two options")
        ids = [self._text_ids(o) for o in options]
        first = [i[0] if i else None for i in ids]
        if None in first or len(set(first)) != len(first):
            raise ValueError(f"choose: options must be non-empty and start with different tokens, got {options}")
        _, logits, _ = self._answer_start(question, prefix, since)
        logp = torch.log_softmax(logits.float(), dim=-1)[first].tolist()
        return max(range(len(options)), key=lambda k: logp[k]), logp

    @_atomic
    @torch.no_grad()
    def score_answers(self, question: str, answers: list[str]) -> tuple[int, list[float]]:
        """Multiple choice by the likelihood of whole answers: log p(answer + end of turn | memory, question)
        for each of ``answers``, and the index of the most likely."""
        if len(answers) < 2 or not all(isinstance(a, str) and a.strip() for a in answers):
            raise ValueError(f"score_answers: give at least two non-empty answers, got {answers}")
        cache, logits, next_position = self._answer_start(question)
        bb = self.model.backbone
        logp = [bb.sequence_logprob(cache, logits, next_position, [*self._text_ids(a), bb.tokens.im_end])
                for a in answers]
        return max(range(len(answers)), key=lambda k: logp[k]), logp

    @_atomic
    @torch.no_grad()
    def continuation_logprob(self, question: str, ids: list[int], prefix: str = "") -> tuple[float, bool]:
        """log p(``ids`` | memory, ``question``, answer ``prefix``) of token ids ``ids`` continuing the answer, and
        whether greedy decoding produces exactly ``ids`` (lmms-eval's loglikelihood requests)."""
        if not ids:
            raise ValueError("continuation_logprob: give at least one token id")
        bb = self.model.backbone
        cache, logits, position = self._answer_start(question, prefix)
        logp = bb.sequence_logprob(cache, logits, position, ids)
        greedy = bb.decode(shallow_copy(cache), logits, position, len(ids)) == list(ids)
        return logp, greedy

    @torch.no_grad()
    def _answer_start(self, question: str, prefix: str = "", since: float | None = None):
        """Run the memory (from ``since`` on, if given), ``question`` and the answer ``prefix`` through the
        session's reader (from the registry of :mod:`avmem.memory.kv.readers`): (cache, logits of the first answer
        token after the prefix, next position)."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("ask: the question must be a non-empty string")
        if not isinstance(prefix, str):
            raise ValueError(f"ask: the answer prefix must be a string, got {type(prefix).__name__}")
        tail = self._question_tail(question) + (self._text_ids(prefix) if prefix else [])
        st = self._asking_state("ask: ")
        prompt = self._memory_prompt(st if since is None else self._windowed(st, since), tail)
        self._questions += 1
        self.last_prompt_tokens = int(prompt.embeds.shape[0] + prompt.question.shape[0])
        reader = get_reader(self.settings.reader)(self.settings, self.model)
        result = reader.read(self.model.backbone, prompt, self._memory_kv)
        self._last_read = result.kept
        return result.cache, result.logits, result.next_position

    def _windowed(self, st: SessionState, since: float) -> SessionState:
        """``st`` with only the memory of the stream from ``since`` seconds on: the video tokens of temporal patches
        with a frame at or after ``since`` and the audio tokens from ``since`` on. Kept tokens keep their positions
        in the full layout (the prompt builder leaves out patches with no token held), so the question sees the
        same rows it would see without the window, minus the older ones.

        Raises:
            ValueError: ``since`` is not a number >= 0, or nothing of the memory is that recent.
        """
        if isinstance(since, bool) or not isinstance(since, (int, float)) or not since >= 0:
            raise ValueError(f"ask: since must be a time in seconds >= 0, got {since!r}")
        video, audio = st.video, st.audio
        if video is not None and len(video):
            log = st.patches
            ids = video.ids.cpu().numpy()
            patch = np.searchsorted(log.first_id, ids, side="right") - 1
            last_frame = log.times[patch] + 0.5 / self.settings.fps
            keep = torch.from_numpy(last_frame >= since - 1e-9).to(video.ids.device)
            video = BankState(tokens=video.tokens[keep], ids=video.ids[keep]) if bool(keep.any()) else None
        if audio is not None and len(audio):
            keep = torch.from_numpy(st.audio_log.times(audio.ids.cpu().numpy()) >= since - 1e-9).to(audio.ids.device)
            audio = BankState(tokens=audio.tokens[keep], ids=audio.ids[keep]) if bool(keep.any()) else None
        if video is None and audio is None:
            raise ValueError(f"ask: nothing in the memory is from {since:g} s on (the stream is at {st.last_time} s)")
        return replace(st, video=video, audio=audio)

    def _asking_state(self, where: str = "") -> SessionState:
        """The state with everything pending absorbed, as a question sees it. While nothing was fed since the last
        question (same state object, same counters) the absorbed copy is reused, so a follow-up question does not
        encode the pending frames and audio again; never while training (the copy would hold a graph)."""
        st = self.state
        key = (st.frames, st.audio_samples, st.video_ids, st.audio_ids, len(st.pending_frames), len(st.pending_audio))
        memo = self._asked
        if memo is not None and memo[0] is st and memo[1] == key and not self.trainable:
            flushed = memo[2]
        else:
            flushed = self._flushed()
            self._asked = None if self.trainable else (st, key, flushed)
        if len(flushed.patches) == 0 and flushed.audio is None:
            raise ValueError(f"{where}nothing has been fed yet")
        return flushed

    def memory_inputs(self):
        """The memory part of the LLM input as the next question would see it: embeddings [L, D], positions
        [3, L], modality [L] (TEXT/AUDIO/VISUAL), visual mask [L] and DeepStack rows [k, n_visual, D] or None
        (all on the model's device)."""
        p = self._memory_prompt(self._asking_state(), self._question_tail("?"))
        return p.embeds, p.positions, p.modality, p.visual_mask, p.deepstack

    def _memory_prompt(self, st: SessionState, tail: list[int]) -> MemoryPrompt:
        """The LLM input for ``tail`` (token ids after the memory) split where the memory ends."""
        embeds, positions, visual, deepstack, selectable, n_tail, next_position = self._build_prompt(st, tail)
        cut = embeds.shape[0] - n_tail
        return MemoryPrompt(embeds=embeds[:cut], positions=positions[:, :cut],
                            modality=MemoryPrompt.modality_of(selectable[:cut], visual[:cut]),
                            visual_mask=visual[:cut], deepstack=deepstack, question=embeds[cut:],
                            question_positions=positions[:, cut:], next_position=next_position)

    def _audio_patch(self, st: SessionState, ids: np.ndarray) -> np.ndarray:
        """Temporal patch of each audio token id (by time; audio after the last patch goes to it)."""
        patch_seconds = 2.0 / self.settings.fps
        k = np.floor(st.audio_log.times(ids) / patch_seconds + 1e-9).astype(np.int64)
        return np.clip(k, 0, max(len(st.patches) - 1, 0))

    def _audio_counts(self, st: SessionState) -> np.ndarray:
        """Audio tokens of every temporal patch's time span, [n_patches]."""
        n = len(st.patches)
        if n == 0 or st.audio_ids == 0:
            return np.zeros(n, dtype=np.int64)
        return np.bincount(self._audio_patch(st, np.arange(st.audio_ids)), minlength=n)

    def _question_tail(self, question: str) -> list[int]:
        """Token ids after the memory: the question, the end of the user turn and the assistant header."""
        tok = self.model.backbone.tokens
        tail = self._text_ids("\n" + question.strip()) + [tok.im_end] + self._cached_ids("\n")
        return tail + [tok.im_start] + self._cached_ids("assistant\n")

    def _prompt(self, st: SessionState, tail: list[int]):
        """Input embeddings [L, D], positions [3, L], visual mask [L], deepstack [k, n_visual, D] (or None),
        selectable mask [L] (audio/visual tokens), and the number of trailing rows (``tail``, token ids placed
        after the memory); all on the model's device."""
        return self._build_prompt(st, tail)[:6]

    def _build_prompt(self, st: SessionState, tail: list[int]):
        """:meth:`_prompt` and the first position after the tail.

        Vectorised: the layout (which row holds what, at which position) is computed with numpy from the patch
        log and the banks' ids, sent to the device in one copy, and the embeddings are gathered there from the
        text embeddings and the banks in one indexing (differentiable: training uses it). Equal, row for row,
        to the per-patch construction kept as the reference in tests/test_prompt_builder.py.
        """
        def _exclusive_cumsum(x: np.ndarray) -> np.ndarray:
            return np.concatenate([[0], np.cumsum(x)[:-1]]).astype(np.int64)

        bb = self.model.backbone
        tok = bb.tokens
        device = bb.device
        prefix = [tok.im_start] + self._cached_ids("user\n")
        log = st.patches
        v_ids = st.video.ids.cpu().numpy() if st.video is not None else np.zeros(0, dtype=np.int64)
        a_ids = st.audio.ids.cpu().numpy() if st.audio is not None else np.zeros(0, dtype=np.int64)
        n_v, n_a = len(v_ids), len(a_ids)
        v_order = np.zeros(0, dtype=np.int64)
        if len(log):
            a_counts = self._audio_counts(st)
            block = log.grid.max(axis=1)
            # full-layout position of each patch's first token: timestamp, vision_start, video block, audio, end
            sizes = log.n_ts + 1 + block + a_counts + 1
            starts = len(prefix) + np.concatenate([[0], np.cumsum(sizes)[:-1]])
            v_patch = np.searchsorted(log.first_id, v_ids, side="right") - 1
            a_patch = self._audio_patch(st, a_ids)
            a_first = np.concatenate([[0], np.cumsum(a_counts)[:-1]])
            kept = np.union1d(v_patch, a_patch)  # patches still holding tokens, in order
            # wrappers: one per kept patch, or, past max_wrappers, one per group of consecutive kept patches
            n_groups = min(len(kept), self.settings.max_wrappers)
            gid = np.arange(len(kept), dtype=np.int64) * n_groups // max(len(kept), 1)  # group of each kept patch
            g_first = np.searchsorted(gid, np.arange(n_groups))
            g_last = np.searchsorted(gid, np.arange(n_groups), side="right") - 1
            heads = [self._cached_ids(f"<{log.times[k]:.1f} seconds>") + [tok.vision_start] for k in kept[g_first]]
            g_head = np.array([len(h) for h in heads], dtype=np.int64)
            nv = np.bincount(np.searchsorted(kept, v_patch), minlength=len(kept))
            na = np.bincount(np.searchsorted(kept, a_patch), minlength=len(kept))
            content = nv + na
            g_content = np.add.reduceat(content, g_first) if n_groups else np.zeros(0, dtype=np.int64)
            g_start = len(prefix) + _exclusive_cumsum(g_head + g_content + 1)  # row of each group's first token
            offset = _exclusive_cumsum(content)
            patch_row = g_start[gid] + g_head[gid] + offset - offset[g_first][gid]  # row of each kept patch's tokens
            p = starts[kept] + log.n_ts[kept] + 1  # position of the video block (full layout)
            q = p + block[kept]  # position of the audio tokens
            # text rows: the prefix, each group's timestamp + vision_start and vision_end, the tail
            per = g_head + 1
            rank = np.arange(per.sum()) - np.repeat(_exclusive_cumsum(per), per)
            is_head = rank < np.repeat(g_head, per)
            text_rows = np.repeat(g_start, per) + np.where(is_head, rank, np.repeat(g_head + g_content, per))
            text_pos = np.where(is_head, np.repeat(starts[kept[g_first]], per) + rank,
                                np.repeat(q[g_last] + a_counts[kept[g_last]], per))
            patch_ids = [i for h in heads for i in (*h, tok.vision_end)]
            pos = int(starts[-1] + sizes[-1])
            # video rows: bank rows grouped by patch (bank order within one), at (p, p + row, p + col)
            v_order = np.argsort(v_patch, kind="stable")
            vi = np.searchsorted(kept, v_patch[v_order])
            v_rows = patch_row[vi] + np.arange(n_v) - _exclusive_cumsum(nv)[vi]
            local = v_ids[v_order] - log.first_id[kept[vi]]
            wm = log.grid[kept[vi], 1]
            v_pos = np.stack([p[vi], p[vi] + local // wm, p[vi] + local % wm])
            # audio rows: after the patch's video rows, at q + the token's index in the patch's time span
            a_order = np.argsort(a_patch, kind="stable")
            ai = np.searchsorted(kept, a_patch[a_order])
            a_rows = patch_row[ai] + nv[ai] + np.arange(n_a) - _exclusive_cumsum(na)[ai]
            a_pos = q[ai] + a_ids[a_order] - a_first[kept[ai]]
        else:  # audio only: the audio tokens at their ids, no wrappers
            patch_ids, text_rows, text_pos = [], np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
            pos = len(prefix)
            v_rows, v_pos = np.zeros(0, dtype=np.int64), np.zeros((3, 0), dtype=np.int64)
            a_order = np.arange(n_a)
            a_rows = len(prefix) + a_order
            a_pos = len(prefix) + a_ids
            pos += int(st.audio_ids)
        body = len(prefix) + len(patch_ids) + n_v + n_a
        length = body + len(tail)
        text_ids = prefix + patch_ids + list(tail)
        n_text = len(text_ids)
        text_rows = np.concatenate([np.arange(len(prefix)), text_rows, body + np.arange(len(tail))])
        text_pos = np.concatenate([np.arange(len(prefix)), text_pos, pos + np.arange(len(tail))])
        # gather[row] = row of cat([text embeddings, video bank rows, audio bank rows]); kind 0 text, 1 video, 2 audio
        gather = np.empty(length, dtype=np.int64)
        kind = np.zeros(length, dtype=np.int64)
        positions = np.empty((3, length), dtype=np.int64)
        gather[text_rows] = np.arange(n_text)
        positions[:, text_rows] = text_pos
        gather[v_rows] = n_text + v_order
        kind[v_rows] = 1
        positions[:, v_rows] = v_pos
        gather[a_rows] = n_text + n_v + a_order
        kind[a_rows] = 2
        positions[:, a_rows] = a_pos
        packed = torch.from_numpy(np.concatenate([gather, kind, positions.ravel(), np.asarray(text_ids, dtype=np.int64),
                                                  v_order])).to(device)  # one host-to-device copy
        gather_t, kind_t, pos_t, ids_t, v_order_t = packed.split([length, length, 3 * length, n_text, n_v])
        sources = [bb.embed(ids_t).to(bb.dtype)]
        if n_v:
            sources.append(st.video.tokens[:, 0].to(device, bb.dtype))
        if n_a:
            sources.append(st.audio.tokens.to(device, bb.dtype))
        embeds = torch.cat(sources)[gather_t]
        deepstack = None
        if n_v and st.video.tokens.shape[1] > 1:
            deepstack = st.video.tokens[v_order_t.to(st.video.tokens.device), 1:].to(device).permute(1, 0, 2).contiguous()
        visual = kind_t == 1
        return (embeds, pos_t.view(3, length), visual, deepstack, kind_t != 0, len(tail), pos + len(tail))

    # serving: shared vision-tower calls across sessions, answers token by token --------------------------

    @_atomic
    def stage_frames(self, frames: list[np.ndarray], times: list[float]) -> None:
        """Add frames (RGB uint8 [H, W, 3] at increasing times ``t`` s) exactly as :meth:`feed` does, but leave
        complete chunks pending: :meth:`ready_frames` says how many can be taken, and
        :func:`avmem.serve.batching.absorb_together` runs the vision tower on several sessions' chunks in shared
        calls, then :meth:`absorb_patches` finishes each session. A frame of a new size still absorbs the frames
        of the previous size at once (a chunk holds one size). Atomic, like :meth:`feed`."""
        if len(frames) != len(times):
            raise ValueError(f"stage_frames: {len(frames)} frames need as many times, got {len(times)}")
        start = time.perf_counter()
        settings = self.settings
        self.settings = replace(settings, chunk_frames=1 << 62)  # _add_frame's own checks, without its absorb
        try:
            for t, frame in zip(times, frames):
                self._add_frame(float(t), frame)
        finally:
            self.settings = settings
            self._busy_seconds += time.perf_counter() - start

    def ready_frames(self) -> int:
        """Pending frames that fill whole chunks of ``chunk_frames`` (taken by :meth:`absorb_patches`)."""
        return len(self.state.pending_frames) // self.settings.chunk_frames * self.settings.chunk_frames

    def pending_pixels(self, n: int) -> Tensor:
        """The first ``n`` pending frames, resized to the pixel budget: uint8 [n, h, w, 3] on the model's device."""
        pending = self.state.pending_frames
        if not 0 < n <= len(pending):
            raise ValueError(f"pending_pixels: n must be in 1 .. {len(pending)}, got {n}")
        return torch.stack([f for _, f in pending[:n]])

    @_atomic
    @torch.no_grad()
    def absorb_patches(self, patches: list) -> None:
        """TTT + video bank on the vision features of the first ``2 * len(patches)`` pending frames
        (``patches``: the backbone's ``encode_frames`` output on :meth:`pending_pixels`, one PatchFeatures per
        2 frames), as the session's own absorb would do after its tower calls. Atomic."""
        n = 2 * len(patches)
        if not patches or n > len(self.state.pending_frames):
            raise ValueError(f"absorb_patches: {len(patches)} patches need {n} pending frames, "
                             f"{len(self.state.pending_frames)} are pending")
        start = time.perf_counter()
        self.state = self._absorb_tokens(self.state, n, patches)
        self._busy_seconds += time.perf_counter() - start

    @_atomic
    def stage_audio(self, samples: np.ndarray, audio_t: float | None = None) -> None:
        """Add mono 16 kHz audio exactly as ``feed(audio=samples, audio_t=audio_t)`` does, but leave whole 30 s pieces
        pending: :meth:`ready_audio` says how many samples can be taken, and
        :func:`avmem.serve.batching.absorb_together` encodes several sessions' pieces in shared audio-encoder calls,
        then :meth:`absorb_audio` finishes each session. Atomic, like :meth:`feed`."""
        start = time.perf_counter()
        settings = self.settings
        self.settings = replace(settings, audio_pieces=1 << 40)  # _add_audio's own checks, without its encoding
        try:
            self._add_audio(samples, AUDIO_RATE, audio_t)
        finally:
            self.settings = settings
            self._busy_seconds += time.perf_counter() - start

    def ready_audio(self) -> int:
        """Pending audio samples :meth:`feed` would have encoded by now: whole 30 s pieces, once ``audio_pieces`` of
        them are pending (0 otherwise)."""
        piece, pending = 30 * AUDIO_RATE, len(self.state.pending_audio)
        return pending // piece * piece if self.settings.use_audio and pending >= self.settings.audio_pieces * piece \
            else 0

    @_atomic
    @torch.no_grad()
    def absorb_audio(self, tokens: Tensor, n: int) -> None:
        """The audio bank (and audio log) on the encoder's tokens [num_tokens(n), D] of the first ``n`` pending
        samples (``n`` a multiple of 30 s), piece by piece as the session's own encoding does. Atomic."""
        piece, audio, st = 30 * AUDIO_RATE, self.model.audio, self.state
        if n <= 0 or n % piece or n > len(st.pending_audio) or tokens.shape[0] != audio.num_tokens(n):
            raise ValueError(f"absorb_audio: {n} samples of {len(st.pending_audio)} pending with "
                             f"{tokens.shape[0]} tokens (whole 30 s pieces and their num_tokens needed)")
        start = time.perf_counter()
        st = replace(st)
        tokens = tokens.to(self.model.backbone.dtype)
        per = audio.num_tokens(piece)
        for k in range(n // piece):
            part = tokens[k * per:(k + 1) * per]
            ids = torch.arange(st.audio_ids, st.audio_ids + part.shape[0], device=part.device)
            st.audio_log = st.audio_log.appended(st.audio_ids, st.pending_audio_start)
            st.audio_ids += part.shape[0]
            st.pending_audio_start += piece / AUDIO_RATE
            st.audio = self._audio_bank.append(st.audio, part, ids)
        st.pending_audio = st.pending_audio[n:]
        self.state = st
        self._busy_seconds += time.perf_counter() - start

    @_atomic
    @torch.no_grad()
    def _open_answer(self, question: str, prefix: str, since: float | None):
        return self._answer_start(question, prefix, since)

    def ask_stream(self, question: str, max_new_tokens: int | None = None, prefix: str = "",
                   since: float | None = None, pick: Callable[[Tensor], int] | None = None) -> AnswerStream:
        """:meth:`ask` as it is generated: an iterator of text pieces (joined, they equal ``ask(...)``; leading and
        trailing whitespace is held back). The memory is read here (ValueError as :meth:`ask`); each next piece
        costs one or more decoding steps, so a consumer that stops iterating stops generation. Asking never
        changes the memory. ``pick`` (logits [V] -> token id) replaces greedy decoding (sampling)."""
        cache, logits, position = self._open_answer(question, prefix, since)
        return AnswerStream(self.model.backbone, cache, logits, position, max_new_tokens or self.settings.max_new_tokens,
                            pick, self.last_prompt_tokens)

    # telemetry and persistence ----------------------------------------------------------------------

    def stats(self) -> SessionStats:
        st = self.state
        layer = 0 if st.ttt is None else sum(t.numel() * t.element_size() for t in st.ttt.tensors().values())
        mem = sum(b.nbytes for b in (st.video, st.audio) if b is not None) + layer
        seconds = 0.0 if st.last_time is None else st.last_time + 1.0 / self.settings.fps
        if st.pending_audio_start is not None:  # audio-only input (or audio running past the last frame)
            seconds = max(seconds, st.pending_audio_start + len(st.pending_audio) / AUDIO_RATE)
        return SessionStats(
            frames=st.frames, seconds=seconds, audio_seconds=st.audio_samples / AUDIO_RATE,
            video_tokens_in=st.video_ids, audio_tokens_in=st.audio_ids,
            video_tokens_held=0 if st.video is None else len(st.video),
            audio_tokens_held=0 if st.audio is None else len(st.audio),
            memory_bytes=mem, memory_layer_bytes=layer, drops=st.drops,
            frames_per_second=st.frames / self._busy_seconds if self._busy_seconds > 0 else 0.0,
            questions=self._questions, read_per_layer=self._last_read, kv_reuse=self._kv_mode,
        )

    def _model_fingerprint(self) -> dict:
        spec = self.model.spec
        return {"backbone_type": spec.backbone_type, "hidden_size": self.model.hidden_size,
                "ttt": without_runtime(spec.ttt), "audio": spec.audio, "vocab": len(self.model.backbone.tokenizer)}

    def save(self, path: str | Path) -> Path:
        """Write the whole memory state to ``path`` (exact round trip with :meth:`load`), crash-safely: a temporary
        file beside it is fsynced and renamed over it, so the previous snapshot stays loadable until the new one is
        complete (format: :mod:`avmem.snapshot`, safetensors + JSON, no pickle).

        Raises:
            OSError: the file could not be written (full disk, ...); ``path`` is unchanged.
        """
        from .snapshot import save_session

        return save_session(self, path)

    @classmethod
    def load(cls, path: str | Path, model: AVMemModel, settings: SessionSettings | None = None) -> StreamSession:
        """Restore a session saved by :meth:`save` onto the same ``model``. The memory state and the settings that
        decide what the memory holds (:data:`avmem.snapshot.WRITE_SETTINGS`: fps, pixel budget, capacities,
        policies, chunk sizes) come from the file; how questions read it (:data:`avmem.snapshot.READ_SETTINGS`:
        max_new_tokens, reader, read budgets, budget_file, ...) comes from ``settings`` (default: the defaults),
        never from the file.

        Raises:
            ValueError: one line naming the file and the problem: not a session file, an old pickle-based one,
                saved with a different model, or any field of the wrong name, dtype, shape, size or value.
        """
        from .snapshot import load_session

        return load_session(path, model, settings)
