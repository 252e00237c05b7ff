"""Helpers and fixtures shared by the avmem serve tests (import the fixtures into a test module to use them)."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

import pytest

T = TypeVar("T")

SMALL = {"video_tokens": 48, "audio_tokens": 32, "chunk_frames": 4, "max_new_tokens": 6}
"""Session defaults that keep the tiny model's sessions fast."""
KEY_A, KEY_B = "a" * 16 + "-key-one", "b" * 16 + "-key-two"


def wait_for(predicate: Callable[[], T], timeout: float = 60.0, every: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` seconds pass (fails)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting")


def config(**kw):
    """A :class:`~avmem.serve.ServeConfig` for the tiny model with :data:`SMALL` session defaults."""
    from avmem.serve import ServeConfig

    return ServeConfig(model="tiny-qwen3-vl", session_defaults=dict(SMALL), **kw)


@pytest.fixture(scope="module")
def model():
    """The tiny random model, loaded once per test module."""
    from avmem.model import load_model

    return load_model("tiny-qwen3-vl")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 4 s 64x96 test-pattern clip with audio."""
    from avmem.synth import write_test_pattern_clip

    return write_test_pattern_clip(tmp_path_factory.mktemp("media") / "clip.mp4", seconds=4, fps=10, size=(64, 96))
