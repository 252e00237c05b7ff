"""avmem as an lmms-eval model: model_args parsing, one stream per video, greedy generation with the task's limits,
loglikelihood, and (with lmms-eval installed) the model found through lmms-eval's registry and its own CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from avmem.integrations.lmms_eval import (
    ModelArgsError,
    VideoQA,
    cut_at,
    generation_limits,
    manifest,
    parse_model_args,
    video_of,
)
from avmem.media import MediaError
from avmem.session import StreamSession
from avmem.synth import write_test_pattern_clip

from .conftest import TEST_DEVICE

ARGS = dict(pretrained="tiny-qwen3-vl", device=TEST_DEVICE, fps=1, max_pixels=64 * 64, video_tokens=128,
            audio_tokens=32, chunk_frames=4, max_new_tokens=4)
ARG_STRING = ",".join(f"{k}={v}" for k, v in ARGS.items())
QUESTION = "What colour is the background? Answer with A or B."


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("clips")
    return [str(write_test_pattern_clip(folder / f"v{i}.mp4", 3, fps=4, size=(64, 64), seed=i)) for i in range(2)]


@pytest.fixture(scope="module")
def qa(tmp_path_factory) -> VideoQA:
    os.environ.setdefault("AVMEM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    return VideoQA.from_model_args(dict(ARGS))


def _fresh_answer(qa: VideoQA, video: str, prompt: str, limit: int) -> str:
    """The reference: a new session streamed from the start, asked one question."""
    session = StreamSession(qa.model, qa.settings)
    session.feed_file(video)
    return session.ask(prompt, max_new_tokens=limit)


# model_args, generation kwargs, visuals ----------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    ({"pretrained": "tiny-qwen3-vl", "video_token": 10}, "unknown key 'video_token'"),
    ({"pretrained": "tiny-qwen3-vl", "video_tokens": "many"}, "video_tokens must be an integer"),
    ({"pretrained": "tiny-qwen3-vl", "fps": True}, "fps must be a number"),
    ({"pretrained": "tiny-qwen3-vl", "incremental": 3}, "incremental must be true or false"),
    ({"pretrained": "tiny-qwen3-vl", "on_error": "skip"}, "on_error must be one of raise, empty"),
    ({"pretrained": "tiny-qwen3-vl", "cached_videos": 0}, "cached_videos must be >= 1"),
    ({"video_tokens": 64}, "give pretrained=MODEL"),
])
def test_bad_model_args_fail_with_one_line(args, message):
    with pytest.raises(ModelArgsError, match=message) as err:
        parse_model_args(args)
    assert "\n" not in str(err.value) and str(err.value).startswith("avmem model_args: ")


def test_model_args_as_lmms_eval_parses_them():
    load, session, plugin = parse_model_args({"pretrained": "tiny-qwen3-vl", "fps": 2, "video_tokens": 4096.0,
                                              "reader": "omnimem", "read_joint": False, "bank_step": "None",
                                              "budget_file": 123, "cached_videos": 2, "batch_size": 1,
                                              "max_batch_size": None, "device": "cpu"})
    assert load == {"pretrained": "tiny-qwen3-vl", "device": "cpu"}
    assert session == {"fps": 2.0, "video_tokens": 4096, "reader": "omnimem", "read_joint": False, "bank_step": None,
                       "budget_file": "123"}
    assert plugin == {"cached_videos": 2}
    assert isinstance(session["fps"], float) and isinstance(session["video_tokens"], int)


@pytest.mark.parametrize("args, message", [
    ({"reader": "nope"}, "nope"),
    ({"device": "tpu"}, "device: unknown device 'tpu'"),
    ({"dtype": "int3"}, "dtype: unknown dtype 'int3'"),
    ({"budget_file": "/nonexistent/budgets.json", "reader": "omnimem"}, "budget_file /nonexistent/budgets.json"),
    ({"incremental": True, "reader": "pd"}, "incremental applies to readers"),
    ({"pretrained": "tiny-qwen9"}, "unknown preset 'tiny-qwen9'"),
    ({"video_tokens": 0}, "video_tokens must be > 0"),
])
def test_bad_settings_fail_with_one_line(args, message):
    with pytest.raises(ModelArgsError, match=message) as err:
        VideoQA.from_model_args({**ARGS, **args})
    assert "\n" not in str(err.value)


def test_generation_kwargs():
    assert generation_limits({"max_new_tokens": 16, "temperature": 0, "top_p": 1.0, "num_beams": 1,
                              "do_sample": False, "until": ["\n\n", ""]}, 64) == (16, ["\n\n"])
    assert generation_limits({"until": "Q:"}, 64) == (64, ["Q:"])
    assert generation_limits(None, 8) == (8, [])
    for sampling in ({"temperature": 0.7}, {"do_sample": True}, {"num_beams": 4}):
        with pytest.raises(ValueError, match="greedily only"):
            generation_limits(sampling, 64)
    with pytest.raises(ValueError, match="max_new_tokens must be a positive integer"):
        generation_limits({"max_new_tokens": -1}, 64)
    with pytest.raises(ValueError, match="until must be"):
        generation_limits({"until": 3}, 64)
    assert cut_at("B. because\n\nmore", ["\n\n", "."]) == "B"
    assert cut_at("A", ["Q:"]) == "A"


def test_visuals():
    assert video_of(["/data/v.mp4"]) == "/data/v.mp4"
    assert video_of(Path("/data/v.mp4")) == "/data/v.mp4"
    with pytest.raises(ValueError, match="no video"):
        video_of([])
    with pytest.raises(NotImplementedError, match="2 visual"):
        video_of(["/a.mp4", "/b.mp4"], where="videomme doc 3: ")
    with pytest.raises(NotImplementedError, match="ndarray"):
        import numpy as np

        video_of([np.zeros((2, 2, 3), np.uint8)])


# the model: streaming once, answers, loglikelihood -------------------------------------------------------------


def test_questions_on_one_video_stream_it_once(qa, clips):
    qa.streams.clear()
    first = qa.generate(clips[0], QUESTION, {"max_new_tokens": 3})
    second = qa.generate(clips[0], "Is there a square?", {"max_new_tokens": 3})
    assert qa.streams[clips[0]] == 1
    # each answer is what a fresh stream asked only that question gives (questions do not see each other)
    assert first == _fresh_answer(qa, clips[0], QUESTION, 3)
    assert second == _fresh_answer(qa, clips[0], "Is there a square?", 3)
    qa.generate(clips[1], QUESTION, None)  # cached_videos=1: the first session is dropped
    qa.generate(clips[0], QUESTION, None)
    assert qa.streams[clips[0]] == 2 and qa.streams[clips[1]] == 1
    assert qa.settings.use_audio and qa.settings.use_ttt  # the tiny Qwen3-VL has both: on by default


def test_until_and_sampling(qa, clips):
    full = qa.generate(clips[0], QUESTION, {"max_new_tokens": 4})
    assert full, "the tiny model's reply is not empty"
    assert qa.generate(clips[0], QUESTION, {"max_new_tokens": 4, "until": [full[1:3]]}) == cut_at(full, [full[1:3]])
    with pytest.raises(ValueError, match="greedily only"):
        qa.generate(clips[0], QUESTION, {"temperature": 0.2})


def test_loglikelihood(qa, clips):
    session = qa.session(clips[0])
    tok = qa.model.backbone.tokenizer
    # one-token continuations: the same numbers as StreamSession.choose (first answer-token log-probabilities)
    _, logp = session.choose(QUESTION, ["A", "B"])
    scored = [qa.loglikelihood(clips[0], QUESTION, f" {c}") for c in "AB"]
    assert [s for s, _ in scored] == pytest.approx(logp, abs=1e-4)
    # the greedy tokens (those ``ask`` decodes to its reply) are flagged greedy, any change of one is not; the
    # greedy first token scores at least as well as any other first token
    bb = qa.model.backbone
    cache, logits, position = session._answer_start(QUESTION)
    ids = bb.decode(cache, logits, position, 3)
    assert len(ids) == 3 and tok.decode(ids, skip_special_tokens=True).strip() == session.ask(QUESTION, 3)
    assert qa.score_ids(session, QUESTION, ids)[1] and qa.score_ids(session, QUESTION, ids[:1])[1]
    for changed in ([ids[0] + 1, *ids[1:]], [ids[0], ids[1], ids[2] + 1]):
        assert not qa.score_ids(session, QUESTION, changed)[1]
    top = qa.score_ids(session, QUESTION, ids[:1])[0]
    assert all(qa.score_ids(session, QUESTION, [i])[0] <= top for i in (ids[0] + 1, ids[0] + 7, 0))
    with pytest.raises(NotImplementedError, match="acc_mutual_info"):
        qa.loglikelihood(clips[0], "", " A")


def test_unreadable_video(qa, clips, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(MediaError):
        qa.generate(str(bad), QUESTION, None)
    assert str(bad) in qa.failed
    lenient = VideoQA(qa.model, qa.settings, on_error="empty")
    assert lenient.generate(str(tmp_path / "missing.mp4"), QUESTION, None) == ""
    assert lenient.loglikelihood(str(tmp_path / "missing.mp4"), QUESTION, " A") == (float("-inf"), False)
    assert lenient.streams[str(tmp_path / "missing.mp4")] == 1  # tried once, then remembered as failed


def test_entry_point_is_declared():
    """The installed metadata (``pip install -e .``) declares the lmms_eval.models entry point to manifest()."""
    eps = [ep for ep in entry_points(group="lmms_eval.models") if ep.name == "avmem"]
    assert [ep.value for ep in eps] == ["avmem.integrations.lmms_eval:manifest"]
    assert eps[0].load() is manifest


# through lmms-eval itself -------------------------------------------------------------------------------------


def _docs(clips: list[str]) -> list[dict]:
    return [{"video": clips[0], "question": QUESTION}, {"video": clips[1], "question": QUESTION},
            {"video": clips[0], "question": "Is there a square?"}]


def _visual(doc: dict) -> list[str]:
    return [doc["video"]]


def _lmms_model():
    """The model as lmms-eval builds it (registry, create_from_arg_string with the evaluator's extra config)."""
    pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install lmms_eval)")
    from lmms_eval.models import get_model

    cls = get_model("avmem")
    assert cls.__module__ == "avmem.integrations._lmms_model" and cls.is_simple
    return cls.create_from_arg_string(ARG_STRING, {"batch_size": 1, "max_batch_size": None, "device": None})


def _instance(kind: str, args: tuple, doc_id: int):
    from lmms_eval.api.instance import Instance

    return Instance(request_type=kind, arguments=args, idx=0,
                    metadata={"task": "synthqa", "doc_id": doc_id, "repeats": 1})


def test_lmms_eval_generate_until(qa, clips):
    lm = _lmms_model()
    docs = _docs(clips)
    lm.task_dict = {"synthqa": {"test": docs}}
    gen = {"max_new_tokens": 3, "temperature": 0, "do_sample": False, "num_beams": 1, "until": ["\n\n"]}
    requests = [_instance("generate_until", (f"<image>{d['question']}", dict(gen), _visual, i, "synthqa", "test"), i)
                for i, d in enumerate(docs)]
    replies = lm.generate_until(requests)
    assert all(isinstance(r, str) for r in replies) and len(replies) == 3
    assert dict(lm.qa.streams) == {clips[0]: 1, clips[1]: 1}  # video 0's two questions: one stream
    assert replies == [_fresh_answer(qa, d["video"], d["question"], 3) for d in docs]
    hot = dict(gen, temperature=0.7)
    with pytest.raises(ValueError, match="greedily only"):
        lm.generate_until([_instance("generate_until", (QUESTION, hot, _visual, 0, "synthqa", "test"), 0)])
    with pytest.raises(NotImplementedError, match="multi-round"):
        lm.generate_until_multi_round(requests)


def test_lmms_eval_loglikelihood(qa, clips):
    lm = _lmms_model()
    lm.task_dict = {"synthqa": {"test": _docs(clips)}}
    requests = [_instance("loglikelihood", (QUESTION, f" {c}", _visual, 0, "synthqa", "test"), 0) for c in "AB"]
    scores = lm.loglikelihood(requests)
    assert [s for s, _ in scores] == pytest.approx(qa.session(clips[0]).choose(QUESTION, ["A", "B"])[1], abs=1e-4)
    with pytest.raises(NotImplementedError, match="acc_mutual_info"):
        lm.loglikelihood([_instance("loglikelihood", ("", "A"), 0)])


def test_lmms_eval_bad_model_args_fail_with_one_line():
    pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install lmms_eval)")
    from lmms_eval.models import get_model

    with pytest.raises(ModelArgsError, match="unknown key 'videotokens'") as err:
        get_model("avmem").create_from_arg_string("pretrained=tiny-qwen3-vl,videotokens=5", {"batch_size": 1})
    assert "\n" not in str(err.value)


TASK_YAML = """task: avmem_synthqa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 3
  temperature: 0
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: exact
    aggregation: mean
    higher_is_better: true
"""
TASK_UTILS = '''def doc_to_visual(doc):
    return [doc["video"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def process_results(doc, results):
    return {"exact": float(results[0].strip()[:1] == doc["answer"])}
'''


@pytest.mark.slow
def test_lmms_eval_command_runs_offline(qa, clips, tmp_path):
    """``lmms-eval --model avmem`` end to end on a task defined here (local JSON docs, lmms-eval's own task code,
    metrics and sample log): no dataset hub needed."""
    pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install lmms_eval)")
    exe = shutil.which("lmms-eval", path=str(Path(sys.executable).parent)) or shutil.which("lmms-eval")
    if exe is None:
        pytest.skip("the lmms-eval command is not on PATH")
    docs = [dict(d, answer="A") for d in _docs(clips)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "avmem_synthqa.yaml").write_text(TASK_YAML.format(docs=tmp_path / "docs.jsonl"))
    (tmp_path / "utils.py").write_text(TASK_UTILS)
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    run = subprocess.run([exe, "--model", "avmem", "--model_args", ARG_STRING, "--tasks", "avmem_synthqa",
                          "--include_path", str(tmp_path), "--output_path", str(tmp_path / "out"), "--log_samples"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    samples = [json.loads(line) for f in (tmp_path / "out").rglob("*samples_avmem_synthqa.jsonl")
               for line in f.read_text().splitlines()]
    assert len(samples) == 3
    replies = {s["doc_id"]: s["filtered_resps"] for s in samples}
    replies = {k: v[0] if isinstance(v, list) else v for k, v in replies.items()}  # one filter: a str or [str]
    expected = {i: _fresh_answer(qa, d["video"], d["question"], 3) for i, d in enumerate(docs)}
    assert replies == expected
    results = json.loads(next((tmp_path / "out").rglob("*_results.json")).read_text())
    exact = results["results"]["avmem_synthqa"]["exact,none"]
    assert exact == pytest.approx(sum(r.strip()[:1] == "A" for r in expected.values()) / 3)
