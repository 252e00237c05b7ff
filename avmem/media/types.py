"""Items, statistics and stream descriptions produced by the media sources."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

SAMPLE_RATE = 16000
"""Audio sample rate of every AudioChunk (Hz, mono float32)."""


@dataclass(frozen=True, eq=False)
class VideoFrame:
    """One sampled frame.

    Attributes:
        t: sampling time in seconds on the source clock (0.0 = first video frame): ``index / fps``.
        image: RGB uint8 [H, W, 3], upright (display rotation applied), square pixels, resized to the
            pixel budget.
        index: sample number k.
        frame_time: presentation time (s, same clock) of the decoded frame shown at ``t`` (<= ``t``);
            equal for consecutive items when a frame stays on screen longer than 1 / fps.
        repeat: True when this item shows the same decoded frame as the previous item; its ``image`` is
            then the very same array (not a copy: treat images as read-only), so consumers can reuse
            whatever they computed from it.
    """

    t: float
    image: np.ndarray
    index: int
    frame_time: float
    repeat: bool = False


@dataclass(frozen=True, eq=False)
class AudioChunk:
    """Mono 16 kHz audio on the same clock as the frames.

    Attributes:
        t: time of the first sample (s, 0.0 = first video frame, or first audio sample for audio-only).
        samples: float32 [n] in [-1, 1] at ``SAMPLE_RATE``. Chunk k covers samples
            [round(k * 16000 / fps), round((k + 1) * 16000 / fps)); missing audio is zeros.
        index: chunk number k; with video, chunk k follows VideoFrame k and covers [t_k, t_k + 1 / fps).
    """

    t: float
    samples: np.ndarray
    index: int

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / SAMPLE_RATE


MediaItem = VideoFrame | AudioChunk


@dataclass
class SourceStats:
    """What a source delivered so far (reset when a FileSource is iterated again).

    Attributes:
        frames: video frames yielded.
        audio_seconds: seconds of audio yielded (including zero padding).
        seconds: media time covered: end of the last yielded frame interval or chunk.
        repeated_frames: yielded frames that show the same decoded frame as the previous one (VFR
            gaps, stalled live video).
        padded_audio_seconds: seconds of zeros inserted where audio was missing (audio starting after
            the video, gaps, audio ending before the video, late live audio).
        dropped: sampling steps (a frame and its audio chunk) discarded because the consumer was
            slower than real time (LiveSource, PushSource).
        warnings: the warning messages issued (also emitted as ``MediaWarning``).
        holes: (start s, end s) spans, on the items' clock, where damaged data was skipped and decoding
            resumed after it (the frame before it is held, its audio is silence); merged when they touch.
        expected_seconds: the length the input declares (FileSource), None when unknown (live sources).
    """

    frames: int = 0
    audio_seconds: float = 0.0
    seconds: float = 0.0
    repeated_frames: int = 0
    padded_audio_seconds: float = 0.0
    dropped: int = 0
    warnings: list[str] = field(default_factory=list)
    holes: list[tuple[float, float]] = field(default_factory=list)
    expected_seconds: float | None = None

    MAX_HOLES = 1000

    def add_hole(self, start: float, end: float) -> None:
        """Record a damaged span (kept sorted and merged; at most ``MAX_HOLES`` spans, the last one absorbing the
        rest, so the list stays small on any input)."""
        start, end = max(0.0, float(start)), max(0.0, float(end))
        if end < start:
            start, end = end, start
        spans = sorted([*self.holes, (start, end)])
        merged: list[tuple[float, float]] = []
        for s, e in spans:
            if merged and s <= merged[-1][1] + 1e-6:
                merged[-1] = (merged[-1][0], max(merged[-1][1], e))
            else:
                merged.append((s, e))
        if len(merged) > self.MAX_HOLES:
            merged[self.MAX_HOLES - 1:] = [(merged[self.MAX_HOLES - 1][0], merged[-1][1])]
        self.holes = merged

    def shortfall(self, slack: float = 1.0) -> float:
        """Seconds missing at the end: ``expected_seconds - seconds`` beyond ``slack`` s, 0 when complete or unknown."""
        if self.expected_seconds is None:
            return 0.0
        missing = self.expected_seconds - self.seconds
        return missing if missing > slack else 0.0


@dataclass(frozen=True)
class VideoInfo:
    """The video stream that will be decoded.

    Attributes:
        codec: decoder name (e.g. "h264").
        coded_width, coded_height: stored frame size in pixels.
        display_width, display_height: upright size after the sample aspect ratio and rotation.
        rotation: display-matrix rotation in degrees counter-clockwise, as ffprobe reports it
            (frames are turned to undo it); 0 when there is none.
        sample_aspect_ratio: pixel width / height (1 for square pixels).
        average_fps: mean frame rate from the container, None when unknown (not the sampling rate).
        frame_count: decoded frame count from the index, or estimated from duration x rate; None
            when unknown.
    """

    codec: str
    coded_width: int
    coded_height: int
    display_width: int
    display_height: int
    rotation: int
    sample_aspect_ratio: Fraction
    average_fps: float | None
    frame_count: int | None


@dataclass(frozen=True)
class AudioInfo:
    """The audio stream that will be decoded (before resampling to 16 kHz mono)."""

    codec: str
    sample_rate: int
    channels: int


@dataclass(frozen=True)
class MediaInfo:
    """What ``probe`` found and what a source built with the same settings will produce.

    Attributes:
        source: the path or URL.
        format: container format name(s) as FFmpeg reports them (e.g. "mov,mp4,m4a,3gp,3g2,mj2").
        duration: seconds, None when the container does not say (live streams, raw streams).
        start_time: container start time in seconds, None when unknown.
        video: the selected video stream, None when there is none (cover art is not video).
        audio: the selected audio stream, None when there is none.
        frame_size: (height, width) of the sampled frames after the pixel budget; None without video.
        fps: sampling rate the estimate below uses.
        sampled_frames: frames a source will yield at ``fps`` (estimate from the duration), None when
            the duration is unknown or there is no video.
    """

    source: str
    format: str
    duration: float | None
    start_time: float | None
    video: VideoInfo | None
    audio: AudioInfo | None
    frame_size: tuple[int, int] | None
    fps: float
    sampled_frames: int | None
