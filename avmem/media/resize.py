"""The Qwen-VL pixel budget: frame sizes divisible by the patch-merge factor within a pixel range."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import MediaError

MAX_SIDE = 16384
MIN_SIDE = 2
MAX_ASPECT = 200


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 14 * 14 * 4 * 1280) -> tuple[int, int]:
    """Target (height, width) for an image of ``height`` x ``width`` pixels under the Qwen-VL budget.

    Same algorithm as ``smart_resize`` of transformers' Qwen2-VL image processor: both sides are
    rounded to multiples of ``factor`` (28 for Qwen2.5-VL, 32 for Qwen3-VL), then scaled down
    (floor) when the area exceeds ``max_pixels`` or up (ceil) when it is below ``min_pixels``,
    keeping the aspect ratio as closely as possible.

    Raises:
        ValueError: non-positive sizes, or an aspect ratio of 200 or more.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_ASPECT}, "
                         f"got {max(height, width) / min(height, width)}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class PixelBudget:
    """Frame size policy: ``max_pixels=None`` keeps the display size, otherwise ``smart_resize``.

    Defaults are the official video-SALMONN S per-frame budget (420^2 pixels, at least 28^2) with
    the Qwen3-VL factor 32 (patch 16 x merge 2); use factor 28 for Qwen2.5-VL.
    """

    max_pixels: int | None = 176400
    min_pixels: int = 784
    factor: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.factor <= 256:
            raise MediaError(f"factor must be in 1 .. 256, got {self.factor}")
        if self.max_pixels is not None:
            if not self.factor * self.factor <= self.max_pixels <= MAX_SIDE * MAX_SIDE:
                raise MediaError(f"max_pixels must be in {self.factor * self.factor} .. {MAX_SIDE * MAX_SIDE} "
                                 f"(factor^2 .. {MAX_SIDE}^2), got {self.max_pixels}")
            if not 1 <= self.min_pixels <= self.max_pixels:
                raise MediaError(f"min_pixels must be in 1 .. max_pixels={self.max_pixels}, got {self.min_pixels}")

    def target(self, height: int, width: int) -> tuple[int, int]:
        """Output (height, width) for an upright, square-pixel image of ``height`` x ``width``."""
        if self.max_pixels is None:
            return height, width
        return smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)


def check_size(name: str, height: int, width: int) -> None:
    """Raise MediaError for absurd frame sizes (a side outside 2 .. 16384 px, aspect ratio over 200)."""
    if not (MIN_SIDE <= height <= MAX_SIDE and MIN_SIDE <= width <= MAX_SIDE):
        raise MediaError(f"{name}: unsupported resolution {width}x{height} "
                         f"(each side must be {MIN_SIDE} .. {MAX_SIDE} px)")
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise MediaError(f"{name}: unsupported aspect ratio {width}x{height} (over {MAX_ASPECT}:1)")
