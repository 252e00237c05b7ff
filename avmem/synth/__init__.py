"""Synthetic audio-visual material with known content (demo clips, later the synthetic benchmark)."""

from .clip import write_test_pattern_clip

__all__ = ["write_test_pattern_clip"]
