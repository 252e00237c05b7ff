"""Bad options and model names fail in one line (exit 2) before any model loads; no Hugging Face retry storm."""

from __future__ import annotations

import socket
import time

import pytest
from typer.testing import CliRunner

import avmem.model
from avmem.cli import POLICY_NAMES, app
from avmem.model_source import check_model_source

runner = CliRunner()


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch):
    """Every case here must fail before a model is built."""
    monkeypatch.setattr(avmem.model, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # tests never reach the network


def one_line_error(args: list[str], match: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("avmem: error: ") and match in lines[0], result.output


SESSION_CASES = [
    (["--video-tokens", "-5"], "--video-tokens must be > 0"),
    (["--audio-tokens", "0"], "--audio-tokens must be > 0"),
    (["--reader", "bogus"], "bogus"),
    (["--fps", "0"], "--fps must be in (0, 30]"),
    (["--max-pixels", "100000000000"], "--max-pixels must be in"),
    (["--video-policy", "keep"], "--video-policy must be one of"),
    (["--read-chunk", "0"], "--read-chunk must be > 0"),
    (["--budget-file", "/no/such/budgets.json", "--reader", "omnimem"], "no such file"),
    (["--incremental", "--reader", "pd"], "--incremental applies to readers"),
    (["--dtype", "int8"], "--dtype: unknown dtype"),
    (["--device", "tpu"], "--device: unknown device"),
    (["--max-wrappers", "0"], "--max-wrappers must be > 0"),
]


@pytest.mark.parametrize("extra, match", SESSION_CASES)
def test_stream_options_fail_before_the_model_loads(extra, match):
    one_line_error(["stream", "/dev/null", "--model", "tiny-qwen3-vl", *extra], match)


@pytest.mark.parametrize("extra, match", SESSION_CASES[:3])
def test_eval_and_budgets_options_fail_before_the_model_loads(tmp_path, extra, match):
    data = tmp_path / "test.json"
    data.write_text("[]")
    one_line_error(["eval", str(data), "--model", "tiny-qwen3-vl", *extra], match)
    if "--reader" not in extra:
        one_line_error(["budgets", "compute", str(data), "--out", str(tmp_path / "b.json"), "--model",
                        "tiny-qwen3-vl", *extra], match)


def test_cuda_without_a_gpu_fails_before_the_model_loads():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    one_line_error(["stream", "/dev/null", "--model", "tiny-qwen3-vl", "--device", "cuda"], "no CUDA device")


@pytest.mark.parametrize("name, match", [
    ("./no_such_folder", "no such folder"),
    ("/no/such/folder", "no such folder"),
    ("~/no_such_folder_avmem", "no such folder"),
    ("no_such_folder/", "no such folder"),
    ("tiny-llama", "unknown preset"),
    ("no-such-model", "not in the local Hugging Face cache"),
])
def test_model_names_fail_in_one_line_within_seconds(name, match):
    start = time.perf_counter()
    one_line_error(["stream", "/dev/null", "--model", name], match)
    assert time.perf_counter() - start < 30  # generous for a loaded machine; a retry storm takes 35-41 s


def test_the_hub_probe_is_one_bounded_request(monkeypatch):
    """Online, an unknown hub id costs one request: a refused connection (a closed loopback port) fails at once."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the request
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.perf_counter()
    with pytest.raises(ValueError, match="out of reach"):
        check_model_source("org/no-such-model", timeout=2.0)
    assert time.perf_counter() - start < 10


def test_presets_and_folders_pass(tmp_path):
    assert check_model_source("tiny-qwen3-vl") == "preset"
    assert check_model_source(str(tmp_path)) == "folder"
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="a file"):
        check_model_source(str(tmp_path / "f"))


def test_cli_policy_names_are_the_sessions():
    from avmem.session import POLICIES

    assert set(POLICY_NAMES) == set(POLICIES)


def test_pickle_weights_are_refused_in_one_line(tmp_path):
    import torch

    from avmem.model import load_safetensors

    torch.save({"w": torch.zeros(2)}, tmp_path / "ttt.safetensors")
    with pytest.raises(ValueError, match="pickle-based torch.save file; such weights are not loaded") as info:
        load_safetensors(tmp_path / "ttt.safetensors")
    assert "\n" not in str(info.value)
    (tmp_path / "junk.safetensors").write_bytes(b"junk" * 10)
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_safetensors(tmp_path / "junk.safetensors")


def test_reader_catalog_is_the_registry():
    """The light table the CLI checks --reader against (no torch import) names the registered readers, with
    their traits."""
    from avmem.memory.kv.readers import get_reader, reader_names
    from avmem.reader_catalog import READERS

    assert set(READERS) == set(reader_names())
    for name, traits in READERS.items():
        cls = get_reader(name)
        assert (traits.uses_budgets, traits.supports_incremental) == (cls.uses_budgets, cls.supports_incremental)


def test_unknown_reader_is_rejected_without_importing_torch():
    """What made the rejection slow was importing torch and every reader: the check must need neither."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys\nfrom avmem.cli import app\ntry:\n    app(['stream', '/dev/null', '--model', 'tiny-qwen3-vl', "
            "'--reader', 'bogus'])\nexcept SystemExit as e:\n    print('exit', e.code, 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.stdout.strip() == "exit 2 False", (out.stdout, out.stderr)
    assert out.stderr.strip().startswith("avmem: error: --reader must be one of full,") and "'bogus'" in out.stderr


@pytest.mark.parametrize("extra, match", [(["--port", "-1"], "port must be in 0 .. 65535"),
                                          (["--port", "70000"], "port must be in 0 .. 65535"),
                                          (["--log-level", "bogus"], "--log-level must be one of")])
def test_serve_options_fail_before_the_model_loads(extra, match):
    pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install -e '.[dev]'")
    one_line_error(["serve", "--model", "tiny-qwen3-vl", *extra], match)
