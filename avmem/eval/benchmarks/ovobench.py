"""OVO-Bench (JoeLeelyf/OVO-Bench, ``data/ovo_bench_new.json``): backward tracing, real-time visual perception
and forward active responding, asked while the video streams.

Layout (one JSON array, 1,640 items, ``id`` 0..1639):

* backward (EPM, HLD, ASI) and real-time (OJR, STU, OCR, ATR, ACR, FPD) items are multiple choice:
  ``{id, task, video, realtime, question, options (texts), answer (text), gt (0-based index)}``; the question is
  asked at ``realtime`` (the model sees the stream up to there); the correct letter is ``chr(65 + gt)`` (the
  official scorer uses ``gt``; ``answer`` is free text that often differs from ``options[gt]``);
* forward items (REC, SSR, CRR) hold ``test_info`` probes, each asked at its own ``realtime``: REC
  ``{realtime, count}`` (how many times so far), SSR ``{realtime, step, type}`` (type 1: the step is being
  performed now), CRR ``{realtime, type}`` (type 1: the clue has appeared). Each probe becomes one ``probe``
  question ``"{id}#{k}"``.

Video naming: ``video`` is the path relative to the dataset's ``src_videos/`` folder (``Ego4D/clips/<uuid>.mp4``,
``YouTube_Games/...&index=1.mp4``); ``--video-root`` is that folder. The pre-cut ``chunked_videos/{id}.mp4`` clips
are not used: one streaming pass over the source video serves every item of it.

Scoring (``utils/OVOBenchScore.py``): MCQ ``gt_letter in reply`` (substring, ``ovo_substring``); REC all digits of
the reply concatenated == ``str(count)``; SSR/CRR an exact reply "N"/"Y" for type 0/1, otherwise "No"/"Yes" in
the reply (case-sensitive); no reply scores 0. Accuracy per task (forward tasks: over probes), each mode's
average = mean of its task accuracies, overall = mean of the three mode averages (×100).
"""

from __future__ import annotations

import json
import math
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
    extract_strict,
    register_benchmark,
)

BACKWARD_TASKS = ("EPM", "ASI", "HLD")
REALTIME_TASKS = ("OCR", "ACR", "ATR", "STU", "FPD", "OJR")
FORWARD_TASKS = ("REC", "SSR", "CRR")
MODES = {"backward": BACKWARD_TASKS, "realtime": REALTIME_TASKS, "forward": FORWARD_TASKS}
MODE_OF = {task: mode for mode, tasks in MODES.items() for task in tasks}

# Prompt texts of the official constant.py (curly quotes around Yes/No as published).
MCQ_PROMPT = ("\nQuestion: {question}\nOptions:\n{options}\n\nRespond only with the letter corresponding to your chosen "
              "option (e.g., A, B, C). \nDo not include any additional text or explanation in your response.\n")
REC_PROMPT = ("\nYou're watching a video in which people may perform a certain type of action repetively. \n"
              "The person performing this kind of action are referred to as 'they' in the following statement.\n"
              "You're task is to count how many times have different people in the video perform this kind of action "
              "in total.\nOne complete motion counts as one. \nNow, answer the following question: {question}\n"
              "Provide your answer as a single number (e.g., 0, 1, 2, 3\u2026) indicating the total count.\n"
              "Do not include any additional text or explanation in your response.\n")
SSR_PROMPT = ("\nYou're watching a tutorial video which contain a sequential of steps. \n"
              "The following is one step from the whole procedures: \n{step}\n"
              "Your task is to determine if the man or woman in the video is currently performing this step.\n"
              "Answer only with \u201cYes\u201d or \u201cNo\u201d.\n"
              "Do not include any additional text or explanation in your response.\n")
CRR_PROMPT = ("\nYou're responsible of answering questions based on the video content. \n"
              "The following question are relevant to the latest frames, i.e. the end of the video.\n{question}\n"
              "Decide whether existing visual content, especially latest frames, i.e. frames that near the end of the "
              "video, provide enough information for answering the question.\n"
              "Answer only with \u201cYes\u201d or \u201cNo\u201d.\n"
              "Do not include any additional text or explanation in your response.\n")

# Items of the published file that are kept (the official scorer scores them by ``gt``) but are odd; named so
# that results on them can be read with care. ``drop_anomalies=True`` leaves them out as defects instead.
KNOWN_ANOMALIES: dict[str, str] = {
    **{str(i): "the 'answer' text is a different option than options[gt] (scored by gt, as the official scorer)"
       for i in (609, 707, 755, 766, 869, 918, 931, 1220)},
    "642": "options A and C are identical",
    "1326": "options carry their own letters out of order ('A. Wade', 'B. Tyler', 'D. Carter', 'C. Jensen')",
}


def _time(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise AnnotationDefect(f"ovobench item {where}: bad time {value!r}")
    return float(value)


def score_mcq(reply: str | None, letter: str) -> bool:
    """Official MCQ rule: the correct letter occurs anywhere in the reply (``ovo_substring``)."""
    return bool(reply) and letter in reply


def score_rec(reply: str | None, count: int) -> bool:
    """Official REC rule: all digits of the reply concatenated equal ``str(count)``."""
    return reply is not None and "".join(re.findall(r"\d+", reply)) == str(count)


def score_yes_no(reply: str | None, kind: int) -> bool:
    """Official SSR/CRR rule: exactly "N"/"Y" for type 0/1, else "No"/"Yes" in the reply (case-sensitive)."""
    if reply is None:
        return False
    if (reply == "N" and kind == 0) or (reply == "Y" and kind == 1):
        return True
    return ("Yes" if kind == 1 else "No") in reply


@register_benchmark("ovobench")
class OVOBench(Benchmark):
    """OVO-Bench loader, prompts and official scorer (see the module docstring).

    Args:
        drop_anomalies: leave the items of :data:`KNOWN_ANOMALIES` out (reported as ``defects``); default keeps
            them, as the official scorer does.
    """

    extraction = "ovo_substring"

    def __init__(self, drop_anomalies: bool = False) -> None:
        self.drop_anomalies = drop_anomalies
        self.KNOWN_DEFECTS = dict(KNOWN_ANOMALIES) if drop_anomalies else {}

    def load(self, annotations: Path) -> Loaded:
        path = Path(annotations)
        if path.is_dir():
            path = path / "ovo_bench_new.json"
        if not path.is_file():
            raise AnnotationDefect(f"ovobench: no annotation file at {path}")
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AnnotationDefect(f"ovobench: {path} is not readable JSON ({exc})") from None
        if not isinstance(items, list) or not all(isinstance(it, dict) for it in items):
            raise AnnotationDefect(f"ovobench: {path} is not a JSON array of items (ovo_bench_new.json layout)")
        videos: dict[str, BenchVideo] = {}
        seen: set[str] = set()
        defects: dict[str, str] = {}
        for n, item in enumerate(items):
            iid = str(item.get("id", f"#{n}"))
            if iid in seen:
                raise AnnotationDefect(f"ovobench item {iid}: duplicated id")
            seen.add(iid)
            if iid in self.KNOWN_DEFECTS:
                defects[iid] = self.KNOWN_DEFECTS[iid]
                continue
            for q in self._questions(item, iid):
                videos.setdefault(q.video, BenchVideo(ref=q.video, questions=[])).questions.append(q)
        return Loaded(videos=list(videos.values()), defects=defects)

    def _questions(self, item: dict, iid: str) -> list[BenchQuestion]:
        task = item.get("task")
        if task not in MODE_OF:
            raise AnnotationDefect(f"ovobench item {iid}: unknown task {task!r} (not one of {sorted(MODE_OF)})")
        video = item.get("video")
        if not isinstance(video, str) or not video:
            raise AnnotationDefect(f"ovobench item {iid}: no 'video' path")
        fields = {"mode": MODE_OF[task], "item": iid}
        if MODE_OF[task] != "forward":
            options, gt, question = item.get("options"), item.get("gt"), item.get("question")
            if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
                raise AnnotationDefect(f"ovobench item {iid}: 'options' is not a list of texts")
            if not isinstance(question, str) or not question.strip():
                raise AnnotationDefect(f"ovobench item {iid}: no question")
            if isinstance(gt, bool) or not isinstance(gt, int) or not 0 <= gt < len(options):
                raise AnnotationDefect(f"ovobench item {iid}: gt {gt!r} is not an index into its "
                                       f"{len(options)} options")
            extra = {"answer_text": item.get("answer")}
            if iid in KNOWN_ANOMALIES:
                extra["anomaly"] = KNOWN_ANOMALIES[iid]
            return [BenchQuestion(qid=iid, video=video, question=question, options=list(options),
                                  answer=LETTERS[gt] if gt < len(LETTERS) else "?", kind="mcq",
                                  ask_time=_time(item.get("realtime"), iid), task=task, fields=fields,
                                  extra=extra)]
        probes = item.get("test_info")
        if not isinstance(probes, list) or not probes or not all(isinstance(p, dict) for p in probes):
            raise AnnotationDefect(f"ovobench item {iid}: forward task {task} without 'test_info' probes")
        if task == "REC":
            activity = item.get("activity")
            if not isinstance(activity, str) or not activity.strip():
                raise AnnotationDefect(f"ovobench item {iid}: REC item without 'activity'")
            stem = f"How many times did they {activity}?"
        elif task == "CRR":
            stem = item.get("question")
            if not isinstance(stem, str) or not stem.strip():
                raise AnnotationDefect(f"ovobench item {iid}: CRR item without 'question'")
        out = []
        for k, probe in enumerate(probes):
            qid = f"{iid}#{k}"
            t = _time(probe.get("realtime"), qid)
            if task == "REC":
                count = probe.get("count")
                if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                    raise AnnotationDefect(f"ovobench item {qid}: REC probe count {count!r} is not a count")
                answer, extra = str(count), {"count": count}
            else:
                kind = probe.get("type")
                if kind not in (0, 1) or isinstance(kind, bool):
                    raise AnnotationDefect(f"ovobench item {qid}: {task} probe type {kind!r} is not 0 or 1")
                answer, extra = ("Yes" if kind == 1 else "No"), {"type": kind}
                if task == "SSR":
                    stem = probe.get("step")
                    if not isinstance(stem, str) or not stem.strip():
                        raise AnnotationDefect(f"ovobench item {qid}: SSR probe without 'step'")
            out.append(BenchQuestion(qid=qid, video=video, question=stem, options=[], answer=answer, kind="probe",
                                     ask_time=t, task=task, fields={**fields, "probe": k}, extra=extra))
        return out

    def times_beyond(self, video: BenchVideo, duration: float, tolerance: float = 1.0) -> list[str]:
        """Question ids of ``video`` asked after ``duration`` + ``tolerance`` seconds (the official clips end at
        ``min(ceil(realtime), duration)``, so such a probe would see the whole video; the runner can report them)."""
        return [q.qid for q in video.questions if q.ask_time is not None and q.ask_time > duration + tolerance]

    def prompt(self, q: BenchQuestion) -> str:
        """The official prompt: options on one line as ``A. x; B. y;``, or the REC/SSR/CRR probe template."""
        if q.kind == "mcq":
            options = "; ".join(q.lettered_options()) + ";"
            return MCQ_PROMPT.format(question=q.question, options=options)
        if q.task == "REC":
            return REC_PROMPT.format(question=q.question)
        if q.task == "SSR":
            return SSR_PROMPT.format(step=q.question)
        return CRR_PROMPT.format(question=q.question)

    def extract(self, reply: str, q: BenchQuestion) -> str | None:
        """MCQ: the letter at the start of the reply (strict; None if none); probes: the reply itself. The official
        score is computed from the raw reply by :meth:`score_reply` (substring rule), not from this letter."""
        if q.kind == "mcq":
            return extract_strict(reply, q.letters)
        return reply.strip()

    def correct(self, predicted: str | None, q: BenchQuestion) -> bool | None:
        if predicted is None:
            return False
        if q.kind == "mcq":
            return predicted == q.answer
        return self._score(predicted, q.task, q.answer)

    @staticmethod
    def _score(reply: str | None, task: str, answer: str) -> bool:
        if task in FORWARD_TASKS:
            if task == "REC":
                return score_rec(reply, int(answer))
            return score_yes_no(reply, 1 if answer == "Yes" else 0)
        return score_mcq(reply, answer)

    def score_reply(self, row: dict) -> bool:
        """The official score of one result row from its raw ``reply`` (``predicted`` when no reply was generated,
        e.g. likelihood scoring, which records the chosen letter)."""
        reply = row.get("reply")
        if reply is None or reply == "":
            reply = row.get("predicted")
        return self._score(reply, row["task"], str(row["answer"]))

    def summarize(self, rows: list[dict]) -> dict[str, Any]:
        """Official aggregates (percent): per task, ``backward`` / ``realtime`` / ``forward`` (mean of their task
        accuracies), ``overall`` (mean of the mode averages present); also ``overall_task_mean`` (mean over all
        tasks, what an older OVOBenchScore.py printed as Total) and ``unparseable`` (MCQ replies without a letter
        at their start, which the substring rule may still score)."""
        per_task: dict[str, list[bool]] = {}
        unparseable = 0
        n_mcq = 0
        for row in rows:
            task = row["task"]
            if task not in MODE_OF:
                raise ValueError(f"ovobench summarize: row {row.get('qid')!r} has unknown task {task!r}")
            per_task.setdefault(task, []).append(self.score_reply(row))
            if task not in FORWARD_TASKS:
                n_mcq += 1
                unparseable += row.get("predicted") is None
        tasks = {t: 100.0 * sum(v) / len(v) for t, v in per_task.items()}
        out: dict[str, Any] = {"tasks": {t: tasks[t] for t in MODE_OF if t in tasks},
                               "counts": {t: len(per_task[t]) for t in MODE_OF if t in per_task}}
        modes = {}
        for mode, names in MODES.items():
            accs = [tasks[t] for t in names if t in tasks]
            if accs:
                modes[mode] = sum(accs) / len(accs)
                out[mode] = modes[mode]
        out["overall"] = sum(modes.values()) / len(modes) if modes else float("nan")
        out["overall_task_mean"] = sum(tasks.values()) / len(tasks) if tasks else float("nan")
        out["unparseable"] = unparseable / n_mcq if n_mcq else 0.0
        out["extraction"] = self.extraction
        return out
