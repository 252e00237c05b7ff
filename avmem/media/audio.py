"""Audio helpers: validation to mono float32 and one-shot resampling (FFmpeg's swresample via PyAV)."""

from __future__ import annotations

import av
import numpy as np

from .errors import MediaError
from .types import SAMPLE_RATE

MIN_RATE, MAX_RATE = 1000, 384000


def as_mono(name: str, samples: np.ndarray) -> np.ndarray:
    """[n] or [n, channels <= 16] float (finite) or int16 audio -> float32 mono [n] (channels averaged).

    Raises:
        MediaError: not an array, wrong shape or dtype, empty, non-finite values.
    """
    if not isinstance(samples, np.ndarray):
        raise MediaError(f"{name}: samples must be a numpy array, got {type(samples).__name__}")
    if samples.ndim not in (1, 2) or samples.shape[0] == 0 or (samples.ndim == 2 and not 1 <= samples.shape[1] <= 16):
        raise MediaError(f"{name}: samples must be [n] or [n, channels<=16] with n >= 1, got shape "
                         f"{tuple(samples.shape)}")
    if samples.dtype == np.int16:
        audio = samples.astype(np.float32) / 32768.0
    elif samples.dtype.kind == "f":
        audio = samples.astype(np.float32)
        if not np.isfinite(audio).all():
            raise MediaError(f"{name}: samples must be finite")
    else:
        raise MediaError(f"{name}: samples dtype must be float or int16, got {samples.dtype}")
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    return np.ascontiguousarray(audio, dtype=np.float32)


def check_rate(name: str, rate: int) -> int:
    """A validated integer sample rate in Hz."""
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or not MIN_RATE <= rate <= MAX_RATE:
        raise MediaError(f"{name}: sample rate must be an integer in {MIN_RATE} .. {MAX_RATE} Hz, got {rate!r}")
    return int(rate)


def resample_audio(samples: np.ndarray, rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a whole clip: [n] or [n, channels] float / int16 at ``rate`` Hz -> float32 mono at
    ``target_rate`` Hz, exactly round(n * target_rate / rate) samples long.

    For streams, sources resample incrementally; this is for audio already in memory.

    Raises:
        MediaError: invalid samples or rates.
    """
    mono = as_mono("resample_audio", samples)
    rate, target_rate = check_rate("resample_audio", rate), check_rate("resample_audio", target_rate)
    length = round(mono.size * target_rate / rate)
    if rate == target_rate:
        return mono
    frame = av.AudioFrame.from_ndarray(mono[None, :], format="flt", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=target_rate)
    parts = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame) + resampler.resample(None)]
    out = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    if out.size < length:
        out = np.concatenate([out, np.zeros(length - out.size, dtype=np.float32)])
    return np.ascontiguousarray(out[:length], dtype=np.float32)
