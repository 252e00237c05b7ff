"""LongVideoBench (``longvideobench`` with its interleaved subtitles, ``longvideobench-nosub`` without).

Annotations: ``lvb_val.json`` of ``longvideobench/LongVideoBench`` (a JSON array; per question ``id``,
``video_id``, ``video_path``, ``question``, ``candidates`` (4 or 5 option texts), ``correct_choice`` (index),
``duration_group`` (15 / 60 / 600 / 3600), ``question_category`` (e.g. "TAA"), ``topic_category``, ``level``,
``subtitle_path``, ``starting_timestamp_for_subtitles``, ``duration``, ``position``), or the same split's
``validation-00000-of-00001.parquet`` (options in ``option0..option4``, "N/A" for absent ones). The test split
(``lvb_test_wo_gt.json``) has no answers and is refused.

Video naming rule (``--video-root`` = the extracted dataset folder): ``videos/{video_path}``, else
``{video_path}`` directly under the root. Subtitles: ``subtitles/{subtitle_path}``, a JSON list of cues
``{"timestamp": [start, end], "text"}`` or ``{"start": "H:MM:SS.mmm", "end", "line"}``, shifted by
``starting_timestamp_for_subtitles`` (an end that is not a number means the end of the video).

Prompt (the official dataloader's text part): the subtitle lines, then "Question: ...", "A. ..." lines and
"Answer with the option's letter from the given choices directly.". Extraction ``lvb_first_letter`` (the rule
of the LongVideoBench authors, as in lmms-eval): delete stock answer prefixes, give up on more than 10 words
without a letter A-E, else the first capital A-E anywhere; an unparseable reply gets a random choice in the
official code: here the choice is seeded by the question id (reproducible), ``predicted`` stays None and
``unparseable`` counts them (``overall_unparseable_wrong`` counts them wrong instead).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from . import LETTERS, AnnotationDefect, BenchQuestion, BenchVideo, Benchmark, Loaded, register_benchmark
from ._tabular import accuracy, annotation_file, grouped, need, question, read_rows

POST_PROMPT = "Answer with the option's letter from the given choices directly."
PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer", "The best option is",
            "The correct option is", "Best answer:", "Best option:")
FIELDS = ("id", "video_id", "video_path", "question", "correct_choice", "duration_group", "question_category")


def extract_lvb(reply: str) -> str | None:
    """LongVideoBench's letter reading: prefixes deleted, first capital A-E (None: unparseable)."""
    text = reply.strip()
    for prefix in PREFIXES:
        text = text.replace(prefix, "")
    found = re.search(r"[ABCDE]", text)
    return found.group(0) if found else None


def _stamp(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    h, m, s = str(value).split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def read_lvb_subtitles(path: Path, offset: float, duration: float | None) -> list[tuple[float, float, str]]:
    """LongVideoBench subtitle JSON -> [(start s, end s, text)] in video time, in file order.

    Raises:
        AnnotationDefect: not a list of cues in either published form.
    """
    try:
        cues = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise AnnotationDefect(f"{path}: unreadable subtitle file ({exc})") from None
    if not isinstance(cues, list):
        raise AnnotationDefect(f"{path}: subtitles are not a list of cues")
    out = []
    for k, cue in enumerate(cues):
        try:
            if "timestamp" in cue:
                start, end = cue["timestamp"]
                end = end if isinstance(end, (int, float)) else (duration if duration is not None else start)
                text = cue["text"]
            else:
                start, end, text = cue["start"], cue["end"], cue["line"]
            out.append((_stamp(start) - offset, _stamp(end) - offset, " ".join(str(text).split())))
        except (KeyError, TypeError, ValueError):
            raise AnnotationDefect(f"{path}: subtitle cue {k} is neither {{timestamp, text}} nor "
                                   f"{{start, end, line}}") from None
    return out


def covered_cues(cues: list[tuple[float, float, str]], frame_times: list[float]) -> list[str]:
    """The official interleaving rule's choice: a cue is kept when a frame time lies strictly inside it (a cue
    shorter than 1 s is widened to 1 s about its middle); in file order."""
    out = []
    for start, end, text in cues:
        if end - start < 1:
            mid = (start + end) / 2
            start, end = mid - 0.5, mid + 0.5
        if any(start < t < end for t in frame_times):
            out.append(text)
    return out


def _group_order(name: str) -> tuple[int, float | str]:
    try:
        return (0, float(name))
    except ValueError:
        return (1, name)


@register_benchmark("longvideobench")
class LongVideoBench(Benchmark):
    """LongVideoBench validation split, with its subtitles in the prompt."""

    extraction = "lvb_first_letter"
    subtitles = True

    def load(self, annotations: Path) -> Loaded:
        path = Path(annotations)
        path = annotation_file(path, ("lvb_val.json", "validation-00000-of-00001.parquet"))
        rows = read_rows(path, "LongVideoBench")
        if not rows:
            raise AnnotationDefect(f"{path}: no questions")
        videos: dict[str, BenchVideo] = {}
        seen: set[str] = set()
        for n, row in enumerate(rows):
            item = f"{path.name}: question {row.get('id', f'#{n}')}"
            if "correct_choice" not in row and "id" in row:
                raise AnnotationDefect(f"{item}: no correct_choice (the test split has no answers; "
                                       f"use lvb_val.json)")
            need(row, FIELDS, item)
            qid = str(row["id"])
            if qid in seen:
                raise AnnotationDefect(f"{item}: duplicated id")
            seen.add(qid)
            if "candidates" in row:
                options = [str(c) for c in row["candidates"]]
            else:
                options = [str(row[f"option{i}"]) for i in range(5) if row.get(f"option{i}") not in (None, "N/A")]
            choice = row["correct_choice"]
            if not isinstance(choice, int) or isinstance(choice, bool) or not 0 <= choice < len(options):
                raise AnnotationDefect(f"{item}: correct_choice {choice!r} is not an index into its "
                                       f"{len(options)} candidates")
            duration = float(row["duration"]) if row.get("duration") is not None else None
            q = question(
                f"{path.name}: question", qid=qid, video=str(row["video_path"]),
                question=str(row["question"]).strip(), options=options,
                answer=LETTERS[choice] if choice < len(LETTERS) else "?", task=str(row["question_category"]),
                fields={"duration_group": str(row["duration_group"]), "question_category": row["question_category"],
                        "topic_category": row.get("topic_category"), "level": row.get("level")},
                extra={"video_id": row["video_id"], "subtitle_path": row.get("subtitle_path"),
                       "subtitle_offset": float(row.get("starting_timestamp_for_subtitles") or 0.0),
                       "duration": duration, "position": row.get("position")})
            video = videos.setdefault(q.video, BenchVideo(ref=q.video, questions=[], duration=duration))
            video.questions.append(q)
        return Loaded(videos=list(videos.values()))

    def video_path(self, root: Path, video: BenchVideo) -> Path:
        for name in (f"videos/{video.ref}", video.ref):
            if (root / name).is_file():
                return root / name
        return root / "videos" / video.ref

    def resolve(self, loaded: Loaded, root: Path | None) -> list[str]:
        """Fill video paths; with subtitles, read each question's subtitle file into ``extra["subtitles"]``
        (None when the file is absent).

        Raises:
            AnnotationDefect: a subtitle file in neither published form.
        """
        missing = super().resolve(loaded, root)
        if self.subtitles:
            base = Path(root) if root is not None else Path(".")
            cache: dict[str, Any] = {}
            for q in loaded.questions:
                name = q.extra.get("subtitle_path")
                key = f"{name}@{q.extra['subtitle_offset']}"
                if key not in cache:
                    paths = [base / "subtitles" / name, base / name] if name else []
                    found = next((p for p in paths if p.is_file()), None)
                    cache[key] = (read_lvb_subtitles(found, q.extra["subtitle_offset"], q.extra["duration"])
                                  if found is not None else None)
                q.extra["subtitles"] = cache[key]
        return missing

    def subtitle_lines(self, q: BenchQuestion, frame_times: list[float] | None = None) -> list[str]:
        """With ``frame_times``: the official covering rule; else every cue started by the ask time, in order."""
        cues = q.extra.get("subtitles")
        if not cues:
            return []
        if frame_times is not None:
            return covered_cues(cues, frame_times)
        return [text for start, _end, text in cues if q.ask_time is None or start <= q.ask_time]

    def prompt(self, q: BenchQuestion, frame_times: list[float] | None = None) -> str:
        lines = []
        if self.subtitles:
            if "subtitles" not in q.extra:
                raise ValueError(f"{q.qid}: subtitles not read (call resolve() with the video root first)")
            lines += self.subtitle_lines(q, frame_times)
        lines += [f"Question: {q.question}", *q.lettered_options(), POST_PROMPT]
        return "\n".join(lines)

    def extract(self, reply: str, q: BenchQuestion) -> str | None:
        return extract_lvb(reply)

    def correct(self, predicted: str | None, q: BenchQuestion) -> bool:
        """The letter against the answer; an unparseable reply gets the official random choice, seeded by the
        question id."""
        if predicted is None:
            predicted = random.Random(f"longvideobench:{q.qid}").choice(q.letters)
        return predicted == q.answer

    def summarize(self, rows: list[dict]) -> dict[str, Any]:
        """Official aggregates: micro overall, per duration group and per question category."""
        groups = grouped(rows, lambda r: r["fields"]["duration_group"])
        return {"overall": accuracy([bool(r["correct"]) for r in rows]),
                "duration_group": {k: groups[k] for k in sorted(groups, key=_group_order)},
                "question_category": dict(sorted(grouped(rows, lambda r: r["task"]).items())),
                "questions": len(rows), "unparseable": sum(r["predicted"] is None for r in rows),
                "overall_unparseable_wrong": accuracy([r["predicted"] is not None and bool(r["correct"])
                                                       for r in rows]),
                "extraction": self.extraction, "subtitles": self.subtitles}


@register_benchmark("longvideobench-nosub")
class LongVideoBenchNoSubtitles(LongVideoBench):
    """LongVideoBench without subtitles (lmms-eval's ``longvideobench_val_v``)."""

    subtitles = False
