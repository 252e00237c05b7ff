"""Serving paths of StreamSession against their references: shared vision-tower calls across sessions
(absorb_together) equal each session's own feed, and ask_stream equals ask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avmem.serve.batching import absorb_audio_together, absorb_together
from avmem.session import StreamSession

from .serve_common import model  # noqa: F401 (fixtures)


def _frames(seed: int, n: int, size=(64, 96)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def test_absorb_together_equals_each_session_feeding_alone(model):
    kw = dict(video_tokens=48, audio_tokens=32, chunk_frames=4, vision_patches=1, use_audio=False)
    # three sessions, one with another frame size (its own tower call), uneven counts (pending leftovers)
    clips = [_frames(0, 9), _frames(1, 8), _frames(2, 6, size=(32, 64))]
    ref = [StreamSession(model, **kw) for _ in clips]
    for s, frames in zip(ref, clips):
        s.feed(frames=frames, t=[float(i) for i in range(len(frames))])
    new = [StreamSession(model, **kw) for _ in clips]
    for s, frames in zip(new, clips):
        s.stage_frames(frames, [float(i) for i in range(len(frames))])
    assert [s.ready_frames() for s in new] == [8, 8, 4]
    assert absorb_together(new) == []
    for a, b in zip(ref, new):
        assert torch.equal(a.state.video.ids, b.state.video.ids)
        torch.testing.assert_close(a.state.video.tokens, b.state.video.tokens, rtol=1e-5, atol=1e-5)
        assert len(a.state.pending_frames) == len(b.state.pending_frames)
        for (ta, fa), (tb, fb) in zip(a.state.pending_frames, b.state.pending_frames):
            assert ta == tb and torch.equal(fa, fb)
        for x, y in zip(a.state.ttt.tensors().values(), b.state.ttt.tensors().values()):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
        assert a.ask("What happens?", max_new_tokens=6) == b.ask("What happens?", max_new_tokens=6)


def test_absorb_audio_together_equals_each_session_encoding_alone(model):
    rng = np.random.default_rng(0)
    kw = dict(video_tokens=16, audio_tokens=64, audio_pieces=1)
    clips = [(0.1 * rng.standard_normal(seconds * 16000)).astype(np.float32) for seconds in (65, 31, 10)]
    ref = [StreamSession(model, **kw) for _ in clips]
    new = [StreamSession(model, **kw) for _ in clips]
    for a, b, samples in zip(ref, new, clips):
        for at in range(0, len(samples), 5 * 16000):  # 5 s pushes, as a live source delivers them
            a.feed(audio=samples[at:at + 5 * 16000], audio_t=at / 16000)
            b.stage_audio(samples[at:at + 5 * 16000], at / 16000)
    assert [s.ready_audio() for s in new] == [60 * 16000, 30 * 16000, 0]
    assert absorb_audio_together(new, max_pieces=2) == []  # 3 pieces: calls of 2 and 1
    for a, b in zip(ref, new):
        assert a.state.audio_ids == b.state.audio_ids and np.array_equal(a.state.pending_audio, b.state.pending_audio)
        assert a.state.audio_log.start.tolist() == b.state.audio_log.start.tolist()
        assert a.state.pending_audio_start == b.state.pending_audio_start
        if a.state.audio is not None:
            assert torch.equal(a.state.audio.ids, b.state.audio.ids)
            torch.testing.assert_close(a.state.audio.tokens, b.state.audio.tokens, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="whole 30 s"):
        new[2].absorb_audio(torch.zeros(1, 4), 16000)


def test_stage_frames_validates_like_feed_and_is_atomic(model):
    s = StreamSession(model, video_tokens=32, chunk_frames=4, use_audio=False)
    s.stage_frames(_frames(0, 2), [0.0, 1.0])
    with pytest.raises(ValueError, match="increase"):
        s.stage_frames(_frames(1, 2), [2.0, 1.5])
    assert len(s.state.pending_frames) == 2 and s.settings.chunk_frames == 4
    with pytest.raises(ValueError, match="as many"):
        s.stage_frames(_frames(1, 2), [3.0])
    with pytest.raises(ValueError, match="pending"):
        s.absorb_patches([object()] * 2)


def test_ask_stream_pieces_join_to_ask(model):
    s = StreamSession(model, video_tokens=32, audio_tokens=16, chunk_frames=4)
    s.feed(frames=_frames(3, 5), t=[0.0, 1.0, 2.0, 3.0, 4.0], audio=np.zeros(5 * 16000, np.float32))
    want = s.ask("Describe it.", max_new_tokens=10)
    stream = s.ask_stream("Describe it.", max_new_tokens=10)
    pieces = list(stream)
    assert "".join(pieces) == want == stream.text()
    assert len(stream.tokens) <= 10 and all(pieces)
    early = s.ask_stream("Describe it.", max_new_tokens=10)
    first = next(early)
    assert want.startswith(first) and len(early.tokens) < 10  # stopping early stops generation
    with pytest.raises(ValueError, match="non-empty"):
        s.ask_stream("  ")
