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
    restored = StreamSession.load(session.save(tmp_path / "s.avmem"), model)
    assert restored.ask("What happens?") == session.ask("What happens?")
    assert isinstance(answer, str)
