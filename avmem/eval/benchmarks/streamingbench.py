"""StreamingBench (THUNLP-MT/StreamingBench): real-time visual, omni-source (audio) and contextual understanding
of a video stream, each question asked at its ``time_stamp``.

Layout (the repository's ``src/data/questions_{real,omni,sqa,proactive}.json``; the annotation argument is one of
these files or a folder holding any of them):

* ``questions_real.json`` / ``questions_omni.json`` / ``questions_proactive.json``: a JSON array of *subsets*
  ``{time, questions: [...], video_categories, video_path}``; several subsets share one ``video_path``;
* ``questions_sqa.json``: a JSON array of per-video arrays of such subsets (sequential QA, in question order);
* a multiple-choice question: ``{task_type, question, time_stamp "HH:MM:SS", answer (letter), options,
  required_ability}``; options are bare texts or pre-lettered ``"A. x"`` / ``"A.x"``;
* a proactive question: ``{task_type: "Proactive Output", question, time_stamp, ground_truth_time_stamp,
  ground_truth_output, required_ability}``.

Question ids (the files have none): ``"{kind}/{video_path}#{i}"`` with ``i`` the question's index within its
video in file order; proactive polls add ``"@{t}:trigger"`` / ``"@{t}:content"``.

Protocol and scoring follow the official ``src/benchmark/StreamingBench*.py`` and ``scripts/stats`` counting:

* MCQ prompt: ``PROMPT_TEMPLATE`` + ``"\\n\\nThe best option is:"``; the reply's first character is compared with
  the answer letter; empty replies are left out of the denominator; accuracy per ``task_type``;
* ``context_time`` (benchmark attribute, seconds; -1 = all context, as scripts/eval.sh; the paper's main table
  uses 60): the official clip starts at ``max(0, t - context_time)``; recorded as ``extra["window_start"]``;
* sequential QA: the prompt holds every earlier question of the same video with its options and its
  *annotated* answer (the official code puts ``question['answer']``, not the model's reply);
  ``extra["context"]`` holds them and ``extra["context_qids"]`` their ids;
* proactive output: polled each second from ``time_stamp + 1`` to ``ground_truth_time_stamp + 4`` with "Is it
  the right time to output ...? yes or no"; at the first reply containing "yes" the question itself is asked and
  polling stops. Scored: the last interaction time within ±2 s of the ground truth (``time_accuracy``) and, then,
  ``ground_truth_output`` contained in the last reply (``answer_accuracy``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from avmem.eval.benchmarks import (
    LETTERS,
    AnnotationDefect,
    Benchmark,
    BenchQuestion,
    BenchVideo,
    Loaded,
    register_benchmark,
)

REAL_TIME = "Real-Time Visual Understanding"
OMNI = "Omni-Source Understanding"
CONTEXTUAL = "Contextual Understanding"
CATEGORY_OF_TASK = {
    **{t: REAL_TIME for t in ("Object Perception", "Causal Reasoning", "Clips Summarize", "Attribute Perception",
                              "Event Understanding", "Text-Rich Understanding", "Prospective Reasoning",
                              "Spatial Understanding", "Action Perception", "Counting")},
    **{t: OMNI for t in ("Emotion Recognition", "Scene Understanding", "Source Discrimination",
                         "Multimodal Alignment")},
    **{t: CONTEXTUAL for t in ("Misleading Context Understanding", "Anomaly Context Understanding",
                               "Sequential Question Answering", "Proactive Output")},
}
CATEGORY_OF_FILE = {"real": REAL_TIME, "omni": OMNI, "sqa": CONTEXTUAL, "proactive": CONTEXTUAL}
FILES = ("real", "omni", "sqa", "proactive")
PROACTIVE = "Proactive Output"
PROACTIVE_TOLERANCE = 2.0
PROACTIVE_AFTER = 4
PROACTIVE_LOOKBACK = 80

MCQ_PROMPT = ("You are an advanced video question-answering AI assistant. You have been provided with some frames "
              "from the video and a multiple-choice question related to the video. Your task is to carefully analyze "
              "the video and provide the best answer to question, choosing from the {count} options provided. "
              "Respond with only the letter ({letters}) of the correct option.\n\nQuestion: {question}\n\n"
              "Options:\n{options}\n\nThe best option is:")
SQA_PROMPT = ("You are an advanced video question-answering AI assistant. You have been provided with a video and a "
              "multiple-choice question related to the video. Your task is to carefully analyze the video and the "
              "provided context to answer the question, choosing from the {count} options provided. Respond with "
              "only the letter ({letters}) of the correct option.\n\n{context}\n\nHere is the question. Answer it "
              "and don't confuse it with the previous conversation.\nQuestion: {question}\n\nOptions:\n{options}\n\n"
              "The best option is:")
SQA_CONTEXT_HEAD = ("Here are the contextual information related to the video. Please answer the questions based on "
                    "the contextual information: ")
SQA_CONTEXT_ITEM = ("At timestamp {time_stamp}, the following question and answer occurred: Question: {question}; "
                    "Options: {options}; Answer: {answer}; ")
PROACTIVE_PROMPT = ("You are an advanced image question-answering AI assistant. You have been provided with images and "
                    "a question related to the images. Your task is to carefully analyze the images and provide the "
                    "answer to the question. You need to carefully confirm whether the images content meet the "
                    "conditions of the question, and then output the correct content.\n\nQuestion: {question}\n\n"
                    "The answer is:\n")
PROACTIVE_TRIGGER = '{question} Is it the right time to output "{output}"? You can only answer yes or no.'
_NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven"}


def parse_timestamp(text: Any, where: str) -> int:
    """``"HH:MM:SS"`` (or ``MM:SS`` / ``SS``) -> seconds, as the official code converts them."""
    if not isinstance(text, str) or not re.fullmatch(r"\d+(:\d{1,2}){0,2}", text.strip()):
        raise AnnotationDefect(f"streamingbench {where}: bad time_stamp {text!r} (HH:MM:SS expected)")
    return sum(int(x) * 60 ** i for i, x in enumerate(reversed(text.strip().split(":"))))


def letter_list(letters: str) -> str:
    """"A, B, C, or D" for "ABCD" (the official prompt's wording for four options)."""
    return ", ".join(letters[:-1]) + ", or " + letters[-1] if len(letters) > 2 else " or ".join(letters)


def proactive_triggered(reply: str | None) -> bool:
    """Official trigger rule: "yes" anywhere in the lower-cased reply."""
    return reply is not None and "yes" in reply.strip().lower()


def score_proactive(polls: list[tuple[float, str | None, str | None]], gt_time: float, gt_output: str,
                    tolerance: float = PROACTIVE_TOLERANCE) -> tuple[bool, bool, float | None]:
    """Official proactive score of one item from its polls ``(time, trigger reply, content reply)`` in time order.

    The interaction stops at the first triggered poll (its content reply is the answer); without a trigger the
    last poll's trigger reply is the last word. Returns (time correct: the last interaction within ``tolerance``
    seconds of ``gt_time``; answer correct: time correct and ``gt_output`` in the last reply; that time).
    """
    if not polls:
        return False, False, None
    polls = sorted(polls, key=lambda p: p[0])
    last_time, last_reply = polls[-1][0], polls[-1][1]
    for t, trigger, content in polls:
        if proactive_triggered(trigger):
            last_time, last_reply = t, content
            break
    time_ok = abs(last_time - gt_time) <= tolerance
    return time_ok, time_ok and last_reply is not None and gt_output in last_reply, last_time


@register_benchmark("streamingbench")
class StreamingBench(Benchmark):
    """StreamingBench loader, prompts and official scoring (see the module docstring).

    Args:
        context_time: seconds of video before each question the official run shows (-1: all, the default of
            scripts/eval.sh; 60 in the paper's main table). Recorded per question as ``extra["window_start"]``.
    """

    extraction = "streamingbench_first_char"

    def __init__(self, context_time: int = -1) -> None:
        self.context_time = context_time

    def window_start(self, q: BenchQuestion) -> float | None:
        """The official clip's start (``extra["window_start"]``): the last ``context_time`` seconds, or the
        proactive look-back; None when the clip starts at 0 (all context)."""
        start = float(q.extra.get("window_start") or 0.0)
        return start if start > 0 else None

    # ---------------------------------------------------------------- loading
    def load(self, annotations: Path) -> Loaded:
        path = Path(annotations)
        if path.is_dir():
            files = [(k, path / f"questions_{k}.json") for k in FILES if (path / f"questions_{k}.json").is_file()]
            if not files:
                raise AnnotationDefect(f"streamingbench: {path} holds none of questions_{{{','.join(FILES)}}}.json")
        elif path.is_file():
            m = re.fullmatch(r"questions_(real|omni|sqa|proactive)\.json", path.name)
            files = [(m.group(1) if m else self._guess_kind(path), path)]
        else:
            raise AnnotationDefect(f"streamingbench: no annotation file or folder at {path}")
        videos: dict[str, BenchVideo] = {}
        qids: set[str] = set()
        for kind, file in files:
            for q in self._load_file(kind, file):
                if q.qid in qids:
                    raise AnnotationDefect(f"streamingbench {q.qid}: duplicated question id")
                qids.add(q.qid)
                videos.setdefault(q.video, BenchVideo(ref=q.video, questions=[])).questions.append(q)
        return Loaded(videos=list(videos.values()))

    @staticmethod
    def _read(path: Path) -> Any:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AnnotationDefect(f"streamingbench: {path} is not readable JSON ({exc})") from None

    def _guess_kind(self, path: Path) -> str:
        data = self._read(path)
        if isinstance(data, list) and data and isinstance(data[0], list):
            return "sqa"
        if isinstance(data, list) and any(isinstance(s, dict) and any(
                isinstance(q, dict) and "ground_truth_time_stamp" in q for q in s.get("questions", []))
                for s in data):
            return "proactive"
        return "real"

    def _load_file(self, kind: str, path: Path) -> list[BenchQuestion]:
        data = self._read(path)
        if not isinstance(data, list):
            raise AnnotationDefect(f"streamingbench: {path} is not a JSON array of subsets (questions_{kind}.json)")
        groups = data if kind == "sqa" else [[s] for s in data]
        out: list[BenchQuestion] = []
        counters: dict[str, int] = {}
        for g, group in enumerate(groups):
            if not isinstance(group, list) or not all(isinstance(s, dict) for s in group):
                raise AnnotationDefect(f"streamingbench {path.name} entry {g}: not "
                                       + ("a list of subsets (questions_sqa.json layout)" if kind == "sqa"
                                          else "a subset object"))
            history: list[BenchQuestion] = []
            for subset in group:
                video = subset.get("video_path")
                questions = subset.get("questions")
                if not isinstance(video, str) or not video:
                    raise AnnotationDefect(f"streamingbench {path.name} entry {g}: no 'video_path'")
                if not isinstance(questions, list) or not all(isinstance(q, dict) for q in questions):
                    raise AnnotationDefect(f"streamingbench {path.name} entry {g}: 'questions' is not a list")
                ref = video[2:] if video.startswith("./") else video
                for item in questions:
                    i = counters.get(ref, 0)
                    counters[ref] = i + 1
                    qid = f"{kind}/{ref}#{i}"
                    task = item.get("task_type")
                    if not isinstance(task, str) or not task:
                        raise AnnotationDefect(f"streamingbench {qid}: no task_type")
                    fields = {"category": CATEGORY_OF_TASK.get(task, CATEGORY_OF_FILE[kind]), "file": kind,
                              "video_category": subset.get("video_categories"),
                              "required_ability": item.get("required_ability")}
                    if kind == "proactive" or task == PROACTIVE:
                        out.extend(self._proactive(qid, ref, task, item, fields))
                        continue
                    q = self._mcq(qid, ref, task, item, fields)
                    if kind == "sqa":
                        q.extra["context_qids"] = [h.qid for h in history]
                        q.extra["context"] = [{"qid": h.qid, "time_stamp": h.extra["time_stamp"],
                                               "question": h.question, "options": h.options, "answer": h.answer}
                                              for h in history]
                        history.append(q)
                    out.append(q)
        return out

    def _window(self, t: float) -> float:
        return max(0.0, t - self.context_time) if self.context_time > 0 else 0.0

    def _mcq(self, qid: str, ref: str, task: str, item: dict, fields: dict) -> BenchQuestion:
        question, options, answer = item.get("question"), item.get("options"), item.get("answer")
        if not isinstance(question, str) or not question.strip():
            raise AnnotationDefect(f"streamingbench {qid}: no question")
        if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
            raise AnnotationDefect(f"streamingbench {qid}: 'options' is not a list of texts")
        lettered = bool(options) and options[0].startswith("A.")
        if lettered:
            texts = []
            for letter, option in zip(LETTERS, options):
                if not option.startswith(f"{letter}."):
                    raise AnnotationDefect(f"streamingbench {qid}: option {option[:30]!r} should start with "
                                           f"'{letter}.' (options are lettered from 'A.')")
                texts.append(option[2:].strip())
            options = texts
        if not isinstance(answer, str):
            raise AnnotationDefect(f"streamingbench {qid}: answer {answer!r} is not a letter")
        t = parse_timestamp(item.get("time_stamp"), qid)
        return BenchQuestion(qid=qid, video=ref, question=question, options=options, answer=answer.strip(),
                             kind="mcq", ask_time=float(t), task=task, fields=fields,
                             extra={"time_stamp": item["time_stamp"], "window_start": self._window(t)})

    def _proactive(self, qid: str, ref: str, task: str, item: dict, fields: dict) -> list[BenchQuestion]:
        question, output = item.get("question"), item.get("ground_truth_output")
        if not isinstance(question, str) or not question.strip():
            raise AnnotationDefect(f"streamingbench {qid}: no question")
        if not isinstance(output, str) or not output:
            raise AnnotationDefect(f"streamingbench {qid}: no ground_truth_output")
        start = parse_timestamp(item.get("time_stamp"), qid)
        gt = parse_timestamp(item.get("ground_truth_time_stamp"), qid)
        if gt < start:
            raise AnnotationDefect(f"streamingbench {qid}: ground_truth_time_stamp {item['ground_truth_time_stamp']}"
                                   f" is before time_stamp {item['time_stamp']}")
        base = {**fields, "proactive": qid, "gt_time": float(gt), "gt_output": output}
        extra = {"time_stamp": item["time_stamp"], "window_start": float(max(0, start - PROACTIVE_LOOKBACK)),
                 "instruction": question}
        out = []
        for t in range(start + 1, gt + PROACTIVE_AFTER + 1):
            for role in ("trigger", "content"):
                stem = PROACTIVE_TRIGGER.format(question=question, output=output) if role == "trigger" else question
                out.append(BenchQuestion(qid=f"{qid}@{t}:{role}", video=ref, question=stem, options=[],
                                         answer=output, kind="probe", ask_time=float(t), task=task,
                                         fields={**base, "role": role, "poll_time": float(t)}, extra=dict(extra)))
        return out

    # ---------------------------------------------------------------- prompts
    def prompt(self, q: BenchQuestion, history: dict[str, str] | None = None) -> str:
        """The official prompt of ``q``.

        Sequential QA: the earlier questions of the video with their annotated answers (official); ``history``
        (qid -> letter) replaces those answers, e.g. by the model's own earlier predictions.
        """
        if q.kind == "probe":
            return PROACTIVE_PROMPT.format(question=q.question)
        lines = "\n".join(q.lettered_options())
        common = {"count": _NUMBERS[len(q.options)], "letters": letter_list(q.letters), "question": q.question,
                  "options": lines}
        if "context" not in q.extra:
            return MCQ_PROMPT.format(**common)
        context = ""
        for h in q.extra["context"]:
            letters = LETTERS[:len(h["options"])]
            answer = history.get(h["qid"], h["answer"]) if history else h["answer"]
            context += SQA_CONTEXT_ITEM.format(
                time_stamp=h["time_stamp"], question=h["question"], answer=answer,
                options=", ".join(f"{lt}. {o}" for lt, o in zip(letters, h["options"])))
        return SQA_PROMPT.format(context=SQA_CONTEXT_HEAD + context if context else "", **common)

    # ---------------------------------------------------------------- scoring
    def extract(self, reply: str, q: BenchQuestion) -> str | None:
        """MCQ: the reply's first character when it is an option letter (official rule: first character);
        probes: the reply itself."""
        if q.kind != "mcq":
            return reply.strip()
        return reply[:1] if reply[:1] and reply[:1] in q.letters else None

    def correct(self, predicted: str | None, q: BenchQuestion) -> bool | None:
        """MCQ: the letter; proactive polls: None (scored per item by :func:`score_proactive` in summarize)."""
        if q.kind == "probe":
            return None
        return predicted is not None and predicted == q.answer

    @staticmethod
    def score_mcq_row(row: dict) -> bool | None:
        """Official MCQ score of a result row: None when the reply is empty (left out), else its first character
        == the answer (``predicted`` stands in when no reply was generated, e.g. likelihood)."""
        reply = row.get("reply")
        if reply is None:
            reply = row.get("predicted") or ""
        if not reply:
            return None
        return reply[0] == row["answer"]

    def summarize(self, rows: list[dict]) -> dict[str, Any]:
        """Official per-task accuracy (percent; empty replies left out), ``files`` (the official count script's
        ``total`` per annotation file: micro), ``categories`` (micro over the paper's three groups), ``overall``
        (micro over all scored items, a proactive item counting as correct when its answer is), and ``proactive``
        (``time_accuracy`` / ``answer_accuracy``)."""
        per_task: dict[str, list[bool]] = {}
        per_file: dict[str, list[bool]] = {}
        per_cat: dict[str, list[bool]] = {}
        skipped = 0
        polls: dict[str, dict[float, dict[str, str | None]]] = {}
        meta: dict[str, dict] = {}
        for row in rows:
            f = row.get("fields") or {}
            if row.get("kind") == "probe":
                item = f["proactive"]
                meta[item] = {"task": row["task"], "file": f.get("file", "proactive"), "gt_time": f["gt_time"],
                              "gt_output": f["gt_output"], "category": f.get("category", CONTEXTUAL)}
                polls.setdefault(item, {}).setdefault(float(f["poll_time"]), {})[f["role"]] = row.get("reply")
                continue
            score = self.score_mcq_row(row)
            if score is None:
                skipped += 1
                continue
            for table, key in ((per_task, row["task"]), (per_file, f.get("file", "?")),
                               (per_cat, f.get("category", "?"))):
                table.setdefault(key, []).append(score)
        time_ok: list[bool] = []
        answer_ok: list[bool] = []
        for item, by_time in polls.items():
            m = meta[item]
            p = [(t, r.get("trigger"), r.get("content")) for t, r in by_time.items()]
            t_ok, a_ok, _ = score_proactive(p, m["gt_time"], m["gt_output"])
            time_ok.append(t_ok)
            answer_ok.append(a_ok)
            for table, key in ((per_task, m["task"]), (per_file, m["file"]), (per_cat, m["category"])):
                table.setdefault(key, []).append(a_ok)
        pct = {k: 100.0 * sum(v) / len(v) for k, v in per_task.items()}
        everything = [s for v in per_task.values() for s in v]
        out: dict[str, Any] = {
            "tasks": pct,
            "counts": {k: len(v) for k, v in per_task.items()},
            "files": {k: 100.0 * sum(v) / len(v) for k, v in per_file.items()},
            "categories": {k: 100.0 * sum(v) / len(v) for k, v in per_cat.items()},
            "overall": 100.0 * sum(everything) / len(everything) if everything else float("nan"),
            "empty_replies": skipped,
            "extraction": self.extraction,
        }
        if polls:
            out["proactive"] = {"items": len(time_ok), "time_accuracy": 100.0 * sum(time_ok) / len(time_ok),
                                "answer_accuracy": 100.0 * sum(answer_ok) / len(answer_ok)}
        return out
