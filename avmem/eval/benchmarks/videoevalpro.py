"""VideoEval-Pro: ``data/test-*.parquet`` of ``TIGER-Lab/VideoEval-Pro`` (or the same rows as JSON / JSONL).

Each row (``video``, ``question``, ``options``, ``answer`` letter, ``answer_text``, ``qa_type``,
``qa_subtype``, ``source``, ``meta``) gives two questions: ``{n}-open`` (kind "open": the short free-form
answer, the benchmark's headline task) and ``{n}-mcq`` (the original multiple-choice question), ``n`` the
row's index in the file (the rows carry no id of their own; an ``id`` / ``question_id`` column is used when
present). ``videoevalpro`` asks both, ``videoevalpro-mcq`` and ``videoevalpro-open`` one part.

Options: pre-lettered options ("A. x") are stripped to texts; options without prefixes are taken as texts.
The prompt shows them as published (the official code joins the published strings with spaces).

Video naming rule (``--video-root``): the first that exists of ``{video}``, ``videos/{video}``,
``videos_filtered/{video}`` (lmms-eval's folder).

Scoring: MCQ with the official ``option_judge`` (``videoevalpro_first_alpha``): lower-case the reply, keep what
follows the last "the answer is" (else "answer:", else "the option is"), its first alphabetic character
against the answer letter; plain mean over all MCQ items (a reply without a letter is wrong). Open answers are
judged by GPT-4o in the official code, which this harness cannot call: their ``correct`` is None, the raw
replies are kept and the summary reports them as ``needs_judge``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import AnnotationDefect, BenchQuestion, BenchVideo, Benchmark, Loaded, register_benchmark
from ._tabular import question, accuracy, all_prefixed, grouped, need, read_rows, strip_letter_prefixes

MCQ_INSTRUCTION = ("Select the best answer to the following multiple-choice question based on the video. "
                   "Respond with only the letter (A, B, C, or D) of the correct option, with no text around it.")
OPEN_SUFFIX = " Keep the answer short and concise."
VIDEO_NAMES = ("{}", "videos/{}", "videos_filtered/{}")


def extract_first_alpha(reply: str) -> str | None:
    """The official VideoEval-Pro MCQ reading of a reply: the first letter after the last answer phrase
    (upper-cased; None when the reply holds no letter at all)."""
    text = reply.lower()
    for phrase in ("the answer is", "answer:", "the option is"):
        if phrase in text:
            text = text.rsplit(phrase, 1)[1]
            break
    return next((c.upper() for c in text if c.isalpha()), None)


class _VideoEvalPro(Benchmark):
    """VideoEval-Pro rows -> open and/or MCQ questions."""

    extraction = "videoevalpro_first_alpha"
    parts: tuple[str, ...] = ("open", "mcq")

    def load(self, annotations: Path) -> Loaded:
        path = Path(annotations)
        if path.is_dir():
            found = sorted(path.glob("data/test-*.parquet")) or sorted(path.glob("test-*.parquet"))
            if not found:
                raise AnnotationDefect(f"{path}: no data/test-*.parquet in this folder")
            rows = [r for p in found for r in read_rows(p, "VideoEval-Pro")]
            path = found[0]
        else:
            rows = read_rows(path, "VideoEval-Pro")
        if not rows:
            raise AnnotationDefect(f"{path}: no questions")
        videos: dict[str, BenchVideo] = {}
        seen: set[str] = set()
        for n, row in enumerate(rows):
            rid = str(row.get("id", row.get("question_id", n)))
            item = f"{path.name}: row {rid}"
            need(row, ("video", "question", "qa_type"), item)
            if rid in seen:
                raise AnnotationDefect(f"{item}: duplicated id")
            seen.add(rid)
            common = dict(video=str(row["video"]), question=str(row["question"]).strip(), task=str(row["qa_type"]),
                          fields={"qa_type": row["qa_type"], "qa_subtype": row.get("qa_subtype"),
                                  "source": row.get("source")})
            qs = []
            if "open" in self.parts:
                need(row, ("answer_text",), item)
                qs.append(question(f"{path.name}: question", qid=f"{rid}-open", options=[],
                                   answer=str(row["answer_text"]), kind="open", **common))
            if "mcq" in self.parts:
                need(row, ("options", "answer"), item)
                raw = [str(o) for o in row["options"]]
                options = strip_letter_prefixes(raw, item) if all_prefixed(raw) else [o.strip() for o in raw]
                qs.append(question(f"{path.name}: question", qid=f"{rid}-mcq", options=options,
                                   answer=str(row["answer"]).strip(), kind="mcq", extra={"raw_options": raw},
                                   **common))
            for q in qs:
                videos.setdefault(q.video, BenchVideo(ref=q.video, questions=[])).questions.append(q)
        return Loaded(videos=list(videos.values()))

    def video_path(self, root: Path, video: BenchVideo) -> Path:
        return next((root / n.format(video.ref) for n in VIDEO_NAMES if (root / n.format(video.ref)).is_file()),
                    root / video.ref)

    def prompt(self, q: BenchQuestion) -> str:
        if q.kind == "open":
            return q.question + OPEN_SUFFIX
        return "\n".join([MCQ_INSTRUCTION, q.question, " ".join(q.extra["raw_options"])])

    def extract(self, reply: str, q: BenchQuestion) -> str | None:
        if q.kind == "open":
            return reply.strip()
        return extract_first_alpha(reply)

    def correct(self, predicted: str | None, q: BenchQuestion) -> bool | None:
        """MCQ: the letter against the answer; open: None (the official judge is GPT-4o)."""
        if q.kind == "open":
            return None
        return predicted == q.answer

    def summarize(self, rows: list[dict]) -> dict[str, Any]:
        """MCQ accuracy (plain mean over MCQ items, per qa_type and source); open answers: how many need a judge,
        and the accuracy of those already judged (rows whose ``correct`` someone filled in)."""
        mcq = [r for r in rows if r["kind"] == "mcq"]
        opened = [r for r in rows if r["kind"] == "open"]
        judged = [r for r in opened if r["correct"] is not None]
        out: dict[str, Any] = {}
        if mcq:
            out["mcq"] = {"overall": accuracy([bool(r["correct"]) for r in mcq]),
                          "qa_type": grouped(mcq, lambda r: r["task"]),
                          "source": grouped(mcq, lambda r: str(r["fields"].get("source"))),
                          "questions": len(mcq), "unparseable": sum(r["predicted"] is None for r in mcq)}
        if opened:
            out["open"] = {"overall": accuracy([bool(r["correct"]) for r in judged]) if len(judged) == len(opened)
                           else None,
                           "judged_so_far": accuracy([bool(r["correct"]) for r in judged]),
                           "qa_type": grouped(judged, lambda r: r["task"]),
                           "questions": len(opened), "needs_judge": len(opened) - len(judged),
                           "judge": "GPT-4o (official); not run by avmem"}
        out["overall"] = out["open"]["overall"] if "open" in out and out["open"]["overall"] is not None else (
            out["mcq"]["overall"] if mcq else None)
        out["overall_is"] = "open (judged)" if "open" in out and out["open"]["overall"] is not None else (
            "mcq" if mcq else "none")
        out["extraction"] = self.extraction
        return out


@register_benchmark("videoevalpro")
class VideoEvalPro(_VideoEvalPro):
    """Both parts: open-ended (needs a judge) and MCQ."""


@register_benchmark("videoevalpro-mcq")
class VideoEvalProMCQ(_VideoEvalPro):
    """The MCQ part only."""

    parts = ("mcq",)


@register_benchmark("videoevalpro-open")
class VideoEvalProOpen(_VideoEvalPro):
    """The open-ended part only (answers need the GPT-4o judge)."""

    parts = ("open",)
