"""Synthetic audio-visual material with known content: test clips, small QA sets, and the long-video
benchmark (:mod:`avmem.synth.benchmark`, ``avmem synth``)."""

from .benchmark import generate, load_annotations
from .clip import scene_colours, write_colour_qa_set, write_test_pattern_clip

__all__ = ["generate", "load_annotations", "scene_colours", "write_colour_qa_set", "write_test_pattern_clip"]
