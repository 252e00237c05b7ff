"""Process-level settings for long-running streams."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_M_MMAP_THRESHOLD = -3


def pin_malloc_mmap_threshold(threshold: int = 64 * 1024) -> bool:
    """Serve allocations above ``threshold`` bytes with mmap, always (glibc only).

    glibc raises its mmap threshold each time a large block is freed, after which large temporary
    tensors come from the heap and their pages stay resident: a stream's RSS then drifts upwards over
    hours. Pinning the threshold returns every large temporary to the OS when freed (peak RSS of a
    20-minute stream within 6 % of a 2-minute one, `benchmarks/stream.py`) at a small cost in system
    calls. The ``avmem`` commands call this at start; call it yourself in long-running programs.

    Returns:
        True if applied; False where there is no glibc ``mallopt`` (macOS, Windows, musl).
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False


DEVICE_ENV = "AVMEM_DEVICE"
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


def resolve_device(device: str | None = "auto"):
    """The torch device for a ``--device`` value: ``auto`` (or None) is ``$AVMEM_DEVICE`` when set, else
    ``cuda`` when a CUDA GPU is visible, else ``cpu``.

    Raises:
        ValueError: an unknown device, or a CUDA device that is not there.
    """
    import os

    import torch

    if device in (None, "auto"):
        device = os.environ.get(DEVICE_ENV, "auto").strip() or "auto"
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device: unknown device {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA device is available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: no such CUDA device ({torch.cuda.device_count()} visible)")
    elif dev.type in ("mps", "xpu"):
        backend = getattr(torch.backends, "mps", None) if dev.type == "mps" else getattr(torch, "xpu", None)
        if backend is None or not backend.is_available():
            raise ValueError(f"--device {device}: no {dev.type.upper()} device is available")
    elif dev.type != "cpu":
        raise ValueError(f"--device: unknown device {device!r}")
    return dev


def resolve_dtype(dtype: str | None) -> torch.dtype | None:
    """The weights' dtype for a ``--dtype`` value: ``auto`` (None) keeps each model's own (a checkpoint's stored
    precision, bfloat16 for the ``random-*`` presets, float32 for ``tiny-*``), else float32 / bfloat16 / float16.

    Raises:
        ValueError: an unknown name.
    """
    import torch

    if dtype in (None, "auto"):
        return None
    name = DTYPES.get(str(dtype).lower())
    if name is None:
        raise ValueError(f"--dtype: unknown dtype {dtype!r} (auto, float32, bfloat16, float16)")
    return getattr(torch, name)
