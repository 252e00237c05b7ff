"""Video-MME (short / medium / long; without subtitles ``videomme``, with subtitles ``videomme-sub``).

Annotations: the HF parquet ``videomme/test-00000-of-00001.parquet`` of ``lmms-lab/Video-MME`` (needs the
``eval`` extra: pyarrow), the same rows as a JSON array / JSONL, or the official per-video JSON layout
(``[{video_id, videoID, duration, domain, sub_category, questions: [{question_id, task_type, question,
options, answer}]}]``, older field names ``duration_category`` / ``video_category`` / ``video_subcategory`` /
``choices`` accepted). Options are published pre-lettered ("A. Apples."); the letters are checked and
stripped.

Video naming rule (``--video-root`` = the extracted dataset folder or its ``data/`` folder): the first file that
exists of ``data/{videoID}.mp4``, ``.MP4``, ``.mkv``, then ``{videoID}.mp4``, ``.MP4``, ``.mkv`` directly
under the root. Subtitles (``videomme-sub``): the first of ``subtitle/{videoID}.srt``,
``subtitles/{videoID}.srt``, ``../subtitle/{videoID}.srt`` and ``{videoID}.srt`` under the root; missing:
"No subtitles available".

Scoring is the official scorer's (``eval_your_results.py``): the letter is extracted with
``videomme_official`` and a reply that yields no letter is left out of the denominator (reported as
``unparseable``; ``overall_all_items`` counts those as wrong, as lmms-eval does).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from . import AnnotationDefect, BenchQuestion, BenchVideo, Benchmark, Loaded, register_benchmark
from ._tabular import (accuracy, annotation_file, cues_at, cues_until, grouped, need, parse_srt, question, read_rows,
                       strip_letter_prefixes)

DURATIONS = ("short", "medium", "long")
PARQUET = "videomme/test-00000-of-00001.parquet"
INSTRUCTION = ("Select the best answer to the following multiple-choice question based on the video. "
               "Respond with only the letter (A, B, C, or D) of the correct option.")
NO_SUBTITLES = "No subtitles available"
# The official scorer's prefix list, in its order; two pairs are glued by missing commas in its source.
PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer",
            "The best option isThe correct option is", "Best answer:Best option:", "Answer:", "Option:",
            "The correct answer", "The correct option")
VIDEO_NAMES = ("data/{}.mp4", "data/{}.MP4", "data/{}.mkv", "{}.mp4", "{}.MP4", "{}.mkv")
SUBTITLE_NAMES = ("subtitle/{}.srt", "subtitles/{}.srt", "../subtitle/{}.srt", "{}.srt")
_OLD_NAMES = {"duration_category": "duration", "video_category": "domain", "video_subcategory": "sub_category",
              "choices": "options"}


def extract_videomme_official(reply: str, letters: str = "ABCD") -> str | None:
    """The official Video-MME letter extraction: delete the stock prefixes (case-sensitive), give up on more
    than 10 words with no option letter, else the first capital option letter anywhere (None: unparseable).
    "Based on the video, C" gives "B": the rule is the benchmark's, pitfalls included."""
    text = reply.strip()
    for prefix in PREFIXES:
        text = text.replace(prefix, "")
    found = re.search(f"[{letters}]", text)
    return found.group(0) if found else None


def _flat_rows(rows: list[dict[str, Any]], path: Path) -> list[dict[str, Any]]:
    """Per-video official layout -> flat parquet-style rows (flat rows pass through)."""
    if not rows or "questions" not in rows[0]:
        return rows
    flat = []
    for n, video in enumerate(rows):
        video = {_OLD_NAMES.get(k, k): v for k, v in video.items()}
        item = f"{path.name}: video {video.get('video_id', n)}"
        if "videoID" not in video and isinstance(video.get("url"), str) and "v=" in video["url"]:
            video["videoID"] = video["url"].split("v=")[1].split("&")[0]
        need(video, ("video_id", "videoID", "duration", "domain", "sub_category", "questions"), item)
        if not isinstance(video["questions"], list):
            raise AnnotationDefect(f"{item}: 'questions' is not a list")
        for q in video["questions"]:
            q = {_OLD_NAMES.get(k, k): v for k, v in q.items()}
            flat.append({**{k: v for k, v in video.items() if k != "questions"}, **q})
    return flat


@register_benchmark("videomme")
class VideoMME(Benchmark):
    """Video-MME without subtitles (official README prompt, official extraction and denominators)."""

    extraction = "videomme_official"
    subtitles = False

    def load(self, annotations: Path) -> Loaded:
        path = Path(annotations)
        path = annotation_file(path, (PARQUET, Path(PARQUET).name))
        rows = _flat_rows(read_rows(path, "Video-MME"), path)
        if not rows:
            raise AnnotationDefect(f"{path}: no questions")
        videos: dict[str, BenchVideo] = {}
        seen: set[str] = set()
        for n, row in enumerate(rows):
            item = f"{path.name}: question {row.get('question_id', f'#{n}')}"
            need(row, ("video_id", "videoID", "question_id", "duration", "domain", "sub_category", "task_type",
                       "question", "options", "answer"), item)
            qid = str(row["question_id"])
            if qid in seen:
                raise AnnotationDefect(f"{item}: duplicated question_id")
            seen.add(qid)
            if row["duration"] not in DURATIONS:
                raise AnnotationDefect(f"{item}: duration {row['duration']!r} is not one of {DURATIONS}")
            options = list(row["options"])
            if len(options) != 4:
                raise AnnotationDefect(f"{item}: {len(options)} options (Video-MME has 4)")
            q = question(
                f"{path.name}: question", qid=qid, video=str(row["videoID"]),
                question=str(row["question"]).strip(),
                options=strip_letter_prefixes(options, item), answer=str(row["answer"]).strip(),
                task=str(row["task_type"]),
                fields={"duration": row["duration"], "domain": row["domain"], "sub_category": row["sub_category"],
                        "video_id": str(row["video_id"])},
                extra={"url": row.get("url")})
            videos.setdefault(q.video, BenchVideo(ref=q.video, questions=[])).questions.append(q)
        return Loaded(videos=list(videos.values()))

    def video_path(self, root: Path, video: BenchVideo) -> Path:
        for name in VIDEO_NAMES:
            if (root / name.format(video.ref)).is_file():
                return root / name.format(video.ref)
        return root / VIDEO_NAMES[0].format(video.ref)

    def subtitle_path(self, root: Path, ref: str) -> Path | None:
        """The video's ``.srt`` under ``root`` (None: the video has no subtitle file)."""
        return next((root / n.format(ref) for n in SUBTITLE_NAMES if (root / n.format(ref)).is_file()), None)

    def resolve(self, loaded: Loaded, root: Path | None) -> list[str]:
        """Fill video paths; with subtitles, also read each video's cues into ``extra["subtitles"]`` of its
        questions (None when it has no subtitle file).

        Raises:
            AnnotationDefect: a subtitle file that is not SRT.
        """
        missing = super().resolve(loaded, root)
        if self.subtitles:
            base = Path(root) if root is not None else Path(".")
            for v in loaded.videos:
                srt = self.subtitle_path(base, v.ref)
                cues = parse_srt(srt) if srt is not None else None
                for q in v.questions:
                    q.extra["subtitles"] = cues
        return missing

    def subtitle_lines(self, q: BenchQuestion, frame_times: list[float] | None = None) -> list[str]:
        """The subtitle lines for ``q``: with ``frame_times`` (the session's frame timestamps, seconds) the cues
        covering them (the official rule); else every cue started by the ask time (the streaming reading:
        the model has seen every frame up to then), in order."""
        cues = q.extra.get("subtitles")
        if cues is None:
            return []
        return cues_at(cues, frame_times) if frame_times is not None else cues_until(cues, q.ask_time)

    def prompt(self, q: BenchQuestion, frame_times: list[float] | None = None) -> str:
        lines = []
        if self.subtitles:
            if "subtitles" not in q.extra:
                raise ValueError(f"{q.qid}: subtitles not read (call resolve() with the video root first)")
            subs = self.subtitle_lines(q, frame_times)
            lines += ["This video's subtitles are listed below:", "\n".join(subs) if subs else NO_SUBTITLES]
        lines += [INSTRUCTION, q.question, *q.lettered_options(), "The best answer is:"]
        return "\n".join(lines)

    def extract(self, reply: str, q: BenchQuestion) -> str | None:
        return extract_videomme_official(reply, q.letters)

    def summarize(self, rows: list[dict]) -> dict[str, Any]:
        """Official aggregates: accuracy over answered (parseable) questions, per duration, domain, sub-category
        and task type, and each of those within each duration; ``unparseable`` counts the replies left out."""
        answered = [r for r in rows if r["predicted"] is not None]

        def table(part: list[dict]) -> dict[str, Any]:
            return {"overall": accuracy([bool(r["correct"]) for r in part]),
                    "domain": grouped(part, lambda r: r["fields"]["domain"]),
                    "sub_category": grouped(part, lambda r: r["fields"]["sub_category"]),
                    "task_type": grouped(part, lambda r: r["task"])}

        out = table(answered)
        out["duration"] = {d: accuracy([bool(r["correct"]) for r in answered if r["fields"]["duration"] == d])
                           for d in DURATIONS if any(r["fields"]["duration"] == d for r in rows)}
        out["by_duration"] = {d: table([r for r in answered if r["fields"]["duration"] == d])
                              for d in out["duration"]}
        out.update(questions=len(rows), answered=len(answered), unparseable=len(rows) - len(answered),
                   overall_all_items=accuracy([bool(r["correct"]) for r in rows]),
                   extraction=self.extraction, subtitles=self.subtitles)
        return out


@register_benchmark("videomme-sub")
class VideoMMESubtitles(VideoMME):
    """Video-MME with subtitles: the ``.srt`` cues up to the ask time (or at given frame times) in the prompt."""

    subtitles = True
