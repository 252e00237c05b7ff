"""1-FPS frame sampling by presentation time on generated and real media."""

from __future__ import annotations

import pytest

from avmem.media import MediaError, sample_frames
from avmem.synth import write_test_pattern_clip

from .conftest import shared_path


def test_generated_clip_is_sampled_at_one_fps(tmp_path):
    path = write_test_pattern_clip(tmp_path / "c.mp4", seconds=7, fps=5, size=(64, 96))
    frames = list(sample_frames(path, fps=1.0))
    assert [round(t, 2) for t, _ in frames] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert frames[0][1].shape == (64, 96, 3) and frames[0][1].dtype.name == "uint8"
    assert len(list(sample_frames(path, fps=2.0))) == 14


@pytest.mark.parametrize("name", ["h264_aac_vfr_720p.mp4", "h264_noaudio_640x480.mp4", "vp9_opus_320x180.webm",
                                  "h264_aac51_fragmented.mp4", "h264_aac_srt_subs.mkv"])
def test_real_media_timestamps_are_one_second_apart(name):
    frames = list(sample_frames(shared_path("media", name), fps=1.0))
    assert frames, name
    times = [t for t, _ in frames]
    assert times[0] == 0.0
    assert all(0.5 < b - a < 1.5 for a, b in zip(times, times[1:]))


def test_errors_are_named(tmp_path):
    with pytest.raises(MediaError, match="no such file"):
        list(sample_frames(tmp_path / "missing.mp4"))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(MediaError, match="cannot open"):
        list(sample_frames(junk))
    with pytest.raises(MediaError, match="fps"):
        list(sample_frames(junk, fps=0))


def test_audio_only_file_has_no_video_stream():
    with pytest.raises(MediaError, match="no video stream"):
        list(sample_frames(shared_path("media", "speech_16k_mono.mp3")))
