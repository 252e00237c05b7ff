"""Budgets (official file format, released formula) and KV selection math against dense computations."""

from __future__ import annotations

import json
import math

import pytest
import torch

from avmem.memory.kv import (
    AUDIO,
    TEXT,
    VISUAL,
    BudgetSchedule,
    LayerBudget,
    LayerSignals,
    compute_budgets,
    joint_topk,
    omnimem_score,
    per_layer_topk,
    prompt_importance,
    redundancy,
    select_with_budget,
)


def dense_importance(q, k):
    heads, _, d = q.shape
    k = k.repeat_interleave(heads // k.shape[0], dim=0)
    probs = torch.softmax(q.double() @ k.double().transpose(-2, -1) / math.sqrt(d), dim=-1)  # [H, S, N]
    return probs.sum(dim=1).mean(dim=0)


@pytest.mark.parametrize("block", [1, 7, 64, 10_000])
def test_prompt_importance_blockwise_equals_dense(block):
    q = torch.randn(8, 5, 16) * 2
    k = torch.randn(2, 50, 16) * 2
    torch.testing.assert_close(prompt_importance(q, k, block=block).double(), dense_importance(q, k),
                               rtol=1e-5, atol=1e-6)
    assert prompt_importance(q, k).sum().item() == pytest.approx(5.0, rel=1e-5)  # each query's mass is 1


def test_pd_reader_selects_exactly_what_dense_eq_9_10_selects():
    """A hand-made case: keys aligned with the prompt queries are the important ones."""
    torch.manual_seed(0)
    d = 8
    prompt = torch.zeros(2, 1, d)
    prompt[:, 0, 0] = 4.0  # the prompt looks along axis 0
    layers = []
    for shift in (0, 3):
        keys = torch.randn(1, 12, d) * 0.1
        keys[0, [2 + shift, 5 + shift, 7], 0] = torch.tensor([3.0, 2.0, 1.0])
        layers.append(keys)
    imp = [prompt_importance(prompt, keys) for keys in layers]
    dense = [dense_importance(prompt, keys).float() for keys in layers]
    chosen = joint_topk(imp, 4)
    reference = joint_topk(dense, 4)
    assert [c.tolist() for c in chosen] == [r.tolist() for r in reference]
    assert chosen[0].tolist() == [2, 5] and chosen[1].tolist() == [5, 8]  # the two strongest of each layer
    assert [c.tolist() for c in per_layer_topk(imp, 3)] == [[2, 5, 7], [5, 7, 8]]


def test_joint_topk_spreads_unevenly_across_layers():
    a = [torch.tensor([5.0, 4.0, 3.0]), torch.tensor([0.1, 0.2, 9.0])]
    assert [c.tolist() for c in joint_topk(a, 3)] == [[0, 1], [2]]
    with pytest.raises(ValueError, match="cannot keep 7"):
        joint_topk(a, 7)


def test_redundancy_and_score():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    s = redundancy(x)
    torch.testing.assert_close(s, torch.tensor([2.0, 1.0, 1.0]))  # ends count a missing neighbour as 1
    attention = torch.tensor([0.5, 0.25, 1.0])
    score = omnimem_score(s, attention, lam=0.5)
    torch.testing.assert_close(score, torch.sqrt(1 - s / 2) * attention.sqrt())
    torch.testing.assert_close(omnimem_score(s, attention, 0.0), torch.sqrt(1 - s / 2))


def test_selection_keeps_text_and_never_exceeds_budgets():
    g = torch.Generator().manual_seed(0)
    modality = torch.tensor([TEXT] * 3 + [AUDIO] * 10 + [VISUAL] * 30 + [TEXT] * 2)
    for _ in range(20):
        score = torch.rand(len(modality), generator=g)
        for budget in (LayerBudget(audio=4, visual=9), LayerBudget(total=7), LayerBudget(audio=50, visual=1)):
            kept = select_with_budget(score, modality, budget)
            kinds = modality[kept]
            assert int((kinds == TEXT).sum()) == 5
            if budget.per_modality:
                assert int((kinds == AUDIO).sum()) == min(10, budget.audio)
                assert int((kinds == VISUAL).sum()) == min(30, budget.visual)
            else:
                assert int((kinds != TEXT).sum()) == 7
            assert bool((kept[1:] > kept[:-1]).all())
    # the best-scored visual tokens are the ones kept
    score = torch.arange(len(modality), dtype=torch.float32)
    kept = select_with_budget(score, modality, LayerBudget(audio=0, visual=2))
    assert kept.tolist() == [0, 1, 2, 41, 42, 43, 44]


def test_budget_files_official_format_and_errors(tmp_path):
    data = [[3193, 15376]] + [8192] * 3 + [[737, 2060]]
    path = tmp_path / "budget.json"
    path.write_text(json.dumps(data))
    sched = BudgetSchedule.load(path, num_layers=5)
    assert sched[0] == LayerBudget(audio=3193, visual=15376) and sched[1] == LayerBudget(total=8192)
    assert sched.total_tokens() == 3193 + 15376 + 3 * 8192 + 737 + 2060
    assert BudgetSchedule.load(sched.save(tmp_path / "again.json")).to_official() == data
    with pytest.raises(ValueError, match="5 layer entries, but the model has 36 layers"):
        BudgetSchedule.load(path, num_layers=36)
    for bad, needle in (([8192, 0, 8192], "layer 1: budget must be > 0"),
                        ([8192, [-1, 5]], "layer 1: \\[audio, visual\\]"),
                        ([8192, 8192, "lots"], "layer 2: expected an int"),
                        ([[1, 2, 3]], "layer 0: expected"),
                        ({"layers": 3}, "non-empty JSON list")):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=needle):
            BudgetSchedule.load(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        BudgetSchedule.load(path)


def test_compute_budgets_follows_the_released_formula():
    n = 4
    signals = LayerSignals(entropy_all=(3.0, 2.0, 1.0, 1.0), entropy_audio=(2.0, 1.0, 1.0, 0.5),
                           entropy_visual=(3.0, 2.0, 1.0, 1.0), cos_audio=(0.2, 0.5, 0.9, 0.9),
                           cos_visual=(0.1, 0.3, 0.8, 0.95))
    free = compute_budgets(signals, per_layer_mean=1000, temperature=1.0, av_ratio=2.0, clip=None)
    total = sum(b.tokens() for b in free)
    assert abs(total - 1000 * n) <= 2 * n  # conserved up to int truncation without clipping
    assert free[0].tokens() > free[3].tokens()  # higher entropy x distance -> more budget
    clipped = compute_budgets(signals, per_layer_mean=1000, temperature=0.2, av_ratio=2.0)
    for b in clipped:
        assert 500 <= b.visual <= 1500 and 250 <= b.audio <= 750
    with pytest.raises(ValueError, match="> 0"):
        compute_budgets(signals, per_layer_mean=0)
    with pytest.raises(ValueError, match="equal length"):
        compute_budgets(LayerSignals((1.0,), (), (), (), ()), per_layer_mean=10)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import os

    from avmem.model import load_model

    os.environ.setdefault("AVMEM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    return load_model("tiny-qwen3-vl")


def memory_case(tiny, n=40, seed=0):
    """A memory of n tokens (every 4th is text) with positions, plus a 6-token prompt."""
    g = torch.Generator().manual_seed(seed)
    d = tiny.hidden_size
    memory = torch.randn(n, d, generator=g) * 0.5
    positions = torch.arange(n).view(1, -1).expand(3, -1).clone()
    selectable = torch.ones(n, dtype=torch.bool)
    selectable[::4] = False
    prompt = tiny.backbone.embed(torch.tensor(tiny.backbone.tokenizer("What colour is it?").input_ids[:6]))
    prompt_positions = (n + torch.arange(prompt.shape[0])).view(1, -1).expand(3, -1).clone()
    return memory, positions, selectable, prompt, prompt_positions


@pytest.mark.parametrize("joint", [True, False])
def test_reader_with_full_budget_equals_full_context_logits(tiny, joint):
    from avmem.memory.kv.reader import PromptDependentReader
    from transformers import DynamicCache

    memory, positions, selectable, prompt, prompt_positions = memory_case(tiny)
    bb = tiny.backbone
    full = bb.forward_embeds(torch.cat([memory, prompt]), torch.cat([positions, prompt_positions], 1),
                             DynamicCache(config=bb.model.config.text_config), None, None)
    reader = PromptDependentReader(chunk_tokens=16, read_tokens=int(selectable.sum()), joint=joint)
    result = reader.read(bb, memory, positions, selectable, prompt, prompt_positions)
    torch.testing.assert_close(result.logits, full, rtol=1e-4, atol=1e-4)
    assert result.kept == [int(selectable.sum())] * bb.model.config.text_config.num_hidden_layers


@pytest.mark.parametrize("joint", [True, False])
def test_reader_respects_its_budget_and_keeps_text(tiny, joint):
    from avmem.memory.kv.reader import PromptDependentReader

    memory, positions, selectable, prompt, prompt_positions = memory_case(tiny, n=64)
    reader = PromptDependentReader(chunk_tokens=16, read_tokens=12, joint=joint)
    result = reader.read(tiny.backbone, memory, positions, selectable, prompt, prompt_positions)
    layers = len(result.kept)
    n_text = int((~selectable).sum())
    if joint:
        assert sum(result.kept) == 12 * layers
    else:
        assert result.kept == [12] * layers
    for li in range(layers):
        held = result.cache.layers[li].keys.shape[-2]
        assert held == n_text + result.kept[li] + prompt.shape[0]  # text always kept, plus the prompt pass
    answer = tiny.backbone.decode(result.cache, result.logits, result.next_position, 4)
    assert isinstance(answer, list)
    with pytest.raises(ValueError, match="cannot read 100 tokens"):
        PromptDependentReader(16, 100).read(tiny.backbone, memory, positions, selectable, prompt, prompt_positions)
    with pytest.raises(ValueError, match="read_tokens"):
        PromptDependentReader(16, 0)


def omni_case(tiny, n=48):
    memory, positions, _, prompt, prompt_positions = memory_case(tiny, n=n)
    modality = torch.full((n,), VISUAL)
    modality[::4] = TEXT
    modality[1::8] = AUDIO
    return memory, positions, modality, prompt, prompt_positions


def test_omnimem_with_budgets_covering_the_context_equals_full_context(tiny):
    from transformers import DynamicCache

    from avmem.memory.kv.omnimem import OmniMemPolicy

    memory, positions, modality, prompt, prompt_positions = omni_case(tiny)
    bb = tiny.backbone
    full = bb.forward_embeds(torch.cat([memory, prompt]), torch.cat([positions, prompt_positions], 1),
                             DynamicCache(config=bb.model.config.text_config), None, None)
    layers = bb.model.config.text_config.num_hidden_layers
    for budget in ((48, 48), 48):
        result = OmniMemPolicy(BudgetSchedule.uniform(layers, budget), chunk_tokens=16).read(
            bb, memory, positions, modality, prompt, prompt_positions)
        torch.testing.assert_close(result.logits, full, rtol=1e-4, atol=1e-4)


def test_omnimem_never_holds_more_than_its_budgets(tiny):
    from avmem.memory.kv.omnimem import OmniMemPolicy

    memory, positions, modality, prompt, prompt_positions = omni_case(tiny, n=96)
    bb = tiny.backbone
    layers = bb.model.config.text_config.num_hidden_layers
    n_text = int((modality == TEXT).sum())
    schedule = BudgetSchedule.from_official([[3, 10], 7][:layers] + [[1, 4]] * (layers - 2), layers)
    result = OmniMemPolicy(schedule, chunk_tokens=20, lam=0.02).read(bb, memory, positions, modality, prompt,
                                                                     prompt_positions)
    for li, mods in enumerate(result.modality):
        budget = schedule[li]
        assert int((mods == TEXT).sum()) == n_text
        if budget.per_modality:
            assert int((mods == AUDIO).sum()) == budget.audio and int((mods == VISUAL).sum()) == budget.visual
        else:
            assert int((mods != TEXT).sum()) == budget.total
        assert result.cache.layers[li].keys.shape[-2] == len(mods) + prompt.shape[0]
    assert isinstance(bb.decode(result.cache, result.logits, result.next_position, 3), list)
    with pytest.raises(ValueError, match="budget schedule has 3 layers"):
        OmniMemPolicy(BudgetSchedule.uniform(3, 8), 16).read(bb, memory, positions, modality, prompt,
                                                            prompt_positions)


def test_recent_window_keeps_sinks_and_the_latest_entries(tiny):
    from avmem.memory.kv.omnimem import RecentWindowPolicy

    memory, positions, modality, prompt, prompt_positions = omni_case(tiny, n=96)
    bb = tiny.backbone
    layers = bb.model.config.text_config.num_hidden_layers
    result = RecentWindowPolicy(BudgetSchedule.uniform(layers, (4, 10)), chunk_tokens=20, sinks=2).read(
        bb, memory, positions, modality, prompt, prompt_positions)
    audio_rows = torch.nonzero(modality == AUDIO).flatten()
    visual_rows = torch.nonzero(modality == VISUAL).flatten()
    for mods in result.modality:
        assert int((mods == AUDIO).sum()) == 4 and int((mods == VISUAL).sum()) == 10
    # with recency scoring every layer holds the same entries: 2 sinks + the latest of each modality
    expected_v = torch.cat([visual_rows[:2], visual_rows[-8:]])
    expected_a = torch.cat([audio_rows[:2], audio_rows[-2:]])
    assert result.kept == [14] * layers
    text_rows = torch.nonzero(modality == TEXT).flatten()
    expected = torch.sort(torch.cat([text_rows, expected_a, expected_v])).values
    for entries in result.entries:
        assert torch.equal(entries, expected)


def test_measured_signals(tiny):
    from avmem.memory.kv.signals import measure_signals

    memory, positions, modality, _, _ = omni_case(tiny, n=64)
    memory[modality == VISUAL] = memory[modality == VISUAL][0]  # identical visual tokens
    totals = measure_signals(tiny.backbone, memory, positions, modality, chunk_tokens=16)
    signals = totals.signals()
    assert signals.cos_visual[0] == pytest.approx(1.0, abs=1e-5)  # layer 0 sees the embeddings
    assert all(-1 <= c <= 1 for c in signals.cos_audio)
    assert all(0 < e <= math.log(64) + 1e-6 for e in signals.entropy_all + signals.entropy_visual)
    no_audio = modality.clone()
    no_audio[no_audio == AUDIO] = VISUAL
    with pytest.raises(ValueError, match="both audio and visual"):
        measure_signals(tiny.backbone, memory, positions, no_audio, chunk_tokens=16).signals()


def test_snapkv_style_pooling_keeps_neighbours_of_strong_keys(tiny):
    from avmem.memory.kv.reader import PromptDependentReader

    reader = PromptDependentReader(16, 4, joint=False, pool=3)
    pooled = reader._pooled(torch.tensor([0.0, 0.0, 5.0, 0.0, 0.0, 1.0]))
    assert pooled.tolist() == [0.0, 5.0, 5.0, 5.0, 1.0, 1.0]
    memory, positions, selectable, prompt, prompt_positions = memory_case(tiny, n=64)
    result = reader.read(tiny.backbone, memory, positions, selectable, prompt, prompt_positions)
    assert result.kept == [4] * len(result.kept)
    with pytest.raises(ValueError, match="pool must be odd"):
        PromptDependentReader(16, 4, pool=4)


@pytest.mark.parametrize("name", ["SimilarityDiscardPolicy", "SimilarityMergePolicy", "InfiniPotVPolicy"])
def test_kv_baselines_respect_budgets_and_cover_the_context(tiny, name):
    from transformers import DynamicCache

    from avmem.memory.kv import omnimem

    cls = getattr(omnimem, name)
    memory, positions, modality, prompt, prompt_positions = omni_case(tiny, n=96)
    bb = tiny.backbone
    layers = bb.model.config.text_config.num_hidden_layers
    result = cls(BudgetSchedule.uniform(layers, (3, 9)), 24).read(bb, memory, positions, modality, prompt,
                                                                  prompt_positions)
    for mods in result.modality:
        assert int((mods == AUDIO).sum()) == 3 and int((mods == VISUAL).sum()) == 9
        assert int((mods == TEXT).sum()) == int((modality == TEXT).sum())
    full = bb.forward_embeds(torch.cat([memory, prompt]), torch.cat([positions, prompt_positions], 1),
                             DynamicCache(config=bb.model.config.text_config), None, None)
    wide = cls(BudgetSchedule.uniform(layers, (96, 96)), 24).read(bb, memory, positions, modality, prompt,
                                                                  prompt_positions)
    torch.testing.assert_close(wide.logits, full, rtol=1e-4, atol=1e-4)


def test_similarity_discard_drops_duplicates_first(tiny):
    from avmem.memory.kv.omnimem import SimilarityDiscardPolicy

    memory, positions, modality, prompt, prompt_positions = omni_case(tiny, n=48)
    visual = torch.nonzero(modality == VISUAL).flatten()
    memory[visual[5]] = memory[visual[4]]  # an exact duplicate of its predecessor
    layers = tiny.backbone.model.config.text_config.num_hidden_layers
    n_visual = len(visual)
    result = SimilarityDiscardPolicy(BudgetSchedule.uniform(layers, (48, n_visual - 1)), 48).read(
        tiny.backbone, memory, positions, modality, prompt, prompt_positions)
    assert int(visual[5]) not in result.entries[0].tolist()  # layer 0 sees the embeddings themselves


def _naive_merge(hidden, keys, values, runs, limit):
    """MovieChat's loop: recompute every adjacent similarity, average the most similar pair, repeat."""
    hidden, keys, values = hidden.clone().double(), keys.clone().double(), values.clone().double()
    runs = [list(r) for r in runs]
    while sum(len(r) for r in runs) > limit:
        best = None
        for ri, run in enumerate(runs):
            for p in range(len(run) - 1):
                i, j = run[p], run[p + 1]
                sim = float(torch.nn.functional.cosine_similarity(hidden[i], hidden[j], dim=0))
                if best is None or sim > best[0]:
                    best = (sim, ri, p)
        _, ri, p = best
        i, j = runs[ri][p], runs[ri].pop(p + 1)
        for t in (keys, values):
            t[..., i, :] = (t[..., i, :] + t[..., j, :]) / 2
        hidden[i] = (hidden[i] + hidden[j]) / 2
    return sorted(i for r in runs for i in r), keys, values


def test_similarity_merge_matches_the_naive_moviechat_loop():
    from types import SimpleNamespace

    from avmem.memory.kv.omnimem import SimilarityMergePolicy

    g = torch.Generator().manual_seed(3)
    n = 23
    hidden = torch.randn(n, 6, generator=g, dtype=torch.float64)
    hidden[5] = hidden[4] + 0.01  # a near duplicate merges first
    keys = torch.randn(1, 2, n, 4, generator=g, dtype=torch.float64)
    values = torch.randn(1, 2, n, 4, generator=g, dtype=torch.float64)
    runs = [[0, 2, 3, 4, 5, 6, 9, 10, 11, 14], [1, 7, 8, 12, 13, 15, 16, 17, 18, 19, 20, 21, 22]]
    for limit in (20, 12, 5, 2):
        layer = SimpleNamespace(keys=keys.clone(), values=values.clone())
        h = hidden.clone()
        rows = SimilarityMergePolicy._merge_group(h, layer, runs, limit)
        want, want_k, want_v = _naive_merge(hidden, keys, values, runs, limit)
        assert rows.tolist() == want
        torch.testing.assert_close(layer.keys[..., rows, :], want_k[..., rows, :])
        torch.testing.assert_close(layer.values[..., rows, :], want_v[..., rows, :])
    one = SimilarityMergePolicy._merge_group(hidden.clone(), SimpleNamespace(keys=keys.clone(), values=values.clone()),
                                             runs, 1)
    assert one.tolist() == [1]  # budget below the modalities present: the run standing for more originals


def test_similarity_merge_policy_merges_duplicates(tiny):
    from avmem.memory.kv.omnimem import SimilarityMergePolicy

    memory, positions, modality, prompt, prompt_positions = omni_case(tiny, n=48)
    visual = torch.nonzero(modality == VISUAL).flatten()
    memory[visual[5]] = memory[visual[4]]
    layers = tiny.backbone.model.config.text_config.num_hidden_layers
    result = SimilarityMergePolicy(BudgetSchedule.uniform(layers, (48, len(visual) - 1)), 48).read(
        tiny.backbone, memory, positions, modality, prompt, prompt_positions)
    assert int(visual[5]) not in result.entries[0].tolist() and int(visual[4]) in result.entries[0].tolist()
    assert all(int((m == VISUAL).sum()) == len(visual) - 1 for m in result.modality)


def test_block_retrieval_reader(tiny):
    from transformers import DynamicCache

    from avmem.memory.kv.reader import BlockRetrievalReader

    memory, positions, selectable, prompt, prompt_positions = memory_case(tiny, n=64)
    bb = tiny.backbone
    cache = DynamicCache(config=bb.model.config.text_config)
    bb.forward_embeds(memory, positions, cache, None, None)
    full = bb.forward_embeds(torch.cat([memory, prompt]), torch.cat([positions, prompt_positions], 1),
                             DynamicCache(config=bb.model.config.text_config), None, None)
    everything = BlockRetrievalReader(8, 64).read(bb, cache, selectable, prompt, prompt_positions, 64 + 6)
    torch.testing.assert_close(everything.logits, full, rtol=1e-4, atol=1e-4)  # all blocks retrieved
    few = BlockRetrievalReader(8, 16).read(bb, cache, selectable, prompt, prompt_positions, 64 + 6)
    n_text = int((~selectable).sum())
    for li, layer in enumerate(few.cache.layers):
        assert few.kept[li] == 16 and layer.keys.shape[-2] == n_text + 16 + prompt.shape[0]
    assert cache.layers[0].keys.shape[-2] == 64  # the full cache is left untouched for the next question
