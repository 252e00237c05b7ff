"""The whole path (decode -> vision/audio -> memory -> answer) on every real media file, both backbones,
with and without audio, and through save/load."""

from __future__ import annotations

import math
import os

import pytest

from avmem.model import load_model
from avmem.session import StreamSession

from .conftest import SHARED, shared_path

MEDIA = sorted(p.name for p in (SHARED / "media").glob("*") if p.suffix in {".mp4", ".mkv", ".mov", ".webm", ".mp3",
                                                                             ".wav"}) or ["(shared media absent)"]
AUDIO_ONLY = {"speech_16k_mono.wav", "speech_16k_mono.mp3", "mp3_48k_stereo.mp3"}
NO_AUDIO = {"h264_noaudio_640x480.mp4", "h264_vfr_odd_3026x1386_noaudio.mp4"}


@pytest.fixture(scope="module", params=["tiny-qwen3-vl", "tiny-qwen2.5-vl"])
def model(request, tmp_path_factory):
    os.environ.setdefault("AVMEM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    return load_model(request.param)


@pytest.mark.parametrize("use_audio", [True, False], ids=["audio", "no-audio"])
@pytest.mark.parametrize("name", MEDIA)
def test_every_media_file(model, name, use_audio, tmp_path):
    path = shared_path("media", name)
    session = StreamSession(model, use_audio=use_audio, max_pixels=128 * 128, video_tokens=64, audio_tokens=16,
                            chunk_frames=8, max_new_tokens=4)
    if name in AUDIO_ONLY and not use_audio:
        with pytest.raises(ValueError, match="no video stream"):
            session.feed_file(path)
        return
    session.feed_file(path)
    answer = session.ask("What happens?")
    st = session.stats()
    import av

    with av.open(str(path)) as c:
        duration = c.duration / 1e6
    if name not in AUDIO_ONLY:
        assert abs(st.frames - math.ceil(duration)) <= 1, (st.frames, duration)
    heard = use_audio and name not in NO_AUDIO
    session.flush()
    st = session.stats()
    assert (st.audio_tokens_in > 0) == heard
    if heard:
        assert abs(st.audio_tokens_in - 2 * duration) <= 3, (st.audio_tokens_in, duration)
    assert st.video_tokens_held <= 64 and st.audio_tokens_held <= 16
    restored = StreamSession.load(session.save(tmp_path / "s.avmem"), model, session.settings)  # read settings are the caller's
    assert restored.ask("What happens?") == session.ask("What happens?")
    assert isinstance(answer, str)


def _gap_clip(path, gap: float = 6.0):
    """Two distinct 96x128 frames ``gap`` s apart, no audio (written here with PyAV)."""
    from fractions import Fraction

    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 128, 96, "yuv420p"
        video.time_base = video.codec_context.time_base = Fraction(1, 1000)
        video.options = {"preset": "ultrafast", "crf": "10"}
        for i, t in enumerate((0.0, gap, gap + 0.4)):
            image = np.random.default_rng(i).integers(0, 256, (96, 128, 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            out.mux(video.encode(frame))
        out.mux(video.encode())
    return path


def test_repeated_frames_reuse_the_vision_features_and_match_feeding_copies(model, tmp_path):
    """The fast path (repeats share one tensor and one vision call) against the naive one (every frame a fresh
    copy, encoded on its own): same memory."""
    import torch

    from avmem.media import VideoFrame

    path = _gap_clip(tmp_path / "gap.mp4")
    settings = dict(use_audio=False, fps=4.0, max_pixels=64 * 64, video_tokens=256, chunk_frames=8)
    fast, naive = StreamSession(model, **settings), StreamSession(model, **settings)
    naive.reuse_repeats = False
    calls = {"n": 0}
    encode = model.backbone.encode_frames

    def counted(frames):
        calls["n"] += 1
        return encode(frames)

    model.backbone.encode_frames = counted
    try:
        stats = fast.feed_file(path)
        fast.flush()
        fast_calls, calls["n"] = calls["n"], 0
        for item in fast.media(path):
            assert isinstance(item, VideoFrame)
            naive.feed(frames=item.image.copy(), t=item.t)
        naive.flush()
        naive_calls = calls["n"]
    finally:
        del model.backbone.encode_frames
    assert stats.frames == 26 and stats.repeated_frames >= 23 and not stats.holes
    assert fast_calls < naive_calls  # 12 repeated-frame patches cost one tower call; the naive path runs them all
    a, b = fast.state, naive.state
    assert a.frames == b.frames == 26 and a.video_ids == b.video_ids
    torch.testing.assert_close(a.video.tokens, b.video.tokens, rtol=1e-4, atol=1e-4)
    assert torch.equal(a.video.ids, b.video.ids)
    if a.ttt is not None:
        for key, value in a.ttt.tensors().items():
            torch.testing.assert_close(value, b.ttt.tensors()[key], rtol=1e-4, atol=1e-4)


def test_audio_only_input_reports_its_seconds(model, tmp_path):
    from avmem.synth import write_test_pattern_clip

    clip = write_test_pattern_clip(tmp_path / "a.mp4", seconds=4, fps=5, size=(64, 64))
    audio_only = tmp_path / "a.m4a"
    import av

    with av.open(str(clip)) as src, av.open(str(audio_only), "w", format="mp4") as out:
        stream = out.add_stream_from_template(src.streams.audio[0])
        for packet in src.demux(src.streams.audio[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    session = StreamSession(model, use_audio=True, audio_tokens=16)
    stats = session.feed_file(audio_only)
    assert session.stats().seconds == pytest.approx(4.0, abs=0.2) and stats.seconds == pytest.approx(4.0, abs=0.2)
