"""Multiple-choice evaluation: every question answered, distances and memory split consistent, intervals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from avmem.cli import app
from avmem.eval.mcq import bootstrap_ci, evaluate_mcq, summarize
from avmem.synth.benchmark import generate

runner = CliRunner()


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    generate(out, "test", 2, seconds=(60, 80), size=(64, 64), fps=1, seed=3, questions=4)
    return out


def test_every_question_is_answered_with_distances(bench):
    from avmem.model import load_model
    from avmem.session import SessionSettings

    settings = SessionSettings(video_tokens=64, audio_tokens=32, max_pixels=64 * 64)
    results = evaluate_mcq(load_model("tiny-qwen3-vl"), bench / "test.json", settings)
    annotations = json.loads((bench / "test.json").read_text())
    assert len(results) == sum(len(v["questions"]) for v in annotations)
    assert all(r.predicted in "ABCD" and r.correct == (r.predicted == r.answer) for r in results)
    assert all(r.inside_memory == (r.tokens_since_event <= 64) for r in results)
    earlier = sorted(results, key=lambda r: r.event_time)
    assert earlier[0].tokens_since_event >= earlier[-1].tokens_since_event  # further back, more tokens since
    summary = summarize(results)
    assert summary["all"]["n"] == len(results)
    assert summary["inside memory"]["n"] + summary["outside memory"]["n"] == len(results)
    row = summary["all"]
    assert row["ci_low"] <= row["accuracy"] <= row["ci_high"]


def test_bootstrap_interval():
    hits = np.array([1.0] * 30 + [0.0] * 70)
    lo, hi = bootstrap_ci(hits, seed=0)
    assert lo < 0.3 < hi and hi - lo < 0.25
    assert bootstrap_ci(hits, seed=0) == (lo, hi)
    assert bootstrap_ci(np.ones(5)) == (1.0, 1.0)


def test_choose_validates_options():
    from avmem.model import load_model
    from avmem.session import StreamSession

    s = StreamSession(load_model("tiny-qwen3-vl"), video_tokens=64, max_pixels=64 * 64)
    s.feed(frames=np.zeros((2, 64, 64, 3), dtype=np.uint8), t=[0.0, 1.0])
    with pytest.raises(ValueError, match="different tokens"):
        s.choose("Which?", ["A", "A"])
    index, logp = s.choose("Which?", ["A", "B", "C", "D"])
    assert index == int(np.argmax(logp)) and len(logp) == 4


def test_cli_eval_writes_json(bench, tmp_path):
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["eval", str(bench / "test.json"), "--model", "tiny-qwen3-vl", "--video-tokens", "64",
                                 "--max-pixels", "4096", "--max-videos", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["summary"]["all"]["n"] == len(data["results"]) > 0
    bad = runner.invoke(app, ["eval", str(bench / "test.json"), "--model", "tiny-qwen3-vl", "--method", "vote"])
    assert bad.exit_code == 2 and "method must be one of" in bad.stderr


def test_questions_are_asked_when_the_stream_reaches_them(tmp_path):
    from avmem.model import load_model
    from avmem.session import SessionSettings

    generate(tmp_path, "val", 1, seconds=(90, 90), size=(64, 64), fps=1, seed=4, questions=11, times=4, style="text")
    settings = SessionSettings(video_tokens=512, audio_tokens=32, max_pixels=64 * 64)
    results = evaluate_mcq(load_model("tiny-qwen3-vl"), tmp_path / "val.json", settings, method="text")
    asked = {r.asked_at for r in results}
    assert len(asked) > 1 and max(asked) < 90
    per_frame_pair = 4  # 64 x 64 frames: 2 x 2 merged tokens per temporal patch
    for r in results:
        if r.task_type == "background_now":  # the evidence is the newest frame: at most two patches back
            assert r.tokens_since_event <= 2 * per_frame_pair, r
        assert r.tokens_since_event <= r.asked_at / 2 * per_frame_pair + per_frame_pair


def test_answer_scores_equal_token_by_token_decoding():
    import torch

    from avmem.model import load_model
    from avmem.session import StreamSession

    s = StreamSession(load_model("tiny-qwen3-vl"), video_tokens=64, max_pixels=64 * 64)
    s.feed(frames=np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8), t=[0.0, 1.0, 2.0, 3.0])
    answers = ["a rising chirp", "red", "triangle"]
    index, scores = s.score_answers("Which one?", answers)
    bb = s.model.backbone
    for answer, score in zip(answers, scores):
        cache, logits, pos = s._answer_start("Which one?")
        total = 0.0
        with torch.no_grad():
            for tok in [*s._text_ids(answer), bb.tokens.im_end]:
                total += float(torch.log_softmax(logits.float(), -1)[tok])
                logits = bb.forward_embeds(bb.embed(torch.tensor([tok])), torch.full((3, 1), pos), cache, None, None)
                pos += 1
        assert score == pytest.approx(total, abs=1e-4)
    assert index == int(np.argmax(scores))
    assert s.score_answers("Which one?", answers)[1] == pytest.approx(scores, abs=1e-6)  # the cache was not changed
    with pytest.raises(ValueError, match="at least two"):
        s.score_answers("Which one?", ["red"])
