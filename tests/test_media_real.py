"""Every file of shared/media through probe and FileSource: sampling, orientation, audio, stream checks."""

from __future__ import annotations

import math
from fractions import Fraction

import av
import numpy as np
import pytest

from avmem.media import SAMPLE_RATE, AudioChunk, FileSource, MediaError, VideoFrame, probe, sample_frames

from .conftest import shared_path

# name: (display height, display width, has audio)
VIDEO_FILES = {
    "real_speech_360p_24s.mp4": (360, 640, True),
    "real_standup_portrait_46s.mp4": (640, 360, True),
    "h264_aac_1080p_25fps.mp4": (1080, 1920, True),
    "h264_aac_vfr_720p.mp4": (720, 1280, True),
    "h264_noaudio_640x480.mp4": (480, 640, False),
    "h264_aac_portrait_1080x1920.mp4": (1920, 1080, True),
    "h264_vfr_odd_3026x1386_noaudio.mp4": (1386, 3026, False),
    "h264_aac51_fragmented.mp4": (180, 320, True),
    "h264_aac_srt_subs.mkv": (720, 1280, True),
    "mpeg4_aac_320x240.mov": (240, 427, True),
    "vp8_vorbis_720p_1s.webm": (720, 1280, True),
    "vp9_opus_320x180.webm": (180, 320, True),
}
SILENT_AUDIO = {"h264_aac_srt_subs.mkv", "mpeg4_aac_320x240.mov"}  # their audio tracks hold digital silence
AUDIO_FILES = {"speech_16k_mono.wav": 11.0, "speech_16k_mono.mp3": 11.0, "mp3_48k_stereo.mp3": 8.3}


@pytest.mark.parametrize("name", sorted(VIDEO_FILES))
def test_video_file_is_sampled_at_one_fps_with_paired_audio(name):
    path = shared_path("media", name)
    height, width, has_audio = VIDEO_FILES[name]
    info = probe(path)
    assert (info.video.display_height, info.video.display_width) == (height, width)
    assert (info.audio is not None) == has_audio
    src = FileSource(path)
    items = list(src)
    frames = [i for i in items if isinstance(i, VideoFrame)]
    chunks = [i for i in items if isinstance(i, AudioChunk)]
    assert [f.t for f in frames] == [float(k) for k in range(len(frames))]
    assert abs(len(frames) - info.duration) <= 1.0, (len(frames), info.duration)
    assert all(f.frame_time <= f.t + 1e-9 and f.t - f.frame_time < 1.6 for f in frames)
    out_h, out_w = info.frame_size
    assert all(f.image.shape == (out_h, out_w, 3) and f.image.dtype == np.uint8 for f in frames)
    assert out_h * out_w <= 176400 and out_h % 32 == 0 and out_w % 32 == 0
    assert (out_h > out_w) == (height > width), "orientation must survive the resize"
    assert abs(math.log((out_w / out_h) / (width / height))) < 0.2
    if has_audio:
        assert [type(i) for i in items] == [VideoFrame, AudioChunk] * len(frames)
        assert all(c.t == f.t and c.samples.shape == (SAMPLE_RATE,) for f, c in zip(frames, chunks))
        audio = np.concatenate([c.samples for c in chunks])
        if name in SILENT_AUDIO:
            assert not audio.any()
        else:
            assert np.sqrt(np.mean(audio ** 2)) > 1e-3, "audio decoded as silence"
            assert np.abs(audio).max() <= 1.5
    else:
        assert not chunks and src.stats.audio_seconds == 0
    assert src.stats.frames == len(frames) and src.stats.warnings == []


def test_phone_clip_with_180_degree_display_matrix_comes_out_upright():
    path = shared_path("media", "h264_aac_vfr_720p.mp4")
    assert abs(probe(path).video.rotation) == 180
    _, image = next(sample_frames(path))
    with av.open(str(path)) as container:
        raw = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert image.shape == raw.shape
    assert np.abs(image.astype(int) - raw[::-1, ::-1]).mean() < 1.0
    gray = image.mean(axis=2)
    assert gray[:240].mean() > gray[-240:].mean() + 20, "the bright wall should be at the top"


def test_vfr_with_header_rate_unlike_the_real_rate_uses_timestamps():
    path = shared_path("media", "h264_vfr_odd_3026x1386_noaudio.mp4")
    info = probe(path)
    assert info.video.coded_width == 3026 and info.frame_size == (256, 608)
    src = FileSource(path)
    frames = list(src)
    assert len(frames) == 9 and src.stats.repeated_frames >= 1
    times = [f.frame_time for f in frames]
    assert times == sorted(times) and times[0] == 0.0


def test_non_square_pixels_and_subtitle_streams():
    mov = shared_path("media", "mpeg4_aac_320x240.mov")
    info = probe(mov, max_pixels=None)
    assert info.video.sample_aspect_ratio == Fraction(4, 3) and info.frame_size == (240, 427)
    assert next(sample_frames(mov))[1].shape == (240, 427, 3)
    mkv = shared_path("media", "h264_aac_srt_subs.mkv")
    frames = [i for i in FileSource(mkv) if isinstance(i, VideoFrame)]
    assert frames[0].frame_time == 0.0 and len(frames) == 10


@pytest.mark.parametrize("name", sorted(AUDIO_FILES))
def test_audio_only_files(name):
    path = shared_path("media", name)
    with pytest.raises(MediaError, match="no video stream"):
        FileSource(path)
    info = probe(path)
    assert info.video is None and info.frame_size is None and info.audio.sample_rate in (16000, 48000)
    src = FileSource(path, video=False)
    chunks = list(src)
    assert all(isinstance(c, AudioChunk) for c in chunks)
    assert all(len(c.samples) == SAMPLE_RATE for c in chunks[:-1]) and 0 < len(chunks[-1].samples) <= SAMPLE_RATE
    assert [c.t for c in chunks] == [float(k) for k in range(len(chunks))]
    assert src.stats.audio_seconds == pytest.approx(AUDIO_FILES[name], abs=0.05)


def test_mp3_encoder_delay_is_aligned_with_the_wav():
    wav = np.concatenate([c.samples for c in FileSource(shared_path("media", "speech_16k_mono.wav"), video=False)])
    mp3 = np.concatenate([c.samples for c in FileSource(shared_path("media", "speech_16k_mono.mp3"), video=False)])
    assert len(wav) == len(mp3) == 11 * SAMPLE_RATE
    lags = list(range(-100, 101))
    n = len(wav)
    scores = [np.dot(wav[max(0, lag):n + min(0, lag)], mp3[max(0, -lag):n - max(0, lag)]) for lag in lags]
    assert lags[int(np.argmax(scores))] == 0
    assert np.corrcoef(wav, mp3)[0, 1] > 0.99
