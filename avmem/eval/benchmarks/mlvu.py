"""MLVU dev, multiple choice ("mlvu"): the official per-task JSON folder and the lmms-eval layout.

Official layout (``JUNJIE99/MLVU/data/``, HF ``MLVU/MVLU`` ``MLVU/json/``): a folder of per-task JSON arrays
``1_plotQA.json`` .. ``7_topic_reasoning.json`` (multiple choice) and ``8_sub_scene.json``, ``9_summary.json``
(open-ended, judged by GPT: not loaded; :attr:`MLVUBenchmark.skipped` says so). Items: ``video`` (file name),
``duration`` (s), ``question``, ``candidates`` (option texts), ``answer`` (the correct option's *text*: the letter
is its first index among the candidates, as the official scorer takes it), ``question_type``. Question ids:
``{file stem}/{index in the file}`` (e.g. ``2_needle/34``). Videos: ``ROOT/{file stem}/{video}`` (the
published ``MLVU/video/1_plotQA/...`` folders), else ``ROOT/{video}`` when the file is there.

lmms-eval layout (HF ``sy1998/MLVU_dev``, ``mlvu/test-00000-of-00001.parquet``, or the same rows as JSON /
JSONL): ``video_name``, ``duration``, ``question`` (stem followed by the lettered options), ``candidates``,
``answer`` (a letter), ``task_type``, ``question_id``. Videos: ``ROOT/{video_name}`` (a flat folder).

Known defects: two needle items (``needle_4.mp4``, ``needle_5.mp4``, "What is the man in the video doing on the
lake shore ...") whose answer matches none of the candidates; the official scorer can never count them correct.
They are reported in ``Loaded.defects`` and left out (in the lmms-eval layout too, where a letter was assigned).

Prompt: the official ``choice_bench.py`` one (system sentence, ``Question: ...\\nOptions:\\n(A) ...``, "Only give
the best option.") with the answer pre-filled with ``Best Option: (`` as the official script does (the model
continues after it; the saved reply includes the prefix). Extraction ``mlvu_paren``: the character before the
first ``)`` of the reply, else the whole reply stripped when it is exactly a letter. Aggregates: per-task accuracy, ``M-Avg`` = the mean of the 7
task accuracies (official and lmms-eval), ``overall`` = micro accuracy (VLMEvalKit's "M-Avg").
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from . import LETTERS, AnnotationDefect, Benchmark, BenchQuestion, BenchVideo, Loaded, macro, micro, register_benchmark
from ._tabular import read_rows

MCQ_FILES = {"1_plotQA": "plotQA", "2_needle": "needle", "3_ego": "ego", "4_count": "count", "5_order": "order",
             "6_anomaly_reco": "anomaly_reco", "7_topic_reasoning": "topic_reasoning"}
"""Official file stem -> task name (as the official scorer and lmms-eval name the 7 tasks)."""
OPEN_FILES = {"8_sub_scene": "subPlot", "9_summary": "summary"}
QUESTION_TYPES = {"plotQA": "plotQA", "findNeedle": "needle", "needle": "needle", "ego": "ego", "count": "count",
                  "order": "order", "anomaly_reco": "anomaly_reco", "topic_reasoning": "topic_reasoning"}
"""``question_type`` (official) / ``task_type`` (lmms-eval) -> task name."""
TASKS = tuple(MCQ_FILES.values())
ANSWER_PREFIX = "Best Option: ("  # the official choice_bench.py pre-fills the answer with this
SYSTEM = ("Carefully watch this video and pay attention to every detail. Based on your observations, select the "
          "best option that accurately addresses the question.")
DEFECT_QUESTION = "What is the man in the video doing on the lake shore during the sunny summer?"


@register_benchmark("mlvu")
class MLVUBenchmark(Benchmark):
    """MLVU dev multiple choice (7 tasks, 4 candidates each)."""

    extraction = "mlvu_paren"
    KNOWN_DEFECTS = {
        "2_needle/34": "needle_4.mp4: answer 'Catching a flying drone quadcopter' is not among its candidates",
        "2_needle/338": "needle_5.mp4: answer 'Catching a flying drone quadcopter' is not among its candidates",
    }
    DEFECT_VIDEOS = {"needle_4.mp4": "2_needle/34", "needle_5.mp4": "2_needle/338"}
    """The defective items by video, to recognise them in the lmms-eval layout (same question text)."""

    def __init__(self) -> None:
        self.skipped: dict[str, str] = {}
        self.layout: str | None = None

    # loading ------------------------------------------------------------------------------------------

    def load(self, annotations: Path) -> Loaded:
        annotations = Path(annotations)
        if annotations.is_dir():
            return self._load_official(annotations)
        if not annotations.is_file():
            raise AnnotationDefect(f"{annotations}: no such file or folder")
        if annotations.suffix == ".json" and annotations.stem in {**MCQ_FILES, **OPEN_FILES}:
            return self._load_official(annotations.parent, only=annotations.stem)
        return self._load_lmms(annotations)

    def _load_official(self, folder: Path, only: str | None = None) -> Loaded:
        self.layout = "official"
        stems = [only] if only else list(MCQ_FILES)
        absent = [s for s in stems if not (folder / f"{s}.json").is_file()]
        if absent:
            raise AnnotationDefect(f"{folder}: not the MLVU dev JSON folder ({absent[0]}.json missing; expected "
                                   f"{', '.join(s + '.json' for s in MCQ_FILES)})")
        if only in OPEN_FILES:
            raise AnnotationDefect(f"{folder / only}.json: open-ended task ({OPEN_FILES[only]}, judged by GPT), "
                                   f"not part of the multiple-choice benchmark")
        self.skipped = {f"{s}.json": f"open-ended task {t} (GPT-judged, not scored here)"
                        for s, t in OPEN_FILES.items() if not only and (folder / f"{s}.json").is_file()}
        videos: dict[str, BenchVideo] = {}
        defects: dict[str, str] = {}
        for stem in stems:
            path = folder / f"{stem}.json"
            items = _read_json_array(path)
            for i, item in enumerate(items):
                qid = f"{stem}/{i}"
                where = f"{path.name}[{i}]"
                if not isinstance(item, dict):
                    raise AnnotationDefect(f"{where}: not an object")
                for key in ("video", "question", "candidates", "answer", "question_type"):
                    if key not in item:
                        raise AnnotationDefect(f"{where}: no {key!r} (not an MLVU dev item)")
                task = QUESTION_TYPES.get(item["question_type"])
                if task != MCQ_FILES[stem]:
                    raise AnnotationDefect(f"{where}: question_type {item['question_type']!r} does not belong in "
                                           f"{path.name}")
                cands = item["candidates"]
                if not isinstance(cands, list) or not all(isinstance(c, str) for c in cands):
                    raise AnnotationDefect(f"{where}: candidates must be a list of strings")
                if item["answer"] not in cands:
                    if qid in self.KNOWN_DEFECTS:
                        defects[qid] = self.KNOWN_DEFECTS[qid]
                        continue
                    raise AnnotationDefect(f"{where} ({item['video']}): answer {item['answer']!r} is not one of its "
                                           f"candidates")
                ref = f"{stem}/{item['video']}"
                q = BenchQuestion(qid=qid, video=ref, question=str(item["question"]).strip(), options=list(cands),
                                  answer=LETTERS[cands.index(item["answer"])], kind="mcq", ask_time=None, task=task,
                                  fields={"question_type": item["question_type"]},
                                  extra={"duration": item.get("duration")})
                videos.setdefault(ref, BenchVideo(ref=ref, questions=[], duration=_seconds(item.get("duration"))))
                videos[ref].questions.append(q)
        return Loaded(videos=list(videos.values()), defects=defects)

    def _load_lmms(self, path: Path) -> Loaded:
        self.layout = "lmms-eval"
        rows = read_rows(path, "lmms-eval MLVU")
        videos: dict[str, BenchVideo] = {}
        defects: dict[str, str] = {}
        seen: set[str] = set()
        for i, row in enumerate(rows):
            where = f"{path.name}[{i}]"
            if not isinstance(row, dict):
                raise AnnotationDefect(f"{where}: not an object")
            for key in ("video_name", "question", "answer", "task_type"):
                if key not in row:
                    raise AnnotationDefect(f"{where}: no {key!r} (not an lmms-eval MLVU row)")
            qid = str(row.get("question_id") or f"{row['task_type']}_{i}")
            where = f"{path.name}[{i}] ({qid})"
            if qid in seen:
                raise AnnotationDefect(f"{where}: question id appears twice")
            seen.add(qid)
            task = QUESTION_TYPES.get(row["task_type"])
            if task is None:
                if row["task_type"] in OPEN_FILES.values() or row["task_type"] == "sub_scene":
                    self.skipped[row["task_type"]] = "open-ended task (GPT-judged, not scored here)"
                    continue
                raise AnnotationDefect(f"{where}: unknown task_type {row['task_type']!r} (MLVU dev has "
                                       f"{', '.join(TASKS)})")
            stem, options = split_lettered(str(row["question"]))
            cands = row.get("candidates")
            if cands is not None and not isinstance(cands, list):
                cands = list(cands)  # numpy arrays from parquet
            if cands:
                cands = [str(c) for c in cands]
                if options and options != cands:
                    raise AnnotationDefect(f"{where}: the options in the question differ from its candidates")
                options = cands
            if not options:
                raise AnnotationDefect(f"{where}: no options (neither in the question nor in candidates)")
            video = str(row["video_name"])
            name = video.rsplit("/", 1)[-1]
            if name in self.DEFECT_VIDEOS and stem.strip() == DEFECT_QUESTION:
                defects[qid] = self.KNOWN_DEFECTS[self.DEFECT_VIDEOS[name]]
                continue
            answer = str(row["answer"]).strip().strip("()")
            if answer not in LETTERS[:len(options)]:
                if str(row["answer"]) in options:  # some exports keep the option text
                    answer = LETTERS[options.index(str(row["answer"]))]
                else:
                    raise AnnotationDefect(f"{where}: answer {row['answer']!r} is not one of "
                                           f"{LETTERS[:len(options)]}")
            q = BenchQuestion(qid=qid, video=video, question=stem.strip(), options=options, answer=answer,
                              kind="mcq", ask_time=None, task=task, fields={"question_type": row["task_type"]},
                              extra={"duration": row.get("duration")})
            videos.setdefault(video, BenchVideo(ref=video, questions=[], duration=_seconds(row.get("duration"))))
            videos[video].questions.append(q)
        return Loaded(videos=list(videos.values()), defects=defects)

    def video_path(self, root: Path, video: BenchVideo) -> Path:
        """Official layout: ``root/{n}_{task}/{video}``, else ``root/{video}`` if only that exists; lmms-eval
        layout: ``root/{video_name}``."""
        path = root / video.ref
        if not path.is_file() and "/" in video.ref:
            flat = root / video.ref.rsplit("/", 1)[-1]
            if flat.is_file():
                return flat
        return path

    # prompt, extraction, aggregates ------------------------------------------------------------------

    def prompt(self, q: BenchQuestion) -> str:
        options = "\n".join(f"({letter}) {text}" for letter, text in zip(q.letters, q.options))
        return f"{SYSTEM}\nQuestion: {q.question}\nOptions:\n{options}\nOnly give the best option."

    def answer_prefix(self, q: BenchQuestion) -> str:
        return ANSWER_PREFIX

    def extract(self, reply: str, q: BenchQuestion) -> str | None:
        return extract_paren(reply, q.letters)

    def summarize(self, rows: list[dict]) -> dict[str, Any]:
        tasks: dict[str, list[bool]] = {t: [] for t in TASKS}
        for r in rows:
            tasks.setdefault(r["task"], []).append(bool(r["correct"]))
        return {"M-Avg": macro(tasks),
                "tasks": {t: {"n": len(v), "accuracy": micro(v)} for t, v in tasks.items() if v},
                "overall": micro([bool(r["correct"]) for r in rows])}


def extract_paren(reply: str, letters: str) -> str | None:
    """The official MLVU rule: the character just before the first ``)``; without ``)``, the whole reply (stripped)
    must be the letter. None when that is not one of ``letters``."""
    text = reply.strip()
    if ")" in text:
        k = text.index(")")
        pred = text[k - 1:k]
    else:
        pred = text
    return pred if len(pred) == 1 and pred in letters else None


def split_lettered(text: str) -> tuple[str, list[str]]:
    """An lmms-eval MLVU question: (stem, option texts). Accepts ``Question: ...\\nOptions:\\n(A) ...`` and a stem
    followed by ``(A) ...`` / ``A. ...`` lines; the letters must run A, B, C, ..."""
    body = text.strip()
    if body.startswith("Question:"):
        body = body[len("Question:"):]
    lines = body.split("\n")
    options: list[str] = []
    stem: list[str] = []
    for line in lines:
        m = re.match(r"^\s*\(?([A-G])[.)]\s*(.*)$", line)
        if m and m.group(1) == LETTERS[len(options)]:
            options.append(m.group(2).strip())
        elif options:
            options[-1] += "\n" + line
        elif line.strip() != "Options:":
            stem.append(line)
    return "\n".join(stem).strip(), options


def _seconds(x: Any) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def _read_json_array(path: Path) -> list:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnnotationDefect(f"{path}: not readable JSON ({type(exc).__name__})") from None
    if not isinstance(data, list):
        raise AnnotationDefect(f"{path}: expected a JSON array of items")
    return data
