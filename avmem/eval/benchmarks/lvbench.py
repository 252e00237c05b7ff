"""LVBench (``lvbench``): ``video_info.meta.jsonl`` of ``THUDM/LVBench`` (now ``zai-org/LVBench``).

One JSON object per line and video: ``key`` (YouTube id), ``type``, ``video_info`` and ``qa`` (``uid``,
``question`` = the stem and the options "(A) ..." on the lines after it, ``answer`` letter, ``question_type``
multi-label list, ``time_reference`` "MM:SS-MM:SS"). The options are split from the question text.

Video naming rule (``--video-root``): ``{key}.mp4`` or ``videos/{key}.mp4``; else the file the official
download script (video2dataset, ``--output_format files``) wrote for that key: found through the ``.json``
sidecars video2dataset writes beside each video (their ``url`` names the YouTube id).

Scoring is the official ``compute_accuracy.py``: the reply is reduced with ``polish_answer``
(``lvbench_polish``: cut at the first ")", keep what follows a "(", first space-separated token, its first
character) and compared to the answer letter; overall micro accuracy; each question counts toward every
category of its ``question_type``. The official scorer leaves out only questions missing from the answer
file; an answered question whose reply reduces to nothing counts as wrong (``unparseable`` reports how many).
The leaderboard names: KIR, EU, Sum, ER, Rea, TG, Overall.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from . import AnnotationDefect, BenchQuestion, BenchVideo, Benchmark, Loaded, register_benchmark
from ._tabular import question, accuracy, grouped, need, read_rows

CATEGORIES = {"key information retrieval": "KIR", "event understanding": "EU", "summarization": "Sum",
              "entity recognition": "ER", "reasoning": "Rea", "temporal grounding": "TG"}
POST_PROMPT = "Answer the question with the option letter"
_OPTION = re.compile(r"^\(([A-G])\)\s*(.*)$")
_TIME = re.compile(r"^\s*(\d+(?::\d{1,2}){1,2})\s*-\s*(\d+(?::\d{1,2}){1,2})\s*$")


def polish_answer(reply: str) -> str:
    """The official LVBench reduction of a reply to one character ("" when nothing is left)."""
    text = reply.strip().split(")")[0].strip()
    if "(" in text:
        text = text.split("(")[1].strip()
    text = text.split(" ")[0]
    return text[:1]


def split_options(text: str, item: str) -> tuple[str, list[str]]:
    """"stem\\n(A) x\\n(B) y" -> ("stem", ["x", "y"]); the letters must run A, B, ... in order."""
    lines = [ln.strip() for ln in str(text).strip().split("\n") if ln.strip()]
    k = next((i for i, ln in enumerate(lines) if _OPTION.match(ln)), len(lines))
    stem, opts = " ".join(lines[:k]), lines[k:]
    options = []
    for j, line in enumerate(opts):
        m = _OPTION.match(line)
        if not m or m.group(1) != "ABCDEFG"[j]:
            raise AnnotationDefect(f"{item}: option line {line!r} is not '({'ABCDEFG'[j]}) ...'")
        options.append(m.group(2).strip())
    if not stem or len(options) < 2:
        raise AnnotationDefect(f"{item}: question text holds no stem and options ('stem\\n(A) ...\\n(B) ...')")
    return stem, options


def _seconds(stamp: str) -> float:
    total = 0.0
    for part in stamp.split(":"):
        total = total * 60 + int(part)
    return total


def parse_time_reference(text: Any, item: str) -> tuple[float, float] | None:
    """"MM:SS-MM:SS" or "H:MM:SS-H:MM:SS" -> (start s, end s); None when absent or empty."""
    if text is None or str(text).strip() == "":
        return None
    m = _TIME.match(str(text))
    if not m:
        raise AnnotationDefect(f"{item}: time_reference {text!r} is not 'MM:SS-MM:SS'")
    return _seconds(m.group(1)), _seconds(m.group(2))


@register_benchmark("lvbench")
class LVBench(Benchmark):
    """LVBench: official polish-and-compare scoring, micro accuracy and multi-label categories."""

    extraction = "lvbench_polish"

    def load(self, annotations: Path) -> Loaded:
        path = Path(annotations)
        if path.is_dir():
            path = path / "video_info.meta.jsonl"
        if path.suffix.lower() != ".jsonl":
            raise AnnotationDefect(f"{path}: not an LVBench annotation (expected video_info.meta.jsonl)")
        videos, seen = [], set()
        for n, row in enumerate(read_rows(path, "LVBench"), 1):
            item = f"{path.name}:{n}"
            need(row, ("key", "qa"), item)
            if not isinstance(row["qa"], list):
                raise AnnotationDefect(f"{item}: 'qa' is not a list")
            info = row.get("video_info") or {}
            duration = info.get("duration_minutes")
            video = BenchVideo(ref=str(row["key"]), questions=[],
                               duration=float(duration) * 60 if duration is not None else None)
            for qa in row["qa"]:
                need(qa, ("uid", "question", "answer", "question_type"), f"{item}: question {qa.get('uid')}")
                qid = str(qa["uid"])
                qitem = f"{path.name}: question uid {qid}"
                if qid in seen:
                    raise AnnotationDefect(f"{qitem}: duplicated uid")
                seen.add(qid)
                types = qa["question_type"]
                if isinstance(types, str) or not isinstance(types, list) or not types:
                    raise AnnotationDefect(f"{qitem}: question_type must be a non-empty list of categories")
                unknown = [t for t in types if t not in CATEGORIES]
                if unknown:
                    raise AnnotationDefect(f"{qitem}: unknown question_type {unknown[0]!r}")
                stem, options = split_options(qa["question"], qitem)
                evidence = parse_time_reference(qa.get("time_reference"), qitem)
                video.questions.append(question(
                    f"{path.name}: question uid", qid=qid, video=video.ref, question=stem, options=options,
                    answer=str(qa["answer"]).strip(),
                    task=types[0], fields={"question_type": list(types), "video_type": row.get("type")},
                    extra={"question_text": str(qa["question"]).strip(), "evidence": evidence}))
            videos.append(video)
        if not videos:
            raise AnnotationDefect(f"{path}: no videos")
        return Loaded(videos=videos)

    def _sidecar_index(self, root: Path) -> dict[str, Path]:
        """YouTube id -> video file, from video2dataset's ``{key}.json`` sidecars under ``root``."""
        cache = getattr(self, "_index", None)
        if cache is not None and cache[0] == root:
            return cache[1]
        index: dict[str, Path] = {}
        for meta in sorted(root.rglob("*.json")) if root.is_dir() else []:
            try:
                url = json.loads(meta.read_text()).get("url", "")
            except (OSError, ValueError, AttributeError):
                continue
            m = re.search(r"(?:v=|youtu\.be/)([\w-]{6,})", str(url))
            video = next((p for p in meta.parent.glob(meta.stem + ".*") if p.suffix.lower() in (".mp4", ".mkv",
                                                                                                  ".webm")), None)
            if m and video is not None:
                index.setdefault(m.group(1), video)
        self._index = (root, index)
        return index

    def video_path(self, root: Path, video: BenchVideo) -> Path:
        for name in (f"{video.ref}.mp4", f"videos/{video.ref}.mp4"):
            if (root / name).is_file():
                return root / name
        return self._sidecar_index(root).get(video.ref, root / f"{video.ref}.mp4")

    def prompt(self, q: BenchQuestion) -> str:
        """The published question text (stem and "(A) ..." lines) and lmms-eval's instruction (LVBench's
        repository publishes no prompt)."""
        return f"{q.extra['question_text']}\n{POST_PROMPT}"

    def extract(self, reply: str, q: BenchQuestion) -> str | None:
        return polish_answer(reply) or None

    def summarize(self, rows: list[dict]) -> dict[str, Any]:
        """Official aggregates: micro overall accuracy and per category (multi-label), leaderboard names."""
        per = grouped(rows, lambda r: r["fields"]["question_type"])
        out: dict[str, Any] = {CATEGORIES[c]: per[c] for c in CATEGORIES if c in per}
        out["Overall"] = out["overall"] = accuracy([bool(r["correct"]) for r in rows])
        out.update(questions=len(rows), unparseable=sum(r["predicted"] is None for r in rows),
                   extraction=self.extraction)
        return out
