"""CI smoke test of benchmarks/gpu_ttt.py: the TTT speed table runs end to end at its quick size on the CPU.

Timings are not checked (the targets hold for an H200 at release size); the rows, the FLOP counts and, when
the official harness is in ../shared, its float32 parity with our fused path are.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from avmem.memory.ttt import TTTConfig, flop_count

from .conftest import SHARED, shared_path

ROOT = Path(__file__).resolve().parents[1]
SHARED_OFFICIAL = SHARED / "reference" / "official_code"
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_flop_count_matches_the_anchor_formula():
    """d=4096 release layer: F = 4 N d_h h H = 8.59 GFLOP per mini-batch, hf-3 = 12.5 F, 6 projections."""
    cfg = TTTConfig()
    unit = 4 * 1024 * 512 * 512 * 8
    assert unit == 8_589_934_592
    proj = 6 * 2 * 1024 * 4096 ** 2 + 2 * 1024 * 4096 * 8
    assert flop_count(cfg, 1024) == 12.5 * unit + proj
    assert flop_count(TTTConfig(update="sgd"), 1000) == 3.5 * unit + proj  # padded to one mini-batch
    assert flop_count(cfg, 14080) == 14 * (12.5 * unit + proj)
    assert flop_count(cfg, 14080, backward=True) == 3 * flop_count(cfg, 14080)


def test_gpu_ttt_quick_runs_on_cpu(monkeypatch):
    monkeypatch.setenv("OFFICIAL_TTT_DIR", str(ROOT / "no-official-code-here"))
    from gpu_ttt import measure

    rows = measure("cpu", quick=True)
    assert all(set(r) == {"what", "value", "target", "ok"} for r in rows)
    timed = [r for r in rows if r["what"].startswith("ours ")]
    assert len(timed) == 16  # hf/sgd x 2 lengths x fwd/fwd+bwd x eager/fused
    assert all(" ms, " in r["value"] and r["ok"] is None for r in timed)
    assert not any(r["ok"] is False for r in rows)
    variants = [r for r in measure("cpu", quick=True, variants=True) if r["what"].startswith("variant ")]
    assert [r["what"] for r in variants] == [
        "variant fast=off: hf fwd 220 tokens",
        "variant fast=fused: hf fwd 64 tokens", "variant fast=fused: hf fwd 220 tokens",
        "variant fast=fused fp32 work: hf fwd 64 tokens", "variant fast=fused fp32 work: hf fwd 220 tokens",
    ]
    assert all(" ms, " in r["value"] for r in variants)


def test_gpu_ttt_script_with_the_official_harness_checks_parity():
    official = shared_path("reference", "official_code", "official_ttt.py").parent
    pytest.importorskip("einops", reason="the official harness needs einops")
    env = {**os.environ, "OFFICIAL_TTT_DIR": str(official)}
    result = subprocess.run([sys.executable, "benchmarks/gpu_ttt.py", "--device", "cpu", "--quick"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    parity = [line for line in lines if line.startswith("| parity float32")]
    assert len(parity) == 2 and all(line.rstrip().endswith("| yes |") for line in parity), result.stdout
    for update in ("hf", "sgd"):  # the official block timed on the same weights and input, speedups, agreement
        assert any(line.startswith(f"| official {update} fwd+bwd 220 tokens (eager) | ") and " ms, " in line
                   for line in lines), result.stdout
        assert any(line.startswith(f"| speedup fast=fused vs official, {update} fwd 220 tokens") for line in lines)
        same = [line for line in lines if line.startswith(f"| float32: fast=fused vs official, {update} 220 tokens")]
        assert len(same) == 1 and float(same[0].split("|")[2]) < 1e-5, result.stdout
    assert "failed" not in result.stdout


def test_gpu_table_runs_its_sections_in_one_process(tmp_path, monkeypatch):
    """benchmarks/gpu.py at its quick sizes: the TTT section (with the official harness when shared/ has it: its stub
    modules must not leak into the model loading after it) and the ask section, one table, files written."""
    official = SHARED_OFFICIAL if SHARED_OFFICIAL.is_dir() else None
    if official is not None and importlib.util.find_spec("einops") is not None:
        monkeypatch.setenv("OFFICIAL_TTT_DIR", str(official))
    import gpu

    assert gpu.main(["--device", "cpu", "--model", "tiny-qwen3-vl", "--quick", "--only", "ttt,ask",
                     "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "gpu.json").read_text())["rows"]
    assert {r["section"] for r in rows} == {"ttt", "model", "ask"}
    assert not any(r["what"] == "section failed" for r in rows)
    assert all(isinstance(r["value"], str) for r in rows)
    assert "| ask | first token" in (tmp_path / "gpu.md").read_text()
