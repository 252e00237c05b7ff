"""Inputs that are valid but hostile to a naive pipeline: long timestamp gaps and hours of silence (issue 15's
benchmark, ``benchmarks/hostile_inputs.py``, and the media tests)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def write_gap(path: str | Path, gap: float, size: int = 64, audio_seconds: float = 0.0) -> Path:
    """Two random-noise frames ``gap`` seconds apart (H.264, ``size`` x ``size``, ms time base), with optional mono
    PCM silence from t = 0 for ``audio_seconds``: a paused live stream or a surveillance recording."""
    path = Path(path)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        video.time_base = video.codec_context.time_base = Fraction(1, 1000)
        video.options = {"preset": "ultrafast"}
        stream = None
        if audio_seconds:
            stream = out.add_stream("pcm_s16le", rate=8000)
            stream.layout = "mono"
        for i, t in enumerate((0.0, gap)):
            image = np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            out.mux(video.encode(frame))
        out.mux(video.encode())
        if stream is not None:
            for start in range(0, int(audio_seconds * 8000), 8000):
                frame = av.AudioFrame.from_ndarray(np.zeros((1, 8000), np.int16), format="s16", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = 8000, start, Fraction(1, 8000)
                out.mux(stream.encode(frame))
            out.mux(stream.encode())
    return path


def write_silence(path: str | Path, seconds: float, rate: int = 8000) -> Path:
    """``seconds`` of silent mono AAC at ``rate`` Hz in an MP4 container, no video."""
    path = Path(path)
    with av.open(str(path), "w", format="mp4") as out:
        audio = out.add_stream("aac", rate=rate)
        audio.layout = "mono"
        block = np.zeros((1, 1024), dtype=np.float32)
        for start in range(0, int(seconds * rate), 1024):
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            out.mux(audio.encode(frame))
        out.mux(audio.encode())
    return path
