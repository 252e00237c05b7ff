"""The memory study's smoke version (CI): every variant fine-tunes, is evaluated, lands in the table and plot."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _study():
    spec = importlib.util.spec_from_file_location("memory_study", ROOT / "benchmarks" / "memory_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_study_runs_every_variant(tmp_path):
    study = _study()
    assert study.main(["--smoke", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["variant"] for r in rows] == list(study.VARIANTS)
    for row in rows:
        assert row["steps"] == 2
        answered = json.loads((tmp_path / row["variant"] / "results.json").read_text())["results"]
        assert len(answered) == row["summary"]["all"]["n"] > 0
        assert row["summary"]["inside memory"]["n"] + row["summary"]["outside memory"]["n"] == len(answered)
    spec = json.loads((tmp_path / "mamba2" / "run" / "model" / "avmem.json").read_text())
    assert spec["memory_layer"] == "mamba2"
    assert not (tmp_path / "discard" / "run" / "model" / "ttt.safetensors").exists()
    table = (tmp_path / "table.md").read_text()
    assert all(f"| {v} |" in table for v in study.VARIANTS)
    assert (tmp_path / "memory_study.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_variant_is_refused(tmp_path, capsys):
    assert _study().main(["--smoke", "--variants", "lstm", "--out", str(tmp_path)]) == 2
    assert "lstm" in capsys.readouterr().err
