"""OVO-Bench loader, prompts and official scoring: on the real ovo_bench_new.json and a fixture in its layout."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from avmem.eval.benchmarks import AnnotationDefect, get_benchmark
from avmem.eval.benchmarks.ovobench import KNOWN_ANOMALIES, OVOBench, score_mcq, score_rec, score_yes_no
from tests.conftest import shared_path

FIXTURE = [
    {"id": 0, "task": "EPM", "video": "Ego4D/clips/aa.mp4", "realtime": 215, "question": "Who did I talk to?",
     "answer": "a person with blue shirt", "options": ["brown shirt", "green shirt", "blue shirt", "white shirt"],
     "gt": 2},
    {"id": 1, "task": "HLD", "video": "Ego4D/clips/aa.mp4", "realtime": 30.5, "question": "What did I put?",
     "answer": "Unable to answer", "options": ["bottles", "Unable to answer"], "gt": 1},
    {"id": 2, "task": "STU", "video": "YouTube_Games/PL&index=1.mp4", "realtime": 172, "question": "Where?",
     "answer": "free text", "options": ["front", "back", "left", "right", "top"], "gt": 4},
    {"id": 3, "task": "REC", "video": "perception_test/video_4017.mp4", "activity": "breaking something",
     "start_times": [6], "end_times": [17],
     "test_info": [{"realtime": 17, "count": 1}, {"realtime": 32.0, "count": 2}]},
    {"id": 4, "task": "SSR", "video": "COIN/x.mp4", "tutorial": "T", "all_steps": ["pull", "put"],
     "start_time": [25, 31], "end_time": [30, 49],
     "test_info": [{"realtime": 27, "step": "pull", "type": 1}, {"realtime": 26, "step": "put", "type": 0}]},
    {"id": 5, "task": "CRR", "video": "MovieNet/tt1.mp4", "question": "What does she do to the car?",
     "answer": "She walks past the car.", "ask_time": 297, "clue_time": 308,
     "test_info": [{"realtime": 297, "type": 0}, {"realtime": 310, "type": 1}]},
]


def _write(tmp_path: Path, items: list) -> Path:
    path = tmp_path / "ovo_bench_new.json"
    path.write_text(json.dumps(items))
    return path


def test_real_file_counts():
    path = shared_path("data", "benchmarks", "ovobench", "ovo_bench_new.json")
    bench = get_benchmark("ovobench")
    loaded = bench.load(path)
    assert loaded.defects == {}
    assert len(loaded.videos) == 644
    items = Counter(q.fields["item"] for q in loaded.questions)
    assert len(items) == 1640
    item_tasks = Counter()
    seen = set()
    for q in loaded.questions:
        if q.fields["item"] not in seen:
            seen.add(q.fields["item"])
            item_tasks[q.task] += 1
    assert item_tasks == {"EPM": 297, "HLD": 186, "ASI": 148, "OJR": 184, "STU": 178, "OCR": 149, "ATR": 116,
                          "ACR": 109, "FPD": 101, "REC": 82, "CRR": 48, "SSR": 42}
    mcq = [q for q in loaded.questions if q.kind == "mcq"]
    probes = [q for q in loaded.questions if q.kind == "probe"]
    assert len(mcq) == 1468 and len(probes) == 1567
    assert Counter(len(q.options) for q in mcq) == {4: 1371, 2: 42, 3: 42, 5: 13}
    assert len({q.qid for q in loaded.questions}) == len(loaded.questions)
    assert all(q.ask_time is not None and q.ask_time >= 0 for q in loaded.questions)
    by_id = {q.qid: q for q in mcq}
    # named anomalies are kept and scored by gt, as the official scorer does
    assert by_id["609"].answer == "C" and by_id["609"].extra["answer_text"] == by_id["609"].options[1]
    assert by_id["642"].options[0] == by_id["642"].options[2]
    assert "anomaly" in by_id["1326"].extra
    dropped = OVOBench(drop_anomalies=True).load(path)
    assert set(dropped.defects) == set(KNOWN_ANOMALIES)
    assert len(dropped.questions) == len(loaded.questions) - len(KNOWN_ANOMALIES)
    assert set(dropped.defects) == set(KNOWN_ANOMALIES)


def test_fixture_load_prompts_and_paths(tmp_path):
    bench = get_benchmark("ovobench")
    loaded = bench.load(_write(tmp_path, FIXTURE))
    assert [v.ref for v in loaded.videos] == ["Ego4D/clips/aa.mp4", "YouTube_Games/PL&index=1.mp4",
                                              "perception_test/video_4017.mp4", "COIN/x.mp4", "MovieNet/tt1.mp4"]
    qs = {q.qid: q for q in loaded.questions}
    assert set(qs) == {"0", "1", "2", "3#0", "3#1", "4#0", "4#1", "5#0", "5#1"}
    assert qs["0"].answer == "C" and qs["0"].ask_time == 215.0 and qs["0"].fields["mode"] == "backward"
    assert qs["1"].letters == "AB" and qs["2"].answer == "E"
    assert qs["3#1"].kind == "probe" and qs["3#1"].answer == "2" and qs["3#1"].ask_time == 32.0
    assert qs["4#1"].answer == "No" and qs["5#1"].answer == "Yes" and qs["5#1"].ask_time == 310.0
    assert bench.prompt(qs["1"]) == (
        "\nQuestion: What did I put?\nOptions:\nA. bottles; B. Unable to answer;\n\nRespond only with the letter "
        "corresponding to your chosen option (e.g., A, B, C). \nDo not include any additional text or explanation "
        "in your response.\n")
    assert "Now, answer the following question: How many times did they breaking something?\n" in bench.prompt(
        qs["3#0"])
    assert "procedures: \nput\nYour task" in bench.prompt(qs["4#1"])
    assert "end of the video.\nWhat does she do to the car?\nDecide" in bench.prompt(qs["5#0"])
    assert "\u201cYes\u201d or \u201cNo\u201d" in bench.prompt(qs["5#0"])
    video = loaded.videos[1]
    assert bench.video_path(tmp_path, video) == tmp_path / "YouTube_Games" / "PL&index=1.mp4"
    assert bench.resolve(loaded, tmp_path) == [v.ref for v in loaded.videos]
    assert bench.times_beyond(loaded.videos[4], duration=300.0) == ["5#1"]


@pytest.mark.parametrize("patch, message", [
    ({"gt": 4}, "item 0: gt 4 is not an index"),
    ({"task": "XYZ"}, "item 0: unknown task 'XYZ'"),
    ({"realtime": -3}, "item 0: bad time -3"),
    ({"options": ["only one"], "gt": 0}, "0: 1 options"),
])
def test_fixture_defects(tmp_path, patch, message):
    items = [dict(FIXTURE[0], **patch)]
    with pytest.raises(AnnotationDefect, match=message):
        get_benchmark("ovobench").load(_write(tmp_path, items))


def test_forward_defects(tmp_path):
    bad = json.loads(json.dumps(FIXTURE[3]))
    bad["test_info"][1]["count"] = "two"
    with pytest.raises(AnnotationDefect, match=r"item 3#1: REC probe count 'two'"):
        get_benchmark("ovobench").load(_write(tmp_path, [bad]))
    bad = json.loads(json.dumps(FIXTURE[5]))
    bad["test_info"][0]["type"] = 2
    with pytest.raises(AnnotationDefect, match=r"item 5#0: CRR probe type 2"):
        get_benchmark("ovobench").load(_write(tmp_path, [bad]))
    with pytest.raises(AnnotationDefect, match="duplicated id"):
        get_benchmark("ovobench").load(_write(tmp_path, [FIXTURE[0], FIXTURE[0]]))
    with pytest.raises(AnnotationDefect, match="not a JSON array"):
        get_benchmark("ovobench").load(_write(tmp_path, {"questions": []}))


def test_official_scoring_rules():
    assert score_mcq("B", "B") and score_mcq("The answer is B.", "B")
    assert score_mcq("B. A person", "A")  # the substring rule credits the letter A inside the option text
    assert not score_mcq("", "A") and not score_mcq(None, "A")
    assert score_rec("3", 3) and score_rec("They did it 3 times.", 3) and not score_rec("1 or 3", 3)
    assert score_rec("1 or 3", 13)  # digits concatenated, as the official rule does
    assert score_yes_no("N", 0) and score_yes_no("Y", 1) and score_yes_no("Yes.", 1)
    assert not score_yes_no("yes", 1)  # case-sensitive
    assert score_yes_no("No, not yet.", 0) and not score_yes_no("Not yet", 1)


def test_extract_and_correct(tmp_path):
    bench = get_benchmark("ovobench")
    qs = {q.qid: q for q in bench.load(_write(tmp_path, FIXTURE)).questions}
    assert bench.extract("C", qs["0"]) == "C" and bench.extract("(C) blue shirt", qs["0"]) == "C"
    assert bench.extract("I think it is the blue shirt", qs["0"]) is None
    assert bench.extract("E.", qs["2"]) == "E"
    assert bench.correct("C", qs["0"]) and not bench.correct("A", qs["0"])
    assert bench.correct(bench.extract(" 2 ", qs["3#1"]), qs["3#1"])
    assert bench.correct("No", qs["4#1"]) and not bench.correct("Yes", qs["4#1"])


def _row(q, reply, predicted="unset"):
    return {"qid": q.qid, "video": q.video, "task": q.task, "fields": q.fields, "kind": q.kind,
            "ask_time": q.ask_time, "answer": q.answer, "reply": reply,
            "predicted": reply.strip() if predicted == "unset" else predicted, "correct": None}


def test_summarize_hand_computed(tmp_path):
    bench = get_benchmark("ovobench")
    qs = {q.qid: q for q in bench.load(_write(tmp_path, FIXTURE)).questions}
    rows = [
        _row(qs["0"], "C", "C"),              # EPM 1/1
        _row(qs["1"], "A", "A"),              # HLD 0/1
        _row(qs["2"], "It is E.", None),      # STU 1/1 by substring, unparseable by the strict letter
        _row(qs["3#0"], "1"), _row(qs["3#1"], "3"),     # REC 1/2
        _row(qs["4#0"], "Yes"), _row(qs["4#1"], "N"),   # SSR 2/2
        _row(qs["5#0"], "Yes"), _row(qs["5#1"], "Yes"),  # CRR 1/2
    ]
    s = bench.summarize(rows)
    assert s["tasks"] == {"EPM": 100.0, "HLD": 0.0, "STU": 100.0, "REC": 50.0, "SSR": 100.0, "CRR": 50.0}
    assert s["backward"] == pytest.approx(50.0)
    assert s["realtime"] == pytest.approx(100.0)
    assert s["forward"] == pytest.approx(200.0 / 3)
    assert s["overall"] == pytest.approx((50.0 + 100.0 + 200.0 / 3) / 3)
    assert s["overall_task_mean"] == pytest.approx(400.0 / 6)
    assert s["unparseable"] == pytest.approx(1 / 3)
    assert s["counts"]["REC"] == 2 and s["extraction"] == "ovo_substring"
