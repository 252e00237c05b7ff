"""Media ingestion: timestamped frames and 16 kHz mono audio sampled by presentation time.

Sources (``FileSource``, ``LiveSource``, ``PushSource``) yield ``VideoFrame`` and ``AudioChunk``
items on the grid t_k = k / fps; ``probe`` describes an input; ``smart_resize`` is the Qwen-VL pixel
budget; ``resample_audio`` converts in-memory audio to 16 kHz mono.
"""

from .audio import resample_audio
from .errors import MediaError, MediaWarning
from .frames import sample_frames
from .probe import probe
from .resize import PixelBudget, smart_resize
from .sources import FileSource, LiveSource, MediaSource, PushSource
from .types import SAMPLE_RATE, AudioChunk, AudioInfo, MediaInfo, MediaItem, SourceStats, VideoFrame, VideoInfo

__all__ = [
    "SAMPLE_RATE", "AudioChunk", "AudioInfo", "FileSource", "LiveSource", "MediaError", "MediaInfo", "MediaItem",
    "MediaSource", "MediaWarning", "PixelBudget", "PushSource", "SourceStats", "VideoFrame", "VideoInfo", "probe",
    "resample_audio", "sample_frames", "smart_resize",
]
