"""Training data in the official video-SALMONN S format: records, up-front media checks, decoded samples.

The format (``--dataset`` of the released code): a ``.json`` file holding a list of items, or a ``.jsonl``
file with one item per line; several files are given as a list of paths or one comma-separated string.
An item is an object with

* ``conversations``: turns ``{"from": "human" | "gpt", "value": str}`` alternating from a question to an
  answer (several question/answer pairs allowed, the last turn is an answer). The first question holds the
  ``<video>`` tag; it is prepended (``"<video>\\n"``) when missing, and ``<image>`` is read as ``<video>``.
* ``video``: a path, or a list of paths whose clips are played one after the other (times of a clip are
  offset by the sampled length of the clips before it). Relative paths are resolved against the folder of
  the data file that names them; URLs of recordings are kept as given.
* ``use_audio`` (optional, default false): decode the audio track too.
* ``timestamps`` (optional, top level or on the first turn): ``[t0, t1]`` seconds; only that window of the
  (concatenated) video is used and times are shifted so that t0 becomes 0.

Other keys of the released format (``ref_answer``, ``num_tokens``...) are ignored. Items with ``image``
are rejected, as are per-clip timestamp lists. Unlike the released loader, a sample that cannot be decoded
is reported as :class:`Skipped` instead of being silently replaced by a random other sample.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from torch.utils.data import Dataset

from avmem.media import SAMPLE_RATE, AudioChunk, FileSource, MediaError, PixelBudget, VideoFrame, probe
from avmem.media._decode import is_url

VIDEO_TAG = "<video>"
IMAGE_TAG = "<image>"
_EPS = 1e-6


@dataclass(frozen=True)
class Record:
    """One validated item of a data file (no media opened yet).

    Attributes:
        source: where the item is: ``"data.jsonl:7"`` (line number) or ``"data.json[3]"`` (list index).
        videos: absolute paths (or URLs) of the clips, played in order.
        use_audio: decode the audio tracks.
        turns: (question, answer) pairs, stripped; the ``<video>`` tag (and the newline after it) removed.
        timestamps: (t0, t1) seconds of the window to use, None for the whole video.
    """

    source: str
    videos: tuple[str, ...]
    use_audio: bool
    turns: tuple[tuple[str, str], ...]
    timestamps: tuple[float, float] | None


@dataclass
class Sample:
    """A decoded training sample.

    Attributes:
        index: position of the record in the dataset.
        source: the record's source (``"file:line"`` or ``"file[index]"``).
        frames: uint8 [N, H, W, 3] RGB, one size for all frames (the first clip's).
        times: float64 [N] seconds of each frame (increasing; 0 = start of the video or of the window).
        audio: float32 [n] mono 16 kHz samples, None when ``use_audio`` is false or no clip has audio;
            clips without audio contribute silence.
        audio_start: time (s, same clock as ``times``) of the first audio sample.
        turns: (question, answer) pairs.
    """

    index: int
    source: str
    frames: np.ndarray
    times: np.ndarray
    audio: np.ndarray | None
    audio_start: float
    turns: tuple[tuple[str, str], ...]


@dataclass
class Skipped:
    """A record that could not be decoded: ``reason`` is one line."""

    index: int
    source: str
    reason: str


def load_records(paths: str | Path | Sequence[str | Path]) -> list[Record]:
    """Read and validate every item of the data files (one path, a comma-separated string, or a list).

    Raises:
        ValueError: one line naming the file and item (``file:line`` for .jsonl, ``file[index]`` for .json)
            and the problem; also for no files or no items at all.
    """
    files = _data_files(paths)
    records: list[Record] = []
    for name in files:
        records.extend(_read_file(name))
    if not records:
        raise ValueError(f"{', '.join(files)}: no items (empty dataset)")
    return records


def check_media(records: Sequence[Record], n: int, fetch_urls: bool = False) -> int:
    """Probe the videos of the first ``n`` records (all of them when ``n`` >= len(records)).

    URLs are probed (fetched) only with ``fetch_urls``: a data file must not make a check contact hosts it names.
    Returns the number of URLs left unchecked.

    Raises:
        ValueError: naming the record's source, for a missing, empty or unreadable file, a file without a
            video stream, or a timestamps window starting after the end of the video.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"check_media: n must be an integer >= 0, got {n!r}")
    unchecked = 0
    for record in records[:n]:
        total: float | None = 0.0
        for path in record.videos:
            if is_url(str(path)) and not fetch_urls:
                unchecked += 1
                total = None
                continue
            try:
                info = probe(path)
            except MediaError as exc:
                raise ValueError(f"{record.source}: {_one_line(str(exc))}") from exc
            if info.video is None:
                raise ValueError(f"{record.source}: {path}: no video stream")
            total = None if total is None or info.duration is None else total + info.duration
        if record.timestamps is not None and total is not None and record.timestamps[0] >= total:
            raise ValueError(f"{record.source}: timestamps start at {record.timestamps[0]:g} s but the video is "
                             f"{total:.2f} s long")
    return unchecked


class VideoQADataset(Dataset):
    """Records decoded on demand into :class:`Sample` (or :class:`Skipped` when decoding fails).

    Frames are sampled at ``fps`` by presentation time and resized to the Qwen-VL pixel budget
    (``max_pixels``, ``min_pixels``, ``factor``: 32 for Qwen3-VL, 28 for Qwen2.5-VL). More than
    ``max_frames`` frames are thinned to ``max_frames`` uniformly spaced ones (the released ``downsample``:
    indices ``linspace(0, N - 1, max_frames)`` rounded down), keeping their times; audio is kept whole.
    For videos expected to give more than 2 x ``max_frames`` frames the selection is made while decoding,
    over the frame count the container's duration announces, so memory stays bounded. Frames whose size
    differs from the first frame's (clips of other shapes in a list) are resized to it (bicubic).
    """

    def __init__(self, records: Sequence[Record], fps: float = 4.0, max_frames: int = 1024,
                 max_pixels: int = 176400, min_pixels: int = 784, factor: int = 32) -> None:
        records = list(records)
        if not records:
            raise ValueError("VideoQADataset: no records")
        for i, record in enumerate(records):
            if not isinstance(record, Record):
                raise ValueError(f"VideoQADataset: records[{i}] is a {type(record).__name__}, not a Record")
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= 240:
            raise ValueError(f"VideoQADataset: fps must be in (0, 240], got {fps!r}")
        for name, value in (("max_frames", max_frames), ("max_pixels", max_pixels), ("min_pixels", min_pixels),
                            ("factor", factor)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"VideoQADataset: {name} must be a positive integer, got {value!r}")
        try:
            PixelBudget(max_pixels, min_pixels, factor)
        except MediaError as exc:
            raise ValueError(f"VideoQADataset: {exc}") from exc
        self.records = records
        self.fps = float(fps)
        self.max_frames = max_frames
        self.budget = {"max_pixels": max_pixels, "min_pixels": min_pixels, "factor": factor}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample | Skipped:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"VideoQADataset indices must be integers, got {type(index).__name__}")
        index = int(index) + (len(self.records) if index < 0 else 0)
        if not 0 <= index < len(self.records):
            raise IndexError(f"VideoQADataset index {index} out of range (0 .. {len(self.records) - 1})")
        record = self.records[index]
        try:
            return self._decode(index, record)
        except (MediaError, ValueError, OSError, av.error.FFmpegError) as exc:
            return Skipped(index, record.source, _one_line(str(exc)) or type(exc).__name__)

    def _decode(self, index: int, record: Record) -> Sample | Skipped:
        t0, t1 = record.timestamps or (0.0, math.inf)
        sources = [FileSource(path, fps=self.fps, audio=record.use_audio, **self.budget) for path in record.videos]
        expected = self._expected_frames(sources, t0, t1)
        chosen = None
        if expected is not None and expected > 2 * self.max_frames:
            chosen = set(_uniform(expected, self.max_frames).tolist())
        frames: list[np.ndarray] = []
        times: list[float] = []
        audio: list[np.ndarray] = []
        audio_start = 0.0
        has_audio = False
        position = 0
        offset = 0.0
        for source in sources:
            clip_audio = record.use_audio and source.info.audio is not None
            has_audio |= clip_audio
            count, in_window, ended = 0, False, False
            with contextlib.closing(iter(source)) as items:
                for item in items:
                    if isinstance(item, VideoFrame):
                        count += 1
                        t = offset + item.t
                        if t >= t1 - _EPS:
                            ended = True
                            break
                        in_window = t >= t0 - _EPS
                        if not in_window:
                            continue
                        if position == 0:
                            audio_start = t - t0
                        if chosen is None or position in chosen:
                            frames.append(_fit(item.image, frames[0].shape[:2] if frames else None))
                            times.append(t - t0)
                        position += 1
                        if record.use_audio and not clip_audio:
                            audio.append(np.zeros(_chunk_length(item.index, self.fps), dtype=np.float32))
                    elif isinstance(item, AudioChunk) and in_window:
                        audio.append(item.samples)
            offset += count / self.fps
            if ended:
                break
        if not frames:
            window = f"window [{t0:g}, {t1:g}] s" if record.timestamps else "video"
            return Skipped(index, record.source, f"no frames in the {window} (the video is {offset:.2f} s long)")
        images = np.stack(frames)
        stamps = np.asarray(times, dtype=np.float64)
        if len(images) > self.max_frames:
            keep = _uniform(len(images), self.max_frames)
            images, stamps = images[keep], stamps[keep]
        samples = None
        if has_audio:
            samples = np.concatenate(audio).astype(np.float32, copy=False) if audio else np.zeros(0, np.float32)
        return Sample(index=index, source=record.source, frames=images, times=stamps, audio=samples,
                      audio_start=audio_start, turns=record.turns)

    def _expected_frames(self, sources: list[FileSource], t0: float, t1: float) -> int | None:
        """Frames inside the window according to the containers' durations, None when one is unknown."""
        total = 0
        for source in sources:
            if source.info.sampled_frames is None:
                return None
            total += source.info.sampled_frames
        first = math.ceil(t0 * self.fps - _EPS)
        last = total if math.isinf(t1) else min(total, math.ceil(t1 * self.fps - _EPS))
        return max(0, last - first)


def collate_single(batch: list) -> Sample | Skipped:
    """``collate_fn`` for ``DataLoader(batch_size=1)``: the one item, unchanged."""
    if len(batch) != 1:
        raise ValueError(f"collate_single expects batches of one item (batch_size=1), got {len(batch)}")
    return batch[0]


def _uniform(n: int, k: int) -> np.ndarray:
    """k indices spread uniformly over range(n) (k < n): ``linspace(0, n - 1, k)`` rounded down."""
    return np.linspace(0, n - 1, k).astype(np.int64)


def _chunk_length(k: int, fps: float) -> int:
    """Samples of audio chunk k at ``fps`` (as the media sources cut them)."""
    return round((k + 1) * SAMPLE_RATE / fps) - round(k * SAMPLE_RATE / fps)


def _fit(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """uint8 [H, W, 3] resized (bicubic, FFmpeg swscale as in the media sources) to ``size`` = (height, width)."""
    if size is None or image.shape[:2] == size:
        return image
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
    return frame.reformat(width=size[1], height=size[0], interpolation="BICUBIC").to_ndarray()


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _describe(value: Any) -> str:
    """A short one-line description of a JSON value for messages."""
    text = _one_line(json.dumps(value, ensure_ascii=False, default=str))
    return text if len(text) <= 60 else text[:57] + "..."


def _data_files(paths: str | Path | Sequence[str | Path]) -> list[str]:
    if isinstance(paths, str):
        parts = paths.split(",")
    elif isinstance(paths, Path):
        parts = [str(paths)]
    elif isinstance(paths, Sequence):
        parts = []
        for p in paths:
            if not isinstance(p, (str, Path)):
                raise ValueError(f"data files must be paths, got {type(p).__name__}")
            parts.append(str(p))
    else:
        raise ValueError(f"data files must be a path, a comma-separated string or a list, got {type(paths).__name__}")
    files = [p.strip() for p in parts if p.strip()]
    if not files:
        raise ValueError("no data files given")
    return files


def _read_file(name: str) -> list[Record]:
    path = Path(name)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{name}: is a directory, not a data file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{name}: cannot read ({_one_line(str(exc))})") from exc
    folder = os.path.abspath(path.parent)
    records = []
    if name.endswith(".jsonl"):
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            where = f"{name}:{lineno}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
            records.append(_record(item, where, folder))
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name}: malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(data, list):
        raise ValueError(f"{name}: a .json data file must hold a list of items, got {type(data).__name__} "
                         f"(use .jsonl for one item per line)")
    return [_record(item, f"{name}[{i}]", folder) for i, item in enumerate(data)]


def _record(item: Any, where: str, folder: str) -> Record:
    if not isinstance(item, dict):
        raise ValueError(f"{where}: an item must be a JSON object, got {_describe(item)}")
    if "image" in item:
        raise ValueError(f"{where}: image samples are not supported (only 'video' items)")
    if "video" not in item:
        kind = "audio-only samples are not supported; " if "audio" in item else ""
        raise ValueError(f"{where}: {kind}missing 'video' (a path or a list of paths)")
    videos = _videos(item["video"], where, folder)
    use_audio = item.get("use_audio", False)
    if not isinstance(use_audio, bool):
        raise ValueError(f"{where}: 'use_audio' must be true or false, got {_describe(use_audio)}")
    turns = _turns(item.get("conversations"), where)
    timestamps = item.get("timestamps")
    if timestamps is None:
        timestamps = item["conversations"][0].get("timestamps")
    return Record(source=where, videos=videos, use_audio=use_audio, turns=turns,
                  timestamps=_timestamps(timestamps, where))


def _videos(video: Any, where: str, folder: str) -> tuple[str, ...]:
    if isinstance(video, str):
        paths = [video]
    elif isinstance(video, list) and video and all(isinstance(v, str) for v in video):
        paths = video
    else:
        raise ValueError(f"{where}: 'video' must be a path or a non-empty list of paths, got {_describe(video)}")
    if any(not p.strip() for p in paths):
        raise ValueError(f"{where}: 'video' holds an empty path")
    return tuple(p if is_url(p) else os.path.abspath(os.path.join(folder, os.path.expanduser(p))) for p in paths)


def _turns(conversations: Any, where: str) -> tuple[tuple[str, str], ...]:
    if conversations is None:
        raise ValueError(f"{where}: missing 'conversations'")
    if not isinstance(conversations, list) or not conversations:
        raise ValueError(f"{where}: 'conversations' must be a non-empty list of turns, got {_describe(conversations)}")
    texts = []
    for j, turn in enumerate(conversations):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise ValueError(f"{where}: turn {j} must be an object with 'from' and 'value', got {_describe(turn)}")
        expected = "human" if j % 2 == 0 else "gpt"
        if turn["from"] != expected:
            raise ValueError(f"{where}: turn {j} is from {_describe(turn['from'])}, expected \"{expected}\" "
                             f"(turns alternate human, gpt, starting with human)")
        if not isinstance(turn["value"], str):
            raise ValueError(f"{where}: turn {j} 'value' must be a string, got {_describe(turn['value'])}")
        texts.append(turn["value"].replace(IMAGE_TAG, VIDEO_TAG))
    if len(texts) % 2:
        raise ValueError(f"{where}: the last question (turn {len(texts) - 1}) has no answer")
    tags = sum(text.count(VIDEO_TAG) for text in texts)
    if tags > 1:
        raise ValueError(f"{where}: {tags} {VIDEO_TAG} tags; an item holds one video input")
    if tags == 1 and VIDEO_TAG not in texts[0]:
        raise ValueError(f"{where}: the {VIDEO_TAG} tag must be in the first question")
    first = texts[0]
    if tags:
        at = first.index(VIDEO_TAG)
        first = first[:at] + first[at + len(VIDEO_TAG):].removeprefix("\n")
    texts[0] = first
    turns = []
    for k in range(0, len(texts), 2):
        question, answer = texts[k].strip(), texts[k + 1].strip()
        if not answer:
            raise ValueError(f"{where}: the answer in turn {k + 1} is empty")
        if not question and k > 0:
            raise ValueError(f"{where}: the question in turn {k} is empty")
        turns.append((question, answer))
    return tuple(turns)


def _timestamps(value: Any, where: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        raise ValueError(f"{where}: per-clip timestamps are not supported; give one [t0, t1] window in seconds "
                         f"of the (concatenated) video")
    numbers = isinstance(value, list) and len(value) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not numbers or not all(math.isfinite(v) for v in value) or not 0 <= value[0] < value[1]:
        raise ValueError(f"{where}: 'timestamps' must be [t0, t1] seconds with 0 <= t0 < t1, got {_describe(value)}")
    return float(value[0]), float(value[1])
