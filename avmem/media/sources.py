"""Media sources: iterate timestamped frames and 16 kHz audio chunks without holding the whole stream.

Every source yields ``VideoFrame`` and ``AudioChunk`` items sampled on the grid t_k = k / fps
(seconds, 0.0 = first video frame); with video and audio, frame k is followed by audio chunk k
covering [t_k, t_k + 1 / fps). See ``Assembler`` for the sampling and alignment rules.
"""

from __future__ import annotations

import math
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import av
import numpy as np

from ._assemble import Assembler
from ._decode import (
    AudioFeed,
    FrameShaper,
    VideoClock,
    array_shaper,
    open_input,
    pick_audio,
    pick_video,
    sample_aspect,
    warner,
)
from .audio import as_mono, check_rate
from .errors import MediaError
from .probe import check_fps, probe, resolve
from .resize import PixelBudget, check_size
from .types import MediaInfo, MediaItem, SourceStats, VideoFrame

_TRUNCATION_SLACK = 1.0
_FRAME_THREADS_MAX_PIXELS = 4096 * 2160
_Source = TypeVar("_Source", bound="MediaSource")


class MediaSource(ABC):
    """Common interface: iterate for items in time order; ``stats`` tells what was delivered.

    Attributes:
        name: the path, URL, device or label of the source (used in messages).
        fps: sampling rate (frames per second; also the audio chunk rate).
        video, audio: whether frames / audio chunks are produced.
        budget: the frame size policy.
        stats: delivery statistics and warnings.
    """

    def __init__(self, name: str, *, fps: float, video: bool, audio: bool, max_pixels: int | None,
                 min_pixels: int, factor: int) -> None:
        self.fps = check_fps(fps)
        if not video and not audio:
            raise MediaError(f"{name}: nothing to decode (video=False and audio=False)")
        self.name, self.video, self.audio = name, bool(video), bool(audio)
        self.budget = PixelBudget(max_pixels, min_pixels, factor)
        self.stats = SourceStats()

    @abstractmethod
    def __iter__(self) -> Iterator[MediaItem]:
        """VideoFrame / AudioChunk items in time order."""

    def close(self) -> None:
        """Release the input (no-op where nothing is held)."""

    def __enter__(self: _Source) -> _Source:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _deliver(self, group: list[MediaItem]) -> Iterator[MediaItem]:
        for item in group:
            if isinstance(item, VideoFrame):
                self.stats.frames += 1
                self.stats.seconds = max(self.stats.seconds, item.t + 1 / self.fps)
            else:
                self.stats.audio_seconds += item.duration
                self.stats.seconds = max(self.stats.seconds, item.t + item.duration)
            yield item


class FileSource(MediaSource):
    """A recording: a local file, or the URL of a recorded file, decoded as fast as it is consumed.

    Video and audio are read by two demuxers of the same input, so the memory held is a few frames
    and at most one chunk of audio however the file interleaves them. Iterating again restarts.
    Damaged stretches are skipped and decoding resumes after them (``stats.holes``); a truncated or
    cut-short file yields what decodes (``stats.seconds`` short of ``stats.expected_seconds``); both
    issue a ``MediaWarning``.

    Args:
        path: file path, or an http(s)/hls URL of a recording.
        fps: frames sampled per second of presentation time (0 < fps <= 240).
        video: produce frames; the input must have a video stream ("no video stream" otherwise).
        audio: produce audio chunks when the input has an audio stream.
        max_pixels, min_pixels, factor: pixel budget (``smart_resize``); ``max_pixels=None`` keeps the
            upright square-pixel display size.
        timeout: seconds to wait for network data (URLs).
        decode_pixels: with ``max_pixels=None``, the most pixels a frame keeps (larger frames are scaled
            down, aspect kept, by the decoder's scaler), so memory stays bounded on huge frames; None: no cap.
        options: FFmpeg input options for every open of the input (e.g. ``{"http_proxy": ...}`` for a URL).

    Raises:
        MediaError: missing, empty or non-media file, unreachable URL, no video stream (video=True),
            no audio stream (video=False), absurd resolution, invalid settings.
    """

    def __init__(self, path: str | Path, *, fps: float = 1.0, video: bool = True, audio: bool = True,
                 max_pixels: int | None = 176400, min_pixels: int = 784, factor: int = 32,
                 timeout: float = 10.0, decode_pixels: int | None = None,
                 options: dict[str, str] | None = None) -> None:
        name, _ = resolve(path, None)
        super().__init__(name, fps=fps, video=video, audio=audio, max_pixels=max_pixels, min_pixels=min_pixels,
                         factor=factor)
        self.timeout = _check_timeout(timeout)
        if decode_pixels is not None and (not isinstance(decode_pixels, int) or decode_pixels < 64):
            raise MediaError(f"decode_pixels must be an int >= 64 or None, got {decode_pixels!r}")
        self.decode_pixels = decode_pixels
        self.options = dict(options) if options else None
        self.info: MediaInfo = probe(name, fps=self.fps, max_pixels=max_pixels, min_pixels=min_pixels,
                                     factor=factor, timeout=self.timeout, options=self.options)
        if video and self.info.video is None:
            raise MediaError(f"{name}: no video stream")
        if not video and self.info.audio is None:
            raise MediaError(f"{name}: no audio stream")

    def __iter__(self) -> Iterator[MediaItem]:
        self.stats = SourceStats()
        warn = warner(self.name, self.stats)
        self.stats.expected_seconds = self.info.duration
        with_audio = self.audio and self.info.audio is not None
        sar = self.info.video.sample_aspect_ratio if self.info.video else 1
        shaper = FrameShaper(self.name, self.budget, sar, warn, self.decode_pixels)
        asm = Assembler(self.fps, shaper, video=self.video, audio=with_audio, stats=self.stats, warn=warn)

        def hole(start: float, end: float) -> None:
            self.stats.add_hole(start - (asm.t0 or 0.0), end - (asm.t0 or 0.0))

        video_lane = self._video_lane(warn, hole) if self.video else None
        audio_lane = self._audio_lane(warn, hole) if with_audio else None
        try:
            while True:
                for group in asm.pop():
                    yield from self._deliver(group)
                if asm.finished:
                    return
                if audio_lane is not None and (asm.waiting_for_audio or not self.video):
                    block = next(audio_lane, None)
                    if block is None:
                        asm.end_audio()
                    else:
                        asm.add_audio(*block)
                else:
                    frame = next(video_lane, None)
                    if frame is None:
                        asm.end_video()
                    else:
                        asm.add_video(*frame)
        finally:
            for lane in (video_lane, audio_lane):
                if lane is not None:
                    lane.close()

    def _video_lane(self, warn: Callable[[str], None],
                    hole: Callable[[float, float], None]) -> Iterator[tuple[float, av.VideoFrame, float | None]]:
        """(presentation time s, frame, duration s or None) for every decoded frame; damaged stretches are
        skipped (``hole`` is told the time span) and decoding goes on after them."""
        with open_input(self.name, options=self.options, timeout=self.timeout) as container:
            stream = pick_video(container)
            cc = stream.codec_context
            # Frame threading keeps a decoded frame per thread: fine for video, gigabytes for 16000 x 16000 frames.
            stream.thread_type = "SLICE" if (cc.width or 0) * (cc.height or 0) > _FRAME_THREADS_MAX_PIXELS else "AUTO"
            reader = _StreamReader(container, stream)
            clock = VideoClock(self.name, stream, warn)
            count, end = 0, 0.0
            try:
                for frame in reader.frames():
                    t, duration = clock(frame)
                    if reader.damage is not None and count:
                        hole(end, t)
                    reader.damage = None
                    count, end = count + 1, max(end, t + (duration or 0.0))
                    yield t, frame, duration
            except av.error.ExitError as exc:
                raise MediaError(_stalled(self.name, self.timeout)) from exc
            if count == 0:
                why = f"cannot decode video ({reader.damage})" if reader.damage else "no decodable video frames"
                raise MediaError(f"{self.name}: {why}")
            reader.report("video", end, warn, "using the frames before it")

    def _audio_lane(self, warn: Callable[[str], None],
                    hole: Callable[[float, float], None]) -> Iterator[tuple[float, np.ndarray]]:
        """(start time s, float32 16 kHz mono samples) blocks of the decoded audio; damaged stretches are
        skipped (``hole`` is told the time span; the assembler fills them with silence)."""
        with open_input(self.name, options=self.options, timeout=self.timeout) as container:
            stream = pick_audio(container)
            reader = _StreamReader(container, stream)
            feed = AudioFeed()
            count, end = 0, 0.0
            try:
                for frame in reader.frames():
                    if reader.damage is not None and count and frame.time is not None:
                        hole(end, frame.time)
                    reader.damage = None
                    if frame.time is not None:
                        end = max(end, frame.time + frame.samples / frame.sample_rate)
                    count += 1
                    yield from feed.feed(frame, frame.time)
            except av.error.ExitError as exc:
                raise MediaError(_stalled(self.name, self.timeout)) from exc
            yield from feed.flush()
            if count == 0:
                warn("the audio stream has no decodable audio; audio chunks are silence")
            else:
                reader.report("audio", end, warn, "the rest of the audio is silence")


class _StreamReader:
    """Decodes one stream while reading every packet of the container, to learn where the data ends.

    Damaged data does not end decoding: a packet the decoder rejects is skipped, and after a demuxer error
    reading resumes at the next packet it finds (containers such as MPEG-TS resynchronise on their own, MP4
    reads on by its index), up to ``MAX_READ_ERRORS`` errors in a row. ``damage`` holds the first error
    since the last decoded frame (None when there was none); ``skipped`` counts skipped packets.
    """

    MAX_READ_ERRORS = 16

    def __init__(self, container: av.container.InputContainer, stream: av.stream.Stream) -> None:
        self.container, self.stream = container, stream
        self.data_end: float | None = None
        self.damage: str | None = None
        self.skipped = 0
        self.stopped: str | None = None  # why reading stopped before the end of the data, None at a clean end

    def frames(self) -> Iterator[av.VideoFrame | av.AudioFrame]:
        """Decoded frames of the stream, in presentation order."""
        index = self.stream.index
        failures = 0
        demux = self.container.demux()
        while True:
            try:
                packet = next(demux)
            except StopIteration:
                return
            except av.error.ExitError:
                raise
            except (av.error.FFmpegError, IndexError) as exc:
                # IndexError: PyAV meeting a packet of a stream that appeared mid-file (damaged MPEG-TS); reading
                # resumes demuxing this stream alone.
                self._damaged(exc)
                failures += 1
                if failures > self.MAX_READ_ERRORS or isinstance(exc, av.error.EOFError):
                    self.stopped = _reason(exc)
                    return
                demux = self.container.demux(self.stream) if isinstance(exc, IndexError) else self.container.demux()
                continue
            failures = 0
            if packet.pts is not None and packet.time_base is not None:
                end = float((packet.pts + (packet.duration or 0)) * packet.time_base)
                self.data_end = end if self.data_end is None else max(self.data_end, end)
            if packet.stream.index == index:
                try:
                    decoded = packet.decode()
                except av.error.ExitError:
                    raise
                except (av.error.FFmpegError, ValueError) as exc:  # ValueError: PyAV >= 19 on an unknown codec
                    self._damaged(exc)
                    continue
                yield from decoded

    def _damaged(self, exc: Exception) -> None:
        self.skipped += 1
        if self.damage is None:
            self.damage = _reason(exc)

    def report(self, kind: str, end: float, warn: Callable[[str], None], after: str) -> None:
        """Warn about skipped damaged data, an error that ended reading, or data ending before the declared end."""
        if self.stopped is not None or self.damage is not None:
            warn(f"{kind} decoding stopped at {end:.2f} s ({self.stopped or self.damage}); {after}")
        if self.skipped:
            warn(f"skipped {self.skipped} damaged {kind} packet(s) and decoded on after them")
        self.check_complete(kind, end, warn)

    def check_complete(self, kind: str, end: float, warn: Callable[[str], None]) -> None:
        """Warn when the container's data stops well before the end its header declares (truncated file)."""
        ends = [float((s.start_time or 0) * s.time_base + s.duration * s.time_base)
                for s in self.container.streams if s.duration and s.time_base]
        declared = max(ends) if ends else (self.container.duration / av.time_base
                                          if self.container.duration else None)
        if declared is not None and self.data_end is not None and self.data_end < declared - _TRUNCATION_SLACK:
            warn(f"the data ends at {self.data_end:.2f} s but the file declares {declared:.2f} s (truncated file?); "
                 f"{kind} decoded up to {end:.2f} s")


class LiveSource(MediaSource):
    """A live input (http/HLS/RTSP/RTMP/SRT/UDP URL, capture device, or a file replayed in real time)
    decoded on a thread.

    Items are released no faster than real time (item at t is queued at start + t on the wall clock)
    into a queue of ``queue_size`` sampling steps; when the consumer is slower than real time the
    oldest step (a frame and its audio chunk) is dropped and counted in ``stats.dropped``. Every
    network read is bounded by ``timeout``: a source that stops sending raises MediaError ("timed
    out") instead of hanging. Audio and video may run ``max_av_skew`` seconds apart before the
    missing side is filled (zeros, or the frame still on screen). A LiveSource is iterated once.

    Args:
        source: URL, device such as "/dev/video0" (read with ``format="v4l2"`` unless ``format`` is
            given), or a local file (replayed at real-time speed).
        format: FFmpeg input format (e.g. "v4l2", "avfoundation", "dshow", "lavfi", "mpegts").
        options: FFmpeg input options (e.g. {"video_size": "640x480", "framerate": "30"}).
        fps, video, audio, max_pixels, min_pixels, factor: as for FileSource.
        timeout: seconds to wait when opening and for each read.
        queue_size: sampling steps buffered for the consumer (1 .. 1024).
        max_av_skew: seconds of media time one stream may lead the other (0 < s <= 60).

    Raises:
        MediaError: not a URL or device, unreachable or silent source (timeout), no video stream
            (video=True), no audio stream (video=False), invalid settings.
    """

    def __init__(self, source: str, *, format: str | None = None, options: dict[str, str] | None = None,
                 fps: float = 1.0, video: bool = True, audio: bool = True, max_pixels: int | None = 176400,
                 min_pixels: int = 784, factor: int = 32, timeout: float = 10.0, queue_size: int = 8,
                 max_av_skew: float = 2.0) -> None:
        name, format = resolve(source, format)
        super().__init__(name, fps=fps, video=video, audio=audio, max_pixels=max_pixels, min_pixels=min_pixels,
                         factor=factor)
        self.timeout = _check_timeout(timeout)
        if not isinstance(queue_size, int) or not 1 <= queue_size <= 1024:
            raise MediaError(f"queue_size must be in 1 .. 1024, got {queue_size!r}")
        if not isinstance(max_av_skew, (int, float)) or not 0 < max_av_skew <= 60:
            raise MediaError(f"max_av_skew must be in (0, 60] seconds, got {max_av_skew!r}")
        self.queue_size, self.max_av_skew = queue_size, float(max_av_skew)
        self._container = open_input(name, format=format, options=options, timeout=self.timeout)
        self._vstream = pick_video(self._container) if video else None
        astream = pick_audio(self._container)
        self._astream = astream if audio else None
        if video and self._vstream is None:
            self._container.close()
            raise MediaError(f"{name}: no video stream")
        if not video and astream is None:
            self._container.close()
            raise MediaError(f"{name}: no audio stream")
        if self._vstream is not None and self._vstream.codec_context.width:
            cc = self._vstream.codec_context
            try:
                check_size(name, cc.height, cc.width)
            except MediaError:
                self._container.close()
                raise
        self._started = False
        self._stop = threading.Event()
        self._queue: _StepQueue | None = None

    def close(self) -> None:
        """Close an unused source, or stop the decoding thread of one being iterated (and wake its consumer)."""
        if self._started:
            self._stop.set()
            if self._queue is not None:
                self._queue.finish()
        else:
            self._container.close()

    def __iter__(self) -> Iterator[MediaItem]:
        if self._started:
            raise RuntimeError(f"{self.name}: a LiveSource can be iterated only once")
        self._started = True
        self.stats = SourceStats()
        queue = self._queue = _StepQueue(self.queue_size)
        stop = self._stop
        worker = threading.Thread(target=self._run, args=(queue, stop), name="avmem-live-decode", daemon=True)
        worker.start()
        patience = self.timeout + self.max_av_skew + 2 / self.fps + 5.0
        try:
            while True:
                group = queue.get(patience, self.name)
                if group is None:
                    return
                yield from self._deliver(group)
        finally:
            stop.set()
            queue.finish()
            worker.join(timeout=self.timeout + 1.0)

    def _run(self, queue: _StepQueue, stop: threading.Event) -> None:
        """Decoding thread: demux, decode, assemble, pace to the wall clock, queue."""
        warn = warner(self.name, self.stats)
        vstream, astream = self._vstream, self._astream
        streams = [s for s in (vstream, astream) if s is not None]
        clock = VideoClock(self.name, vstream, warn) if vstream is not None else None
        shaper = FrameShaper(self.name, self.budget, sample_aspect(vstream) if vstream else 1, warn)
        feed = AudioFeed()
        asm = Assembler(self.fps, shaper, video=self.video, audio=astream is not None, stats=self.stats,
                        warn=warn, max_skew=self.max_av_skew)
        pacer = _Pacer(stop)
        decoded = 0
        last_data = time.monotonic()
        try:
            with self._container as container:
                try:
                    for packet in container.demux(streams):
                        last_data = time.monotonic()
                        if stop.is_set():
                            return
                        for frame in packet.decode():
                            decoded += 1
                            if vstream is not None and packet.stream.index == vstream.index:
                                t, duration = clock(frame)
                                asm.add_video(t, frame, duration)
                            else:
                                for start, samples in feed.feed(frame, frame.time):
                                    asm.add_audio(start, samples)
                        if not self._release(asm, queue, pacer):
                            return
                except av.error.ExitError as exc:
                    raise MediaError(_stalled(self.name, self.timeout)) from exc
                except av.error.FFmpegError as exc:
                    # A read cut by the timeout surfaces from some demuxers as "Invalid data" or an I/O error:
                    # judged by the time since the last packet, it is a stall, not damaged data.
                    if time.monotonic() - last_data >= 0.9 * self.timeout:
                        raise MediaError(_stalled(self.name, self.timeout)) from exc
                    if decoded == 0:
                        raise MediaError(f"{self.name}: cannot decode ({_reason(exc)})") from exc
                    warn(f"stream ended with an error ({_reason(exc)}); stopping")
                for start, samples in feed.flush():
                    asm.add_audio(start, samples)
                asm.end_audio()
                asm.end_video()
                if self.video and asm.t0 is None:
                    raise MediaError(f"{self.name}: no decodable video frames")
                self._release(asm, queue, pacer)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            queue.finish(exc)
        finally:
            queue.finish()

    def _release(self, asm: Assembler, queue: _StepQueue, pacer: _Pacer) -> bool:
        """Queue the ready groups at their wall-clock time; False when asked to stop."""
        for group in asm.pop():
            if not pacer.wait(group[0].t):
                return False
            self.stats.dropped += queue.put(group)
        return True


class PushSource(MediaSource):
    """Frames and audio pushed by the caller (own capture, browser, simulator), sampled like a file.

    ``push_frame`` / ``push_audio`` take timestamps in seconds on the caller's clock (the first frame
    becomes t = 0); frames are held on screen until the next one (sample and hold), audio is
    resampled to 16 kHz mono. Iterating blocks until ``close()``; ``poll()`` returns what is ready
    without blocking. Up to ``queue_size`` sampling steps wait for the consumer; older ones are
    dropped and counted in ``stats.dropped``. Thread-safe: push from one thread, consume in another.

    Args:
        fps, video, audio, max_pixels, min_pixels, factor: as for FileSource; ``audio=True`` means
            audio will be pushed (a frame's chunk waits for it up to ``max_av_skew`` s of video time).
        queue_size: sampling steps kept for the consumer (1 .. 100000).
        max_av_skew: seconds one stream may lead the other before the other is filled.
        name: label used in messages.
    """

    def __init__(self, *, fps: float = 1.0, video: bool = True, audio: bool = True,
                 max_pixels: int | None = 176400, min_pixels: int = 784, factor: int = 32, queue_size: int = 64,
                 max_av_skew: float = 2.0, name: str = "push") -> None:
        super().__init__(name, fps=fps, video=video, audio=audio, max_pixels=max_pixels, min_pixels=min_pixels,
                         factor=factor)
        if not isinstance(queue_size, int) or not 1 <= queue_size <= 100000:
            raise MediaError(f"queue_size must be in 1 .. 100000, got {queue_size!r}")
        if not isinstance(max_av_skew, (int, float)) or not 0 < max_av_skew <= 60:
            raise MediaError(f"max_av_skew must be in (0, 60] seconds, got {max_av_skew!r}")
        self._lock = threading.Lock()
        self._queue = _StepQueue(queue_size)
        self._asm = Assembler(self.fps, array_shaper(self.budget, name), video=video, audio=audio,
                              stats=self.stats, warn=warner(name, self.stats), max_skew=float(max_av_skew))
        self._feed = AudioFeed()
        self._last_frame_t: float | None = None
        self._last_audio_t: float | None = None
        self._closed = False

    def push_frame(self, t: float, image: np.ndarray) -> None:
        """Add a frame shown from ``t`` seconds on: RGB [H, W, 3] uint8, or float in [0, 1].

        Raises:
            MediaError: closed source, video=False, t not finite or not after the previous frame,
                wrong shape / dtype / range, absurd size.
        """
        self._check_open("push_frame", self.video, "video")
        t = _check_time(self.name, t)
        if self._last_frame_t is not None and t <= self._last_frame_t:
            raise MediaError(f"{self.name}: frame time {t} is not after the previous frame ({self._last_frame_t})")
        rgb = _as_rgb(self.name, image)
        with self._lock:
            self._last_frame_t = t
            self._asm.add_video(t, rgb, None)
            self._release()

    def push_audio(self, t: float, samples: np.ndarray, sample_rate: int) -> None:
        """Add audio whose first sample plays at ``t`` seconds: [n] or [n, channels] float (nominally
        in [-1, 1]) or int16, at ``sample_rate`` Hz; channels are averaged, then resampled to 16 kHz.

        Raises:
            MediaError: closed source, audio=False, t not finite or before the previous push, wrong
                shape / dtype, non-finite samples, sample rate outside 1000 .. 384000.
        """
        self._check_open("push_audio", self.audio, "audio")
        t = _check_time(self.name, t)
        if self._last_audio_t is not None and t < self._last_audio_t:
            raise MediaError(f"{self.name}: audio time {t} is before the previous audio push ({self._last_audio_t})")
        rate = check_rate(self.name, sample_rate)
        mono = as_mono(self.name, samples)
        frame = av.AudioFrame.from_ndarray(mono[None, :], format="flt", layout="mono")
        frame.sample_rate = rate
        with self._lock:
            self._last_audio_t = t
            for start, block in self._feed.feed(frame, t):
                self._asm.add_audio(start, block)
            self._release()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (nothing more can be pushed)."""
        return self._closed

    def close(self) -> None:
        """End of stream: release what is left (the last frame covers grid points up to its own time)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for start, block in self._feed.flush():
                self._asm.add_audio(start, block)
            self._asm.end_audio()
            self._asm.end_video()
            self._release()
            self._queue.finish()

    def poll(self) -> list[MediaItem]:
        """Items ready now, without blocking (for single-threaded push-and-consume loops)."""
        items: list[MediaItem] = []
        for group in self._queue.drain():
            items.extend(self._deliver(group))
        return items

    def __iter__(self) -> Iterator[MediaItem]:
        while True:
            group = self._queue.get(None, self.name)
            if group is None:
                return
            yield from self._deliver(group)

    def _check_open(self, what: str, enabled: bool, kind: str) -> None:
        if self._closed:
            raise MediaError(f"{self.name}: {what} after close()")
        if not enabled:
            raise MediaError(f"{self.name}: {what} on a source built with {kind}=False")

    def _release(self) -> None:
        for group in self._asm.pop():
            self.stats.dropped += self._queue.put(group)


class _StepQueue:
    """Bounded queue of item groups; a full queue drops its oldest group. Ends with None or an error."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: deque[list[MediaItem]] = deque()
        self._cond = threading.Condition()
        self._done = False
        self._error: BaseException | None = None

    def put(self, group: list[MediaItem]) -> int:
        """Append; returns 1 when the oldest group was dropped to make room, else 0."""
        with self._cond:
            dropped = 0
            if len(self._items) >= self.size:
                self._items.popleft()
                dropped = 1
            self._items.append(group)
            self._cond.notify_all()
            return dropped

    def finish(self, error: BaseException | None = None) -> None:
        """No more groups; ``error`` is raised to the consumer after the queued groups."""
        with self._cond:
            if not self._done:
                self._done, self._error = True, error
            self._cond.notify_all()

    def get(self, timeout: float | None, name: str) -> list[MediaItem] | None:
        """Next group, None at the end; raises the producer's error, or MediaError after ``timeout`` s."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._done, timeout):
                raise MediaError(f"{name}: no data for {timeout:.0f} s (source stalled)")
            if self._items:
                return self._items.popleft()
            if self._error is not None:
                raise self._error
            return None

    def drain(self) -> list[list[MediaItem]]:
        """All queued groups, without waiting."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            return items


class _Pacer:
    """Waits until wall-clock start + t (start = when the first item was released)."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.start: float | None = None

    def wait(self, t: float) -> bool:
        """False when stopped while waiting."""
        now = time.monotonic()
        if self.start is None:
            self.start = now - t
        delay = self.start + t - now
        if delay > 0:
            return not self.stop.wait(delay)
        return not self.stop.is_set()


def _check_timeout(timeout: float) -> float:
    if not isinstance(timeout, (int, float)) or not 0 < timeout <= 600:
        raise MediaError(f"timeout must be in (0, 600] seconds, got {timeout!r}")
    return float(timeout)


def _check_time(name: str, t: float) -> float:
    if isinstance(t, bool) or not isinstance(t, (int, float, np.integer, np.floating)) or not math.isfinite(t):
        raise MediaError(f"{name}: timestamp must be a finite number of seconds, got {t!r}")
    return float(t)


def _as_rgb(name: str, image: np.ndarray) -> np.ndarray:
    """Validated RGB uint8 [H, W, 3], a copy (callers may reuse their buffer)."""
    if not isinstance(image, np.ndarray):
        raise MediaError(f"{name}: image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise MediaError(f"{name}: image must be RGB [H, W, 3], got shape {tuple(image.shape)}")
    check_size(name, image.shape[0], image.shape[1])
    if image.dtype == np.uint8:
        return image.copy()
    if image.dtype.kind != "f":
        raise MediaError(f"{name}: image dtype must be uint8 or float in [0, 1], got {image.dtype}")
    if not np.isfinite(image).all() or image.min() < 0 or image.max() > 1:
        raise MediaError(f"{name}: float image values must be finite and in [0, 1]")
    return np.rint(image * 255.0).astype(np.uint8)


def _stalled(name: str, timeout: float) -> str:
    return f"{name}: no data for {timeout:g} s (source stalled; timed out)"


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc)
