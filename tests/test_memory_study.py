"""The memory study's smoke version (CI): every variant trains, is evaluated, lands in the table and plot; a rerun
skips the runs already done; the per-seed pooling and paired differences are right."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _study():
    spec = importlib.util.spec_from_file_location("memory_study", ROOT / "benchmarks" / "memory_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_study_runs_every_variant(tmp_path, capsys):
    study = _study()
    assert study.main(["--smoke", "--out", str(tmp_path), "--keep-models"]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["variant"] for r in rows] == list(study.VARIANTS)
    for row in rows:
        assert row["steps"] == 2 and row["seeds"] == [0]
        answered = json.loads((tmp_path / row["variant"] / "seed0" / "results.json").read_text())["results"]
        assert len(answered) == row["groups"]["all"]["n"] > 0
        assert row["groups"]["inside memory"]["n"] + row["groups"]["outside memory"]["n"] == len(answered)
    spec = json.loads((tmp_path / "mamba2" / "seed0" / "run" / "model" / "avmem.json").read_text())
    assert spec["memory_layer"] == "mamba2"
    assert not (tmp_path / "discard" / "seed0" / "run" / "model" / "ttt.safetensors").exists()
    table = (tmp_path / "table.md").read_text()
    assert all(f"| {v} |" in table for v in study.VARIANTS)
    assert "Paired against discard" in table
    assert (tmp_path / "memory_study.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert study.main(["--smoke", "--out", str(tmp_path), "--variants", "discard,merge"]) == 0
    assert capsys.readouterr().out.count("done before, skipped") == 2


def test_pooling_over_seeds_and_pairing():
    study = _study()

    def run(variant, seed, hits):
        return {"variant": variant, "seed": seed, "steps": 5, "train_s": 1.0, "eval_s": 1.0, "first_loss": 2.0,
                "last_loss": 1.0, "results": [{"question_id": f"q{i}", "correct": h, "inside_memory": i < 2}
                                              for i, h in enumerate(hits)]}

    a = study.pooled([run("ttt-hf", 0, [1, 1, 1, 0]), run("ttt-hf", 1, [1, 0, 0, 0])])
    ref = study.pooled([run("discard", 0, [1, 1, 0, 0]), run("discard", 1, [1, 0, 0, 0])])
    assert a["groups"]["all"]["n"] == 8 and a["groups"]["all"]["accuracy"] == 0.5
    assert a["groups"]["all"]["per_seed"] == [0.75, 0.25]
    assert a["groups"]["outside memory"]["accuracy"] == 0.25 and a["groups"]["inside memory"]["accuracy"] == 0.75
    diff, lo, hi, differ, n = study.paired(a, ref, "outside memory")
    assert (diff, differ, n) == (0.25, 1, 4) and lo <= diff <= hi
    assert study.paired(a, ref, "inside memory")[:2] == (0.0, 0.0)


def test_unknown_variant_or_seed_is_refused(tmp_path, capsys):
    assert _study().main(["--smoke", "--variants", "lstm", "--out", str(tmp_path)]) == 2
    assert "lstm" in capsys.readouterr().err
    assert _study().main(["--smoke", "--seeds", "x", "--out", str(tmp_path)]) == 2
    assert "--seeds" in capsys.readouterr().err


def test_recent_distractors_counts_wrong_answers_that_name_a_colour_still_held(tmp_path):
    """A question outside the memory whose wrong answer is the background of the last 12.8 s (128 tokens at
    10 tokens/s) counts as a recent pick; the uniform expectation is the share of such wrong options."""
    study = _study()
    test = tmp_path / "test.json"
    test.write_text(json.dumps([{"video": "videos/v.mp4", "questions": [
        {"question_id": "v-1", "task_type": "scene_shape", "question": "Which colour?",
         "options": ["A. red", "B. blue", "C. green", "D. grey"], "answer": "A", "event_time": 2.0,
         "asked_at": 20.0}]}]))
    (tmp_path / "test_events.json").write_text(json.dumps([{"video_id": "v", "scenes": [
        {"start": 0.0, "end": 10.0, "colour": "red"}, {"start": 10.0, "end": 20.0, "colour": "blue"},
        {"start": 20.0, "end": 25.0, "colour": "blue"}, {"start": 25.0, "end": 30.0, "colour": "green"}]}]))

    def run(predicted: str) -> dict:
        return {"results": [{"question_id": "v-1", "task_type": "scene_shape", "inside_memory": False,
                             "tokens_since_event": 180, "predicted": predicted, "correct": predicted == "A"}]}

    text = study.recent_distractors({"x": [run("B")], "y": [run("C")], "z": [run("A")]}, test, 128)
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in text.splitlines() if line.startswith("| ")
            and not line.startswith("| memory")}
    assert rows["x"][:4] == ["1", "0.000", "1.000", "0.250"]  # blue: on screen 10-20 s, not the answer
    assert rows["y"][:4] == ["1", "0.000", "0.000", "0.250"]  # green appears only after the question
    assert rows["z"][:4] == ["1", "1.000", "0.000", "0.250"]
    (tmp_path / "test_events.json").unlink()
    assert study.recent_distractors({"x": [run("B")]}, test, 128) is None
