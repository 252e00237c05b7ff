"""``sample_frames``: the frames-only shortcut over ``FileSource`` (native display size, no audio)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import MediaError
from .sources import FileSource


def sample_frames(path: str | Path, fps: float = 1.0) -> Iterator[tuple[float, np.ndarray]]:
    """Yield (seconds since the first frame, RGB uint8 [H, W, 3]) at ``fps`` samples per second.

    Sample k is taken at t = k / fps and shows the frame on screen then (the last one whose
    presentation time is <= t), so variable frame rates and non-zero start times are handled. Images
    are upright (display rotation applied) with square pixels, at the display size (no pixel budget).
    Frames are decoded one at a time; the video is never held whole.

    Raises:
        MediaError: missing, empty or unreadable file, no video stream, invalid fps.
    """
    source = FileSource(path, fps=fps, audio=False, max_pixels=None)
    for item in source:
        yield item.t, item.image


__all__ = ["MediaError", "sample_frames"]
