"""PushSource: caller-pushed frames and audio, sampled, resampled, validated, queued with drops."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from avmem.media import SAMPLE_RATE, AudioChunk, MediaError, PushSource, VideoFrame, resample_audio


def tone(t0: float, n: int, rate: int, hz: float = 1000.0, channels: int = 2) -> np.ndarray:
    """[n, channels] float32 sine at ``hz`` whose sample 0 plays at ``t0`` s."""
    x = 0.5 * np.sin(2 * np.pi * hz * (t0 + np.arange(n) / rate))
    return np.repeat(x[:, None], channels, axis=1).astype(np.float32)


def test_pushed_frames_are_sampled_and_held_and_audio_resampled_to_16k():
    src = PushSource(fps=1.0, factor=28)
    for i in range(90):
        t = 5.0 + i / 30
        src.push_frame(t, np.full((120, 200, 3), i / 90, np.float32))
        if i % 3 == 0:
            src.push_audio(t, tone(i / 30, 4410, 44100), 44100)
    first = src.poll()
    assert [type(i) for i in first] == [VideoFrame, AudioChunk] * 2
    src.close()
    items = first + list(src)
    frames = [i for i in items if isinstance(i, VideoFrame)]
    chunks = [i for i in items if isinstance(i, AudioChunk)]
    assert [f.t for f in frames] == [0.0, 1.0, 2.0] == [c.t for c in chunks]
    assert [f.frame_time for f in frames] == pytest.approx([0.0, 1.0, 2.0])
    assert frames[0].image.shape == (112, 196, 3) and frames[0].image.dtype == np.uint8
    assert int(frames[1].image[50, 50, 0]) == pytest.approx(round(30 / 90 * 255), abs=2)
    for chunk in chunks:
        assert chunk.samples.shape == (SAMPLE_RATE,)
        assert np.argmax(np.abs(np.fft.rfft(chunk.samples))) == 1000
        assert chunk.samples.max() == pytest.approx(0.5, abs=0.02)
    assert src.stats.frames == 3 and src.stats.padded_audio_seconds == 0.0


def test_sparse_frames_repeat_and_int16_audio_with_a_gap_is_zero_filled():
    src = PushSource(fps=2.0, max_pixels=None)
    src.push_frame(0.0, np.zeros((8, 8, 3), np.uint8))
    src.push_frame(1.6, np.full((8, 8, 3), 255, np.uint8))
    pcm = (tone(0.0, 8000, 16000, channels=1)[:, 0] * 32767).astype(np.int16)
    src.push_audio(0.0, pcm, 16000)
    src.push_audio(1.0, pcm, 16000)
    src.push_frame(2.0, np.zeros((8, 8, 3), np.uint8))
    src.close()
    items = list(src)
    frames = [i for i in items if isinstance(i, VideoFrame)]
    chunks = [i for i in items if isinstance(i, AudioChunk)]
    assert [f.t for f in frames] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert [f.frame_time for f in frames] == [0.0, 0.0, 0.0, 0.0, 2.0]
    assert src.stats.repeated_frames == 3
    assert [float(np.abs(c.samples).max()) > 0.4 for c in chunks] == [True, False, True, False, False]
    assert src.stats.padded_audio_seconds == pytest.approx(1.5, abs=0.01)


def test_missing_audio_is_filled_once_video_runs_ahead_by_max_skew():
    src = PushSource(fps=1.0, max_pixels=None, max_av_skew=2.0)
    for t in range(6):
        src.push_frame(float(t), np.zeros((4, 4, 3), np.uint8))
    ready = src.poll()
    assert [i.t for i in ready if isinstance(i, VideoFrame)] == [0.0, 1.0, 2.0]
    assert all(isinstance(c, AudioChunk) and not c.samples.any() for c in ready[1::2])


def test_consumer_thread_receives_everything_in_order():
    src = PushSource(fps=5.0, audio=False, max_pixels=None, queue_size=1000)
    got: list = []
    consumer = threading.Thread(target=lambda: got.extend(src))
    consumer.start()
    for i in range(100):
        src.push_frame(i / 25, np.full((16, 16, 3), i, np.uint8))
    src.close()
    consumer.join(timeout=10)
    assert not consumer.is_alive()
    assert [f.index for f in got] == list(range(20)) and src.stats.dropped == 0


def test_full_queue_drops_the_oldest_steps():
    src = PushSource(fps=1.0, audio=False, max_pixels=None, queue_size=2)
    for t in range(11):
        src.push_frame(float(t), np.zeros((4, 4, 3), np.uint8))
    assert [f.t for f in src.poll()] == [8.0, 9.0]
    assert src.stats.dropped == 8 and src.stats.frames == 2


def test_audio_only_push_source():
    src = PushSource(fps=1.0, video=False)
    src.push_audio(3.0, tone(0.0, 36000, 48000, hz=500.0), 48000)
    src.close()
    chunks = list(src)
    assert [c.t for c in chunks] == [0.0] and len(chunks[0].samples) == 12000
    assert np.argmax(np.abs(np.fft.rfft(chunks[0].samples))) == 375


def test_push_validation_errors():
    src = PushSource(fps=1.0)
    bad_images = [(np.zeros((8, 8), np.uint8), "shape"), (np.zeros((8, 8, 4), np.uint8), "shape"),
                  (np.zeros((8, 8, 3), np.int32), "dtype"), (np.full((8, 8, 3), 1.5), r"\[0, 1\]"),
                  (np.full((8, 8, 3), np.nan), "finite"), (np.zeros((1, 8, 3), np.uint8), "resolution"),
                  ([[0, 0, 0]], "numpy array")]
    for image, needle in bad_images:
        with pytest.raises(MediaError, match=needle):
            src.push_frame(0.0, image)
    src.push_frame(1.0, np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(MediaError, match="not after the previous frame"):
        src.push_frame(1.0, np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(MediaError, match="finite"):
        src.push_frame(float("inf"), np.zeros((8, 8, 3), np.uint8))
    bad_audio = [((np.zeros(10, np.float32), 100), "sample rate"), ((np.zeros(10, np.float32), 44100.0), "sample rate"),
                 ((np.zeros((10, 40), np.float32), 16000), "channels"), ((np.zeros(0, np.float32), 16000), "n >= 1"),
                 ((np.zeros(10, np.int32), 16000), "dtype"), ((np.full(10, np.inf, np.float32), 16000), "finite")]
    for (samples, rate), needle in bad_audio:
        with pytest.raises(MediaError, match=needle):
            src.push_audio(0.0, samples, rate)
    src.push_audio(2.0, np.zeros(160, np.float32), 16000)
    with pytest.raises(MediaError, match="before the previous audio push"):
        src.push_audio(1.0, np.zeros(160, np.float32), 16000)
    src.close()
    with pytest.raises(MediaError, match="after close"):
        src.push_frame(5.0, np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(MediaError, match="audio=False"):
        PushSource(audio=False).push_audio(0.0, np.zeros(10, np.float32), 16000)
    with pytest.raises(MediaError, match="video=False"):
        PushSource(video=False).push_frame(0.0, np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(MediaError, match="queue_size"):
        PushSource(queue_size=0)


def test_resample_audio_for_clips_in_memory():
    clip = tone(0.0, 44100, 44100, hz=1000.0)
    out = resample_audio(clip, 44100)
    assert out.shape == (SAMPLE_RATE,) and out.dtype == np.float32
    assert np.argmax(np.abs(np.fft.rfft(out))) == 1000 and np.abs(out[100:-100]).max() == pytest.approx(0.5, abs=0.01)
    assert resample_audio(clip[:441, 0], 44100, 8000).shape == (80,)
    same = np.ones(5, np.float32)
    assert np.array_equal(resample_audio(same, 16000), same)
    with pytest.raises(MediaError, match="sample rate"):
        resample_audio(same, 0)
    with pytest.raises(MediaError, match="dtype"):
        resample_audio(np.ones(5, np.int64), 16000)
