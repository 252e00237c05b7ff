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
    (["ask", "{clip}", "-q", "x", "--model", "tiny-qwen3-vl", "--video-policy", "random"], "video_policy"),
    (["ask", "{clip}", "-q", "x", "--model", "tiny-qwen3-vl", "--video-tokens", "0"], "video_tokens"),
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
