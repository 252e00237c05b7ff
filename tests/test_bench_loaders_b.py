"""Video-MME, LVBench, VideoEval-Pro and LongVideoBench loaders, prompts, extraction rules and official aggregates,
on fixtures written in each benchmark's published layout."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from avmem.eval.benchmarks import AnnotationDefect, get_benchmark
from avmem.eval.benchmarks._tabular import parse_srt
from avmem.eval.benchmarks.longvideobench import extract_lvb
from avmem.eval.benchmarks.lvbench import polish_answer
from avmem.eval.benchmarks.videoevalpro import extract_first_alpha
from avmem.eval.benchmarks.videomme import extract_videomme_official


def rows_for(bench, loaded, replies: dict[str, str]) -> list[dict]:
    """Result rows as the runner writes them, for the questions named in ``replies``."""
    rows = []
    for q in loaded.questions:
        if q.qid in replies:
            predicted = bench.extract(replies[q.qid], q)
            rows.append({"qid": q.qid, "video": q.video, "task": q.task, "fields": q.fields, "kind": q.kind,
                         "answer": q.answer, "reply": replies[q.qid], "predicted": predicted,
                         "correct": bench.correct(predicted, q), "ask_time": q.ask_time})
    return rows


# ----------------------------------------------------------------------------------------------- Video-MME

def vmme_row(vid: int, k: int, duration: str, domain: str, sub: str, task: str, answer: str = "C") -> dict:
    return {"video_id": f"{vid:03d}", "duration": duration, "domain": domain, "sub_category": sub,
            "url": f"https://www.youtube.com/watch?v=yt{vid:03d}", "videoID": f"yt{vid:03d}",
            "question_id": f"{vid:03d}-{k}", "task_type": task, "question": f"How many things in video {vid}?",
            "options": ["A. Apples.", "B. Candles.", "C. Berries.", "D. The three kinds are of the same number."],
            "answer": answer}


VMME_ROWS = [vmme_row(1, 1, "short", "Knowledge", "Humanity & History", "Counting Problem"),
             vmme_row(1, 2, "short", "Knowledge", "Humanity & History", "OCR Problems", "A"),
             vmme_row(2, 1, "medium", "Sports Competition", "Esports", "Counting Problem", "B"),
             vmme_row(3, 1, "long", "Film & Television", "Magic Show", "Action Reasoning", "D")]


def test_videomme_json_layouts_load_the_same(tmp_path):
    bench = get_benchmark("videomme")
    flat = tmp_path / "videomme.json"
    flat.write_text(json.dumps(VMME_ROWS))
    nested = tmp_path / "nested.json"   # the official per-video layout (old field names in one entry)
    by_video: dict[str, dict] = {}
    for r in VMME_ROWS:
        v = by_video.setdefault(r["video_id"], {k: r[k] for k in ("video_id", "duration", "domain", "sub_category",
                                                                  "url", "videoID")} | {"questions": []})
        v["questions"].append({k: r[k] for k in ("question_id", "task_type", "question", "options", "answer")})
    entries = list(by_video.values())
    entries[2] = {"duration_category": "long", "video_category": "Film & Television",
                  "video_subcategory": "Magic Show", "video_id": "003", "url": entries[2]["url"],
                  "questions": [{**q, "choices": q.pop("options")} for q in entries[2]["questions"]]}
    nested.write_text(json.dumps(entries))
    jsonl = tmp_path / "videomme.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in VMME_ROWS) + "\n")
    a, b, c = (bench.load(p) for p in (flat, nested, jsonl))
    assert [v.ref for v in a.videos] == ["yt001", "yt002", "yt003"]
    assert [q.to_dict() for q in a.questions] == [q.to_dict() for q in b.questions] == \
        [q.to_dict() for q in c.questions]
    q = a.questions[0]
    assert q.options == ["Apples.", "Candles.", "Berries.", "The three kinds are of the same number."]
    assert (q.answer, q.task, q.fields["duration"], q.fields["domain"]) == ("C", "Counting Problem", "short",
                                                                           "Knowledge")


def test_videomme_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    folder = tmp_path / "Video-MME" / "videomme"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(VMME_ROWS), folder / "test-00000-of-00001.parquet")
    bench = get_benchmark("videomme")
    loaded = bench.load(tmp_path / "Video-MME")   # the dataset folder as published
    assert len(loaded.questions) == 4 and loaded.questions[2].answer == "B"
    assert loaded.questions[3].options[0] == "Apples."


def test_videomme_parquet_without_pyarrow_is_one_line(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    path = tmp_path / "test-00000-of-00001.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(AnnotationDefect, match=r"pip install 'avmem\[eval\]' to read parquet"):
        get_benchmark("videomme").load(path)


@pytest.mark.parametrize("change, message", [
    ({"answer": "E"}, "001-1: answer 'E' is not one of ABCD"),
    ({"options": ["A. x", "C. y", "B. z", "D. w"]}, "001-1: option 2 'C. y' does not start with 'B.'"),
    ({"options": ["A. x", "B. y", "C. z"]}, "001-1: 3 options"),
    ({"duration": "120"}, "001-1: duration '120'"),
    ({"videoID": None}, "001-1: missing field"),
])
def test_videomme_validation(tmp_path, change, message):
    path = tmp_path / "v.json"
    path.write_text(json.dumps([VMME_ROWS[0] | change, VMME_ROWS[1]]))
    with pytest.raises(AnnotationDefect, match=message.replace("(", r"\(").replace(")", r"\)")):
        get_benchmark("videomme").load(path)


def test_videomme_duplicate_and_not_a_list(tmp_path):
    path = tmp_path / "v.json"
    path.write_text(json.dumps([VMME_ROWS[0], VMME_ROWS[0]]))
    with pytest.raises(AnnotationDefect, match="001-1: duplicated question_id"):
        get_benchmark("videomme").load(path)
    path.write_text(json.dumps({"questions": []}))
    with pytest.raises(AnnotationDefect, match="not a Video-MME annotation"):
        get_benchmark("videomme").load(path)


@pytest.mark.parametrize("reply, letter", [
    ("C", "C"), ("C.", "C"), ("(B) Candles.", "B"), ("The best answer is D", "D"), ("Answer: A", "A"),
    ("The correct answer is (C) Berries", "C"),
    ("Based on the video, C", "B"),   # the official rule's pitfall: first capital A-D anywhere
    ("", None), ("I cannot tell from these frames what the answer would be, sorry about that", None),
    ("unsure", None),
])
def test_videomme_official_extraction(reply, letter):
    assert extract_videomme_official(reply) == letter


def test_videomme_prompt_and_summary(tmp_path):
    bench = get_benchmark("videomme")
    path = tmp_path / "v.json"
    path.write_text(json.dumps(VMME_ROWS))
    loaded = bench.load(path)
    assert bench.prompt(loaded.questions[0]) == (
        "Select the best answer to the following multiple-choice question based on the video. Respond with only "
        "the letter (A, B, C, or D) of the correct option.\nHow many things in video 1?\nA. Apples.\nB. Candles.\n"
        "C. Berries.\nD. The three kinds are of the same number.\nThe best answer is:")
    rows = rows_for(bench, loaded, {"001-1": "C", "001-2": "sorry", "002-1": "A", "003-1": "D"})
    s = bench.summarize(rows)
    # official: the unparseable 001-2 is left out: 2 right of 3 answered; counted wrong: 2 of 4
    assert s["overall"] == pytest.approx(2 / 3) and s["overall_all_items"] == pytest.approx(0.5)
    assert (s["questions"], s["answered"], s["unparseable"]) == (4, 3, 1)
    assert s["duration"] == {"short": 1.0, "medium": 0.0, "long": 1.0}
    assert s["task_type"] == {"Counting Problem": 0.5, "Action Reasoning": 1.0}
    assert s["domain"]["Sports Competition"] == 0.0 and s["sub_category"]["Magic Show"] == 1.0
    assert s["by_duration"]["short"]["task_type"] == {"Counting Problem": 1.0}


SRT = ("\ufeff1\r\n00:00:01,000 --> 00:00:04,000\r\n<font color=\"white\" size=\".72c\">hello there</font>\r\n\r\n"
       "2\n00:00:03,500 --> 00:00:06,000\n<font color=\"white\" size=\".72c\">second\nline</font>\n\n"
       "3\n00:00:10,000 --> 00:00:12,500\n<font color=\"white\" size=\".72c\">late cue</font>\n")


def test_videomme_subtitles(tmp_path):
    bench = get_benchmark("videomme-sub")
    assert bench.subtitles and not get_benchmark("videomme").subtitles
    path = tmp_path / "v.json"
    path.write_text(json.dumps(VMME_ROWS))
    root = tmp_path / "Video-MME"
    (root / "data").mkdir(parents=True)
    (root / "subtitle").mkdir()
    (root / "data" / "yt001.mp4").write_bytes(b"x")
    (root / "data" / "yt002.MP4").write_bytes(b"x")
    (root / "subtitle" / "yt001.srt").write_text(SRT, newline="")
    loaded = bench.load(path)
    with pytest.raises(ValueError, match="call resolve"):
        bench.prompt(loaded.questions[0])
    assert bench.resolve(loaded, root) == ["yt003"]
    assert [v.path.relative_to(root).as_posix() for v in loaded.videos] == ["data/yt001.mp4", "data/yt002.MP4",
                                                                          "data/yt003.mp4"]
    q = loaded.questions[0]
    assert parse_srt(root / "subtitle" / "yt001.srt") == [(1.0, 4.0, "hello there"), (3.5, 6.0, "second line"),
                                                         (10.0, 12.5, "late cue")]
    assert bench.prompt(q).startswith("This video's subtitles are listed below:\nhello there\nsecond line\nlate cue\n"
                                      "Select the best answer")
    q.ask_time = 5.0   # a streaming question sees the cues started by its time
    assert bench.subtitle_lines(q) == ["hello there", "second line"]
    assert bench.subtitle_lines(q, frame_times=[0.5, 3.0, 11.0]) == ["hello there", "late cue"]
    assert bench.prompt(loaded.questions[2]).startswith(
        "This video's subtitles are listed below:\nNo subtitles available\nSelect")
    (root / "subtitle" / "yt002.srt").write_text("1\nnot a time\nword\n")
    with pytest.raises(AnnotationDefect, match="yt002.srt: subtitle block"):
        bench.resolve(bench.load(path), root)


# -------------------------------------------------------------------------------------------------- LVBench

def lvb_video(key: str, qas: list[dict], vtype: str = "documentary") -> dict:
    return {"key": key, "type": vtype, "qa": qas,
            "video_info": {"duration_minutes": 65.5, "fps": 30.0, "resolution": {"width": 640, "height": 360}}}


def lvb_qa(uid, answer: str, types: list[str], n_opts: int = 4, tref: str = "00:15-00:19") -> dict:
    opts = "\n".join(f"({'ABCD'[k]}) {1636 + k}" for k in range(n_opts))
    return {"uid": uid, "question": f"What year appears in the opening caption of the video?\n{opts}",
            "answer": answer, "question_type": types, "time_reference": tref}


def write_lvbench(tmp_path: Path, videos: list[dict]) -> Path:
    path = tmp_path / "video_info.meta.jsonl"
    path.write_text("\n".join(json.dumps(v) for v in videos) + "\n")
    return path


LVB = [lvb_video("yt_aaa", [lvb_qa(55, "D", ["key information retrieval"]),
                            lvb_qa("56", "A", ["event understanding", "reasoning"], tref="1:02:03-1:02:09")]),
       lvb_video("yt_bbb", [lvb_qa("57", "B", ["temporal grounding", "reasoning"])], vtype="sport")]


def test_lvbench_load_prompt_and_paths(tmp_path):
    bench = get_benchmark("lvbench")
    loaded = bench.load(write_lvbench(tmp_path, LVB))
    q = loaded.questions[0]
    assert (q.qid, q.question, q.options, q.answer) == ("55", "What year appears in the opening caption of the video?",
                                                        ["1636", "1637", "1638", "1639"], "D")
    assert q.fields["question_type"] == ["key information retrieval"] and loaded.videos[0].duration == 65.5 * 60
    assert q.extra["evidence"] == (15.0, 19.0) and loaded.questions[1].extra["evidence"] == (3723.0, 3729.0)
    assert bench.prompt(q) == ("What year appears in the opening caption of the video?\n(A) 1636\n(B) 1637\n"
                               "(C) 1638\n(D) 1639\nAnswer the question with the option letter")
    root = tmp_path / "videos_root"
    (root / "00000").mkdir(parents=True)   # video2dataset's output for yt_bbb, found through its sidecar
    (root / "00000" / "000000001.mp4").write_bytes(b"x")
    (root / "00000" / "000000001.json").write_text(json.dumps({"url": "https://www.youtube.com/watch?v=yt_bbb",
                                                               "key": "000000001", "status": "success"}))
    (root / "yt_aaa.mp4").write_bytes(b"x")
    assert bench.resolve(loaded, root) == []
    assert [v.path.relative_to(root).as_posix() for v in loaded.videos] == ["yt_aaa.mp4", "00000/000000001.mp4"]


@pytest.mark.parametrize("qa, message", [
    (lvb_qa("9", "E", ["reasoning"]), "uid 9: answer 'E' is not one of ABCD"),
    (lvb_qa("9", "A", "reasoning"), "uid 9: question_type must be a non-empty list"),
    (lvb_qa("9", "A", ["vibes"]), "uid 9: unknown question_type 'vibes'"),
    (lvb_qa("9", "A", ["reasoning"], tref="15s"), "uid 9: time_reference '15s'"),
    ({**lvb_qa("9", "A", ["reasoning"]), "question": "Who?\n(A) x\n(C) y"}, r"uid 9: option line '\(C\) y'"),
    ({**lvb_qa("9", "A", ["reasoning"]), "question": "Who is it?"}, "uid 9: question text holds no stem and options"),
    (lvb_qa("55", "A", ["reasoning"]), "uid 55: duplicated uid"),
])
def test_lvbench_validation(tmp_path, qa, message):
    with pytest.raises(AnnotationDefect, match=message):
        get_benchmark("lvbench").load(write_lvbench(tmp_path, [LVB[0], lvb_video("yt_c", [qa])]))


@pytest.mark.parametrize("reply, char", [
    ("(D) 1639", "D"), ("D", "D"), ("D) 1639", "D"), ("  (B)", "B"), ("A. 1636", "A"),
    ("The answer is (C)", "C"),   # the text after "(" wins
    ("The answer is C", "T"),     # no parenthesis: the first token's first character
    ("", ""),
])
def test_lvbench_polish(reply, char):
    assert polish_answer(reply) == char


def test_lvbench_summary_multilabel(tmp_path):
    bench = get_benchmark("lvbench")
    loaded = bench.load(write_lvbench(tmp_path, LVB))
    rows = rows_for(bench, loaded, {"55": "(D)", "56": "B", "57": "B is the answer"})
    s = bench.summarize(rows)
    assert s["overall"] == s["Overall"] == pytest.approx(2 / 3)
    assert (s["KIR"], s["EU"], s["TG"], s["Rea"]) == (1.0, 0.0, 1.0, 0.5)   # 56 and 57 both count toward Rea
    assert "Sum" not in s and s["unparseable"] == 0
    s = bench.summarize(rows_for(bench, loaded, {"55": "", "57": "(B)"}))   # left-out uids are not counted
    assert (s["overall"], s["unparseable"], s["questions"]) == (0.5, 1, 2)


# -------------------------------------------------------------------------------------------- VideoEval-Pro

def vep_row(video: str, answer: str, options: list[str], qa_type: str = "Local Perception") -> dict:
    return {"video": video, "question": "What colour is the car that parks first?", "options": options,
            "answer": answer, "answer_text": "Red", "meta": json.dumps({"id": 3}), "source": "Video-MME",
            "qa_type": qa_type, "qa_subtype": "attribute"}


VEP = [vep_row("a.mp4", "B", ["A. Blue", "B. Red", "C. Green", "D. White"]),
       vep_row("a.mp4", "E", ["A. 1", "B. 2", "C. 3", "D. 4", "E. 5"], "Holistic Reasoning"),
       vep_row("sub/b.mp4", "A", ["yes", "no"], "Holistic Reasoning")]


def test_videoevalpro_load_prompts_paths(tmp_path):
    path = tmp_path / "vep.json"
    path.write_text(json.dumps(VEP))
    bench = get_benchmark("videoevalpro")
    loaded = bench.load(path)
    assert [q.qid for q in loaded.questions] == ["0-open", "0-mcq", "1-open", "1-mcq", "2-open", "2-mcq"]
    assert [len(q.options) for q in loaded.questions] == [0, 4, 0, 5, 0, 2]
    assert loaded.questions[1].options == ["Blue", "Red", "Green", "White"] and loaded.questions[5].answer == "A"
    assert bench.prompt(loaded.questions[0]) == ("What colour is the car that parks first? Keep the answer short "
                                                 "and concise.")
    assert bench.prompt(loaded.questions[1]) == (
        "Select the best answer to the following multiple-choice question based on the video. Respond with only "
        "the letter (A, B, C, or D) of the correct option, with no text around it.\n"
        "What colour is the car that parks first?\nA. Blue B. Red C. Green D. White")
    assert [q.kind for q in get_benchmark("videoevalpro-mcq").load(path).questions] == ["mcq"] * 3
    assert [q.kind for q in get_benchmark("videoevalpro-open").load(path).questions] == ["open"] * 3
    root = tmp_path / "root"
    (root / "videos_filtered").mkdir(parents=True)
    (root / "a.mp4").write_bytes(b"x")
    (root / "videos_filtered" / "sub").mkdir()
    (root / "videos_filtered" / "sub" / "b.mp4").write_bytes(b"x")
    assert bench.resolve(loaded, root) == []
    assert loaded.videos[1].path == root / "videos_filtered" / "sub" / "b.mp4"


def test_videoevalpro_parquet_folder(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(VEP[:2]), tmp_path / "data" / "test-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(VEP[2:]), tmp_path / "data" / "test-00001-of-00002.parquet")
    loaded = get_benchmark("videoevalpro-mcq").load(tmp_path)
    assert [q.answer for q in loaded.questions] == ["B", "E", "A"]


def test_videoevalpro_validation(tmp_path):
    path = tmp_path / "vep.json"
    path.write_text(json.dumps([VEP[0] | {"answer": "F"}]))
    with pytest.raises(AnnotationDefect, match="0-mcq: answer 'F' is not one of ABCD"):
        get_benchmark("videoevalpro").load(path)
    path.write_text(json.dumps([{k: v for k, v in VEP[0].items() if k != "answer_text"}]))
    with pytest.raises(AnnotationDefect, match="row 0: missing field"):
        get_benchmark("videoevalpro-open").load(path)
    get_benchmark("videoevalpro-mcq").load(path)   # the MCQ part does not need the open answer


@pytest.mark.parametrize("reply, letter", [
    ("B", "B"), ("b", "B"), ("(E) 5", "E"), ("The answer is C.", "C"),
    ("I think the answer is A, no wait, the answer is D", "D"),   # the last answer phrase
    ("Answer: e", "E"), ("the option is b", "B"), ("Red", "R"), ("42", None), ("", None),
])
def test_videoevalpro_first_alpha(reply, letter):
    assert extract_first_alpha(reply) == letter


def test_videoevalpro_summary(tmp_path):
    path = tmp_path / "vep.json"
    path.write_text(json.dumps(VEP))
    bench = get_benchmark("videoevalpro")
    loaded = bench.load(path)
    rows = rows_for(bench, loaded, {"0-open": "red", "0-mcq": "B", "1-open": "four", "1-mcq": "E",
                                    "2-open": "Yes", "2-mcq": "42"})
    assert [r["correct"] for r in rows if r["kind"] == "open"] == [None] * 3
    s = bench.summarize(rows)
    assert s["mcq"]["overall"] == pytest.approx(2 / 3) and s["mcq"]["unparseable"] == 1
    assert s["mcq"]["qa_type"] == {"Local Perception": 1.0, "Holistic Reasoning": 0.5}
    assert (s["open"]["needs_judge"], s["open"]["overall"], s["overall_is"]) == (3, None, "mcq")
    assert s["overall"] == pytest.approx(2 / 3) and [r["reply"] for r in rows][0] == "red"
    for r, verdict in zip([r for r in rows if r["kind"] == "open"], (True, False, True)):
        r["correct"] = verdict   # a judge's verdicts filled in later
    s = bench.summarize(rows)
    assert (s["overall"], s["overall_is"], s["open"]["needs_judge"]) == (pytest.approx(2 / 3), "open (judged)", 0)


# ------------------------------------------------------------------------------------------- LongVideoBench

def lvb_item(qid: str, video: str, choice: int, n: int, group: int, cat: str, sub: str | None = None) -> dict:
    return {"video_id": video, "question": f"What happens when the subtitle says 'hi' ({qid})?",
            "question_wo_referring_query": "What happens?", "candidates": [f"option {k}" for k in range(n)],
            "correct_choice": choice, "position": [40, 71], "topic_category": "MR-Movie-Recaps",
            "question_category": cat, "level": "L2-Relation", "id": qid, "video_path": f"{video}.mp4",
            "subtitle_path": sub, "duration_group": group, "starting_timestamp_for_subtitles": 10.0,
            "duration": 563.37, "view_count": 93803}


LVB_ITEMS = [lvb_item("v1_0", "v1", 4, 5, 600, "TAA", "v1_en.json"), lvb_item("v1_1", "v1", 0, 4, 600, "S2E",
                                                                              "v1_en.json"),
             lvb_item("v2_0", "v2", 1, 5, 15, "TAA", "v2_en.json"), lvb_item("v3_0", "v3", 2, 4, 3600, "E2O")]


def write_lvb(tmp_path: Path, items: list[dict]) -> Path:
    path = tmp_path / "lvb_val.json"
    path.write_text(json.dumps(items))
    return path


def test_longvideobench_load_paths_subtitles_prompt(tmp_path):
    bench = get_benchmark("longvideobench")
    loaded = bench.load(write_lvb(tmp_path, LVB_ITEMS))
    assert [q.answer for q in loaded.questions] == ["E", "A", "B", "C"]
    assert [len(q.options) for q in loaded.questions] == [5, 4, 5, 4]
    assert [v.ref for v in loaded.videos] == ["v1.mp4", "v2.mp4", "v3.mp4"]
    root = tmp_path / "LongVideoBench"
    (root / "videos").mkdir(parents=True)
    (root / "subtitles").mkdir()
    for v in ("v1", "v2"):
        (root / "videos" / f"{v}.mp4").write_bytes(b"x")
    (root / "subtitles" / "v1_en.json").write_text(json.dumps([
        {"start": "0:00:11.000", "end": "0:00:13.000", "line": "first line"},
        {"start": "0:00:20.000", "end": "0:00:20.400", "line": "short  one"},
        {"start": "0:01:10.000", "end": "0:01:15.000", "line": "much later"}]))
    (root / "subtitles" / "v2_en.json").write_text(json.dumps([{"timestamp": [12.0, None], "text": "to the end"}]))
    assert bench.resolve(loaded, root) == ["v3.mp4"]
    q = loaded.questions[0]
    assert q.extra["subtitles"][0] == (1.0, 3.0, "first line") and loaded.questions[2].extra["subtitles"] == [
        (2.0, 563.37 - 10.0, "to the end")]
    assert bench.prompt(q) == ("first line\nshort one\nmuch later\nQuestion: What happens when the subtitle says "
                               "'hi' (v1_0)?\nA. option 0\nB. option 1\nC. option 2\nD. option 3\nE. option 4\n"
                               "Answer with the option's letter from the given choices directly.")
    q.ask_time = 30.0
    assert bench.subtitle_lines(q) == ["first line", "short one"]
    # the official covering rule: "short one" (10.0-10.4 s) is widened to 9.7-10.7 s
    assert bench.subtitle_lines(q, frame_times=[2.0, 10.5]) == ["first line", "short one"]
    assert bench.subtitle_lines(q, frame_times=[5.0, 61.0]) == ["much later"]
    assert bench.prompt(loaded.questions[3]).startswith("Question: ")   # no subtitle file
    nosub = get_benchmark("longvideobench-nosub")
    loaded = nosub.load(write_lvb(tmp_path, LVB_ITEMS))
    assert nosub.prompt(loaded.questions[0]).startswith("Question: What happens")


def test_longvideobench_parquet_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = []
    for item in LVB_ITEMS:
        row = {k: v for k, v in item.items() if k not in ("candidates", "position")}
        row.update({f"option{k}": (item["candidates"][k] if k < len(item["candidates"]) else "N/A")
                    for k in range(5)})
        rows.append(row)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "validation-00000-of-00001.parquet")
    loaded = get_benchmark("longvideobench").load(tmp_path)
    assert [len(q.options) for q in loaded.questions] == [5, 4, 5, 4] and loaded.questions[0].answer == "E"


def test_longvideobench_validation(tmp_path):
    bench = get_benchmark("longvideobench")
    bad = {**LVB_ITEMS[1], "correct_choice": 4}
    with pytest.raises(AnnotationDefect, match="v1_1: correct_choice 4 is not an index into its 4 candidates"):
        bench.load(write_lvb(tmp_path, [bad]))
    test_split = {k: v for k, v in LVB_ITEMS[0].items() if k != "correct_choice"}
    with pytest.raises(AnnotationDefect, match="v1_0: no correct_choice \\(the test split"):
        bench.load(write_lvb(tmp_path, [test_split]))
    with pytest.raises(AnnotationDefect, match="v1_0: duplicated id"):
        bench.load(write_lvb(tmp_path, [LVB_ITEMS[0], LVB_ITEMS[0]]))
    loaded = bench.load(write_lvb(tmp_path, LVB_ITEMS[:1]))
    (tmp_path / "subtitles").mkdir()
    (tmp_path / "subtitles" / "v1_en.json").write_text(json.dumps([{"begin": 1}]))
    with pytest.raises(AnnotationDefect, match="v1_en.json: subtitle cue 0"):
        bench.resolve(loaded, tmp_path)


@pytest.mark.parametrize("reply, letter", [
    ("E", "E"), ("The best answer is E.", "E"), ("(B) option 1", "B"), ("D. A book", "D"),
    ("Based on the video, C", "B"), ("", None), ("no idea", None),
])
def test_longvideobench_extraction(reply, letter):
    assert extract_lvb(reply) == letter


def test_longvideobench_summary(tmp_path):
    bench = get_benchmark("longvideobench-nosub")
    loaded = bench.load(write_lvb(tmp_path, LVB_ITEMS))
    rows = rows_for(bench, loaded, {"v1_0": "E", "v1_1": "B", "v2_0": "B", "v3_0": "no idea"})
    q3 = loaded.questions[3]
    lucky = random.Random(f"longvideobench:{q3.qid}").choice(q3.letters) == q3.answer
    assert rows[3]["predicted"] is None and rows[3]["correct"] is lucky
    assert [bench.correct(None, q3) for _ in range(3)] == [lucky] * 3   # reproducible
    s = bench.summarize(rows)
    assert s["overall"] == pytest.approx((2 + lucky) / 4) and s["overall_unparseable_wrong"] == 0.5
    assert s["duration_group"] == {"15": 1.0, "600": 0.5, "3600": float(lucky)}
    assert list(s["duration_group"]) == ["15", "600", "3600"]
    assert s["question_category"] == {"E2O": float(lucky), "S2E": 0.0, "TAA": 1.0}
    assert s["unparseable"] == 1
