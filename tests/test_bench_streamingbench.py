"""StreamingBench loader, prompts (incl. sequential QA context), extraction, proactive polling and scoring, on
fixtures in the repository's questions_{real,omni,sqa,proactive}.json layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from avmem.eval.benchmarks import AnnotationDefect, get_benchmark
from avmem.eval.benchmarks.streamingbench import StreamingBench, score_proactive


def _subset(video: str, questions: list, time: str = "[0:00:00 - 0:01:00]", cat: str = "cooking") -> dict:
    return {"time": time, "questions": questions, "video_categories": cat, "video_path": video}


REAL = [
    _subset("./videos/sample_348_real.mp4", [{
        "task_type": "Clips Summarize", "question": "What did the individual do just now?", "time_stamp": "00:00:31",
        "answer": "C", "options": ["A. Organized trays.", "B. Chopped vegetables.", "C. Placed buns.",
                                   "D. Checked inventory."], "required_ability": "episodic memory"}]),
    _subset("./videos/sample_348_real.mp4", [{
        "task_type": "Counting", "question": "How many buns?", "time_stamp": "00:01:05", "answer": "A",
        "options": ["Two.", "Three.", "Four.", "Five."], "required_ability": "working memory"}]),
]
OMNI = [
    _subset("./videos/sample_16_Source_Discrimination.mp4", [{
        "task_type": "Source Discrimination", "question": "Who just said \"What's my secret talent?\"?",
        "time_stamp": "00:02:00", "answer": "E",
        "options": ["A.A man in black.", "B.A man in leather.", "C.A man in purple.", "D.A woman in green.",
                    "E.A man in orange."], "required_ability": "episodic memory"}]),
    _subset("./videos/sample_2_Misleading_Context_Understanding.mp4", [{
        "task_type": "Misleading Context Understanding", "question": "What's on the green table now?",
        "time_stamp": "00:00:50", "answer": "B", "options": ["A. A card.", "B. Four rows of cards."],
        "required_ability": "working memory"}]),
]
SQA = [[
    _subset("./videos/sample_17_sqa.mp4", [{
        "task_type": "Sequential Question Answering", "question": "Who is preparing to serve the ball now?",
        "time_stamp": "00:00:36", "answer": "A", "options": ["Wang chuqin.", "Fan Z.D.", "Xu xin.", "Ma Lin."],
        "required_ability": "episodic memory"}]),
    _subset("./videos/sample_17_sqa.mp4", [{
        "task_type": "Sequential Question Answering",
        "question": "How much game score has the person mentioned in the last question scored now?",
        "time_stamp": "00:03:02", "answer": "C", "options": ["2.", "6.", "7.", "4."],
        "required_ability": "episodic memory"}]),
    _subset("./videos/sample_17_sqa.mp4", [{
        "task_type": "Sequential Question Answering", "question": "And the opponent?", "time_stamp": "00:04:58",
        "answer": "A", "options": ["8.", "7.", "5.", "9."], "required_ability": "episodic memory"}]),
]]
PROACTIVE = [
    _subset("./videos/sample_17_proactive.mp4", [{
        "task_type": "Proactive Output", "question": "When the scoreboard shows 3 points for USA, output \"3\".",
        "time_stamp": "00:00:20", "ground_truth_time_stamp": "00:00:24", "ground_truth_output": "3",
        "required_ability": "working memory"}], time="[0:00:00 - 0:00:30]", cat="basketball"),
]


def _folder(tmp_path: Path, **files) -> Path:
    for kind, data in files.items():
        (tmp_path / f"questions_{kind}.json").write_text(json.dumps(data))
    return tmp_path


def _all(tmp_path: Path):
    bench = get_benchmark("streamingbench")
    loaded = bench.load(_folder(tmp_path, real=REAL, omni=OMNI, sqa=SQA, proactive=PROACTIVE))
    return bench, loaded, {q.qid: q for q in loaded.questions}


def test_load_folder_layout(tmp_path):
    bench, loaded, qs = _all(tmp_path)
    assert [v.ref for v in loaded.videos] == [
        "videos/sample_348_real.mp4", "videos/sample_16_Source_Discrimination.mp4",
        "videos/sample_2_Misleading_Context_Understanding.mp4", "videos/sample_17_sqa.mp4",
        "videos/sample_17_proactive.mp4"]
    real0, real1 = qs["real/videos/sample_348_real.mp4#0"], qs["real/videos/sample_348_real.mp4#1"]
    assert real0.options == ["Organized trays.", "Chopped vegetables.", "Placed buns.", "Checked inventory."]
    assert real0.answer == "C" and real0.ask_time == 31.0 and real1.ask_time == 65.0
    assert real0.fields["category"] == "Real-Time Visual Understanding" and real0.fields["file"] == "real"
    omni = qs["omni/videos/sample_16_Source_Discrimination.mp4#0"]
    assert omni.letters == "ABCDE" and omni.options[4] == "A man in orange." and omni.answer == "E"
    assert omni.fields["category"] == "Omni-Source Understanding"
    misleading = qs["omni/videos/sample_2_Misleading_Context_Understanding.mp4#0"]
    assert misleading.fields["category"] == "Contextual Understanding" and misleading.letters == "AB"
    sqa = [qs[f"sqa/videos/sample_17_sqa.mp4#{i}"] for i in range(3)]
    assert [q.extra["context_qids"] for q in sqa] == [[], [sqa[0].qid], [sqa[0].qid, sqa[1].qid]]
    polls = [q for q in loaded.questions if q.task == "Proactive Output"]
    # polled each second from time_stamp + 1 = 21 to ground truth + 4 = 28, a trigger and a content probe each
    assert [q.ask_time for q in polls if q.fields["role"] == "trigger"] == [float(t) for t in range(21, 29)]
    assert len(polls) == 16 and all(q.kind == "probe" for q in polls)
    assert polls[0].qid == "proactive/videos/sample_17_proactive.mp4#0@21:trigger"
    assert polls[0].extra["window_start"] == 0.0 and real0.extra["window_start"] == 0.0
    assert bench.video_path(tmp_path, loaded.videos[0]) == tmp_path / "videos" / "sample_348_real.mp4"


def test_single_file_and_context_time(tmp_path):
    bench = StreamingBench(context_time=60)
    loaded = bench.load(_folder(tmp_path, real=REAL) / "questions_real.json")
    assert [q.extra["window_start"] for q in loaded.questions] == [0.0, 5.0]
    other = tmp_path / "renamed.json"
    other.write_text(json.dumps(SQA))
    assert all(q.fields["file"] == "sqa" for q in bench.load(other).questions)


@pytest.mark.parametrize("patch, message", [
    ({"answer": "E"}, r"real/videos/sample_348_real.mp4#0: answer 'E' is not one of ABCD"),
    ({"time_stamp": "0:0:xx"}, r"#0: bad time_stamp '0:0:xx'"),
    ({"options": ["A. x", "C. y"]}, r"#0: option 'C. y' should start with 'B.'"),
    ({"options": ["only"]}, r"#0: 1 options"),
])
def test_defects(tmp_path, patch, message):
    bad = json.loads(json.dumps(REAL))
    bad[0]["questions"][0].update(patch)
    with pytest.raises(AnnotationDefect, match=message):
        get_benchmark("streamingbench").load(_folder(tmp_path, real=bad))


def test_proactive_and_layout_defects(tmp_path):
    bad = json.loads(json.dumps(PROACTIVE))
    bad[0]["questions"][0]["ground_truth_time_stamp"] = "00:00:10"
    with pytest.raises(AnnotationDefect, match="is before time_stamp 00:00:20"):
        get_benchmark("streamingbench").load(_folder(tmp_path, proactive=bad))
    with pytest.raises(AnnotationDefect, match="questions_sqa.json layout"):
        get_benchmark("streamingbench").load(_folder(tmp_path, sqa=REAL))
    with pytest.raises(AnnotationDefect, match="no annotation file or folder at"):
        get_benchmark("streamingbench").load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnnotationDefect, match="holds none of"):
        get_benchmark("streamingbench").load(tmp_path / "empty")


def test_prompts(tmp_path):
    bench, _, qs = _all(tmp_path)
    real0 = qs["real/videos/sample_348_real.mp4#0"]
    assert bench.prompt(real0) == (
        "You are an advanced video question-answering AI assistant. You have been provided with some frames from "
        "the video and a multiple-choice question related to the video. Your task is to carefully analyze the video "
        "and provide the best answer to question, choosing from the four options provided. Respond with only the "
        "letter (A, B, C, or D) of the correct option.\n\nQuestion: What did the individual do just now?\n\n"
        "Options:\nA. Organized trays.\nB. Chopped vegetables.\nC. Placed buns.\nD. Checked inventory.\n\n"
        "The best option is:")
    omni = bench.prompt(qs["omni/videos/sample_16_Source_Discrimination.mp4#0"])
    assert "choosing from the five options provided. Respond with only the letter (A, B, C, D, or E)" in omni
    assert "\nE. A man in orange.\n\nThe best option is:" in omni
    two = bench.prompt(qs["omni/videos/sample_2_Misleading_Context_Understanding.mp4#0"])
    assert "the two options provided. Respond with only the letter (A or B)" in two
    first = bench.prompt(qs["sqa/videos/sample_17_sqa.mp4#0"])
    assert "correct option.\n\n\n\nHere is the question. Answer it and don't confuse it with the previous " \
           "conversation.\nQuestion: Who is preparing" in first
    third = qs["sqa/videos/sample_17_sqa.mp4#2"]
    expected_context = (
        "Here are the contextual information related to the video. Please answer the questions based on the "
        "contextual information: At timestamp 00:00:36, the following question and answer occurred: Question: Who "
        "is preparing to serve the ball now?; Options: A. Wang chuqin., B. Fan Z.D., C. Xu xin., D. Ma Lin.; "
        "Answer: A; At timestamp 00:03:02, the following question and answer occurred: Question: How much game "
        "score has the person mentioned in the last question scored now?; Options: A. 2., B. 6., C. 7., D. 4.; "
        "Answer: C; ")
    assert "the provided context to answer the question" in bench.prompt(third)
    assert f"correct option.\n\n{expected_context}\n\nHere is the question." in bench.prompt(third)
    with_model = bench.prompt(third, history={"sqa/videos/sample_17_sqa.mp4#1": "B"})
    assert "Answer: A; At timestamp" in with_model and "D. 4.; Answer: B; " in with_model
    trigger = next(q for q in qs.values() if q.qid.endswith("@21:trigger"))
    content = next(q for q in qs.values() if q.qid.endswith("@21:content"))
    assert bench.prompt(trigger) == (
        "You are an advanced image question-answering AI assistant. You have been provided with images and a "
        "question related to the images. Your task is to carefully analyze the images and provide the answer to "
        "the question. You need to carefully confirm whether the images content meet the conditions of the "
        "question, and then output the correct content.\n\nQuestion: When the scoreboard shows 3 points for USA, "
        "output \"3\". Is it the right time to output \"3\"? You can only answer yes or no.\n\nThe answer is:\n")
    assert "Question: When the scoreboard shows 3 points for USA, output \"3\".\n\nThe answer is:\n" == \
        bench.prompt(content)[-len("Question: When the scoreboard shows 3 points for USA, output \"3\".\n\n"
                                   "The answer is:\n"):]


def test_extraction_first_character(tmp_path):
    bench, _, qs = _all(tmp_path)
    q = qs["real/videos/sample_348_real.mp4#0"]
    assert bench.extract("C", q) == "C" and bench.extract("C. Placed buns.", q) == "C"
    assert bench.extract("The best option is C", q) is None  # official: first character 'T', wrong
    assert bench.extract(" C", q) is None and bench.extract("", q) is None
    assert bench.correct("C", q) and not bench.correct(None, q)
    assert bench.correct("yes", next(x for x in qs.values() if x.kind == "probe")) is None


def test_score_proactive_hand_cases():
    # triggered at 25 (gt 24): within 2 s, content holds "3"
    assert score_proactive([(21, "No.", "x"), (25, "Yes, now.", "The score is 3"), (26, "yes", "4")], 24, "3") \
        == (True, True, 25)
    # triggered at 21: 3 s early -> neither
    assert score_proactive([(21, "yes", "3"), (22, "no", "")], 24, "3") == (False, False, 21)
    # triggered at 26 (exactly +2) but wrong content
    assert score_proactive([(26, "Yes", "It shows 2"), (25, "no", "3")], 24, "3") == (True, False, 26)
    # never triggered: the last poll (gt + 4) is the last interaction -> out of window
    assert score_proactive([(t, "no", "3") for t in range(21, 29)], 24, "3") == (False, False, 28)
    # official trigger test is a lower-cased substring: "Eyes" triggers
    assert score_proactive([(23, "Eyes open", "3")], 24, "3") == (True, True, 23)
    assert score_proactive([], 24, "3") == (False, False, None)


def _row(q, reply, predicted="auto"):
    return {"qid": q.qid, "video": q.video, "task": q.task, "fields": q.fields, "kind": q.kind,
            "ask_time": q.ask_time, "answer": q.answer, "reply": reply,
            "predicted": (reply[:1] or None) if predicted == "auto" else predicted, "correct": None}


def test_summarize_hand_computed(tmp_path):
    bench, loaded, qs = _all(tmp_path)
    rows = [
        _row(qs["real/videos/sample_348_real.mp4#0"], "C"),                   # Clips Summarize 1/1
        _row(qs["real/videos/sample_348_real.mp4#1"], "The answer is A"),     # Counting 0/1 (first char 'T')
        _row(qs["omni/videos/sample_16_Source_Discrimination.mp4#0"], ""),    # empty: left out
        _row(qs["omni/videos/sample_2_Misleading_Context_Understanding.mp4#0"], None, "B"),  # likelihood: 1/1
        _row(qs["sqa/videos/sample_17_sqa.mp4#0"], "A"),
        _row(qs["sqa/videos/sample_17_sqa.mp4#1"], "B"),
        _row(qs["sqa/videos/sample_17_sqa.mp4#2"], "A."),                     # SQA 2/3
    ]
    for q in loaded.questions:
        if q.kind == "probe":
            t, role = q.fields["poll_time"], q.fields["role"]
            reply = ("yes" if t >= 23 else "no") if role == "trigger" else ("3" if t == 23 else "2")
            rows.append(_row(q, reply))
    s = bench.summarize(rows)
    assert s["tasks"] == {"Clips Summarize": 100.0, "Counting": 0.0, "Misleading Context Understanding": 100.0,
                          "Sequential Question Answering": pytest.approx(200.0 / 3), "Proactive Output": 100.0}
    assert s["counts"]["Sequential Question Answering"] == 3 and "Source Discrimination" not in s["counts"]
    assert s["empty_replies"] == 1
    assert s["proactive"] == {"items": 1, "time_accuracy": 100.0, "answer_accuracy": 100.0}
    assert s["files"] == {"real": 50.0, "omni": 100.0, "sqa": pytest.approx(200.0 / 3), "proactive": 100.0}
    assert s["categories"] == {"Real-Time Visual Understanding": 50.0,
                               "Contextual Understanding": pytest.approx(400.0 / 5)}
    assert s["overall"] == pytest.approx(100.0 * 5 / 7)
    assert s["extraction"] == "streamingbench_first_char"
