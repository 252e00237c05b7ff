"""``probe``: describe what a source built from a file or URL will decode, without decoding it all."""

from __future__ import annotations

import math
from pathlib import Path

import av

from ._decode import (
    URL_SCHEMES,
    average_fps,
    check_local,
    display_size,
    is_url,
    open_input,
    orientation_of,
    pick_audio,
    pick_video,
    sample_aspect,
)
from .errors import MediaError
from .resize import PixelBudget, check_size
from .types import AudioInfo, MediaInfo, VideoInfo


def check_fps(fps: float) -> float:
    """Validated sampling rate in frames per second."""
    if not isinstance(fps, (int, float)) or not 0 < fps <= 240:
        raise MediaError(f"fps must be in (0, 240], got {fps!r}")
    return float(fps)


def resolve(source: str | Path, format: str | None) -> tuple[str, str | None]:
    """(name, format) to hand FFmpeg: URLs as given, ``/dev/video*`` read with "v4l2" unless a format
    is given, local files checked to exist and be non-empty."""
    if not isinstance(source, (str, Path)):
        raise MediaError(f"media source must be a path or URL string, got {type(source).__name__}")
    text = str(source)
    if format is None and text.startswith("/dev/video"):
        return text, "v4l2"
    if format is not None or is_url(text):
        return text, format
    scheme, sep, _ = text.partition("://")
    if sep and scheme.isalnum():
        raise MediaError(f"{text}: unsupported URL scheme {scheme!r} (use one of {', '.join(URL_SCHEMES)})")
    return check_local(text), None


def probe(source: str | Path, *, fps: float = 1.0, max_pixels: int | None = 176400, min_pixels: int = 784,
          factor: int = 32, format: str | None = None, timeout: float = 10.0,
          options: dict[str, str] | None = None) -> MediaInfo:
    """Describe a file, URL or device: container, duration, streams and the sampled frame size.

    Opens the input and decodes its first video frame (the display rotation lives in frame side
    data). ``fps`` and the pixel budget are those of the source you will build; ``format`` forces an
    FFmpeg input format ("v4l2" is implied for ``/dev/video*``); ``timeout`` bounds network waits (s);
    ``options`` are FFmpeg input options (e.g. ``{"http_proxy": ...}``; see :func:`~avmem.media._decode.ffmpeg_input`).

    Raises:
        MediaError: missing, empty or non-media input; unreachable URL; undecodable video; absurd size.
    """
    fps = check_fps(fps)
    budget = PixelBudget(max_pixels, min_pixels, factor)
    name, format = resolve(source, format)
    with open_input(name, format=format, options=options, timeout=timeout) as container:
        duration = container.duration / av.time_base if container.duration else None
        start = container.start_time / av.time_base if container.start_time is not None else None
        vstream, astream = pick_video(container), pick_audio(container)
        video, frame_size, sampled = None, None, None
        if vstream is not None:
            video = _video_info(name, container, vstream, duration)
            try:
                frame_size = budget.target(video.display_height, video.display_width)
            except ValueError as exc:
                raise MediaError(f"{name}: {exc}") from exc
            if duration is not None:
                sampled = max(1, math.ceil(duration * fps - 1e-6))
        audio = None
        if astream is not None:
            cc = astream.codec_context
            audio = AudioInfo(codec=cc.name, sample_rate=cc.sample_rate, channels=cc.channels)
        return MediaInfo(source=name, format=container.format.name, duration=duration, start_time=start,
                         video=video, audio=audio, frame_size=frame_size, fps=fps, sampled_frames=sampled)


def _video_info(name: str, container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                duration: float | None) -> VideoInfo:
    cc = stream.codec_context
    if cc.width and cc.height:
        check_size(name, cc.height, cc.width)
    try:
        first = next(container.decode(stream), None)
    except (av.error.FFmpegError, ValueError) as exc:  # ValueError: PyAV >= 19 on an unknown codec
        raise MediaError(f"{name}: cannot decode video ({exc})") from exc
    if first is None:
        raise MediaError(f"{name}: no decodable video frames")
    check_size(name, first.height, first.width)
    orient, _ = orientation_of(first)
    sar = sample_aspect(stream)
    height, width = display_size(first.width, first.height, sar, orient)
    rate = average_fps(stream)
    count = stream.frames or (round(duration * rate) if duration and rate else None)
    return VideoInfo(codec=cc.name, coded_width=first.width, coded_height=first.height, display_width=width,
                     display_height=height, rotation=orient.rotation, sample_aspect_ratio=sar, average_fps=rate,
                     frame_count=count)
