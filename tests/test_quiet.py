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


def test_cache_goes_under_the_keyword_the_installed_transformers_names(tmp_path):
    """No FutureWarning from the KV cache argument: 5.x calls it ``cache``, older releases ``past_key_values``."""
    import warnings

    import torch

    from avmem.backbones.qwen import BACKBONES, cache_keyword
    from avmem.backbones.tiny import save_tiny_backbone

    class Older(torch.nn.Module):
        def forward(self, inputs_embeds=None, position_ids=None, past_key_values=None, use_cache=None):
            return inputs_embeds

    assert cache_keyword(Older) == "past_key_values"
    backbone = BACKBONES["qwen3_vl"].from_pretrained(save_tiny_backbone(tmp_path / "m", "qwen3_vl"))
    assert cache_keyword(type(backbone.model.model.language_model)) in ("cache", "past_key_values")
    embeds = backbone.embed(torch.tensor([1, 2, 3], device=backbone.device))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any deprecation of how the backbone is called fails here
        tokens = backbone.generate(embeds, torch.arange(3, device=backbone.device).expand(3, 3), max_new_tokens=3)
    assert len(tokens) <= 3
