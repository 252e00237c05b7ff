"""StreamSession on tiny random Qwen2.5-VL / Qwen3-VL models: memory bounds, positions, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avmem.model import load_model
from avmem.session import SessionSettings, StreamSession

PRESETS = ["tiny-qwen3-vl", "tiny-qwen2.5-vl"]


@pytest.fixture(scope="module", params=PRESETS)
def model(request, tmp_path_factory):
    import os

    os.environ.setdefault("AVMEM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    return load_model(request.param)


def frames(n: int, seed: int = 0, size=(64, 96)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (*size, 3), dtype=np.uint8) for _ in range(n)]


def tone(seconds: float, freq: float = 440.0, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_memory_never_exceeds_budgets_and_counts_tokens(model):
    s = StreamSession(model, video_tokens=30, audio_tokens=12, chunk_frames=6)
    for i, f in enumerate(frames(21)):
        s.feed(frames=f, t=float(i))
        st = s.stats()
        assert st.video_tokens_held <= 30 and st.audio_tokens_held <= 12
    s.feed(audio=tone(65.0), audio_t=0.0)
    st = s.stats()
    assert st.frames == 21 and st.video_tokens_in == 18 // 2 * 6  # 18 frames absorbed (3 chunks), 6 tokens/patch
    assert st.audio_tokens_in == 120  # two complete 30 s pieces at 2 tokens/s; 5 s pending
    assert st.video_tokens_held == 30 and st.audio_tokens_held == 12
    assert st.memory_bytes > 0
    assert isinstance(s.ask("What is on screen?"), str)


def test_ask_does_not_change_the_memory_and_save_load_is_exact(model, tmp_path):
    s = StreamSession(model, video_tokens=24, audio_tokens=16, chunk_frames=4)
    for i, f in enumerate(frames(11, seed=1)):
        s.feed(frames=f, t=float(i))
    s.feed(audio=tone(11.0, 330.0), audio_t=0.0)
    first = s.ask("What happened?")
    assert s.ask("What happened?") == first  # asking twice: same memory, same answer
    path = s.save(tmp_path / "snap.avmem")
    s2 = StreamSession.load(path, model)
    assert s2.ask("What happened?") == first
    more = frames(5, seed=2)
    for i, f in enumerate(more, start=11):
        s.feed(frames=f, t=float(i))
        s2.feed(frames=f, t=float(i))
    assert s.ask("And then?") == s2.ask("And then?")
    a, b = s.state, s2.state
    assert torch.equal(a.video.tokens, b.video.tokens) and torch.equal(a.video.ids, b.video.ids)
    for x, y in zip(a.ttt.tensors().values(), b.ttt.tensors().values()):
        assert torch.equal(x, y)


def test_prompt_positions_follow_the_full_layout(model):
    """Kept tokens keep their full-layout positions; the prompt ends with the assistant header."""
    s = StreamSession(model, use_audio=False, video_tokens=10, chunk_frames=4, video_policy="discard-prev")
    for i, f in enumerate(frames(8, seed=3)):
        s.feed(frames=f, t=float(i))
    st = s._flushed()
    embeds, pos, mask, deep, _, _ = s._prompt(st, s._question_tail("Which colour?"))
    assert embeds.shape[0] == pos.shape[1] and pos.shape[0] == 3
    assert bool((pos[0, 1:] >= pos[0, :-1]).all())  # temporal positions never go back
    hm, wm = (int(v) for v in st.patches.grid[0])
    n_prefix = 1 + len(s._text_ids("user\n"))
    n_ts = int(st.patches.n_ts[0])
    full_patch = n_ts + 2 + max(hm, wm)  # timestamp, vision_start, video block, vision_end (no audio)
    assert int(pos.max()) < n_prefix + 4 * full_patch + 64
    # video tokens: t position is the block start, h/w offsets within the merged grid
    vis = pos[:, mask]
    assert vis.shape[1] > 0
    assert bool((vis[1] - vis[0] < hm).all()) and bool((vis[2] - vis[0] < wm).all())
    assert deep is None or deep.shape[1] == int(mask.sum())
    tail = model.backbone.tokenizer.decode(model.backbone.tokenizer("assistant\n").input_ids)
    assert tail == "assistant\n"


def test_bad_input_is_rejected(model):
    s = StreamSession(model, chunk_frames=4)
    with pytest.raises(ValueError, match="nothing has been fed"):
        s.ask("anything?")
    with pytest.raises(ValueError, match="uint8"):
        s.feed(frames=np.zeros((8, 8, 3), dtype=np.float32), t=0.0)
    with pytest.raises(ValueError, match="absurd"):
        s.feed(frames=np.zeros((1, 8, 3), dtype=np.uint8), t=0.0)
    s.feed(frames=frames(1)[0], t=1.0)
    with pytest.raises(ValueError, match="increase"):
        s.feed(frames=frames(1)[0], t=0.5)
    with pytest.raises(ValueError, match="NaN"):
        s.feed(audio=np.array([0.0, np.nan], dtype=np.float32))
    with pytest.raises(ValueError, match="non-empty"):
        s.ask("  ")
    with pytest.raises(ValueError, match="video_policy"):
        StreamSession(model, video_policy="random")
    with pytest.raises(ValueError, match="chunk_frames"):
        StreamSession(model, chunk_frames=3)
    with pytest.raises(ValueError, match="fps"):
        StreamSession(model, SessionSettings(fps=0))


def test_unknown_presets_and_folders(tmp_path):
    with pytest.raises(ValueError, match="unknown preset"):
        load_model("tiny-llama")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a model folder"):
        load_model(tmp_path / "empty")


def test_model_folder_round_trip_and_missing_tensors(model, tmp_path):
    """save_pretrained -> load_model gives the same answers; a missing TTT tensor is named."""
    from safetensors.torch import load_file, save_file

    folder = model.save_pretrained(tmp_path / "m")
    loaded = load_model(folder)
    assert loaded.spec.random_weights and loaded.ttt is not None and loaded.audio is not None
    answers = []
    for m in (model, loaded):
        s = StreamSession(m, video_tokens=16, audio_tokens=8, chunk_frames=4)
        for i, f in enumerate(frames(6, seed=5)):
            s.feed(frames=f, t=float(i))
        s.feed(audio=tone(6.0), audio_t=0.0)
        answers.append(s.ask("Describe the video."))
    assert answers[0] == answers[1]
    sd = load_file(str(folder / "ttt.safetensors"))
    del sd["ttt.wq.bias"]
    save_file(sd, str(folder / "ttt.safetensors"))
    with pytest.raises(ValueError, match="ttt_layers.ttt.wq.bias"):
        load_model(folder)


@pytest.mark.parametrize("fps", [1.0, 3.0, 0.5])
def test_positions_equal_transformers_get_rope_index_on_the_uncompressed_layout(tmp_path, fps):
    """With memories large enough to keep everything, our positions are exactly those that Qwen3-VL's own
    get_rope_index gives the full official token sequence (timestamps, vision_start, video pads, audio
    pads as text, vision_end), at any frame rate."""
    import os

    os.environ.setdefault("AVMEM_CACHE", str(tmp_path / "cache"))
    model = load_model("tiny-qwen3-vl")
    s = StreamSession(model, video_tokens=4096, audio_tokens=4096, chunk_frames=4, fps=fps)
    for i, f in enumerate(frames(7, seed=4)):
        s.feed(frames=f, t=i / fps)
    s.feed(audio=tone(9.0), audio_t=0.0)
    st = s._flushed()
    _, pos, mask, _, _, _ = s._prompt(st, s._question_tail("Which colour?"))
    tok = model.backbone.tokens
    ids = [tok.im_start] + s._text_ids("user\n")
    counts = s._audio_counts(st)
    assert counts.sum() == st.audio_ids == 18
    for k in range(len(st.patches)):
        n_video = int(st.patches.grid[k].prod())
        ids += s._text_ids(f"<{st.patches.times[k]:.1f} seconds>") + [tok.vision_start] + [tok.video_pad] * n_video
        ids += [tok.audio_pad] * int(counts[k]) + [tok.vision_end]
    ids += s._text_ids("\nWhich colour?") + [tok.im_end] + s._text_ids("\n") + [tok.im_start]
    ids += s._text_ids("assistant\n")
    input_ids = torch.tensor([ids])
    types = (input_ids == tok.video_pad).int() * 2  # 0 text, 1 image, 2 video
    hm, wm = (int(v) for v in st.patches.grid[0])
    grid = torch.tensor([[len(st.patches), 2 * hm, 2 * wm]])
    ref, _ = model.backbone.model.model.get_rope_index(input_ids, mm_token_type_ids=types, video_grid_thw=grid)
    assert pos.shape[1] == len(ids)
    assert torch.equal(pos, ref[:, 0])
    assert int(mask.sum()) == int(st.patches.grid.prod(axis=1).sum())


def test_pushed_frames_follow_the_pixel_budget_and_audio_clock_survives_flush(model):
    s = StreamSession(model, max_pixels=64 * 64 * 2, chunk_frames=4, video_tokens=512)
    big = np.zeros((1080, 1920, 3), dtype=np.uint8)
    s.feed(frames=[big, big], t=[0.0, 1.0])
    s.flush()
    hm, wm = (int(v) for v in s.state.patches.grid[0])
    factor = model.backbone.vision.factor
    assert (hm * factor) * (wm * factor) <= 64 * 64 * 2 and wm > hm  # within budget, landscape kept
    s.feed(audio=tone(10.3), audio_t=0.0)
    s.flush()
    s.feed(audio=tone(5.0), audio_t=10.3)  # continues exactly where the flushed audio ended
    st = s.state
    assert st.audio_samples == int(10.3 * 16000) + 5 * 16000
    assert np.allclose(st.audio_log.start, [0.0])
    assert abs(st.pending_audio_start - 10.3) < 1e-9 and len(st.pending_audio) == 5 * 16000
    s.flush()
    assert np.allclose(s.state.audio_log.start, [0.0, 10.3])
    times = s.state.audio_log.times(np.arange(s.state.audio_ids))
    assert times[21] == pytest.approx(10.3) and times[-1] == pytest.approx(10.3 + 4.5)


def test_session_file_from_another_model_is_refused(model, tmp_path):
    other = load_model("tiny-qwen2.5-vl" if model.spec.backbone_type == "qwen3_vl" else "tiny-qwen3-vl")
    s = StreamSession(model, use_audio=False, chunk_frames=4)
    s.feed(frames=frames(2), t=[0.0, 1.0])
    path = s.save(tmp_path / "s.avmem")
    with pytest.raises(ValueError, match="different model"):
        StreamSession.load(path, other)
    (tmp_path / "junk.avmem").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not an avmem session file"):
        StreamSession.load(tmp_path / "junk.avmem", model)


def fed_session(model, **kw) -> StreamSession:
    """10 s of frames and audio in a small memory (64 video + 16 audio tokens)."""
    settings = {"video_tokens": 64, "audio_tokens": 16, "chunk_frames": 4, "max_new_tokens": 6, **kw}
    s = StreamSession(model, **settings)
    for i, f in enumerate(frames(10, seed=7)):
        s.feed(frames=f, t=float(i))
    s.feed(audio=tone(10.0), audio_t=0.0)
    return s


def test_prompt_dependent_reading_in_a_session(model):
    """pd with a budget covering the memory answers exactly as the full reader; a small budget runs too."""
    def session(**kw):
        return fed_session(model, **kw)

    full = session().ask("What is shown?")
    assert session(reader="pd", read_tokens=80, read_chunk=16).ask("What is shown?") == full
    small = session(reader="pd", read_tokens=8, read_chunk=16)
    assert isinstance(small.ask("What is shown?"), str)
    assert isinstance(session(reader="pd", read_tokens=8, read_chunk=16, read_joint=False).ask("Why?"), str)
    assert isinstance(session(reader="snapkv", read_tokens=8, read_chunk=16).ask("Why?"), str)
    with pytest.raises(ValueError, match="more than the memory holds"):
        StreamSession(model, reader="pd", read_tokens=10_000, video_tokens=64, audio_tokens=16)
    with pytest.raises(ValueError, match="reader must be"):
        StreamSession(model, reader="magic")


def test_omnimem_reader_in_a_session(model, tmp_path):
    import json

    def session(**kw):
        return fed_session(model, **kw)

    full = session().ask("What is shown?")
    layers = model.backbone.model.config.text_config.num_hidden_layers
    wide = tmp_path / "wide.json"
    wide.write_text(json.dumps([[16, 64]] * layers))
    assert session(reader="omnimem", budget_file=str(wide), read_chunk=16).ask("What is shown?") == full
    tight = tmp_path / "tight.json"
    tight.write_text(json.dumps([[2, 6]] + [5] * (layers - 1)))
    assert isinstance(session(reader="omnimem", budget_file=str(tight), read_chunk=16).ask("Why?"), str)
    assert isinstance(session(reader="omnimem", read_tokens=8, read_chunk=16).ask("Why?"), str)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps([8] * (layers + 1)))
    with pytest.raises(ValueError, match=f"{layers + 1} layer entries, but the model has {layers} layers"):
        StreamSession(model, reader="omnimem", budget_file=str(wrong))
    with pytest.raises(ValueError, match="only applies to readers"):
        StreamSession(model, reader="pd", budget_file=str(wide))
    for name in ("similarity", "similarity-merge", "infinipot"):
        assert isinstance(session(reader=name, read_tokens=8, read_chunk=16).ask("Why?"), str)
    rekv = session(reader="rekv", read_tokens=16, block_tokens=8)
    assert isinstance(rekv.ask("Why?"), str)
    assert all(8 < n <= 16 for n in rekv.stats().read_per_layer)  # two whole blocks (the last may be short)
    assert isinstance(rekv.ask("Again?"), str) and rekv.stats().kv_reuse == "exact"  # full KV kept
    recent = session(reader="recent", read_tokens=8, read_chunk=16)
    assert isinstance(recent.ask("Why?"), str)
    assert recent.stats().read_per_layer == [8] * layers  # audio/visual KV entries held per layer


def test_incremental_mode_reuses_the_memory_cache(model):
    """Same memory: exact reuse, same answer as recomputing; new rows appended: exact; evictions: approximate."""
    full = fed_session(model, video_tokens=4096, audio_tokens=4096)
    inc = fed_session(model, video_tokens=4096, audio_tokens=4096, incremental=True)
    for s in (full, inc):
        s.flush()  # committed memory: later input only appends (pending frames would be re-encoded)
    assert inc.ask("What?") == full.ask("What?") and inc.stats().kv_reuse == "recomputed"
    assert inc.ask("And?") == full.ask("And?") and inc.stats().kv_reuse == "exact"
    for s in (full, inc):
        for i, f in enumerate(frames(4, seed=9), start=10):
            s.feed(frames=f, t=float(i))
        s.flush()
    assert inc.ask("Now?") == full.ask("Now?") and inc.stats().kv_reuse == "exact"  # rows appended only
    small = fed_session(model, incremental=True, audio_tokens=4096, video_policy="discard-prev")  # drops the oldest
    small.flush()
    small.ask("What?")
    for i, f in enumerate(frames(12, seed=11), start=10):  # 30 + 36 tokens > 64: evictions
        small.feed(frames=f, t=float(i))
    small.flush()
    assert isinstance(small.ask("Now?"), str) and small.stats().kv_reuse == "approximate"
    with pytest.raises(ValueError, match="incremental applies"):
        StreamSession(model, reader="pd", incremental=True)


def test_incremental_mode_with_shared_wrappers_answers_as_recomputing(model):
    """Past max_wrappers the groups of patches shift as patches arrive: the kept cache is then recomputed, never
    reused with stale wrapper rows."""
    full = fed_session(model, video_tokens=4096, audio_tokens=4096, max_wrappers=2)
    inc = fed_session(model, video_tokens=4096, audio_tokens=4096, incremental=True, max_wrappers=2)
    for s in (full, inc):
        s.flush()
    assert len(inc.state.patches) > 2
    assert inc.ask("What?") == full.ask("What?")
    assert inc.ask("And?") == full.ask("And?") and inc.stats().kv_reuse == "exact"
    for s in (full, inc):
        for i, f in enumerate(frames(4, seed=9), start=10):
            s.feed(frames=f, t=float(i))
        s.flush()
    assert inc.ask("Now?") == full.ask("Now?") and inc.stats().kv_reuse == "recomputed"


def test_a_session_moves_between_ttt_execution_paths(tmp_path):
    """How the TTT layer runs (``fast``) is not part of the model's identity: a session saved on one path loads
    on another and continues identically."""
    model = load_model("tiny-qwen3-vl")
    s = StreamSession(model, video_tokens=64, max_pixels=64 * 64)
    s.feed(frames=frames(4), t=[0.0, 1.0, 2.0, 3.0])
    s.save(tmp_path / "s.avmem")
    model.ttt.set_fast("fused")
    model.spec.ttt = model.ttt.cfg.to_dict()
    try:
        loaded = StreamSession.load(tmp_path / "s.avmem", model)
        assert loaded.stats().frames == 4
    finally:
        model.ttt.set_fast("auto")
        model.spec.ttt = model.ttt.cfg.to_dict()


def test_an_answer_prefix_is_part_of_the_prompt(model):
    """ask(..., prefix=P) continues after P: its first token is the one choose() rates over the prompt + P, and
    the prefix changes what follows (it is in the model's input, not pasted onto the reply)."""
    s = StreamSession(model, video_tokens=64, max_pixels=64 * 64, max_new_tokens=4)
    s.feed(frames=frames(4), t=[0.0, 1.0, 2.0, 3.0])
    _, with_prefix = s.choose("Which option?", ["A", "B", "C"], prefix="Best Option: (")
    _, without = s.choose("Which option?", ["A", "B", "C"])
    assert with_prefix != without
    assert isinstance(s.ask("Which option?", prefix="Best Option: ("), str)
    with pytest.raises(ValueError, match="prefix"):
        s.ask("Which option?", prefix=3)


def test_a_window_reads_only_the_recent_memory_at_its_full_layout_positions(model):
    """ask(..., since=T) reads the memory of the stream from T on: its prompt rows are the full prompt's rows
    (same embeddings at the same positions) without the older patches' tokens, audio from T on; since=0 is the
    whole memory; a window with nothing in it is a clear error."""
    s = StreamSession(model, video_tokens=4096, max_pixels=64 * 64)
    s.feed(frames=frames(8), t=[float(i) for i in range(8)], audio=tone(8.0), audio_t=0.0)
    st = s._asking_state()
    tail = s._question_tail("What?")
    full = s._memory_prompt(st, tail)
    whole = s._memory_prompt(s._windowed(st, 0.0), tail)
    assert torch.equal(whole.embeds, full.embeds) and torch.equal(whole.positions, full.positions)
    win = s._memory_prompt(s._windowed(st, 4.0), tail)
    assert 0 < win.embeds.shape[0] < full.embeds.shape[0]
    rows = {tuple(p): i for i, p in enumerate(full.positions.t().tolist())}
    for i, p in enumerate(win.positions.t().tolist()):
        assert torch.equal(win.embeds[i], full.embeds[rows[tuple(p)]])
    kept = s._windowed(st, 4.0)
    patch_of = np.searchsorted(st.patches.first_id, kept.video.ids.cpu().numpy(), side="right") - 1
    assert (st.patches.times[patch_of] + 0.5 >= 4.0).all() and len(kept.video) < len(st.video)
    if kept.audio is not None:
        assert (st.audio_log.times(kept.audio.ids.cpu().numpy()) >= 4.0).all()
    assert isinstance(s.ask("What?", max_new_tokens=2, since=4.0), str)
    with pytest.raises(ValueError, match="nothing in the memory"):
        s.ask("What?", since=100.0)
    with pytest.raises(ValueError, match="since"):
        s.ask("What?", since=-1)
