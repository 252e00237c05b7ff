"""Frame sampling from local files at a fixed rate by presentation time (PyAV / FFmpeg)."""

from __future__ import annotations

from pathlib import Path
from collections.abc import Iterator

import av
import numpy as np


class MediaError(ValueError):
    """Unreadable media, or media without what was asked for."""


def sample_frames(path: str | Path, fps: float = 1.0) -> Iterator[tuple[float, np.ndarray]]:
    """Yield (seconds since the first frame, RGB uint8 [H, W, 3]) at ``fps`` samples per second.

    Frames are picked by presentation time, so variable frame rates and non-zero start times are
    handled: sample k is the first decoded frame whose timestamp reaches k / fps. Frames are decoded
    one at a time; the video is never held whole.

    Raises:
        MediaError: missing or unreadable file, or no video stream.
    """
    path = Path(path)
    if not fps > 0 or fps > 240:
        raise MediaError(f"fps must be in (0, 240], got {fps}")
    if not path.is_file():
        raise MediaError(f"{path}: no such file")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise MediaError(f"{path}: cannot open media ({exc})") from exc
    with container:
        if not container.streams.video:
            raise MediaError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        start: float | None = None
        k = 0
        try:
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                if start is None:
                    start = frame.time
                t = frame.time - start
                if t + 1e-6 >= k / fps:
                    yield t, frame.to_ndarray(format="rgb24")
                    k = int(np.floor(t * fps + 1e-6)) + 1
        except av.error.FFmpegError as exc:
            raise MediaError(f"{path}: decoding failed after {k} sampled frames ({exc})") from exc
        if start is None:
            raise MediaError(f"{path}: no decodable video frames")
