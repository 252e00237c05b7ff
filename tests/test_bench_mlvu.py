"""MLVU dev: the official per-task JSON folder (real files and a fixture) and the lmms-eval layout; prompt,
extraction, aggregates, naming rule, and a run through the runner."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from avmem.cli import app
from avmem.eval.benchmarks import AnnotationDefect, BenchQuestion, get_benchmark
from avmem.eval.benchmarks.mlvu import MLVUBenchmark, extract_paren, split_lettered
from avmem.eval.run import read_jsonl

from .conftest import shared_path

runner = CliRunner()
REAL_COUNTS = {"plotQA": 539, "needle": 353, "ego": 352, "count": 206, "order": 259, "anomaly_reco": 200,
               "topic_reasoning": 264}

NEEDLE_DEFECT = {"video": "needle_4.mp4", "duration": 510.0,
                 "question": "What is the man in the video doing on the lake shore during the sunny summer?",
                 "candidates": ["Fishing", "Catching the drone", "Launching the drone", "Sunbathing"],
                 "answer": "Catching a flying drone quadcopter", "question_type": "findNeedle"}


def _item(video: str, qtype: str, answer: int = 0, n: int = 4, question: str = "What happens?") -> dict:
    cands = [f"{qtype} option {i}" for i in range(n)]
    return {"video": video, "duration": 300.5, "question": question, "candidates": cands, "answer": cands[answer],
            "question_type": qtype}


def _official(folder: Path) -> Path:
    """The official layout: 7 MCQ files (+ the two open-ended ones), items as published."""
    folder.mkdir(parents=True, exist_ok=True)
    qtypes = {"1_plotQA": "plotQA", "2_needle": "findNeedle", "3_ego": "ego", "4_count": "count", "5_order": "order",
              "6_anomaly_reco": "anomaly_reco", "7_topic_reasoning": "topic_reasoning"}
    for stem, qtype in qtypes.items():
        items = [_item(f"{qtype}_1.mp4", qtype, 1), _item(f"{qtype}_1.mp4", qtype, 3), _item(f"{qtype}_2.mp4", qtype)]
        if stem == "2_needle":  # the published defect at index 34
            items = [_item(f"needle_{k}.mp4", "findNeedle", k % 4) for k in range(34)] + [dict(NEEDLE_DEFECT)]
        if stem == "1_plotQA":  # duplicated candidates: the answer's letter is its first index (official)
            items.append({"video": "movie101_30.mp4", "duration": 726, "question": "What color is the dress?",
                          "candidates": ["Blue", "Red", "White", "Blue"], "answer": "Blue", "question_type": "plotQA"})
        (folder / f"{stem}.json").write_text(json.dumps(items))
    (folder / "8_sub_scene.json").write_text(json.dumps([{"video": "subPlot_1.mp4", "duration": 5000, "question":
                                                          "Describe the scene.", "answer": "A scene.",
                                                          "question_type": "subPlot", "scoring_points": ["x"]}]))
    (folder / "9_summary.json").write_text(json.dumps([{"video": "1.mp4", "duration": 480, "question": "Summarize.",
                                                        "answer": "A summary.", "question_type": "summary"}]))
    return folder


def test_real_official_folder():
    folder = shared_path("data", "benchmarks", "mlvu", "dev_official_json")
    bench = get_benchmark("mlvu")
    loaded = bench.load(folder)
    assert Counter(q.task for q in loaded.questions) == REAL_COUNTS
    assert len(loaded.questions) == 2173 and len({q.qid for q in loaded.questions}) == 2173
    assert set(loaded.defects) == {"2_needle/34", "2_needle/338"} == set(MLVUBenchmark.KNOWN_DEFECTS)
    assert "needle_4.mp4" in loaded.defects["2_needle/34"] and "needle_5.mp4" in loaded.defects["2_needle/338"]
    assert set(bench.skipped) == {"8_sub_scene.json", "9_summary.json"}
    assert all(q.kind == "mcq" and len(q.options) == 4 and q.ask_time is None for q in loaded.questions)
    first = loaded.questions[0]
    assert (first.qid, first.video, first.options, first.answer) == ("1_plotQA/0", "1_plotQA/movie101_66.mp4",
                                                                     ["Yellow", "Red", "Green", "Blue"], "A")
    dup = next(q for q in loaded.questions if q.qid == "1_plotQA/18")
    assert dup.options == ["Blue", "Red", "White", "Blue"] and dup.answer == "C"
    assert {q.fields["question_type"] for q in loaded.questions if q.task == "needle"} == {"findNeedle"}


def test_official_fixture(tmp_path):
    bench = MLVUBenchmark()
    loaded = bench.load(_official(tmp_path / "json"))
    assert Counter(q.task for q in loaded.questions) == {"plotQA": 4, "needle": 34, "ego": 3, "count": 3,
                                                         "order": 3, "anomaly_reco": 3, "topic_reasoning": 3}
    assert list(loaded.defects) == ["2_needle/34"]
    assert bench.skipped == {"8_sub_scene.json": "open-ended task subPlot (GPT-judged, not scored here)",
                             "9_summary.json": "open-ended task summary (GPT-judged, not scored here)"}
    ego = [v for v in loaded.videos if v.ref == "3_ego/ego_1.mp4"][0]
    assert [q.answer for q in ego.questions] == ["B", "D"] and ego.duration == 300.5
    dup = [q for q in loaded.questions if q.video == "1_plotQA/movie101_30.mp4"][0]
    assert dup.answer == "A"  # "Blue" is candidates[0] and candidates[3]: the first index, as the official code
    one = MLVUBenchmark().load(tmp_path / "json" / "4_count.json")  # a single task file
    assert {q.task for q in one.questions} == {"count"} and len(one.questions) == 3


def test_official_validation_names_the_item(tmp_path):
    folder = _official(tmp_path / "json")
    items = json.loads((folder / "3_ego.json").read_text())
    items[1]["answer"] = "not a candidate"
    (folder / "3_ego.json").write_text(json.dumps(items))
    with pytest.raises(AnnotationDefect, match=r"^3_ego.json\[1\] \(ego_1.mp4\): answer 'not a candidate' is not"):
        MLVUBenchmark().load(folder)
    items[1] = {k: v for k, v in items[0].items() if k != "candidates"}
    (folder / "3_ego.json").write_text(json.dumps(items))
    with pytest.raises(AnnotationDefect, match=r"3_ego.json\[1\]: no 'candidates'"):
        MLVUBenchmark().load(folder)
    items[1] = _item("ego_1.mp4", "count")
    (folder / "3_ego.json").write_text(json.dumps(items))
    with pytest.raises(AnnotationDefect, match="question_type 'count' does not belong in 3_ego.json"):
        MLVUBenchmark().load(folder)
    (folder / "3_ego.json").unlink()
    with pytest.raises(AnnotationDefect, match="3_ego.json missing"):
        MLVUBenchmark().load(folder)
    with pytest.raises(AnnotationDefect, match="open-ended task"):
        MLVUBenchmark().load(folder / "9_summary.json")


def _lmms_rows() -> list[dict]:
    rows = []
    for k, task in enumerate(("plotQA", "needle", "count", "order", "ego", "anomaly_reco", "topic_reasoning")):
        cands = [f"{task} {i}" for i in range(4)]
        body = "\n".join(f"({letter}) {c}" for letter, c in zip("ABCD", cands))
        rows.append({"video_name": f"{task}_{k}.mp4", "duration": 200.0 + k, "question": f"What about {task}?\n{body}",
                     "candidates": cands, "answer": "ABCD"[k % 4], "task_type": task, "question_id": f"{task}_{k}"})
    rows.append({"video_name": "needle_4.mp4", "duration": 510.0,
                 "question": NEEDLE_DEFECT["question"] + "\n(A) Fishing\n(B) Catching the drone\n(C) Launching the drone"
                 "\n(D) Sunbathing",
                 "candidates": NEEDLE_DEFECT["candidates"], "answer": "B", "task_type": "needle",
                 "question_id": "needle_99"})
    rows.append({"video_name": "ego_9.mp4", "duration": 100.0, "question": "Question: Where is the cup?\nOptions:\n"
                 "(A) table\n(B) sink\n(C) shelf\n(D) floor", "candidates": ["table", "sink", "shelf", "floor"],
                 "answer": "C", "task_type": "ego", "question_id": "ego_9"})
    return rows


@pytest.mark.parametrize("fmt", ["json", "jsonl", "parquet"])
def test_lmms_eval_layout(tmp_path, fmt):
    rows = _lmms_rows()
    path = tmp_path / f"test-00000-of-00001.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    bench = MLVUBenchmark()
    loaded = bench.load(path)
    assert bench.layout == "lmms-eval"
    assert len(loaded.questions) == 8 and list(loaded.defects) == ["needle_99"]
    q = next(q for q in loaded.questions if q.qid == "count_2")
    assert (q.question, q.options, q.answer, q.task, q.video) == ("What about count?", ["count 0", "count 1",
                                                                  "count 2", "count 3"], "C", "count", "count_2.mp4")
    ego = next(q for q in loaded.questions if q.qid == "ego_9")
    assert ego.question == "Where is the cup?" and ego.options == ["table", "sink", "shelf", "floor"]
    assert bench.video_path(tmp_path, loaded.videos[0]) == tmp_path / "plotQA_0.mp4"  # flat folder


def test_lmms_eval_validation(tmp_path):
    rows = _lmms_rows()
    rows[2]["answer"] = "E"
    path = tmp_path / "mlvu.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(AnnotationDefect, match=r"mlvu.json\[2\] \(count_2\): answer 'E' is not one of ABCD"):
        MLVUBenchmark().load(path)
    rows = _lmms_rows()
    rows[3]["candidates"] = ["x", "y", "z", "w"]
    path.write_text(json.dumps(rows))
    with pytest.raises(AnnotationDefect, match=r"\(order_3\): the options in the question differ"):
        MLVUBenchmark().load(path)
    rows = _lmms_rows()
    rows[1]["question_id"] = rows[0]["question_id"]
    path.write_text(json.dumps(rows))
    with pytest.raises(AnnotationDefect, match="question id appears twice"):
        MLVUBenchmark().load(path)


def test_split_lettered():
    assert split_lettered("Why?\n(A) a\n(B) b") == ("Why?", ["a", "b"])
    assert split_lettered("Question: Why?\nOptions:\nA. a\nB) b\nC. c") == ("Why?", ["a", "b", "c"])
    assert split_lettered("Order (1)A; (2)B?\n(A) 1->2\n(B) 2->1") == ("Order (1)A; (2)B?", ["1->2", "2->1"])


def test_prompt_is_the_official_one():
    q = BenchQuestion(qid="x", video="v", question="What color is it?", options=["Yellow", "Red", "Green", "Blue"],
                      answer="A")
    assert MLVUBenchmark().prompt(q) == (
        "Carefully watch this video and pay attention to every detail. Based on your observations, select the best "
        "option that accurately addresses the question.\nQuestion: What color is it?\nOptions:\n(A) Yellow\n(B) Red\n"
        "(C) Green\n(D) Blue\nOnly give the best option.")


@pytest.mark.parametrize("reply, expected", [
    ("(A) Yellow", "A"), ("B) Red", "B"), ("C", "C"), (" D \n", "D"), ("Best Option: (C) Green", "C"),
    ("The answer is B.", None), ("B. Red", None), ("(E) none", None), ("", None), ("Yellow", None),
    ("a) yellow", None), ("I think (B) is right, not (C)", "B"),
])
def test_extraction_mlvu_paren(reply, expected):
    q = BenchQuestion(qid="x", video="v", question="?", options=["a", "b", "c", "d"], answer="A")
    assert MLVUBenchmark().extract(reply, q) == expected
    assert extract_paren(reply, "ABCD") == expected


def test_summary_m_avg_is_the_mean_of_task_accuracies():
    outcomes = {"plotQA": [1, 1, 0, 0], "needle": [1], "ego": [0, 0, 0], "count": [1, 0], "order": [1, 1, 1, 0],
                "anomaly_reco": [0, 1], "topic_reasoning": [1, 1, 1, 1, 1, 0]}
    rows = [{"qid": f"{t}/{i}", "task": t, "correct": bool(c), "predicted": "A", "kind": "mcq"}
            for t, cs in outcomes.items() for i, c in enumerate(cs)]
    s = MLVUBenchmark().summarize(rows)
    per_task = [0.5, 1.0, 0.0, 0.5, 0.75, 0.5, 5 / 6]
    assert s["M-Avg"] == pytest.approx(sum(per_task) / 7)
    assert s["overall"] == pytest.approx(13 / 22)
    assert s["tasks"]["order"] == {"n": 4, "accuracy": 0.75} and len(s["tasks"]) == 7


def test_naming_rule_per_task_folders(tmp_path):
    bench = MLVUBenchmark()
    loaded = bench.load(_official(tmp_path / "json"))
    root = tmp_path / "video"
    (root / "3_ego").mkdir(parents=True)
    (root / "3_ego" / "ego_1.mp4").write_bytes(b"x")
    (root / "count_1.mp4").write_bytes(b"x")  # flat: found when the task folder lacks it
    missing = bench.resolve(loaded, root)
    by_ref = {v.ref: v.path for v in loaded.videos}
    assert by_ref["3_ego/ego_1.mp4"] == root / "3_ego" / "ego_1.mp4"
    assert by_ref["4_count/count_1.mp4"] == root / "count_1.mp4"
    assert by_ref["5_order/order_1.mp4"] == root / "5_order" / "order_1.mp4"  # expected place, reported missing
    assert "5_order/order_1.mp4" in missing and "3_ego/ego_1.mp4" not in missing


def test_run_on_the_official_layout(tmp_path):
    """Through the CLI: the naming rule under --video-root, missing videos recorded, M-Avg in summary.json."""
    from avmem.synth.benchmark import generate

    generate(tmp_path / "synth", "test", 1, seconds=(30, 30), size=(64, 64), fps=1, seed=2, questions=1)
    json_dir = _official(tmp_path / "json")
    root = tmp_path / "video"
    for stem, name in (("3_ego", "ego_1.mp4"), ("4_count", "count_2.mp4")):
        (root / stem).mkdir(parents=True)
        shutil.copy(tmp_path / "synth" / "videos" / "test_0000.mp4", root / stem / name)
    out = tmp_path / "run"
    result = runner.invoke(app, ["eval", "--benchmark", "mlvu", str(json_dir), "--video-root", str(root), "--out",
                                 str(out), "--model", "tiny-qwen3-vl", "--video-tokens", "64", "--max-pixels", "4096",
                                 "--no-audio", "--method", "likelihood"])
    assert result.exit_code == 0, result.output
    assert "skipped 8_sub_scene.json" in result.stderr and "2_needle/34" in result.stderr
    rows = read_jsonl(out / "results.jsonl")
    assert sorted(r["qid"] for r in rows) == ["3_ego/0", "3_ego/1", "4_count/2"]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["tasks"]) == {"ego", "count"} and summary["extraction"] == "mlvu_paren"
    assert summary["M-Avg"] == pytest.approx((summary["tasks"]["ego"]["accuracy"]
                                              + summary["tasks"]["count"]["accuracy"]) / 2)
    failures = read_jsonl(out / "failures.jsonl")
    assert len(failures) == len({q.video for q in MLVUBenchmark().load(json_dir).questions}) - 2
    assert summary["counts"]["missing_videos"] == len(failures) and summary["counts"]["left_out_defects"] == 1


def test_generated_answers_continue_the_official_prefill():
    """The runner asks MLVU with the answer pre-filled ("Best Option: ("), as the official script does: the saved
    reply starts with it and the extraction reads prefix + continuation."""
    import numpy as np

    from avmem.eval.benchmarks import BenchQuestion
    from avmem.eval.run import answer_question
    from avmem.model import load_model
    from avmem.session import StreamSession

    s = StreamSession(load_model("tiny-qwen3-vl"), video_tokens=64, max_pixels=64 * 64, use_audio=False)
    rng = np.random.default_rng(0)
    s.feed(frames=[rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(4)], t=[0.0, 1.0, 2.0, 3.0])
    q = BenchQuestion("1_plotQA/0", "v.mp4", "What happens?", ["a", "b", "c", "d"], "B", task="plotQA")
    row = answer_question(s, MLVUBenchmark(), q, "generate", max_new_tokens=3)
    assert row["reply"].startswith("Best Option: (")
    assert row["predicted"] == MLVUBenchmark().extract(row["reply"], q)
