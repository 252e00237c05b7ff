"""The no-download demo: a generated clip streamed at 1 FPS through a random patch encoder, the TTT
memory and the fixed-size token bank, with memory telemetry.

A later issue replaces the random encoder with the trained demo model; this one shows the memory
mechanics (bounded token memory, constant-size fast weights, TTT loss) on real decoded video.
"""

from __future__ import annotations

import resource
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from .media import sample_frames
from .memory.bank import NextSimilarityDiscard, TokenBank
from .memory.ttt import TTTConfig, TTTMemory, official_positions
from .synth import write_test_pattern_clip


class RandomPatchEncoder(nn.Module):
    """Stand-in vision tower: non-overlapping patches -> fixed random linear map -> LayerNorm.

    Input RGB uint8 [H, W, 3] with H, W multiples of ``patch``; output [H/patch * W/patch, dim].
    """

    def __init__(self, dim: int, patch: int = 16, seed: int = 0) -> None:
        super().__init__()
        self.patch = patch
        gen = torch.Generator().manual_seed(seed)
        self.proj = nn.Linear(3 * patch * patch, dim)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(dim, 3 * patch * patch, generator=gen) / (3 * patch * patch) ** 0.5)
            self.proj.bias.zero_()
        self.norm = nn.LayerNorm(dim)

    def forward(self, frame: np.ndarray) -> Tensor:
        p = self.patch
        x = torch.from_numpy(frame).float().div_(255.0)
        h, w = x.shape[0] // p, x.shape[1] // p
        patches = x[: h * p, : w * p].reshape(h, p, w, p, 3).permute(0, 2, 1, 3, 4).reshape(h * w, -1)
        return self.norm(self.proj(patches - 0.5))


@dataclass
class DemoSettings:
    seconds: int = 60
    update: str = "hf"
    memory_tokens: int = 512
    dim: int = 64
    num_heads: int = 4
    frames_per_call: int = 2
    seed: int = 0


@dataclass
class DemoRow:
    video_s: float
    frames: int
    tokens_in: int
    memory_tokens: int
    oldest_kept_s: float
    memory_kb: float
    ttt_state_kb: float
    ttt_loss: float
    ms_per_frame: float


@dataclass
class DemoReport:
    settings: DemoSettings
    rows: list[DemoRow] = field(default_factory=list)
    frames: int = 0
    seconds: float = 0.0
    tokens_in: int = 0
    memory_tokens: int = 0
    memory_bytes: int = 0
    ttt_state_bytes: int = 0
    elapsed_s: float = 0.0
    peak_rss_mb: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def run_demo(settings: DemoSettings, on_row: Callable[[DemoRow], None] | None = None,
             clip: Path | None = None) -> DemoReport:
    """Generate (or reuse) the clip, stream it, and report telemetry every 10 s of video."""
    torch.manual_seed(settings.seed)
    if settings.seconds < 4 or settings.seconds > 3600:
        raise ValueError(f"--seconds must be in 4 .. 3600, got {settings.seconds}")
    if settings.memory_tokens < 64:
        raise ValueError(f"--memory-tokens must be >= 64 (one frame), got {settings.memory_tokens}")
    encoder = RandomPatchEncoder(settings.dim, seed=settings.seed)
    grid = (128 // encoder.patch, 128 // encoder.patch)
    per_frame = grid[0] * grid[1]
    cfg = TTTConfig(dim=settings.dim, num_heads=settings.num_heads, mini_batch=2 * per_frame,
                    base_lr=1.0, update=settings.update, lag_distance=2 * per_frame, compat="clean")
    ttt = TTTMemory(cfg)
    bank = TokenBank(settings.memory_tokens, NextSimilarityDiscard())
    report = DemoReport(settings=settings)

    with tempfile.TemporaryDirectory() as tmp:
        path = clip or write_test_pattern_clip(Path(tmp) / "demo.mp4", settings.seconds, seed=settings.seed)
        t0 = time.perf_counter()
        state, memory, next_report = None, None, 10.0
        frames = list(_batched(sample_frames(path, fps=1.0), settings.frames_per_call))
        frame_times = [t for batch in frames for t, _ in batch]
        with torch.no_grad():
            for batch in frames:
                tokens = torch.cat([encoder(f) for _, f in batch]).unsqueeze(0)
                start = report.tokens_in
                y, state = ttt(tokens, official_positions(grid, start, tokens.shape[1]), state)
                memory = bank.append(memory, y[0], torch.arange(start, start + tokens.shape[1]))
                report.frames += len(batch)
                report.tokens_in += tokens.shape[1]
                report.seconds = batch[-1][0] + 1.0
                if report.seconds >= next_report or batch is frames[-1]:
                    elapsed = time.perf_counter() - t0
                    row = DemoRow(
                        video_s=round(report.seconds, 1), frames=report.frames, tokens_in=report.tokens_in,
                        memory_tokens=len(memory), oldest_kept_s=float(frame_times[int(memory.ids[0]) // per_frame]),
                        memory_kb=memory.nbytes / 1024,
                        ttt_state_kb=_state_bytes(state) / 1024, ttt_loss=float(state.last_loss.mean()),
                        ms_per_frame=1000 * elapsed / report.frames,
                    )
                    report.rows.append(row)
                    if on_row:
                        on_row(row)
                    next_report += 10.0
        report.elapsed_s = time.perf_counter() - t0
    report.memory_tokens = len(memory)
    report.memory_bytes = memory.nbytes
    report.ttt_state_bytes = _state_bytes(state)
    report.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return report


def _state_bytes(state) -> int:
    return sum(t.numel() * t.element_size() for t in state.tensors().values())


def _batched(items, n):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch
