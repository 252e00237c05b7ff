"""avmem ask / info / stream end to end on tiny models, and their bad-input handling (exit 2, one line)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from avmem.cli import app
from avmem.synth import write_test_pattern_clip

runner = CliRunner()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    os.environ.setdefault("AVMEM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    return write_test_pattern_clip(tmp_path_factory.mktemp("clip") / "c.mp4", seconds=12, fps=5, size=(96, 128))


@pytest.mark.parametrize("model", ["tiny-qwen3-vl", "tiny-qwen2.5-vl"])
def test_ask_json(clip, model):
    result = runner.invoke(app, ["ask", str(clip), "-q", "What colour?", "-q", "Which tone?", "--model", model,
                                 "--video-tokens", "64", "--audio-tokens", "8", "--max-new-tokens", "4", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [a["question"] for a in report["answers"]] == ["What colour?", "Which tone?"]
    assert report["frames"] == 12 and report["seconds"] == 12.0
    assert report["tokens"]["video_held"] == 64 and report["tokens"]["audio_held"] == 8
    assert report["tokens"]["audio_in"] == 24
    assert report["peak_rss_mb"] > 0 and report["elapsed_s"] > 0
    assert "random weights" in result.stderr


def test_ask_table_without_audio_and_ttt(clip):
    result = runner.invoke(app, ["ask", str(clip), "-q", "What?", "--model", "tiny-qwen3-vl", "--no-audio", "--no-ttt",
                                 "--video-policy", "merge", "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output
    assert "Q: What?" in result.stdout and "frames" in result.stdout


@pytest.mark.parametrize("args, needle", [
    (["ask", "missing.mp4", "-q", "x", "--model", "tiny-qwen3-vl"], "no such file"),
    (["ask", "{clip}", "-q", "x"], "--model"),
    (["ask", "{clip}", "-q", "x", "--model", "tiny-llama"], "unknown preset"),
    (["ask", "{clip}", "-q", "x", "--model", "tiny-qwen3-vl", "--fps", "0"], "fps"),
    (["ask", "{clip}", "-q", "x", "--model", "tiny-qwen3-vl", "--video-policy", "random"], "--video-policy"),
    (["ask", "{clip}", "-q", "x", "--model", "tiny-qwen3-vl", "--video-tokens", "0"], "--video-tokens"),
    (["ask", "{empty}", "-q", "x", "--model", "tiny-qwen3-vl"], "empty"),
    (["ask", "{junk}", "-q", "x", "--model", "tiny-qwen3-vl"], "cannot open"),
    (["ask", "http://127.0.0.1:9/none.mp4", "-q", "x", "--model", "tiny-qwen3-vl"], "127.0.0.1"),
    (["info", "{junk}"], "cannot open"),
])
def test_bad_input_exits_2_with_one_line(clip, tmp_path, args, needle):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.mp4"
    junk.write_text("this is not a video\n" * 50)
    args = [a.format(clip=clip, empty=empty, junk=junk) for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("avmem: error")]
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_no_video_stream_without_audio_is_refused(tmp_path):
    from .conftest import shared_path

    mp3 = shared_path("media", "speech_16k_mono.mp3")
    result = runner.invoke(app, ["ask", str(mp3), "-q", "x", "--model", "tiny-qwen3-vl", "--no-audio"])
    assert result.exit_code == 2 and "no video stream" in result.stderr


def test_info_json(clip):
    result = runner.invoke(app, ["info", str(clip), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["video"]["codec"] == "h264" and info["audio"]["sample_rate"] == 16000
    assert info["sampled_frames"] == 12 and abs(info["duration"] - 12.0) < 0.2


def test_stream_answers_questions_from_stdin(clip):
    """A local file replayed in real time stands in for a live source."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "avmem.cli", "stream", str(clip), "--model", "tiny-qwen3-vl",
                             "--video-tokens", "64", "--audio-tokens", "8"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(6)
    out, err = proc.communicate("What is on screen?\n", timeout=120)
    assert proc.returncode == 0, err
    assert out.startswith("A: ") and "s watched" in out


@pytest.mark.parametrize("args, needle", [
    (["--device", "foo"], "unknown device"),
    (["--device", "cuda:7"], "CUDA"),
    (["--cg-iters", "-1"], "--cg-iters"),
])
def test_bad_runtime_options(clip, args, needle):
    import torch

    if "cuda" in args[-1] and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    result = runner.invoke(app, ["ask", str(clip), "-q", "x", "--model", "tiny-qwen3-vl", *args])
    assert result.exit_code == 2 and needle in result.stderr, result.output


def test_corrupt_checkpoint_is_one_line(tmp_path):
    from avmem.model import load_model

    folder = load_model("tiny-qwen3-vl").save_pretrained(tmp_path / "m")
    (folder / "backbone" / "model.safetensors").write_bytes(b"garbage" * 100)
    clip = write_test_pattern_clip(tmp_path / "c.mp4", seconds=2, fps=5, size=(64, 64))
    result = runner.invoke(app, ["ask", str(clip), "-q", "x", "--model", str(folder)])
    assert result.exit_code == 2 and "cannot load the backbone" in result.stderr, result.output


def test_stream_reports_a_dead_source_without_waiting_for_input(tmp_path):
    """A live source that stops sending times out and the command exits 2, even with stdin left open.

    The limit counts from the moment the source goes silent (the server has read the request and sends nothing),
    not from process start, so model loading on a loaded machine cannot fail it."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    died = threading.Event()
    died_at: list[float] = []

    def accept_and_stall():
        conn, _ = server.accept()
        conn.recv(4096)
        died_at.append(time.monotonic())
        died.set()
        time.sleep(120)
        conn.close()

    threading.Thread(target=accept_and_stall, daemon=True).start()
    proc = subprocess.Popen([sys.executable, "-m", "avmem.cli", "stream", f"http://127.0.0.1:{port}/live.ts",
                             "--model", "tiny-qwen3-vl", "--timeout", "2"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert died.wait(300), "the command never connected to the source"
        proc.wait(timeout=300)  # stdin is left open: the command must not wait for a question
        ended = time.monotonic()
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()
        proc.stderr.close()
        server.close()
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("avmem: error:") and "no data for 2 s" in lines[-1], err
    assert not any("Warning" in line or "warnings.warn" in line for line in lines), err
    assert ended - died_at[0] < 30.0, f"ended {ended - died_at[0]:.1f} s after the source went silent"


def test_ask_with_prompt_dependent_reading(clip):
    result = runner.invoke(app, ["ask", str(clip), "-q", "What?", "--model", "tiny-qwen3-vl", "--video-tokens", "256",
                                 "--audio-tokens", "16", "--reader", "pd", "--read-tokens", "32", "--read-chunk", "64",
                                 "--max-new-tokens", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["answers"][0]["question"] == "What?"
    bad = runner.invoke(app, ["ask", str(clip), "-q", "x", "--model", "tiny-qwen3-vl", "--reader", "pd",
                              "--read-tokens", "999999"])
    assert bad.exit_code == 2 and "more than the memory holds" in bad.stderr


def test_ask_with_omnimem_budget_file(clip, tmp_path):
    budget = tmp_path / "budget.json"
    budget.write_text(json.dumps([[4, 16], 12]))
    result = runner.invoke(app, ["ask", str(clip), "-q", "What?", "--model", "tiny-qwen3-vl", "--reader", "omnimem",
                                 "--budget-file", str(budget), "--read-chunk", "32", "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output
    budget.write_text(json.dumps([[4, 16], "x"]))
    bad = runner.invoke(app, ["ask", str(clip), "-q", "x", "--model", "tiny-qwen3-vl", "--reader", "omnimem",
                              "--budget-file", str(budget)])
    assert bad.exit_code == 2 and "layer 1" in bad.stderr


@pytest.mark.parametrize("policy", ["similarity-merge", "recent"])
def test_ask_with_a_baseline_policy_under_its_budget(clip, policy):
    result = runner.invoke(app, ["ask", str(clip), "-q", "What?", "--model", "tiny-qwen3-vl", "--memory-tokens", "256",
                                 "--audio-tokens", "16", "--policy", policy, "--read-tokens", "8", "--read-chunk", "32",
                                 "--max-new-tokens", "2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["tokens"]["video_held"] <= 256
    assert report["read_per_layer"] and all(n == 8 for n in report["read_per_layer"])
    bad = runner.invoke(app, ["ask", str(clip), "-q", "x", "--model", "tiny-qwen3-vl", "--policy", "moviechat"])
    assert bad.exit_code == 2 and "reader must be one of" in bad.stderr


def test_budgets_compute_and_show(clip, tmp_path):
    out = tmp_path / "budgets.json"
    result = runner.invoke(app, ["budgets", "compute", str(clip), str(clip), "--out", str(out), "--model",
                                 "tiny-qwen3-vl", "--per-layer-mean", "64", "--chunk", "32"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert len(data) == 2 and all(isinstance(e, list) and len(e) == 2 for e in data)
    assert all(32 <= v <= 96 and 16 <= a <= 48 for a, v in data)  # clipped to 0.5-1.5x the mean (audio / rho)
    shown = runner.invoke(app, ["budgets", "show", str(out), "--json", "--png", str(tmp_path / "b.png")])
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.stdout)
    assert [row["layer"] for row in report["layers"]] == [0, 1] and (tmp_path / "b.png").stat().st_size > 1000
    bad = runner.invoke(app, ["budgets", "show", str(tmp_path / "missing.json")])
    assert bad.exit_code == 2 and "no such budget file" in bad.stderr
    silent = runner.invoke(app, ["budgets", "compute", str(clip), "--out", str(out), "--model", "tiny-qwen3-vl",
                                 "--chunk", "0"])
    assert silent.exit_code == 2 and "--chunk" in silent.stderr
