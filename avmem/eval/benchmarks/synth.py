"""The synthetic benchmark of ``avmem synth`` (``OUT/{split}.json``) as a registered benchmark ("synth").

Videos are named by the annotation's ``video`` entry (``videos/{split}_NNNN.mp4``) relative to ``--video-root``
(default: the annotation file's folder). Questions keep their ``asked_at`` as the ask time, ``task_type`` as the
task and ``event_time`` in ``fields``. Prompt: the Video-MME prompt the synthetic training data uses; extraction:
the Video-MME scorer's rule (first capital option letter after the stock phrases are dropped).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import AnnotationDefect, Benchmark, BenchQuestion, BenchVideo, Loaded, macro, micro, register_benchmark


@register_benchmark("synth")
class SynthBenchmark(Benchmark):
    """``avmem synth`` annotations: 4 options A-D, answers asked at ``asked_at``."""

    extraction = "videomme_official"

    def load(self, annotations: Path) -> Loaded:
        from ...synth.benchmark import load_annotations

        annotations = Path(annotations)
        try:
            items = load_annotations(annotations)
        except ValueError as exc:
            raise AnnotationDefect(str(exc)) from None
        videos = []
        seen: set[str] = set()
        for path, questions in items:
            ref = path.relative_to(annotations.parent).as_posix()
            qs = []
            for q in questions:
                if q.question_id in seen:
                    raise AnnotationDefect(f"{annotations}: question id {q.question_id} appears twice")
                seen.add(q.question_id)
                qs.append(BenchQuestion(qid=q.question_id, video=ref, question=q.question,
                                        options=list(q.option_texts), answer=q.answer, kind="mcq",
                                        ask_time=float(q.asked_at), task=q.task_type,
                                        fields={"event_time": q.event_time}))
            videos.append(BenchVideo(ref=ref, questions=qs))
        return Loaded(videos=videos)

    def prompt(self, q: BenchQuestion) -> str:
        from ...synth.benchmark import PROMPT

        return "\n".join([PROMPT, q.question, *q.lettered_options(". "), "The best answer is:"])

    def extract(self, reply: str, q: BenchQuestion) -> str | None:
        from ...synth.benchmark import extract_letter

        letter = extract_letter(reply)
        return letter if letter and letter in q.letters else None

    def summarize(self, rows: list[dict]) -> dict[str, Any]:
        tasks: dict[str, list[bool]] = {}
        for r in rows:
            tasks.setdefault(r["task"], []).append(bool(r["correct"]))
        return {"overall": micro([bool(r["correct"]) for r in rows]), "task_macro": macro(tasks),
                "tasks": {t: {"n": len(v), "accuracy": micro(v)} for t, v in sorted(tasks.items())}}
