"""Media ingestion: timestamped frames sampled by presentation time."""

from .frames import MediaError, sample_frames

__all__ = ["MediaError", "sample_frames"]
