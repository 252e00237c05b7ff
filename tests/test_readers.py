"""The reader registry, the session's asking path through it, KV reuse between questions, and the vectorised
pieces of the KV policies against their naive references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from avmem.memory.kv.readers import MemoryPrompt, Reader, ReadResult, get_reader, reader_names, register_reader
from avmem.memory.kv.reuse import MemoryKV
from avmem.memory.kv.selection import AUDIO, TEXT, VISUAL
from avmem.model import load_model
from avmem.session import StreamSession

BUILT_IN = {"full", "pd", "snapkv", "omnimem", "recent", "similarity", "similarity-merge", "infinipot", "rekv"}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import os

    os.environ.setdefault("AVMEM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    return load_model("tiny-qwen3-vl")


def fed(model, **kw) -> StreamSession:
    rng = np.random.default_rng(0)
    s = StreamSession(model, **{"video_tokens": 64, "audio_tokens": 16, "chunk_frames": 4, **kw})
    for i in range(10):
        s.feed(frames=rng.integers(0, 255, (64, 96, 3), dtype=np.uint8), t=float(i))
    t = np.arange(16000 * 10) / 16000
    s.feed(audio=(0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))
    return s


def test_registry_names_cli_help_and_errors():
    assert set(reader_names()) == BUILT_IN and reader_names()[0] == "full"
    from avmem.cli import READER_OPT

    assert all(name in READER_OPT.help for name in reader_names())  # the help lists every registered reader
    with pytest.raises(ValueError, match="reader must be one of"):
        get_reader("magic")
    with pytest.raises(TypeError):
        register_reader("bad")(object)
    with pytest.raises(ValueError, match="already registered"):
        register_reader("pd")(type("Other", (Reader,), {}))


def test_a_new_reader_is_one_class_and_the_session_uses_it(model):
    calls = []

    @register_reader("test-last-rows")
    class LastRows(Reader):
        """Keeps the memory's last 8 rows only (a toy policy)."""

        def read(self, backbone, prompt: MemoryPrompt, memory_kv) -> ReadResult:
            calls.append(prompt)
            cache = DynamicCache(config=backbone.model.config.text_config)
            backbone.forward_embeds(prompt.embeds[-8:], prompt.positions[:, -8:], cache, None, None)
            logits = backbone.forward_embeds(prompt.question, prompt.question_positions, cache, None, None)
            return ReadResult(cache, logits, prompt.next_position, kept=[8])

    try:
        s = fed(model, reader="test-last-rows")
        assert isinstance(s.ask("What?"), str) and s.stats().read_per_layer == [8]
        p = calls[0]
        n = p.embeds.shape[0]
        assert p.positions.shape == (3, n) and p.modality.shape == (n,) and p.visual_mask.shape == (n,)
        assert p.deepstack.shape[1] == int(p.visual_mask.sum())  # Qwen3-VL: one DeepStack row per video row
        assert torch.equal(p.visual_mask, p.modality == VISUAL) and bool((p.modality == AUDIO).any())
        assert p.next_position == int(p.question_positions.max()) + 1
        assert all(t.device == model.device for t in (p.embeds, p.positions, p.modality, p.question))
        with pytest.raises(ValueError, match="incremental applies to readers"):
            StreamSession(model, reader="test-last-rows", incremental=True)
        with pytest.raises(ValueError, match="budget_file only applies"):
            StreamSession(model, reader="test-last-rows", budget_file="x.json")
    finally:
        from avmem.memory.kv import readers

        readers._READERS.unregister("test-last-rows")


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_every_reader_answers_in_a_session_and_repeats_itself(model, name):
    s = fed(model, reader=name, read_tokens=8, read_chunk=24, block_tokens=4)
    first = s.ask("What is shown?", max_new_tokens=4)
    assert isinstance(first, str) and s.ask("What is shown?", max_new_tokens=4) == first  # asking changes nothing


def test_follow_up_question_reuses_the_state_and_the_memory_kv(model):
    """No feed between two questions: the pending frames are encoded once, the memory rows are not run again,
    and the answer equals a fresh session's."""
    s = fed(model, incremental=True)  # frames and audio still pending
    bb = model.backbone
    encode, forward = bb.encode_frames, bb.forward_embeds
    frames_encoded, rows_run = [], []
    bb.encode_frames = lambda x: frames_encoded.append(len(x)) or encode(x)
    bb.forward_embeds = lambda e, *a: rows_run.append(e.shape[0]) or forward(e, *a)
    try:
        s.ask("What?", max_new_tokens=1)
        memory_rows = s.memory_inputs()[0].shape[0]
        encoded = len(frames_encoded)
        rows_run.clear()
        second = s.ask("And then?", max_new_tokens=1)
        assert len(frames_encoded) == encoded and s.stats().kv_reuse == "exact"
        assert max(rows_run) < memory_rows  # only the question ran
    finally:
        bb.encode_frames, bb.forward_embeds = encode, forward
    assert second == fed(model).ask("And then?", max_new_tokens=1)


def naive_match(old_pos, old_emb, pos, emb):
    """The reference row matching of the reuse (per-row Python work, as first written)."""
    index = {tuple(p): i for i, p in enumerate(old_pos.t().tolist())}
    matched = [(i, index.get(tuple(p))) for i, p in enumerate(pos.t().tolist())]
    kept_new = [i for i, j in matched if j is not None and torch.equal(emb[i], old_emb[j])]
    kept_old = [matched[i][1] for i in kept_new]
    prefix = len(kept_new) == kept_new[-1] + 1 if kept_new else False
    if prefix and kept_old == sorted(kept_old):
        return ("approximate" if len(kept_old) < old_pos.shape[1] else "exact"), len(kept_new), kept_old
    return "recomputed", 0, None


def test_vectorised_reuse_matching_equals_the_naive_one():
    g = torch.Generator().manual_seed(0)
    n, d = 30, 8
    pos = torch.arange(n).view(1, -1).repeat(3, 1)
    pos[1, 5:15] += torch.arange(10) % 3  # video-like rows (t, t + row, t + col)
    pos[2, 5:15] += torch.arange(10) // 3
    emb = torch.randn(n, d, generator=g)
    cases = {
        "same": (pos, emb),
        "appended": (torch.cat([pos, pos[:, -4:] + 100], 1), torch.cat([emb, torch.randn(4, d, generator=g)])),
        "dropped": (pos[:, [i for i in range(n) if i % 7]], emb[[i for i in range(n) if i % 7]]),
        "changed": (pos, torch.cat([emb[:10], emb[10:11] + 1, emb[11:]])),
        "inserted": (torch.cat([pos[:, :3], pos[:, :1] + 1000, pos[:, 3:]], 1),
                     torch.cat([emb[:3], emb[:1], emb[3:]])),
        "new": (pos + 5000, emb),
    }
    for name, (p, e) in cases.items():
        store = MemoryKV()
        store._kept = type("K", (), {"positions": pos, "embeds": emb, "cache": None})()
        mode, start, rows = store._match(e, p)
        want = naive_match(pos, emb, p, e)
        assert (mode, start) == want[:2], name
        assert (rows.tolist() if rows is not None else None) == (want[2] if mode == "approximate" else None), name


def test_reuse_never_writes_into_the_kept_cache(model):
    bb = model.backbone
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(20, model.hidden_size, generator=g)
    pos = torch.arange(20).view(1, -1).expand(3, -1).clone()
    store = MemoryKV()
    first = store.cache(bb, emb, pos, None, None)
    kept = [layer.keys.clone() for layer in store._kept.cache.layers]
    bb.forward_embeds(emb[:3], pos[:, :3] + 20, first, None, None)  # the caller extends its cache
    again = store.cache(bb, emb, pos, None, None)
    assert store.mode == "exact" and again.layers[0].keys.shape[-2] == 20
    assert all(torch.equal(a.keys, b) for a, b in zip(store._kept.cache.layers, kept))
    dropped = store.cache(bb, emb[2:], pos[:, 2:], None, None)
    assert store.mode == "approximate" and dropped.layers[0].keys.shape[-2] == 18
    torch.testing.assert_close(dropped.layers[0].keys, kept[0][..., 2:, :])


def test_grouped_chunk_importance_equals_the_expanded_computation():
    from avmem.memory.kv.selection import chunk_importance

    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(8, 5, 16, generator=g), torch.randn(2, 12, 16, generator=g)
    heads, rows, d = q.shape
    kx = k.repeat_interleave(4, dim=0).double()
    logits = torch.einsum("hqd,hnd->qn", q.double(), kx) / (math.sqrt(d) * heads)
    visible = torch.ones(rows, 12, dtype=torch.bool).tril(12 - rows)
    want = torch.softmax(logits.masked_fill(~visible, float("-inf")), -1).sum(0)
    torch.testing.assert_close(chunk_importance(q, k).double(), want, rtol=1e-5, atol=1e-6)


def test_vectorised_temporal_novelty_equals_the_loop():
    from avmem.memory.kv.omnimem import Entries, temporal_novelty

    g = torch.Generator().manual_seed(3)
    n = 60
    t = torch.arange(n) // 6 * 10
    local = torch.arange(n) % 6
    positions = torch.stack([t, t + local // 3, t + local % 3])
    modality = torch.full((n,), VISUAL)
    modality[::7] = AUDIO
    modality[::11] = TEXT
    hidden = torch.randn(n, 16, generator=g)
    entries = Entries(hidden=hidden, attention=torch.zeros(n), order=torch.arange(n), modality=modality,
                      positions=positions, values=torch.zeros(n, 4))
    want = torch.ones(n, dtype=torch.float64)
    unit = torch.nn.functional.normalize(hidden, dim=-1)
    last: dict = {}
    for i in torch.nonzero(modality == VISUAL).flatten().tolist():
        where = (int(positions[1, i] - positions[0, i]), int(positions[2, i] - positions[0, i]))
        if where in last:
            want[i] = 1 - float((unit[i] * unit[last[where]]).sum())
        last[where] = i
    torch.testing.assert_close(temporal_novelty(entries), want, rtol=1e-6, atol=1e-6)
