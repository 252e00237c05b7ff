"""The no-download demo (``avmem demo``): a generated ~10-minute clip streamed at 1 FPS through the
embedded demo model, questions asked while it plays, answers printed next to the truth, memory telemetry
and a PNG plot of the memory over time.

The demo model (``avmem/demo_model/``) is ``small-qwen3-vl`` (a 4-layer Qwen3-VL, its vision tower, a
Whisper encoder + window Q-Former and a TTT_HF memory layer, all scaled down) trained from scratch with
``avmem train avmem/train/configs/demo.yaml`` on the synthetic benchmark (``docs/demo_model.md``). The clip
is a fresh synthetic video (split ``demo``: never seen in training). Questions of the kinds the model was
trained on are asked at quiet moments during the stream; each is answered by the likelihood of its
options' texts after the question alone (``StreamSession.score_answers``).
"""

from __future__ import annotations

import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .synth.benchmark import LIVE_TASKS

DEMO_MODEL = Path(__file__).parent / "demo_model"
DEMO_TASKS = LIVE_TASKS + ("scene_shape",)  # what the demo model was trained on
CANDIDATES_PER_QUESTION = 3  # questions drawn per one asked: repeats at one ask time are dropped


@dataclass
class DemoSettings:
    """What the demo generates and how the session remembers it."""

    seconds: int = 600
    size: int = 128
    questions: int = 24
    asks: int = 8
    video_tokens: int = 128
    audio_tokens: int = 64
    seed: int = 0
    model: str | None = None
    plot: str | None = "avmem_demo.png"
    device: str = "auto"

    def check(self) -> None:
        if not 60 <= self.seconds <= 3600:
            raise ValueError(f"--seconds must be in 60 .. 3600, got {self.seconds}")
        if not 32 <= self.video_tokens <= 1 << 20:
            raise ValueError(f"--memory-tokens must be in 32 .. 2^20, got {self.video_tokens}")
        if not 1 <= self.questions <= 1000:
            raise ValueError(f"--questions must be in 1 .. 1000, got {self.questions}")
        if not 1 <= self.asks <= 100:
            raise ValueError(f"--asks must be in 1 .. 100, got {self.asks}")
        if self.size % 2 or not 64 <= self.size <= 1024:
            raise ValueError(f"--size must be even and in 64 .. 1024, got {self.size}")
        if self.plot and not Path(self.plot).parent.is_dir():
            raise ValueError(f"--plot: folder {Path(self.plot).parent} does not exist")


@dataclass
class DemoAnswer:
    """One question asked during the stream."""

    asked_at: float
    task: str
    question: str
    options: list[str]
    predicted: str
    truth: str
    correct: bool
    inside_memory: bool


@dataclass
class DemoPoint:
    """Memory telemetry at ``t`` seconds of video."""

    t: float
    video_tokens_in: int
    video_tokens_held: int
    audio_tokens_held: int
    memory_kb: float  # token memories + TTT fast weights
    ttt_loss: float | None
    elapsed_s: float


@dataclass
class DemoReport:
    settings: DemoSettings
    answers: list[DemoAnswer] = field(default_factory=list)
    points: list[DemoPoint] = field(default_factory=list)
    accuracy: float = 0.0
    chance: float = 0.25
    frames: int = 0
    memory_bytes: int = 0
    ttt_state_bytes: int = 0
    generate_s: float = 0.0
    stream_s: float = 0.0
    peak_rss_mb: float = 0.0
    plot: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def load_demo_model(source: str | None = None, device: str = "auto"):
    """The embedded demo model (or ``source``, any :func:`avmem.load_model` source) on ``device``
    (:func:`avmem.runtime.resolve_device`)."""
    from .model import load_model
    from .runtime import resolve_device

    if source is None:
        if not (DEMO_MODEL / "avmem.json").is_file():
            raise ValueError(f"the embedded demo model is missing ({DEMO_MODEL}); reinstall avmem or pass --model")
        source = str(DEMO_MODEL)
    return load_model(source, device=resolve_device(device))


def run_demo(settings: DemoSettings, on_progress: Callable[[float, float], None] | None = None,
             on_answer: Callable[[DemoAnswer], None] | None = None,
             on_stage: Callable[[str], None] | None = None) -> DemoReport:
    """Generate the clip, stream it asking the questions at their times, return the report (and write the plot).

    ``on_stage`` is told each stage as it starts: "load" (the model), "generate" (the clip), "stream";
    ``on_progress(t, total)`` follows the stream in seconds of video.
    """
    from .eval.mcq import stream_and_ask
    from .media import VideoFrame
    from .session import SessionSettings, StreamSession
    from .synth.benchmark import LETTERS, generate

    settings.check()
    stage = on_stage or (lambda name: None)
    stage("load")
    model = load_demo_model(settings.model, settings.device)
    report = DemoReport(settings=settings)
    with tempfile.TemporaryDirectory() as tmp:
        stage("generate")
        t0 = time.perf_counter()
        video = generate(tmp, "demo", 1, seconds=(settings.seconds, settings.seconds), size=(settings.size,) * 2,
                         fps=1, seed=settings.seed, questions=CANDIDATES_PER_QUESTION * settings.questions,
                         times=settings.asks, tasks=DEMO_TASKS, style="open")[0]
        questions = distinct_questions(video.questions, settings.questions)
        report.generate_s = time.perf_counter() - t0
        stage("stream")
        t0 = time.perf_counter()
        session = StreamSession(model, SessionSettings(fps=1.0, max_pixels=9216, video_tokens=settings.video_tokens,
                                                       audio_tokens=settings.audio_tokens, bank_step=32,
                                                       chunk_frames=16))
        next_point = [0.0]

        def on_item(item) -> None:
            if not isinstance(item, VideoFrame):
                return
            report.frames += 1
            if item.t >= next_point[0]:
                report.points.append(_point(session, item.t, time.perf_counter() - t0))
                next_point[0] += 10.0
            if on_progress is not None:
                on_progress(item.t + 1, settings.seconds)

        def on_result(q, result) -> None:
            row = DemoAnswer(q.asked_at, q.task_type, q.question, q.option_texts,
                             q.option_texts[LETTERS.index(result.predicted)], q.answer_text, result.correct,
                             result.inside_memory)
            report.answers.append(row)
            if on_answer is not None:
                on_answer(row)

        stream_and_ask(session, video.path, questions, "open", on_item=on_item, on_answer=on_result)
        session.flush()
        report.points.append(_point(session, float(settings.seconds), time.perf_counter() - t0))
        report.stream_s = time.perf_counter() - t0
    report.accuracy = float(np.mean([a.correct for a in report.answers])) if report.answers else float("nan")
    stats = session.stats()
    report.memory_bytes = stats.memory_bytes - stats.memory_layer_bytes  # token memories only
    report.ttt_state_bytes = stats.memory_layer_bytes
    report.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if settings.plot:
        report.plot = str(write_plot(report, settings.plot))
    return report


def distinct_questions(candidates: list, n: int) -> list:
    """The first ``n`` candidates, in the order they were drawn (task types and ask times in turn), that do not
    repeat a question already asked at the same time; sorted by ask time. Fewer only when the clip cannot
    support ``n`` distinct questions."""
    drawn = sorted(candidates, key=lambda q: int(q.question_id.rsplit("-", 1)[1]))
    kept: dict[tuple[float, str], object] = {}
    for q in drawn:
        kept.setdefault((q.asked_at, q.question), q)
        if len(kept) == n:
            break
    return sorted(kept.values(), key=lambda q: q.asked_at)


def _point(session, t: float, elapsed: float) -> DemoPoint:
    stats = session.stats()
    ttt = session.state.ttt
    loss = getattr(ttt, "last_loss", None)
    return DemoPoint(t=t, video_tokens_in=stats.video_tokens_in, video_tokens_held=stats.video_tokens_held,
                     audio_tokens_held=stats.audio_tokens_held, memory_kb=stats.memory_bytes / 1024,
                     ttt_loss=None if loss is None else float(loss.float().mean()), elapsed_s=elapsed)


def write_plot(report: DemoReport, path: str | Path) -> Path:
    """PNG: video tokens seen vs held in memory, and the TTT reconstruction loss, over the clip; questions
    marked at their times (green right, red wrong)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    t = [p.t for p in report.points]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    top.plot(t, [p.video_tokens_in for p in report.points], label="video tokens seen", color="0.6")
    top.plot(t, [p.video_tokens_held for p in report.points], label="video tokens in memory", color="C0")
    top.plot(t, [p.audio_tokens_held for p in report.points], label="audio tokens in memory", color="C1")
    top.set_yscale("log")
    top.set_ylabel("tokens")
    for a in report.answers:
        top.axvline(a.asked_at, color="C2" if a.correct else "C3", alpha=0.25, lw=1)
    from matplotlib.lines import Line2D

    marks = [Line2D([], [], color="C2", alpha=0.5, lw=1, label="question answered right"),
             Line2D([], [], color="C3", alpha=0.5, lw=1, label="question answered wrong")]
    top.legend(handles=top.get_legend_handles_labels()[0] + marks, loc="upper left", fontsize=8)
    losses = [(p.t, p.ttt_loss) for p in report.points if p.ttt_loss is not None]
    if losses:
        bottom.plot(*zip(*losses), color="C4")
    bottom.set_ylabel("TTT loss (before update)")
    bottom.set_xlabel("video time (s)")
    right = sum(a.correct for a in report.answers)
    fig.suptitle(f"avmem demo: {report.settings.seconds} s clip, {right}/{len(report.answers)} answers right, "
                 f"memory {report.settings.video_tokens} video tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
