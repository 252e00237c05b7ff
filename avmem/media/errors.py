"""Errors and warnings of the media layer."""

from __future__ import annotations


class MediaError(ValueError):
    """Unreadable media, media without what was asked for, or invalid ingestion settings.

    The message is one line naming the file, URL or setting and the problem.
    """


class MediaWarning(UserWarning):
    """Media decoded with a problem the caller should know about (truncated tail, missing timestamps)."""
