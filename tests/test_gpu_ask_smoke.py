"""CI smoke test of benchmarks/gpu_ask.py: the ask-latency benchmark runs end to end at its quick sizes on the
tiny model (CPU), with a row for every reader. Timings are not checked (targets hold for an H200 at 8B)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import os

    from avmem.model import load_model

    os.environ.setdefault("AVMEM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    return load_model("tiny-qwen3-vl")


def test_gpu_ask_quick_runs_every_reader(model):
    from gpu_ask import READERS_128K, measure, synthetic_session

    rows = measure(model, quick=True)
    assert all(set(r) == {"what", "value", "target", "ok"} for r in rows)
    assert all(r["ok"] and r["value"] > 0 and r["target"] is None for r in rows)
    for name in READERS_128K:
        assert any(r["what"].startswith(f"reader {name},") or r["what"].startswith(f"reader {name} (")
                   for r in rows), name
    assert any("reuse: exact" in r["what"] for r in rows)  # the follow-up reused the memory KV
    s = synthetic_session(model, video_tokens=300, audio_tokens=50, seconds=40)
    assert len(s.state.video) == 300 and len(s.state.audio) == 50 and len(s.state.patches) == 20
