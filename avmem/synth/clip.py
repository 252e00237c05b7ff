"""A deterministic test-pattern clip: scenes of a moving square on coloured backgrounds with tones."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

SCENE_SECONDS = 10
_COLOURS = np.array(
    [[200, 40, 40], [40, 160, 60], [40, 70, 200], [220, 190, 40], [150, 60, 180], [30, 170, 170]], dtype=np.uint8
)
COLOUR_NAMES = ("red", "green", "blue", "yellow", "purple", "teal")


def scene_colours(seconds: int, seed: int) -> list[str]:
    """Names of the background colours of the scenes of ``write_test_pattern_clip(seconds=..., seed=...)``."""
    rng = np.random.default_rng(seed)
    n_scenes = -(-seconds // SCENE_SECONDS)
    return [COLOUR_NAMES[i] for i in rng.integers(0, len(_COLOURS), n_scenes)]


def write_test_pattern_clip(
    path: str | Path,
    seconds: int,
    fps: int = 10,
    size: tuple[int, int] = (128, 128),
    seed: int = 0,
    audio: bool = True,
) -> Path:
    """Write an H.264 (+ AAC) MP4 of ``seconds`` seconds.

    Every 10 s a new scene starts: a background colour and a tone frequency drawn from ``seed``; a
    white square moves across it. Deterministic for a given seed.

    Args:
        path: output file (.mp4).
        seconds: duration, 1 .. 3 h.
        fps: frame rate of the file.
        size: (height, width), even numbers.
        seed: scene sequence seed.
        audio: add a 16 kHz mono AAC tone track.

    Returns:
        The path written.
    """
    height, width = size
    if not 1 <= seconds <= 3 * 3600:
        raise ValueError(f"seconds must be in 1 .. 10800, got {seconds}")
    if fps < 1 or fps > 60 or height % 2 or width % 2 or not 16 <= min(size) <= max(size) <= 4096:
        raise ValueError(f"unsupported clip format fps={fps} size={size}")
    rng = np.random.default_rng(seed)
    n_scenes = -(-seconds // SCENE_SECONDS)
    colours = _COLOURS[rng.integers(0, len(_COLOURS), n_scenes)]
    tones = rng.choice([330.0, 440.0, 550.0, 660.0, 880.0], n_scenes)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "veryfast", "crf": "28"}
        audio_stream = None
        if audio:
            audio_stream = container.add_stream("aac", rate=16000)
            audio_stream.layout = "mono"
        side = max(8, min(height, width) // 4)
        for i in range(seconds * fps):
            t = i / fps
            scene = min(int(t // SCENE_SECONDS), n_scenes - 1)
            img = np.empty((height, width, 3), dtype=np.uint8)
            img[:] = colours[scene]
            x0 = int((width - side) * ((t % SCENE_SECONDS) / SCENE_SECONDS))
            y0 = (height - side) // 2
            img[y0:y0 + side, x0:x0 + side] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if audio_stream is not None:
            rate, block = 16000, 1024
            total = seconds * rate
            for start in range(0, total, block):
                n = min(block, total - start)
                t = (start + np.arange(n)) / rate
                scene = np.minimum((t // SCENE_SECONDS).astype(int), n_scenes - 1)
                samples = (0.3 * np.sin(2 * np.pi * tones[scene] * t)).astype(np.float32)
                frame = av.AudioFrame.from_ndarray(samples[None, :], format="fltp", layout="mono")
                frame.sample_rate = rate
                frame.pts = start
                frame.time_base = Fraction(1, rate)
                container.mux(audio_stream.encode(frame))
            container.mux(audio_stream.encode())
    return path


def write_colour_qa_set(folder: str | Path, n: int, seconds: int = 4, size: tuple[int, int] = (64, 64),
                        seed: int = 0, audio: bool = True) -> Path:
    """``n`` test-pattern clips and ``data.json`` in the official training format asking for the background
    colour (answer: its name). A small, learnable training set for tests and smoke runs; returns the JSON."""
    folder = Path(folder)
    items = []
    for i in range(n):
        clip = write_test_pattern_clip(folder / f"clip{i:03d}.mp4", seconds, fps=4, size=size, seed=seed + i,
                                       audio=audio)
        items.append({"video": clip.name, "use_audio": audio, "conversations": [
            {"from": "human", "value": "<video>\nWhat colour is the background?"},
            {"from": "gpt", "value": scene_colours(seconds, seed + i)[0].capitalize() + "."}]})
    out = folder / "data.json"
    out.write_text(json.dumps(items, indent=1))
    return out
