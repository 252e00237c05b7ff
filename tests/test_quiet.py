"""A quiet terminal: real runs of ``avmem demo`` and ``avmem ask`` (separate processes, as a user runs them) print
no third-party warnings and no foreign progress bars; ``avmem -v`` lets them through."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from avmem.synth import write_test_pattern_clip

ROOT = Path(__file__).resolve().parents[1]
FOREIGN_BAR = re.compile(r"it/s\]|s/it\]|\d+%\|| \d+/\d+ \[\d\d:\d\d")  # tqdm's rate, percentage bar, count


def avmem(args: list[str], tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "AVMEM_CACHE": str(tmp_path / "cache"), "COLUMNS": "120"}
    for key in ("TRANSFORMERS_VERBOSITY", "HF_HUB_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS", "PYTHONWARNINGS"):
        env.pop(key, None)  # the defaults a user has
    return subprocess.run([sys.executable, "-m", "avmem.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=timeout)


def assert_quiet(stderr: str) -> None:
    noisy = [line for line in stderr.splitlines() if re.search(r"warn", line, re.I) or FOREIGN_BAR.search(line)]
    assert not noisy, "\n".join(noisy)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_test_pattern_clip(tmp_path_factory.mktemp("quiet") / "c.mp4", seconds=6, fps=5, size=(96, 128))


def test_ask_is_quiet_and_verbose_shows_the_rest(clip, tmp_path):
    args = ["ask", str(clip), "-q", "What colour?", "--model", "tiny-qwen3-vl", "--video-tokens", "64",
            "--audio-tokens", "8", "--max-new-tokens", "4"]
    quiet = avmem(args, tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert_quiet(quiet.stderr)
    assert "random weights" in quiet.stderr  # avmem's own notes still show
    verbose = avmem(["-v", *args], tmp_path)
    assert verbose.returncode == 0, verbose.stderr
    assert FOREIGN_BAR.search(verbose.stderr), verbose.stderr  # transformers' weight-loading bar, hidden above


def test_demo_is_quiet(tmp_path):
    result = avmem(["demo", "--seconds", "60", "--questions", "3", "--plot", str(tmp_path / "demo.png")], tmp_path)
    assert result.returncode == 0, result.stderr
    assert_quiet(result.stderr)
    assert result.stdout.count("(truth:") == 3  # each answer printed once
