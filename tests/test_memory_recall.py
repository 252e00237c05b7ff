"""The layer-level memory benchmark: its task generators answer what the streams hold, every memory gets the same
state bytes, and a run is resumable (the benchmark itself is benchmarks/memory_recall.py, not a test)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mr():
    spec = importlib.util.spec_from_file_location("memory_recall", ROOT / "benchmarks" / "memory_recall.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["memory_recall"] = module
    spec.loader.exec_module(module)
    return module


def test_recall_answers_are_the_values_seen_once_far_back(mr):
    bench = mr.Bench.quick()
    s = mr.make_streams("recall", 5, 1024, np.random.default_rng(0), bench)
    body = 1024 - bench.pairs
    for i in range(5):
        for j in range(bench.pairs):
            key = s.a[i, body + j]
            assert s.b[i, body + j] == mr.B_QUERY
            where = np.flatnonzero((s.a[i, :body] == key) & (s.b[i, :body] > 0))
            assert len(where) == 1  # seen once
            assert s.b[i, where[0]] - 1 == s.answers[i, j]
            assert s.distance[i, j] == body + j - where[0] >= 1024 * 7 // 8 - bench.pairs
        assert (s.a[i, :body][s.b[i, :body] == 0] < mr.FILLER).all()  # everything else is filler


def test_count_and_order_answers(mr):
    bench = mr.Bench.quick()
    rng = np.random.default_rng(1)
    c = mr.make_streams("count", 6, 512, rng, bench)
    body = 512 - bench.count_types
    for i in range(6):
        for k in range(bench.count_types):
            assert (c.a[i, :body] == mr.FILLER + k).sum() == c.answers[i, k]
            assert c.a[i, body + k] == mr.FILLER + k and c.b[i, body + k] == mr.B_COUNT
    assert c.classes == mr.MAX_COUNT and c.answers.max() < mr.MAX_COUNT
    o = mr.make_streams("order", 6, 512, rng, bench)
    body = 512 - bench.events
    for i in range(6):
        for j in range(bench.events):
            first = o.a[i, body + j]
            second = o.b[i, body + j] - mr.B_ORDER + mr.FILLER
            assert first != second
            pf = np.flatnonzero(o.a[i, :body] == first)
            ps = np.flatnonzero(o.a[i, :body] == second)
            assert len(pf) == len(ps) == 1 and pf[0] < body // 4 and ps[0] < body // 4
            assert o.answers[i, j] == int(pf[0] < ps[0])
    with pytest.raises(ValueError, match="unknown task"):
        mr.make_streams("sort", 1, 512, rng, bench)


@pytest.mark.parametrize("quick", [True, False])
def test_every_memory_holds_the_same_state_bytes(mr, quick):
    """The state each memory really carries after a stream (measured on its state tensors) fits the TTT budget
    and wastes less than one of its own units (a token, a d_state column)."""
    bench = mr.Bench.quick() if quick else mr.Bench(dim=64, heads=4, mini_batch=64, piece=256, bank_step=64)
    budget = mr.state_budget(bench)
    cfg = mr.ttt_config(bench, "sgd")
    assert budget == 4 * cfg.num_heads * (2 * cfg.head_dim * cfg.hidden_dim + cfg.head_dim + cfg.hidden_dim)
    s = mr.make_streams("recall", 2, 512, np.random.default_rng(0), bench)
    a, b, _ = mr.to_tensors(s, torch.device("cpu"))
    measured = {}
    for variant in mr.VARIANTS:
        model = mr.Model(variant, s.classes, bench)
        with torch.no_grad():
            logits, state = model(a, b, s.queries)
        assert logits.shape == (2, s.queries, s.classes)
        measured[variant] = model.state_bytes(state)
    for v in ("ttt-hf", "ttt-sgd", "ttt-muon"):
        assert measured[v] == budget
    token = 4 * bench.dim + 8
    assert budget - token < measured["bank-discard"] == measured["bank-merge"] <= budget
    assert measured["bank-discard"] == mr.bank_capacity(bench) * token
    m = mr.mamba_config(bench)
    column = 4 * (m.heads * m.headdim + 2 * (m.d_conv - 1))
    assert budget - column < measured["mamba2"] == mr.mamba_state_bytes(m) <= budget
    assert measured["none"] == 0


def test_quick_run_is_resumable(mr, tmp_path):
    args = ["--quick", "--out", str(tmp_path), "--tasks", "recall", "--variants", "ttt-sgd,bank-discard",
            "--steps", "2"]
    assert mr.main(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {(r["variant"], r["length"]) for r in rows} == {("ttt-sgd", 1024), ("bank-discard", 1024)}
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and r["n"] == 4 * mr.Bench.quick().pairs and r["distance_min"] >= 1024 * 3 // 4
    (tmp_path / "results.jsonl").write_text(json.dumps(rows[0]) + "\n")  # as if interrupted after one cell
    assert mr.main(args) == 0
    again = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert again[0] == rows[0] and len(again) == 2 and again[1]["variant"] == rows[1]["variant"]
    assert (tmp_path / "memory_recall.png").read_bytes()[:4] == b"\x89PNG"
    assert mr.main(["--quick", "--out", str(tmp_path), "--variants", "lstm"]) == 2


def test_interfere_adds_distractor_pairs_that_are_never_asked(mr):
    bench = mr.Bench.quick()
    s = mr.make_streams("interfere", 3, 1024, np.random.default_rng(2), bench)
    body = 1024 - bench.pairs
    for i in range(3):
        asked = set(s.a[i, body:])
        pairs = np.flatnonzero(s.b[i, :body] > 0)
        assert len(pairs) == bench.pairs + bench.distractors
        late = pairs[pairs >= body // 8]
        assert len(late) == bench.distractors and not asked & set(s.a[i, late])
        for j in range(bench.pairs):  # the asked pairs are the ones early in the stream, answers as in recall
            where = np.flatnonzero((s.a[i, :body] == s.a[i, body + j]) & (s.b[i, :body] > 0))
            assert len(where) == 1 and where[0] < body // 8 and s.b[i, where[0]] - 1 == s.answers[i, j]


def test_cost_mode_times_every_memory_and_checks_its_length(mr, tmp_path):
    assert mr.main(["--quick", "--cost", "256", "--out", str(tmp_path), "--variants", "ttt-sgd,bank-discard"]) == 0
    rows = [line for line in (tmp_path / "cost.md").read_text().splitlines() if line.startswith("| ttt-") or
            line.startswith("| bank-")]
    assert [r.split(" | ")[0] for r in rows] == ["| ttt-sgd", "| bank-discard"]
    assert all(float(r.split(" | ")[2]) > 0 for r in rows)
    assert mr.main(["--quick", "--cost", "100", "--out", str(tmp_path)]) == 2
