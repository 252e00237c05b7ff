"""Fixed-rate sampling by presentation time and audio alignment, independent of where data comes from."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .types import SAMPLE_RATE, AudioChunk, MediaItem, SourceStats, VideoFrame

_EPS = 1e-6
_PRE_ROLL_SECONDS = 10.0


class Assembler:
    """Turns timestamped decoded frames and 16 kHz mono audio into groups of items.

    Video is sampled on the grid t_k = k / fps relative to the first frame (t = 0): item k shows the
    last frame whose presentation time is <= t_k (sample and hold), so VFR, gaps and start offsets
    need no special cases. Audio is placed by its timestamps on the same clock (audio before t = 0 is
    cut, missing audio is zeros) and cut into chunk k = samples [round(k * SR / fps),
    round((k + 1) * SR / fps)). With video, chunk k is released right after frame k as one group; the
    audio beyond the last frame interval is dropped. Audio-only: t = 0 is the first audio sample and
    the last chunk may be short.

    ``max_skew`` (live sources) bounds how far one stream may run ahead of the other, in seconds of
    media time: video waiting longer for its audio gets zeros, audio running ahead of stalled video
    repeats the frame on screen. Data arriving after its slot was released is dropped.

    Memory does not depend on the input: a frame held over many grid points (a gap of hours, a still,
    a frozen live stream) is converted once and kept as one run (first k, last k, image); ``pop``
    builds the items of a run one at a time as they are consumed, all sharing that image array, and
    silence is kept as a sample count until its chunk is cut.
    """

    def __init__(self, fps: float, convert: Callable[[Any], np.ndarray], *, video: bool, audio: bool,
                 stats: SourceStats, warn: Callable[[str], None], max_skew: float | None = None) -> None:
        self.fps, self.convert, self.video, self.audio = fps, convert, video, audio
        self.stats, self.warn, self.max_skew = stats, warn, max_skew
        self._skipped = 0
        self.t0: float | None = None
        self._held: Any = None
        self._held_t = 0.0
        self._held_dur: float | None = None
        self._next_k = 0
        self._last_shown: Any = None
        self._image: tuple[Any, np.ndarray] | None = None  # (decoded frame, its converted image)
        self._pending: deque[list] = deque()  # runs [first k, last k, image, frame_time, repeat of previous]
        self.video_head = -np.inf
        self.video_done = not video
        self._pre: deque[tuple[float, np.ndarray]] = deque()
        self._buf: deque[np.ndarray | int] = deque()
        self._buf_start = 0
        self._buf_end = 0
        self._next_chunk = 0
        self.audio_done = not audio

    def _bound(self, k: int) -> int:
        return round(k * SAMPLE_RATE / self.fps)

    @property
    def finished(self) -> bool:
        """All items released."""
        if self.video:
            return self.video_done and not self._pending
        return self.audio_done and self._buf_end <= self._bound(self._next_chunk)

    @property
    def waiting_for_audio(self) -> bool:
        """A frame is ready but its audio chunk is not complete yet."""
        return bool(self._pending) and not self.audio_done

    def add_video(self, time: float, frame: Any, duration: float | None) -> None:
        """A decoded frame presented at ``time`` s (source clock) for ``duration`` s (None: unknown)."""
        if self.t0 is None:
            self.t0 = time
            self._replay_pre_roll()
        rel = time - self.t0
        if self._held is not None and rel <= self._held_t + _EPS:
            self._skipped += 1
            if self._skipped == 1:
                self.warn(f"skipping frames whose timestamps do not increase (first at {time:.3f} s)")
            return
        self._emit_until(rel - _EPS)
        self._held, self._held_t, self._held_dur = frame, rel, duration
        self.video_head = max(self.video_head, rel)

    def end_video(self) -> None:
        """No more frames: the last one stays on screen for its duration."""
        if self._held is not None:
            end = self._held_t + (self._held_dur or 0.0)
            self._emit_until(max(end - _EPS, self._held_t + _EPS))
        self._held = None
        self.video_done = True

    def add_audio(self, time: float, samples: np.ndarray) -> None:
        """16 kHz mono float32 samples whose first one plays at ``time`` s (source clock)."""
        if self.audio_done or samples.size == 0:
            return
        if self.t0 is None:
            if self.video:
                self._pre.append((time, samples))
                while self._pre and self._pre[-1][0] - self._pre[0][0] > _PRE_ROLL_SECONDS:
                    self._pre.popleft()
                return
            self.t0 = time
        self._place(round((time - self.t0) * SAMPLE_RATE), samples)
        if self.max_skew is not None and self.video and self._held is not None:
            self._emit_until(self._buf_end / SAMPLE_RATE - self.max_skew)

    def end_audio(self) -> None:
        """No more audio: remaining frame intervals get zeros."""
        self._pre.clear()
        self.audio_done = True

    def pop(self) -> Iterator[list[MediaItem]]:
        """Groups ready for release, in time order (frame k followed by chunk k), built one at a time as the
        caller iterates (so a run of thousands of repeated frames never exists as items all at once)."""
        if self.video:
            while self._pending:
                run = self._pending[0]
                k = run[0]
                if self.audio:
                    end = self._bound(k + 1)
                    overdue = self.max_skew is not None and self.video_head >= end / SAMPLE_RATE + self.max_skew
                    if self._buf_end < end and not self.audio_done and not overdue:
                        return
                frame = VideoFrame(t=k / self.fps, image=run[2], index=k, frame_time=run[3], repeat=run[4])
                run[0], run[4] = k + 1, True
                if run[0] > run[1]:
                    self._pending.popleft()
                yield [frame, self._chunk(k, pad=True)] if self.audio else [frame]
            return
        while True:
            start, end = self._bound(self._next_chunk), self._bound(self._next_chunk + 1)
            if self._buf_end >= end or (self.audio_done and self._buf_end > start):
                yield [self._chunk(self._next_chunk, pad=False)]
            else:
                return

    def _emit_until(self, limit: float) -> None:
        """Release grid points t_k <= limit showing the held frame: one run, whatever its length."""
        if self._held is None:
            return
        last = math.floor(limit * self.fps)
        while (last + 1) / self.fps <= limit:
            last += 1
        while last >= 0 and last / self.fps > limit:
            last -= 1
        first = self._next_k
        if last < first:
            return
        repeat = self._last_shown is self._held
        self.stats.repeated_frames += last - first + (1 if repeat else 0)
        self._last_shown = self._held
        if self._image is None or self._image[0] is not self._held:
            self._image = (self._held, self.convert(self._held))
        image = self._image[1]
        tail = self._pending[-1] if self._pending else None
        if tail is not None and tail[2] is image and tail[1] == first - 1:
            tail[1] = last
        else:
            self._pending.append([first, last, image, self._held_t, repeat])
        self._next_k = last + 1

    def _replay_pre_roll(self) -> None:
        pre, self._pre = self._pre, deque()
        for time, samples in pre:
            self.add_audio(time, samples)

    def _place(self, pos: int, samples: np.ndarray) -> None:
        """Append samples whose first one is sample ``pos`` (relative to t0): pad gaps, cut overlaps."""
        if abs(pos - self._buf_end) <= 2:
            pos = self._buf_end
        elif pos > self._buf_end:
            self._pad(pos - self._buf_end)
        if pos < self._buf_end:
            samples = samples[self._buf_end - pos:]
        if samples.size:
            self._buf.append(samples)
            self._buf_end += samples.size

    def _pad(self, n: int) -> None:
        """Append ``n`` samples of silence (kept as a count until cut)."""
        self._buf.append(n)
        self._buf_end += n
        self.stats.padded_audio_seconds += n / SAMPLE_RATE

    def _chunk(self, k: int, *, pad: bool) -> AudioChunk:
        """Cut chunk k from the buffer; with ``pad``, complete it with zeros."""
        start, end = self._bound(k), self._bound(k + 1)
        if self._buf_start < start:
            self._consume(start - self._buf_start)
        if self._buf_end < start:
            self._buf.clear()
            self._buf_start = self._buf_end = start
        samples = self._consume(min(end, self._buf_end) - start)
        if pad and samples.size < end - start:
            self._pad(end - start - samples.size)
            samples = np.concatenate([samples, self._consume(end - start - samples.size)])
        self._next_chunk = k + 1
        return AudioChunk(t=start / SAMPLE_RATE, samples=samples, index=k)

    def _consume(self, n: int) -> np.ndarray:
        """Remove and return the first ``n`` buffered samples (float32 [n])."""
        out: list[np.ndarray] = []
        need = n
        while need > 0 and self._buf:
            head = self._buf[0]
            size = head if isinstance(head, int) else head.size
            take = min(size, need)
            out.append(np.zeros(take, dtype=np.float32) if isinstance(head, int) else head[:take])
            if take == size:
                self._buf.popleft()
            else:
                self._buf[0] = head - take if isinstance(head, int) else head[take:]
            need -= take
        self._buf_start += n - need
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
