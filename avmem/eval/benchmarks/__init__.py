"""Real long-video and streaming benchmarks behind one schema and a registry (issue 13).

A benchmark is one module in this package: a :class:`Benchmark` subclass registered with
``@register_benchmark("name")`` that reads the published annotation file(s) into :class:`BenchVideo` /
:class:`BenchQuestion`, says where each video lives under ``--video-root`` (the benchmark's own naming rule),
builds the benchmark's own prompt, extracts an answer from a generated reply with the benchmark's own rule,
and computes the benchmark's official aggregates from result rows. The runner (:mod:`avmem.eval.run`) streams
each video once and asks every question at its time from a copy of the stream, so questions of one video are
independent.

Schema notes:

* options are the option *texts* without letters (2-7 of them; empty for open-ended questions); letters are
  ``LETTERS[:len(options)]``; ``answer`` is a letter for multiple choice, the reference text for open-ended;
* ``ask_time`` is the stream time (seconds) the question is asked at; None = the end of the video;
* ``task`` is the benchmark's task name as its scorer spells it, ``fields`` the other grouping fields the
  official aggregates use (duration group, domain, categories, mode, ...), ``extra`` anything else the prompt or
  the scorer needs (subtitles, probe lists, ...);
* a loader *validates*: an answer outside the options, a duplicated question id or a bad time is a
  :class:`AnnotationDefect` naming the item; a benchmark whose published file has known defects lists them in
  ``KNOWN_DEFECTS`` (question id -> reason) and the loader reports them (``defects``) and leaves those items out,
  never silently fixes them.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...registry import Registry

LETTERS = "ABCDEFG"
KINDS = ("mcq", "open", "probe")


class AnnotationDefect(ValueError):
    """An annotation file that does not hold what its benchmark defines (one line naming the item)."""


@dataclass
class BenchQuestion:
    """One question of a benchmark, in the common schema.

    Attributes:
        qid: unique id within the benchmark (the benchmark's own where it has one).
        video: the video's reference (the benchmark's id or file name; see :meth:`Benchmark.video_path`).
        question: the question stem (no options in it).
        options: option texts without letters, 2-7 for ``mcq``, empty for ``open``.
        answer: the correct letter (``mcq``) or the reference answer text (``open`` / ``probe``).
        kind: "mcq" (choose a letter), "open" (short free-form answer), "probe" (generation answered at
            ``ask_time``, e.g. OVO-Bench forward-active probes).
        ask_time: stream seconds at which the question is asked; None = at the end of the video.
        task: task name as the official scorer spells it.
        fields: other grouping fields of the official aggregates (e.g. {"duration": "long", "domain": ...}).
        extra: whatever else the prompt or scorer needs (subtitles, evidence times, probe lists, ...).
    """

    qid: str
    video: str
    question: str
    options: list[str]
    answer: str
    kind: str = "mcq"
    ask_time: float | None = None
    task: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise AnnotationDefect(f"{self.qid}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "mcq":
            if not 2 <= len(self.options) <= len(LETTERS):
                raise AnnotationDefect(f"{self.qid}: {len(self.options)} options (2 to {len(LETTERS)} allowed)")
            if self.answer not in self.letters:
                raise AnnotationDefect(f"{self.qid}: answer {self.answer!r} is not one of {self.letters}")
        if self.ask_time is not None and not (self.ask_time >= 0 and self.ask_time < float("inf")):
            raise AnnotationDefect(f"{self.qid}: bad ask time {self.ask_time!r}")

    @property
    def letters(self) -> str:
        """The option letters, ``A..`` one per option."""
        return LETTERS[:len(self.options)]

    def lettered_options(self, sep: str = ". ") -> list[str]:
        """["A. text", "B. text", ...]."""
        return [f"{letter}{sep}{text}" for letter, text in zip(self.letters, self.options)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BenchVideo:
    """A video and its questions; ``path`` is filled by :meth:`Benchmark.resolve` (None until then)."""

    ref: str
    questions: list[BenchQuestion]
    path: Path | None = None
    duration: float | None = None


@dataclass
class Loaded:
    """What a loader returns: the videos (questions grouped by video, in file order) and the items left out
    for known defects of the published file (question id -> reason)."""

    videos: list[BenchVideo]
    defects: dict[str, str] = field(default_factory=dict)

    @property
    def questions(self) -> list[BenchQuestion]:
        return [q for v in self.videos for q in v.questions]


class Benchmark(ABC):
    """One benchmark: loader, video naming rule, prompt, answer extraction, official aggregates.

    Subclasses set ``name`` (through :func:`register_benchmark`), ``extraction`` (the name of their answer-
    extraction rule, recorded with every score) and implement the abstract methods.
    """

    name: str = ""
    extraction: str = "strict"
    KNOWN_DEFECTS: dict[str, str] = {}

    @abstractmethod
    def load(self, annotations: Path) -> Loaded:
        """Read the published annotation file or folder ``annotations`` into the schema (validated).

        Raises:
            AnnotationDefect: the file is not this benchmark's format, or an item is malformed.
        """

    def video_path(self, root: Path, video: BenchVideo) -> Path:
        """Where the benchmark's naming rule puts ``video`` under ``root`` (default: ``root / ref``)."""
        return root / video.ref

    def resolve(self, loaded: Loaded, root: Path | None) -> list[str]:
        """Fill every video's ``path`` under ``root``; returns the refs of videos that are missing there."""
        missing = []
        for v in loaded.videos:
            v.path = self.video_path(Path(root), v) if root is not None else Path(v.ref)
            if not v.path.is_file():
                missing.append(v.ref)
        return missing

    @abstractmethod
    def prompt(self, q: BenchQuestion) -> str:
        """The text put after the memory for ``q`` (the benchmark's own prompt)."""

    def window_start(self, q: BenchQuestion) -> float | None:
        """Stream time (s) from which ``q`` may use the video, when the benchmark's protocol shows only a recent
        clip (StreamingBench's context window, proactive look-back); None: everything up to the ask time."""
        return None

    def answer_prefix(self, q: BenchQuestion) -> str:
        """Text the benchmark pre-fills at the start of the answer (e.g. MLVU's ``Best Option: (``); the model
        continues after it, and extraction reads prefix + continuation. Default: none."""
        return ""

    def extract(self, reply: str, q: BenchQuestion) -> str | None:
        """The answer letter in a generated ``reply`` (None: unparseable); open-ended: the reply itself."""
        if q.kind != "mcq":
            return reply.strip()
        return extract_strict(reply, q.letters)

    def correct(self, predicted: str | None, q: BenchQuestion) -> bool | None:
        """Whether ``predicted`` answers ``q`` (None: cannot be judged here, e.g. an open answer needing a judge)."""
        if predicted is None:
            return False
        if q.kind == "mcq":
            return predicted == q.answer
        return normalise_text(predicted) == normalise_text(q.answer)

    @abstractmethod
    def summarize(self, rows: list[dict]) -> dict[str, Any]:
        """The official aggregates of result ``rows`` (dicts written by the runner: ``qid``, ``task``, ``fields``,
        ``predicted``, ``correct``, ...), under the benchmark's own names, plus ``overall``."""


def extract_strict(reply: str, letters: str) -> str | None:
    """A bare letter, ``(X)`` or ``X.``/``X)``/``X:`` at the start of the reply (after stock phrases such as
    "The answer is"); None when the reply names no option letter that way."""
    text = reply.strip()
    text = re.sub(r"^(the\s+)?(best\s+|correct\s+)?(answer|option)\s*(is)?\s*[:\-]?\s*", "", text, flags=re.I)
    m = re.match(r"^\(?([A-G])(?:\)|\.|:|\s|$)", text)
    if m and m.group(1) in letters:
        return m.group(1)
    return None


def normalise_text(text: str) -> str:
    """Lower case, punctuation and articles dropped, whitespace collapsed (open-answer exact match)."""
    text = re.sub(r"[^\w\s]", " ", text.lower())
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def macro(groups: dict[str, list[bool]]) -> float:
    """Mean over groups of each group's accuracy (groups without items are left out)."""
    accs = [sum(v) / len(v) for v in groups.values() if v]
    return sum(accs) / len(accs) if accs else float("nan")


def micro(values: list[bool]) -> float:
    return sum(values) / len(values) if values else float("nan")


_BENCHMARKS: Registry[Benchmark] = Registry("benchmark", Benchmark, __name__)


def register_benchmark(name: str):
    """Class decorator: register a :class:`Benchmark` subclass under ``name`` (unique)."""
    return _BENCHMARKS.register(name)


def benchmark_names() -> tuple[str, ...]:
    return _BENCHMARKS.names()


def get_benchmark(name: str) -> Benchmark:
    """A new instance of the benchmark registered as ``name``.

    Raises:
        ValueError: unknown name (the message lists the registered ones).
    """
    cls = _BENCHMARKS.lookup(name)
    if cls is None:
        raise ValueError(f"--benchmark must be one of {', '.join(benchmark_names())}, got {name!r}")
    return cls()
