"""The binary message format of ``WS /v1/sessions/{id}/push`` (frames and audio pushed by a client).

A binary message is::

    uint32 big-endian N | N bytes of UTF-8 JSON header | payload

Headers:

- ``{"type": "frame", "t": seconds, "format": "rgb24", "width": W, "height": H}``: payload W*H*3 bytes, rows
  top to bottom;
- ``{"type": "frame", "t": seconds, "format": "jpeg" | "png"}``: payload one encoded image (its size is read
  from the image header and checked before it is decoded);
- ``{"type": "audio", "t": seconds, "format": "f32le" | "s16le", "rate": Hz, "channels": C}``: payload
  interleaved samples.

``t`` counts from the start of the connection (the server places it after what the session already holds).
Nothing is unpickled; every size is checked against the server's limits before memory is allocated.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

import numpy as np

MAX_HEADER_BYTES = 4096


class PushError(ValueError):
    """A malformed or oversized pushed message (the connection is closed with this reason)."""


@dataclass
class PushedFrame:
    t: float
    image: np.ndarray  # RGB uint8 [H, W, 3]


@dataclass
class PushedAudio:
    t: float
    samples: np.ndarray  # float32 [n] or [n, channels], or int16
    rate: int


def encode_message(header: dict, payload: bytes) -> bytes:
    """A push message (what clients send; used by the tests and ``avmem stream --server``)."""
    head = json.dumps(header).encode()
    return struct.pack(">I", len(head)) + head + payload


def image_size(data: bytes, fmt: str) -> tuple[int, int]:
    """(height, width) from a PNG or JPEG header, without decoding.

    Raises:
        PushError: not a PNG / JPEG, or no size found.
    """
    if fmt == "png":
        if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
            raise PushError("frame: not a PNG image")
        width, height = struct.unpack(">II", data[16:24])
        return height, width
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        raise PushError("frame: not a JPEG image")
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return height, width
        i += 2 + length
    raise PushError("frame: JPEG without a frame header")


def _decode_image(data: bytes, fmt: str) -> np.ndarray:
    """RGB uint8 [H, W, 3] of one PNG / JPEG image, decoded by FFmpeg (PyAV)."""
    import av

    codec = av.CodecContext.create("png" if fmt == "png" else "mjpeg", "r")
    try:
        frames = codec.decode(av.Packet(data)) + codec.decode(None)
    except av.error.FFmpegError as exc:
        raise PushError(f"frame: cannot decode the {fmt} image ({type(exc).__name__})") from None
    if not frames:
        raise PushError(f"frame: cannot decode the {fmt} image")
    return frames[0].to_ndarray(format="rgb24")


def _time(header: dict) -> float:
    t = header.get("t")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
        raise PushError(f"{header.get('type')}: t must be a finite number of seconds >= 0, got {t!r}")
    return float(t)


def _int(header: dict, name: str, low: int, high: int) -> int:
    v = header.get(name)
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise PushError(f"{header.get('type')}: {name} must be an integer in {low} .. {high}, got {v!r}")
    return v


def parse_message(message: bytes, *, max_bytes: int, max_pixels: int) -> PushedFrame | PushedAudio:
    """One pushed message, validated (sizes before allocation).

    Raises:
        PushError: malformed header, unknown type or format, payload of the wrong size, too large.
    """
    if len(message) > max_bytes:
        raise PushError(f"message of {len(message)} bytes is over the limit of {max_bytes}")
    if len(message) < 4:
        raise PushError("message shorter than its 4-byte header length")
    (n,) = struct.unpack(">I", message[:4])
    if not 2 <= n <= MAX_HEADER_BYTES or 4 + n > len(message):
        raise PushError(f"header length {n} must be in 2 .. {MAX_HEADER_BYTES} and within the message")
    try:
        header = json.loads(message[4:4 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PushError("header is not UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise PushError("header must be a JSON object")
    payload = memoryview(message)[4 + n:]
    kind, fmt = header.get("type"), header.get("format")
    if kind == "frame":
        t = _time(header)
        if fmt == "rgb24":
            h, w = _int(header, "height", 2, 16384), _int(header, "width", 2, 16384)
            if h * w > max_pixels:
                raise PushError(f"frame: {w}x{h} is over the limit of {max_pixels} pixels")
            if len(payload) != h * w * 3:
                raise PushError(f"frame: rgb24 {w}x{h} needs {h * w * 3} payload bytes, got {len(payload)}")
            return PushedFrame(t, np.frombuffer(payload, dtype=np.uint8).reshape(h, w, 3))
        if fmt in ("jpeg", "png"):
            data = bytes(payload)
            h, w = image_size(data, fmt)
            if not (2 <= h <= 16384 and 2 <= w <= 16384) or h * w > max_pixels:
                raise PushError(f"frame: {w}x{h} is outside 2 .. 16384 per side or over {max_pixels} pixels")
            image = _decode_image(data, fmt)
            if image.shape[:2] != (h, w):
                raise PushError(f"frame: the image decodes to {image.shape[1]}x{image.shape[0]}, its header says "
                                f"{w}x{h}")
            return PushedFrame(t, image)
        raise PushError(f"frame: format must be rgb24, jpeg or png, got {fmt!r}")
    if kind == "audio":
        t = _time(header)
        rate = _int(header, "rate", 1000, 384000)
        channels = _int(header, "channels", 1, 8)
        dtypes = {"f32le": np.dtype("<f4"), "s16le": np.dtype("<i2")}
        if fmt not in dtypes:
            raise PushError(f"audio: format must be f32le or s16le, got {fmt!r}")
        size = dtypes[fmt].itemsize * channels
        if len(payload) == 0 or len(payload) % size:
            raise PushError(f"audio: payload of {len(payload)} bytes is not a whole number of {channels}-channel "
                            f"{fmt} samples")
        samples = np.frombuffer(payload, dtype=dtypes[fmt]).reshape(-1, channels)
        samples = samples.astype(np.float32) if fmt == "f32le" else samples.astype(np.int16)
        if fmt == "f32le" and not np.isfinite(samples).all():
            raise PushError("audio: samples must be finite")
        return PushedAudio(t, samples[:, 0] if channels == 1 else samples, rate)
    raise PushError(f"type must be frame or audio, got {kind!r}")
