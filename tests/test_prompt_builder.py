"""The vectorised prompt builder of StreamSession equals the per-patch reference construction (the builder it
replaced): same embeddings, positions, masks, DeepStack rows, on video+audio, video-only and audio-only memories,
with evictions and merged audio."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from avmem.model import load_model
from avmem.session import StreamSession

from .test_session import frames, tone


@pytest.fixture(scope="module", params=["tiny-qwen3-vl", "tiny-qwen2.5-vl"])
def model(request, tmp_path_factory):
    import os

    os.environ.setdefault("AVMEM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    return load_model(request.param)


def naive_prompt(session: StreamSession, st, tail: list[int]):
    """The reference: one wrapper per temporal patch holding tokens (past ``max_wrappers``, one per group of
    consecutive ones), built patch by patch."""
    bb = session.model.backbone
    tok = bb.tokens
    pieces: list[Tensor] = []
    positions: list[Tensor] = []
    visual: list[Tensor] = []
    deep: list[Tensor] = []
    selectable: list[Tensor] = []

    def add_text(ids: list[int], pos: int) -> int:
        pieces.append(bb.embed(torch.tensor(ids)))
        positions.append(torch.arange(pos, pos + len(ids)).view(1, -1).expand(3, -1))
        visual.append(torch.zeros(len(ids), dtype=torch.bool))
        selectable.append(torch.zeros(len(ids), dtype=torch.bool))
        return pos + len(ids)

    def add_tokens(tokens: Tensor, pos: Tensor, is_visual: bool) -> None:
        pieces.append(tokens.to(bb.device))
        positions.append(pos)
        visual.append(torch.full((len(tokens),), is_visual, dtype=torch.bool))
        selectable.append(torch.ones(len(tokens), dtype=torch.bool))

    prefix = [tok.im_start] + session._text_ids("user\n")
    pos = add_text(prefix, 0)
    log = st.patches
    v_ids = st.video.ids.cpu().numpy() if st.video is not None else np.zeros(0, dtype=np.int64)
    a_ids = st.audio.ids.cpu().numpy() if st.audio is not None else np.zeros(0, dtype=np.int64)
    if len(log):
        a_counts = session._audio_counts(st)
        block = log.grid.max(axis=1)
        sizes = log.n_ts + 1 + block + a_counts + 1
        starts = pos + np.concatenate([[0], np.cumsum(sizes)[:-1]])
        v_patch = np.searchsorted(log.first_id, v_ids, side="right") - 1
        a_patch = session._audio_patch(st, a_ids)
        a_first = np.concatenate([[0], np.cumsum(a_counts)[:-1]])
        kept = np.union1d(v_patch, a_patch)
        n_groups = min(len(kept), session.settings.max_wrappers)
        # groups of consecutive kept patches, as even as integer division makes them
        groups = [[k for i, k in enumerate(kept) if i * n_groups // len(kept) == g] for g in range(n_groups)]
        for group in groups:
            first = group[0]
            ts = f"<{log.times[first]:.1f} seconds>"
            add_text(session._text_ids(ts) + [tok.vision_start], int(starts[first]))
            for k in group:
                p = int(starts[k] + log.n_ts[k] + 1)
                v_sel = np.nonzero(v_patch == k)[0]
                a_sel = np.nonzero(a_patch == k)[0]
                if len(v_sel):
                    local = torch.from_numpy(v_ids[v_sel] - log.first_id[k])
                    wm = int(log.grid[k, 1])
                    rows, cols = local // wm, local % wm
                    sel = torch.from_numpy(v_sel)
                    add_tokens(st.video.tokens[sel, 0], torch.stack([torch.full_like(rows, p), p + rows, p + cols]),
                               True)
                    if st.video.tokens.shape[1] > 1:
                        deep.append(st.video.tokens[sel, 1:].to(bb.device))
                p += int(block[k])
                if len(a_sel):
                    local = torch.from_numpy(a_ids[a_sel] - a_first[k])
                    add_tokens(st.audio.tokens[torch.from_numpy(a_sel)], (p + local).view(1, -1).expand(3, -1), False)
            add_text([tok.vision_end], p + int(a_counts[group[-1]]))
        pos = int(starts[-1] + sizes[-1])
    elif len(a_ids):
        add_tokens(st.audio.tokens, (pos + torch.from_numpy(a_ids)).view(1, -1).expand(3, -1), False)
        pos += int(st.audio_ids)
    add_text(tail, pos)
    embeds = torch.cat([p.to(bb.dtype) for p in pieces])
    mask = torch.cat(visual)
    deepstack = torch.cat(deep).permute(1, 0, 2).contiguous() if deep else None
    return embeds, torch.cat(positions, dim=1), mask, deepstack, torch.cat(selectable), len(tail)


def assert_same(session: StreamSession, question: str = "Which colour?") -> None:
    st = session._asking_state()
    tail = session._question_tail(question)
    got = session._build_prompt(st, tail)
    want = naive_prompt(session, st, tail)
    assert torch.equal(got[0], want[0])  # embeddings, bit for bit
    for g, w in zip(got[1:6], want[1:6]):
        if w is None or isinstance(w, int):
            assert g == w
        else:
            assert torch.equal(g.cpu(), w.cpu())
    assert got[6] == int(want[1].max()) + 1  # next position


def test_vectorised_prompt_equals_the_reference_with_video_and_audio(model):
    s = StreamSession(model, video_tokens=40, audio_tokens=10, chunk_frames=4, video_policy="discard-prev",
                      use_audio=model.audio is not None)
    for i, f in enumerate(frames(11)):  # evictions, a pending odd frame
        s.feed(frames=f, t=float(i))
    if model.audio is not None:
        s.feed(audio=tone(40.0))  # audio beyond the video, merged audio tokens
    assert_same(s)
    s.flush()
    for i, f in enumerate(frames(3, seed=2, size=(96, 64)), start=20):  # another grid after a gap
        s.feed(frames=f, t=float(i))
    assert_same(s, "And now?")


def test_vectorised_prompt_equals_the_reference_audio_only_and_video_only(model):
    if model.audio is not None:
        audio_only = StreamSession(model, audio_tokens=16)
        audio_only.feed(audio=tone(12.0))
        assert_same(audio_only)
    video_only = StreamSession(model, video_tokens=4096, use_audio=False)
    for i, f in enumerate(frames(6, seed=5)):
        video_only.feed(frames=f, t=0.5 * i)
    assert_same(video_only)


def test_wrappers_are_capped_by_max_wrappers_and_positions_stay(model):
    """Past ``max_wrappers`` kept patches share wrappers: the input shrinks by the dropped wrappers' rows, equals
    the grouped reference, and every audio/visual row keeps its content and position."""
    def session(cap: int) -> StreamSession:
        s = StreamSession(model, video_tokens=4096, audio_tokens=64, max_wrappers=cap,
                          use_audio=model.audio is not None)
        for i, f in enumerate(frames(14, seed=3)):
            s.feed(frames=f, t=float(i))
        if model.audio is not None:
            s.feed(audio=tone(14.0))
        return s

    full, capped = session(6000), session(3)
    assert_same(capped)
    assert_same(session(1))
    tail = full._question_tail("?")
    e_full, pos_full, _, _, sel_full, _, next_full = full._build_prompt(full._asking_state(), tail)
    e_cap, pos_cap, _, _, sel_cap, _, next_cap = capped._build_prompt(capped._asking_state(), tail)
    n_patches = len(full._asking_state().patches)
    assert n_patches == 7
    head = len(full._cached_ids("<0.5 seconds>")) + 2  # timestamp, vision_start, vision_end
    assert e_full.shape[0] - e_cap.shape[0] >= (n_patches - 3) * head - 4  # 4 wrappers fewer (timestamps vary)
    assert torch.equal(e_full[sel_full], e_cap[sel_cap])
    assert torch.equal(pos_full[:, sel_full], pos_cap[:, sel_cap])
    assert next_full == next_cap
    with pytest.raises(ValueError, match="max_wrappers"):
        StreamSession(model, max_wrappers=0)


def test_a_long_still_scene_keeps_the_question_input_bounded_by_the_settings(model):
    """The issue-15 case in miniature: one picture for 400 s spreads the kept tokens over many temporal patches;
    the input stays within video_tokens + audio_tokens + 12 * max_wrappers rows (+ the question)."""
    still = frames(1, seed=7)[0]
    s = StreamSession(model, video_tokens=64, max_wrappers=8, use_audio=False, chunk_frames=16)
    for t in range(400):
        s.feed(frames=still, t=float(t))
    st = s._asking_state()
    tail = s._question_tail("What is shown?")
    embeds = s._build_prompt(st, tail)[0]
    held_patches = len(np.unique(np.searchsorted(st.patches.first_id, st.video.ids.cpu().numpy(), side="right")))
    assert held_patches > 8  # the kept tokens are spread: without the cap there would be one wrapper each
    prefix = 1 + len(s._text_ids("user\n"))
    assert embeds.shape[0] <= prefix + 64 + 12 * 8 + len(tail)
    assert_same(s)
