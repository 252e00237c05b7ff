"""PyAV plumbing shared by the sources: opening, stream choice, orientation, conversion, timing."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .errors import MediaError, MediaWarning
from .resize import PixelBudget, check_size
from .types import SAMPLE_RATE, SourceStats

URL_SCHEMES = ("http", "https", "hls", "rtsp", "rtsps", "rtmp", "rtmps", "rtp", "srt", "udp", "tcp")
"""Network schemes recognised as URLs (only those in :func:`allowed_protocols` are opened)."""
DEFAULT_PROTOCOLS = ("http", "https", "hls", "rtsp", "rtsps", "rtmp", "rtmps")
"""URL schemes opened by default; ``$AVMEM_PROTOCOLS`` (comma-separated, from :data:`URL_SCHEMES`) replaces it."""
_TRANSPORTS = {  # protocols FFmpeg opens underneath each allowed scheme (its whitelist must name them)
    "http": ("tcp", "tls", "crypto", "httpproxy"), "https": ("tcp", "tls", "crypto", "httpproxy"),
    "hls": ("http", "https", "tcp", "tls", "crypto"), "rtsp": ("rtp", "srtp", "udp", "tcp", "tls"),
    "rtsps": ("rtp", "srtp", "udp", "tcp", "tls"), "rtmp": ("tcp",), "rtmps": ("tcp", "tls"),
    "rtp": ("udp", "srtp"), "srt": (), "udp": (), "tcp": (),
}
_LISTEN_KEYS = ("listen", "listen_timeout")


def is_url(source: str) -> bool:
    """True for ``scheme://...`` with a network scheme FFmpeg reads."""
    scheme, sep, _ = source.partition("://")
    return bool(sep) and scheme.lower() in URL_SCHEMES


def allowed_protocols() -> tuple[str, ...]:
    """URL schemes that may be opened: ``$AVMEM_PROTOCOLS`` (comma-separated) or :data:`DEFAULT_PROTOCOLS`."""
    text = os.environ.get("AVMEM_PROTOCOLS", "").strip()
    if not text:
        return DEFAULT_PROTOCOLS
    names = tuple(dict.fromkeys(p.strip().lower() for p in text.split(",") if p.strip()))
    unknown = [n for n in names if n not in URL_SCHEMES]
    if unknown:
        raise MediaError(f"AVMEM_PROTOCOLS: unknown protocol {unknown[0]!r} (known: {', '.join(URL_SCHEMES)})")
    return names


def ffmpeg_input(name: str, format: str | None = None,
                 options: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """What to hand FFmpeg so that it opens exactly ``name``, and nothing else, with the options to use.

    A URL must use an allowed scheme (:func:`allowed_protocols`) and may not ask to listen (a ``listen``
    query parameter or option); FFmpeg's ``protocol_whitelist`` keeps redirects, playlist segments and
    nested reads within the allowed schemes and their transports (a redirect to ``file:`` is refused).
    A local path is opened as that file (``file:`` + absolute path, whitelist ``file``): a name such as
    ``concat:/x.mp4`` or ``subfile,,start,...`` is a file name, never an FFmpeg protocol. With an explicit
    ``format`` (capture devices, lavfi) the name is the device's and passes unchanged.
    """
    opts = {str(k): str(v) for k, v in (options or {}).items()}
    for key in opts:
        if key.lower() in _LISTEN_KEYS or key.lower().startswith("protocol_"):
            raise MediaError(f"{name}: option {key!r} is not allowed (avmem only reads from sources it connects to)")
    if is_url(name):
        scheme = name.partition("://")[0].lower()
        allowed = allowed_protocols()
        if scheme not in allowed:
            raise MediaError(f"{name}: protocol {scheme!r} is not allowed (allowed: {', '.join(allowed)}; set "
                             f"AVMEM_PROTOCOLS to change)")
        query = name.partition("?")[2]
        params = [part.partition("=")[0].lower() for part in query.replace("&", "?").split("?") if part]
        if any(p in _LISTEN_KEYS for p in params):
            raise MediaError(f"{name}: listen mode is not allowed (avmem only reads from sources it connects to)")
        whitelist = dict.fromkeys([scheme, *_TRANSPORTS.get(scheme, ())])
        for extra in list(whitelist):  # transports that are themselves allowed schemes bring theirs
            whitelist.update(dict.fromkeys(_TRANSPORTS.get(extra, ()) if extra in allowed else ()))
        return name, {**opts, "protocol_whitelist": ",".join(whitelist)}
    if format is not None:
        return name, opts
    return "file:" + os.path.abspath(name), {**opts, "protocol_whitelist": "file"}


def open_input(name: str, *, format: str | None = None, options: dict[str, str] | None = None,
               timeout: float | None = None) -> av.container.InputContainer:
    """av.open for reading with one-line MediaErrors; ``timeout`` bounds the open and every read (s).
    ``name`` is opened as :func:`ffmpeg_input` says (local files as files, URLs within the allowed protocols)."""
    target, opts = ffmpeg_input(name, format, options)
    try:
        # container_options, not options: the latter are also applied to every stream's codec context, which
        # crashes FFmpeg inside PyAV 15 on some damaged MPEG-TS files (found by tests/test_media_fuzz.py).
        return av.open(target, mode="r", format=format, container_options=opts, timeout=timeout)
    except av.error.ExitError as exc:
        raise MediaError(f"{name}: no data for {timeout:g} s (timed out)") from exc
    except av.error.ConnectionRefusedError as exc:
        raise MediaError(f"{name}: connection refused") from exc
    except av.error.HTTPError as exc:
        raise MediaError(f"{name}: HTTP error ({exc.strerror})") from exc
    except (av.error.FFmpegError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise MediaError(f"{name}: cannot open media ({reason})") from exc


def pick_video(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    """The first video stream that is not cover art (attached picture)."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            if stream.codec_context is None:
                raise MediaError(f"{container.name.removeprefix('file:')}: the video stream's codec is unknown (no decoder)")
            return stream
    return None


def pick_audio(container: av.container.InputContainer) -> av.audio.stream.AudioStream | None:
    """FFmpeg's best audio stream with a decoder, None when there is none."""
    if not container.streams.audio:
        return None
    best = container.streams.best("audio")
    if best is not None and best.codec_context is not None:
        return best
    return next((s for s in container.streams.audio if s.codec_context is not None), None)


def sample_aspect(stream: av.video.stream.VideoStream) -> Fraction:
    """Pixel aspect ratio: the container's, else the codec's, else square."""
    for sar in (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio):
        if sar is not None and sar > 0:
            return Fraction(sar)
    return Fraction(1)


def average_fps(stream: av.video.stream.VideoStream) -> float | None:
    """Mean frame rate from the container, None when unknown."""
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate and rate > 0 else None


@dataclass(frozen=True)
class Orientation:
    """How to make a decoded image upright: ``np.rot90(image, k)``, then a vertical flip if ``vflip``.

    ``rotation`` is the display-matrix angle (degrees counter-clockwise, ffprobe's convention).
    """

    k: int = 0
    vflip: bool = False
    rotation: int = 0

    @property
    def transposes(self) -> bool:
        """True when width and height swap."""
        return self.k % 2 == 1

    def apply(self, image: np.ndarray) -> np.ndarray:
        """[H, W, C] -> upright [H', W', C] (a view; copy before writing)."""
        out = np.rot90(image, self.k) if self.k else image
        return out[::-1] if self.vflip else out


def orientation_of(frame: av.VideoFrame) -> tuple[Orientation, str | None]:
    """The orientation FFmpeg's autorotate would apply for the frame's display matrix.

    Returns the orientation and a warning when the angle is not a multiple of 90 degrees (it is then
    rounded to the nearest right angle).
    """
    # Looked up by name: iterating ``frame.side_data`` yields SideData objects up to PyAV 18 but
    # their Type keys from PyAV 19 on, while ``.get("DISPLAYMATRIX")`` works on PyAV 12 to 19.
    side = frame.side_data.get("DISPLAYMATRIX")
    if side is None:
        return Orientation(), None
    data = bytes(side)
    if len(data) < 36:  # a display matrix is 3 x 3 int32; ignore a truncated one
        return Orientation(), None
    matrix = np.frombuffer(data[:36], dtype=np.int32)
    m = matrix.astype(np.float64) / 65536.0
    scale0, scale1 = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if scale0 == 0 or scale1 == 0:
        return Orientation(), None
    ccw = -math.degrees(math.atan2(m[1] / scale1, m[0] / scale0))
    rotation = round(ccw)
    theta = (-rotation) % 360
    snapped = round(theta / 90.0) % 4 * 90
    note = None
    if abs(((theta - snapped) + 180) % 360 - 180) > 1:
        note = f"display rotation {rotation} degrees is not a right angle; rotated by {-snapped % 360} instead"
    if snapped == 90:
        orient = Orientation(1, True, rotation) if matrix[3] > 0 else Orientation(3, False, rotation)
    elif snapped == 180:
        hflip, vflip = bool(matrix[0] < 0), bool(matrix[4] < 0)
        orient = Orientation(2 if hflip else 0, hflip != vflip, rotation)
    elif snapped == 270:
        orient = Orientation(3, True, rotation) if matrix[3] < 0 else Orientation(1, False, rotation)
    else:
        orient = Orientation(0, bool(matrix[4] < 0), rotation)
    return orient, note


def display_size(width: int, height: int, sar: Fraction, orient: Orientation) -> tuple[int, int]:
    """Upright square-pixel (height, width) of a coded ``width`` x ``height`` frame."""
    w = max(1, round(width * sar))
    return (w, height) if orient.transposes else (height, w)


def cap_pixels(height: int, width: int, limit: int | None) -> tuple[int, int]:
    """(height, width) scaled down, aspect kept, to at most ``limit`` pixels (unchanged when within it or None)."""
    if limit is None or height * width <= limit:
        return height, width
    scale = math.sqrt(limit / (height * width))
    return max(2, math.floor(height * scale)), max(2, math.floor(width * scale))


class FrameShaper:
    """Decoded av.VideoFrame -> upright, square-pixel RGB uint8 [H, W, 3] within the pixel budget.

    The decoder's scaler converts straight to the output size, so no full-size RGB array is made;
    ``decode_pixels`` caps the output area when the budget keeps the display size (``max_pixels=None``):
    a 16000 x 16000 frame then costs its decoded YUV planes and a capped RGB image, not 768 MB of RGB.
    """

    def __init__(self, name: str, budget: PixelBudget, sar: Fraction, warn: Callable[[str], None],
                 decode_pixels: int | None = None) -> None:
        self.name, self.budget, self.sar, self.warn = name, budget, sar, warn
        self.decode_pixels = decode_pixels
        self._plans: dict[tuple[int, int, Orientation], tuple[int, int]] = {}
        self._orientations: dict[tuple[int, int], Orientation] = {}
        self._noted = False

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        # The display matrix is read from the first frame of each coded size only: touching
        # ``frame.side_data`` on every frame makes PyAV retain native memory (RSS grew by ~80 MB per 3000
        # frames), and rotation metadata belongs to the stream, not to single frames.
        orient = self._orientations.get((frame.width, frame.height))
        if orient is None:
            orient, note = orientation_of(frame)
            self._orientations[(frame.width, frame.height)] = orient
            if note and not self._noted:
                self._noted = True
                self.warn(note)
        key = (frame.width, frame.height, orient)
        plan = self._plans.get(key)
        if plan is None:
            check_size(self.name, frame.height, frame.width)
            out_h, out_w = cap_pixels(*self.budget.target(*display_size(frame.width, frame.height, self.sar, orient)),
                                      self.decode_pixels)
            plan = (out_h, out_w) if not orient.transposes else (out_w, out_h)
            self._plans[key] = plan
        coded_h, coded_w = plan
        rgb = frame.reformat(width=coded_w, height=coded_h, format="rgb24", interpolation="BICUBIC").to_ndarray()
        return np.ascontiguousarray(orient.apply(rgb))


def array_shaper(budget: PixelBudget, name: str) -> Callable[[np.ndarray], np.ndarray]:
    """Upright RGB uint8 [H, W, 3] -> RGB uint8 resized to the pixel budget (bicubic, swscale)."""

    def shape(image: np.ndarray) -> np.ndarray:
        check_size(name, image.shape[0], image.shape[1])
        out_h, out_w = budget.target(image.shape[0], image.shape[1])
        if (out_h, out_w) == image.shape[:2]:
            return image.copy()
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        return frame.reformat(width=out_w, height=out_h, interpolation="BICUBIC").to_ndarray()

    return shape


class VideoClock:
    """Presentation time and duration (s) of decoded frames; synthesises times for frames without any."""

    def __init__(self, name: str, stream: av.video.stream.VideoStream, warn: Callable[[str], None]) -> None:
        self.name, self.warn = name, warn
        self.rate = average_fps(stream)
        self._last: tuple[float, float | None] | None = None
        self._warned = False

    def __call__(self, frame: av.VideoFrame) -> tuple[float, float | None]:
        duration = None
        if frame.duration and frame.time_base:
            duration = float(frame.duration * frame.time_base)
        t = frame.time
        if t is None:
            step = duration or (self._last[1] if self._last else None) or (1 / self.rate if self.rate else None)
            if step is None:
                raise MediaError(f"{self.name}: frames have no timestamps and the stream has no frame rate")
            if not self._warned:
                self._warned = True
                self.warn("video frames have no timestamps; timing them from frame durations / the nominal rate")
            t = self._last[0] + step if self._last else 0.0
        self._last = (t, duration)
        return t, duration


class AudioFeed:
    """Decoded audio frames -> (start time s, float32 mono 16 kHz samples) blocks.

    Samples are counted from an anchor (the time of the first frame); while each frame's timestamp
    stays within ``tolerance`` seconds of anchor + samples so far, output is contiguous. A larger
    jump or drift (or a change of input format) restarts the resampler at the frame's time, so gaps
    and overlaps reach the assembler as timestamp jumps and drift stays below ``tolerance``.
    """

    def __init__(self, tolerance: float = 0.03) -> None:
        self.tolerance = tolerance
        self._resampler: av.AudioResampler | None = None
        self._key: tuple | None = None
        self._anchor = 0.0
        self._in = 0
        self._out = 0

    def feed(self, frame: av.AudioFrame, time: float | None) -> list[tuple[float, np.ndarray]]:
        """Resample one frame whose first sample plays at ``time`` (None: right after the previous)."""
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        expected = None if self._resampler is None else self._anchor + self._in / frame.sample_rate
        if time is None:
            time = expected if expected is not None else 0.0
        blocks: list[tuple[float, np.ndarray]] = []
        if expected is None or key != self._key or abs(time - expected) > self.tolerance:
            blocks = self.flush()
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            self._key, self._anchor, self._in, self._out = key, time, 0, 0
        self._in += frame.samples
        blocks += self._take(self._resampler.resample(frame))
        return blocks

    def flush(self) -> list[tuple[float, np.ndarray]]:
        """Samples the resampler still holds."""
        if self._resampler is None:
            return []
        blocks = self._take(self._resampler.resample(None))
        self._resampler = None
        return blocks

    def _take(self, frames: list[av.AudioFrame]) -> list[tuple[float, np.ndarray]]:
        blocks = []
        for out in frames:
            samples = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
            if samples.size:
                blocks.append((self._anchor + self._out / SAMPLE_RATE, samples))
                self._out += samples.size
        return blocks


def warner(name: str, stats: SourceStats) -> Callable[[str], None]:
    """A function recording ``name: message`` in ``stats.warnings`` and emitting a MediaWarning."""

    def warn(message: str) -> None:
        text = f"{name}: {message}"
        stats.warnings.append(text)
        warnings.warn(text, MediaWarning, stacklevel=3)

    return warn


def check_local(path: str | Path) -> str:
    """A readable, non-empty local file path as a string, or MediaError."""
    p = Path(path)
    if not p.exists():
        raise MediaError(f"{p}: no such file")
    if not p.is_file():
        raise MediaError(f"{p}: not a file")
    if p.stat().st_size == 0:
        raise MediaError(f"{p}: empty file (0 bytes)")
    return str(p)
