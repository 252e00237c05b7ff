"""Multiple-choice evaluation on Video-MME-like annotations (the synthetic benchmark's ``{split}.json``).

Every video is streamed through a fresh :class:`~avmem.session.StreamSession`; each question is asked
when the stream reaches its ``asked_at`` time (the end of the video for end-of-video questions). The
answer is the option letter the model rates most likely as the first answer token after the Video-MME
prompt (``likelihood``), the option whose text the model rates most likely after the text-style prompt
(``text``, for models trained to answer with the option itself; ``open``: the same after the question
alone, the options never shown, for models trained with ``--style open``), or the letter extracted from a
generated reply with the Video-MME scorer's rule (``generate``; an unparseable reply counts as wrong).

Each result records how far back the asked-about event lies, in video tokens produced after it: an event
is *inside* the token memory when a first-in-first-out memory of the session's capacity would still
hold it, *outside* otherwise (only a memory that keeps older information can answer those).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..session import SessionSettings, StreamSession
from ..synth.benchmark import LETTERS, Question, extract_letter, load_annotations

METHODS = ("likelihood", "text", "open", "generate")


@dataclass
class MCQResult:
    """One answered question."""

    question_id: str
    task_type: str
    answer: str
    predicted: str
    correct: bool
    event_time: float
    asked_at: float
    tokens_since_event: int
    inside_memory: bool


def evaluate_mcq(model, annotations: str | Path, settings: SessionSettings | None = None,
                 method: str = "likelihood", max_videos: int | None = None, progress=None) -> list[MCQResult]:
    """Answer every question of ``annotations`` with ``model`` under ``settings``.

    Raises:
        ValueError: unknown method, unreadable annotations or videos.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    settings = settings or SessionSettings()
    items = load_annotations(annotations)[:max_videos]
    results: list[MCQResult] = []
    for k, (video, questions) in enumerate(items):
        if not video.is_file():
            raise ValueError(f"{annotations}: video {video} not found")
        results.extend(stream_and_ask(StreamSession(model, settings), video, questions, method))
        if progress is not None:
            progress(k + 1, len(items))
    return results


def stream_and_ask(session: StreamSession, video: Path, questions: list[Question], method: str,
                   on_item=None, on_answer=None) -> list[MCQResult]:
    """Stream ``video`` through ``session``, asking each question when the stream reaches its ``asked_at``
    (questions still pending when the video ends are asked then). ``on_item(item)`` is called after each
    media item is fed, ``on_answer(question, result)`` after each answer."""
    pending = sorted(questions, key=lambda q: q.asked_at)
    results: list[MCQResult] = []

    def ask(q: Question) -> None:
        results.append(answer(session, q, method))
        if on_answer is not None:
            on_answer(q, results[-1])

    for item in session.media(video):
        while pending and item.t >= pending[0].asked_at:
            ask(pending.pop(0))
        session.feed_item(item)
        if on_item is not None:
            on_item(item)
    for q in pending:
        ask(q)
    return results


def answer(session: StreamSession, q: Question, method: str) -> MCQResult:
    """Ask ``q`` now and score the reply. The question sees the stream with everything pending absorbed (as a
    stream that ends at ``q.asked_at``, which is how training sees a question), from a copy: the live stream is
    not flushed, so later questions see exactly what they would see asked alone."""
    if method == "likelihood":
        predicted = LETTERS[session.choose(q.prompt(), list(LETTERS))[0]]
    elif method in ("text", "open"):
        predicted = LETTERS[session.score_answers(q.prompt(method), q.option_texts)[0]]
    else:
        predicted = extract_letter(session.ask(q.prompt(), max_new_tokens=8))
    st = session._asking_state()  # the flushed copy the answer was read from
    log = st.patches
    produced = int(st.video_ids)
    patch = int(np.searchsorted(log.times, q.event_time, side="right")) - 1 if len(log) else -1
    since = produced - int(log.first_id[max(patch, 0)]) if len(log) else 0
    return MCQResult(q.question_id, q.task_type, q.answer, predicted, predicted == q.answer, q.event_time,
                     q.asked_at, since, since <= session.settings.video_tokens)


def bootstrap_ci(correct: np.ndarray, n: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``correct`` (0/1 values)."""
    if len(correct) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = rng.choice(correct, size=(n, len(correct)), replace=True).mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def summarize(results: list[MCQResult], seed: int = 0) -> dict[str, dict]:
    """Accuracy with 95 % bootstrap intervals: overall, per task type, inside / outside the token memory."""
    groups: dict[str, list[MCQResult]] = {"all": results,
                                          "inside memory": [r for r in results if r.inside_memory],
                                          "outside memory": [r for r in results if not r.inside_memory]}
    for r in sorted(results, key=lambda r: r.task_type):
        groups.setdefault(f"task:{r.task_type}", []).append(r)
    out = {}
    for name, rows in groups.items():
        hits = np.array([r.correct for r in rows], dtype=float)
        lo, hi = bootstrap_ci(hits, seed=seed)
        out[name] = {"n": len(rows), "accuracy": float(hits.mean()) if len(rows) else float("nan"),
                     "ci_low": lo, "ci_high": hi}
    return out


def results_to_json(results: list[MCQResult]) -> list[dict]:
    return [asdict(r) for r in results]
