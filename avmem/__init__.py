"""avmem: long and live audio-visual understanding under a fixed memory budget."""

__version__ = "0.1.0"
