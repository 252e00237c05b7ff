"""benchmarks/memory_recall.py refuses a bad --threads in one line (exit 2) instead of a torch traceback."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("threads", ["0", "-3"])
def test_threads_below_one_is_refused(threads, capsys, tmp_path):
    spec = importlib.util.spec_from_file_location("memory_recall_args", ROOT / "benchmarks" / "memory_recall.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    before = torch.get_num_threads()
    assert module.main(["--threads", threads, "--out", str(tmp_path), "--report"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"memory_recall: --threads must be >= 1, got {threads}"
    assert torch.get_num_threads() == before
