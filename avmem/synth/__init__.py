"""Synthetic audio-visual material with known content (demo clips, small training sets)."""

from .clip import scene_colours, write_colour_qa_set, write_test_pattern_clip

__all__ = ["scene_colours", "write_colour_qa_set", "write_test_pattern_clip"]
