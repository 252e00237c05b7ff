"""The benchmark runner: result lines, resume, shards + merge, failures, question independence, the memory cache,
questions after the end, the accuracy plot, launcher shards, summary keys, the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from avmem.cli import app
from avmem.eval.benchmarks import Benchmark, BenchQuestion, BenchVideo, Loaded, get_benchmark, macro, micro
from avmem.eval.run import (READ_SETTINGS, WRITE_SETTINGS, accuracy_buckets, launcher_shard, merge_runs, parse_shard,
                            plot_accuracy, read_jsonl, run_benchmark, shard_videos, shards_done, stream_video,
                            weights_fingerprint, write_settings)
from avmem.session import SessionSettings, StreamSession
from avmem.synth.benchmark import generate

runner = CliRunner()
SETTINGS = SessionSettings(video_tokens=64, audio_tokens=32, max_pixels=64 * 64, chunk_frames=8, bank_step=32,
                           max_new_tokens=3)
ASK_TIMES = (4.0, 9.5, None, 9.5, 17.0)
PER_VIDEO = len(ASK_TIMES) + 1  # and one probe


class FakeBench(Benchmark):
    """2- and 5-option questions at several ask times over the generated videos."""

    name = "fake"
    extraction = "strict"

    def __init__(self, refs: list[str], missing: str | None = None) -> None:
        self.refs = refs + ([missing] if missing else [])

    def load(self, annotations: Path) -> Loaded:
        videos = []
        for v, ref in enumerate(self.refs):
            qs = []
            for k, t in enumerate(ASK_TIMES):
                n = 5 if k % 2 else 2
                qs.append(BenchQuestion(qid=f"v{v}q{k}", video=ref, question=f"Question {k} about the video?",
                                        options=[f"option {i}" for i in range(n)], answer="ABCDE"[(v + k) % n],
                                        ask_time=t, task=f"t{n}", fields={"n": n}))
            qs.append(BenchQuestion(qid=f"v{v}probe", video=ref, question="Is a shape on screen? Yes or No.",
                                    options=[], answer="Yes", kind="probe", ask_time=12.0, task="probe"))
            videos.append(BenchVideo(ref=ref, questions=qs))
        return Loaded(videos=videos)

    def prompt(self, q: BenchQuestion) -> str:
        return "\n".join([q.question, *q.lettered_options(), "Answer with the letter."])

    def summarize(self, rows: list[dict]) -> dict:
        tasks: dict[str, list[bool]] = {}
        for r in rows:
            tasks.setdefault(r["task"], []).append(bool(r["correct"]))
        return {"task-avg": macro(tasks), "overall": micro([bool(r["correct"]) for r in rows]),
                "per_task": {t: micro(v) for t, v in sorted(tasks.items())}}


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench_media")
    generate(out, "test", 3, seconds=(30, 30), size=(64, 64), fps=1, seed=5, questions=2)
    return out


@pytest.fixture(scope="module")
def model():
    from avmem.model import load_model

    return load_model("tiny-qwen3-vl")


def _refs(media: Path) -> list[str]:
    return sorted(p.relative_to(media).as_posix() for p in (media / "videos").glob("*.mp4"))


def _run(media, model, out, bench=None, method="likelihood", **kw) -> dict:
    bench = bench or FakeBench(_refs(media))
    loaded = bench.load(media)
    kw.setdefault("progress", None)
    return run_benchmark(bench, loaded, model, SETTINGS, out, method=method, video_root=media,
                         model_source="tiny-qwen3-vl", **kw)


@pytest.fixture(scope="module")
def full_run(media, model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full")
    _run(media, model, out)
    return out


def _by_qid(rows: list[dict]) -> dict[str, dict]:
    return {r["qid"]: {k: v for k, v in r.items() if k != "seconds"} for r in rows}


def test_result_lines_and_summary(full_run, media):
    rows = read_jsonl(full_run / "results.jsonl")
    bench = FakeBench(_refs(media))
    questions = {q.qid: q for q in bench.load(media).questions}
    assert sorted(r["qid"] for r in rows) == sorted(questions)
    for r in rows:
        q = questions[r["qid"]]
        if q.kind == "probe":  # always generated, whatever the method
            assert r["method"] == "generate" and isinstance(r["reply"], str) and r["predicted"] == r["reply"]
            assert r["correct"] == (r["reply"].strip().lower() == "yes") and r["ask_time"] == 12.0
            continue
        assert r["predicted"] in q.letters and len(r["scores"]) == len(q.options)  # the question's own letters
        assert r["predicted"] == q.letters[int(np.argmax(r["scores"]))]
        assert r["correct"] == (r["predicted"] == q.answer) and r["method"] == "likelihood"
        assert (r["video"], r["task"], r["kind"], r["ask_time"], r["answer"]) == (q.video, q.task, q.kind,
                                                                                  q.ask_time, q.answer)
    summary = json.loads((full_run / "summary.json").read_text())
    hits = [r["correct"] for r in rows]
    assert summary["overall"] == pytest.approx(sum(hits) / len(hits))
    assert summary["counts"]["answered"] == len(rows) == summary["counts"]["questions"]
    assert summary["counts"]["failed_videos"] == 0 and summary["extraction"] == "strict"
    run = json.loads((full_run / "run.json").read_text())["config"]
    assert run["benchmark"] == "fake" and run["method"] == "likelihood" and run["shards"] == 1
    assert run["settings"]["chunk_frames"] == 8 and run["model"]["source"] == "tiny-qwen3-vl"


def test_missing_video_is_recorded_and_the_others_answered(media, model, tmp_path):
    bench = FakeBench(_refs(media), missing="videos/absent.mp4")
    summary = _run(media, model, tmp_path, bench=bench)
    failures = read_jsonl(tmp_path / "failures.jsonl")
    assert [f["video"] for f in failures] == ["videos/absent.mp4"] and "missing" in failures[0]["reason"]
    rows = read_jsonl(tmp_path / "results.jsonl")
    assert {r["video"] for r in rows} == set(_refs(media)) and len(rows) == 3 * PER_VIDEO
    assert summary["counts"]["failed_videos"] == summary["counts"]["missing_videos"] == 1
    _run(media, model, tmp_path, bench=bench)  # resumed: nothing answered twice, the failure not repeated
    assert len(read_jsonl(tmp_path / "results.jsonl")) == len(rows)
    assert len(read_jsonl(tmp_path / "failures.jsonl")) == 1
    with pytest.raises(ValueError, match="none of the 1 videos"):
        _run(media, model, tmp_path / "none", bench=FakeBench([], missing="videos/absent.mp4"))


def test_undecodable_video_fails_alone(media, model, tmp_path):
    (tmp_path / "videos").mkdir()
    for ref in _refs(media):
        (tmp_path / ref).symlink_to(media / ref)
    (tmp_path / "videos" / "broken.mp4").write_bytes(b"not a video at all" * 100)
    bench = FakeBench(_refs(media) + ["videos/broken.mp4"])
    summary = _run(tmp_path, model, tmp_path / "run", bench=bench)
    failures = read_jsonl(tmp_path / "run" / "failures.jsonl")
    assert [f["video"] for f in failures] == ["videos/broken.mp4"] and failures[0]["reason"]
    assert "\n" not in failures[0]["reason"]
    assert summary["counts"]["answered"] == 3 * PER_VIDEO and summary["counts"]["failed_videos"] == 1


def test_a_failure_mid_video_keeps_the_answers_before_it(media, model, tmp_path):
    class FailsAt17(FakeBench):
        def prompt(self, q: BenchQuestion) -> str:  # an empty question: the session refuses it (ValueError)
            return "" if q.ask_time == 17.0 and q.video == self.refs[0] else super().prompt(q)

    bench = FailsAt17(_refs(media))
    summary = _run(media, model, tmp_path, bench=bench)
    rows = read_jsonl(tmp_path / "results.jsonl")
    failures = read_jsonl(tmp_path / "failures.jsonl")
    first = [r for r in rows if r["video"] == bench.refs[0]]
    assert sorted(r["ask_time"] or 99 for r in first) == [4.0, 9.5, 9.5, 12.0]  # answered before 17 s, kept
    assert [(f["video"], f["answered"]) for f in failures] == [(bench.refs[0], 4)]
    assert "question must be a non-empty string" in failures[0]["reason"]
    assert len(rows) == 3 * PER_VIDEO - 2 and summary["counts"]["failed_videos"] == 1
    _run(media, model, tmp_path, bench=bench)  # resumed: tried again, nothing answered twice
    assert len(read_jsonl(tmp_path / "results.jsonl")) == len(rows)


def test_resume_after_a_kill_answers_nothing_twice(media, model, full_run, tmp_path):
    _run(media, model, tmp_path, max_videos=2)
    path = tmp_path / "results.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    assert len(lines) == 2 * PER_VIDEO
    path.write_text("".join(lines[:-3]) + lines[-3][: len(lines[-3]) // 2])  # killed mid-line
    _run(media, model, tmp_path)
    rows = read_jsonl(path)
    assert len(rows) == len({r["qid"] for r in rows}) == 3 * PER_VIDEO
    assert _by_qid(rows) == _by_qid(read_jsonl(full_run / "results.jsonl"))
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads((full_run / "summary.json").read_text())


def test_a_different_run_is_refused(media, model, full_run, tmp_path):
    _run(media, model, tmp_path, max_videos=1)
    bench = FakeBench(_refs(media))
    with pytest.raises(ValueError, match="holds a different run: settings.video_tokens"):
        run_benchmark(bench, bench.load(media), model, SessionSettings(**{**SETTINGS.__dict__, "video_tokens": 32}),
                      tmp_path, method="likelihood", progress=None, video_root=media, model_source="tiny-qwen3-vl")
    with pytest.raises(ValueError, match="method"):
        _run(media, model, tmp_path, method="generate")


def test_two_shards_merge_to_the_single_run(media, model, full_run, tmp_path):
    lines: list[str] = []
    for i in range(2):
        _run(media, model, tmp_path / f"s{i}", shard=(i, 2), progress=lines.append)
    assert (tmp_path / "s0" / "results.shard-0-of-2.jsonl").is_file()
    assert any(line.startswith("[1/") and "real time, ETA" in line for line in lines)
    parts = [read_jsonl(tmp_path / f"s{i}" / f"results.shard-{i}-of-2.jsonl") for i in range(2)]
    assert not {r["video"] for r in parts[0]} & {r["video"] for r in parts[1]}
    assert shards_done(tmp_path / "s0", 2) == [0] and shards_done(tmp_path / "s1", 2) == [1]
    merged = merge_runs([tmp_path / "s0", tmp_path / "s1"], out=tmp_path / "merged", bench=FakeBench([]))
    single = json.loads((full_run / "summary.json").read_text())
    assert merged == single
    assert json.loads((tmp_path / "merged" / "summary.json").read_text()) == single
    assert _by_qid(parts[0] + parts[1]) == _by_qid(read_jsonl(full_run / "results.jsonl"))
    with pytest.raises(ValueError, match="different run"):
        merge_runs([tmp_path / "s0", full_run], bench=FakeBench([]))


def test_shard_rule_covers_every_video_once():
    videos = [BenchVideo(ref=f"v{k:02d}", questions=[]) for k in range(11)][::-1]
    parts = [shard_videos(videos, (i, 3)) for i in range(3)]
    assert sorted(v.ref for p in parts for v in p) == sorted(v.ref for v in videos)
    assert [v.ref for v in parts[1]] == ["v01", "v04", "v07", "v10"]
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "1", "a/b", "-1/2"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


def test_questions_of_one_video_are_independent(media, model, tmp_path):
    """Q2's log-probabilities are the same whether Q1 was asked before it (same or earlier time) or not."""
    ref = _refs(media)[0]

    class Pair(FakeBench):
        def __init__(self, keep: tuple[int, ...]) -> None:
            super().__init__([ref])
            self.keep = keep

        def load(self, annotations: Path) -> Loaded:
            loaded = super().load(annotations)
            loaded.videos[0].questions = [q for k, q in enumerate(loaded.videos[0].questions) if k in self.keep]
            return loaded

    _run(media, model, tmp_path / "all", bench=Pair((0, 1, 3, 4)))
    _run(media, model, tmp_path / "alone", bench=Pair((3,)))
    together = _by_qid(read_jsonl(tmp_path / "all" / "results.jsonl"))
    alone = _by_qid(read_jsonl(tmp_path / "alone" / "results.jsonl"))
    assert together["v0q3"]["scores"] == alone["v0q3"]["scores"]  # exactly: asked after q0 and q1 (same time)
    # the test can fail: flushing the live stream at a question (the old behaviour) changes a later one
    s = StreamSession(model, SETTINGS, use_audio=False)
    frames = np.random.default_rng(0).integers(0, 255, (20, 64, 64, 3), dtype=np.uint8)
    s.feed(frames=list(frames[:5]), t=[float(t) for t in range(5)])
    s.flush()
    s.feed(frames=list(frames[5:]), t=[float(t) for t in range(5, 20)])
    fresh = StreamSession(model, SETTINGS, use_audio=False)
    fresh.feed(frames=list(frames), t=[float(t) for t in range(20)])
    assert s.choose("Which?", list("AB"))[1] != fresh.choose("Which?", list("AB"))[1]


def test_each_question_sees_the_stream_up_to_its_time(media, model):
    session = StreamSession(model, SETTINGS)
    seen = []

    def on_question(q: BenchQuestion) -> None:
        st = session.state
        seen.append((q.ask_time, st.last_time, st.audio_samples / 16000))

    qs = [BenchQuestion(qid=f"q{k}", video="v", question="?", options=["a", "b"], answer="A", ask_time=t)
          for k, t in enumerate((0.0, 3.0, 7.25, None))]
    stream_video(session, media / _refs(media)[0], qs, on_question)
    for t, last, audio in seen[:3]:
        assert last == np.floor(t) and audio == pytest.approx(t, abs=1 / 16000)  # frames at t' <= t, audio before t
    assert seen[3][1] == 29.0 and seen[3][2] == pytest.approx(30.0, abs=0.05)


def test_generate_method_saves_the_raw_reply(media, model, tmp_path):
    summary = _run(media, model, tmp_path, method="generate", max_videos=1)
    rows = read_jsonl(tmp_path / "results.jsonl")
    assert rows and all(isinstance(r["reply"], str) and r["method"] == "generate" for r in rows)
    assert all(r["predicted"] is None or r["predicted"] in "ABCDE" for r in rows if r["kind"] == "mcq")
    assert summary["counts"]["unparseable"] == sum(r["predicted"] is None for r in rows if r["kind"] == "mcq")


def test_cli_runs_resumes_and_merges(media, tmp_path):
    common = ["--model", "tiny-qwen3-vl", "--video-tokens", "64", "--max-pixels", "4096", "--bank-step", "32",
              "--max-new-tokens", "3", "--no-audio"]
    out = tmp_path / "run"
    first = runner.invoke(app, ["eval", str(media / "test.json"), "--benchmark", "synth", "--out", str(out),
                                "--max-videos", "1", *common])
    assert first.exit_code == 0, first.output
    n_first = len(read_jsonl(out / "results.jsonl"))
    again = runner.invoke(app, ["eval", str(media / "test.json"), "--benchmark", "synth", "--out", str(out),
                                "--method", "generate", *common])
    assert again.exit_code == 0, again.output
    rows = read_jsonl(out / "results.jsonl")
    annotations = json.loads((media / "test.json").read_text())
    assert n_first < len(rows) == len({r["qid"] for r in rows}) == sum(len(v["questions"]) for v in annotations)
    merged = runner.invoke(app, ["eval-merge", str(out), "--out", str(tmp_path / "m")])
    assert merged.exit_code == 0, merged.output
    assert json.loads((tmp_path / "m" / "summary.json").read_text()) == json.loads((out / "summary.json").read_text())
    other = runner.invoke(app, ["eval", str(media / "test.json"), "--benchmark", "synth", "--out", str(out),
                                "--method", "likelihood", *common])
    assert other.exit_code == 2 and "holds a different run: method" in other.stderr


def test_cli_input_errors(media, tmp_path):
    unknown = runner.invoke(app, ["eval", str(media / "test.json"), "--benchmark", "nope", "--out", str(tmp_path),
                                   "--model", "tiny-qwen3-vl"])
    assert unknown.exit_code == 2 and "mlvu" in unknown.stderr and "synth" in unknown.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    none = runner.invoke(app, ["eval", str(media / "test.json"), "--benchmark", "synth", "--video-root", str(empty),
                               "--out", str(tmp_path / "r"), "--model", "tiny-qwen3-vl"])
    assert none.exit_code == 2 and "none of the 3 videos found" in none.stderr
    assert len(none.stderr.strip().splitlines()) == 1
    bad = runner.invoke(app, ["eval", str(media / "test.json"), "--benchmark", "synth", "--out", str(tmp_path / "r"),
                              "--shard", "2/2", "--model", "tiny-qwen3-vl"])
    assert bad.exit_code == 2 and "--shard" in bad.stderr
    legacy = runner.invoke(app, ["eval", str(media / "test.json"), "--out", str(tmp_path / "r"), "--model",
                                 "tiny-qwen3-vl"])
    assert legacy.exit_code == 2 and "needs --benchmark" in legacy.stderr


# memory cache ----------------------------------------------------------------------------------------------------

def _key(rows: list[dict]) -> dict[str, dict]:
    return {q: {k: v for k, v in r.items() if k not in ("seconds",)} for q, r in _by_qid(rows).items()}


class LateBench(FakeBench):
    """FakeBench plus a question asked after the end of the 30 s videos."""

    def load(self, annotations: Path) -> Loaded:
        loaded = super().load(annotations)
        for v, video in enumerate(loaded.videos):
            video.questions.append(BenchQuestion(qid=f"v{v}late", video=video.ref, question="What happened last?",
                                                 options=["a", "b", "c"], answer="B", ask_time=45.0, task="t3"))
        return loaded


def test_every_session_setting_is_write_or_read_side():
    names = {f.name for f in dataclasses.fields(SessionSettings)}
    assert set(WRITE_SETTINGS) | set(READ_SETTINGS) == names and not set(WRITE_SETTINGS) & set(READ_SETTINGS)
    assert {"fps", "video_tokens", "bank_step", "use_ttt", "chunk_frames"} <= set(WRITE_SETTINGS)
    assert {"reader", "read_tokens", "budget_file", "incremental", "max_new_tokens"} <= set(READ_SETTINGS)
    assert write_settings(dataclasses.replace(SETTINGS, reader="recent")) == write_settings(SETTINGS)
    assert write_settings(dataclasses.replace(SETTINGS, fps=2.0)) != write_settings(SETTINGS)


def test_weights_fingerprint_sees_a_changed_weight(model):
    import torch

    before = weights_fingerprint(model)
    assert weights_fingerprint(model) == before
    for part in (model.backbone.model, model.ttt, model.audio):
        weight = next(part.parameters())
        with torch.no_grad():
            old = weight.view(-1)[0].clone()
            weight.view(-1)[0] += 1.0
            try:
                assert weights_fingerprint(model) != before
            finally:
                weight.view(-1)[0] = old
    assert weights_fingerprint(model) == before


def test_memory_cache_serves_read_side_sweeps_without_decoding(media, model, tmp_path):
    ref = _refs(media)[0]
    (tmp_path / "videos").mkdir()
    video = tmp_path / ref
    shutil.copy2(media / ref, video)
    original, stat = video.read_bytes(), video.stat()
    bench = LateBench([ref])
    cache = tmp_path / "cache"
    reread = dataclasses.replace(SETTINGS, reader="recent", read_tokens=24)

    def run(root: Path, out: str, settings: SessionSettings = SETTINGS, **kw) -> dict:
        return run_benchmark(bench, bench.load(root), model, settings, tmp_path / out, method="likelihood",
                             video_root=root, model_source="tiny-qwen3-vl", **kw)

    notes: list[str] = []
    run(tmp_path, "first", memory_cache=cache, progress=notes.append)
    assert not any("memory cache" in n for n in notes)
    folders = [f for f in cache.iterdir() if f.is_dir()]
    assert len(folders) == 1 and (folders[0] / "end.json").is_file()
    assert {f.name for f in folders[0].glob("*.session")} == {"t=4.0.session", "t=9.5.session", "t=12.0.session",
                                                             "t=17.0.session", "end.session"}
    first = read_jsonl(tmp_path / "first" / "results.jsonl")
    # the video now fails to decode, with the same size and time: answers come from the cache alone
    video.write_bytes(b"\0" * len(original))
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    run(tmp_path, "cached", settings=reread, memory_cache=cache, progress=notes.append)
    assert any("from the memory cache" in n for n in notes) and not read_jsonl(tmp_path / "cached" / "failures.jsonl")
    fresh = run(media, "fresh", settings=reread, progress=None)  # streamed from the real video, no cache
    cached = read_jsonl(tmp_path / "cached" / "results.jsonl")
    assert _key(cached) == _key(read_jsonl(tmp_path / "fresh" / "results.jsonl"))
    assert json.loads((tmp_path / "cached" / "summary.json").read_text()) == fresh
    assert _key(cached) != _key(first)  # the read-side change mattered
    videos = read_jsonl(tmp_path / "cached" / "videos.jsonl")
    assert videos[0]["from_cache"] and videos[0]["stream_end"] == pytest.approx(30.0)
    # a write-side change is a different key: it has to decode the (now broken) video
    run(tmp_path, "other", settings=dataclasses.replace(SETTINGS, video_tokens=32), memory_cache=cache, progress=None)
    assert read_jsonl(tmp_path / "other" / "failures.jsonl")[0]["video"] == ref
    # corrupt and foreign states are noted, recomputed and rewritten
    video.write_bytes(original)
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (folders[0] / "t=9.5.session").write_bytes(b"not a session")
    foreign = StreamSession(model, dataclasses.replace(SETTINGS, video_tokens=32))
    foreign.feed(frames=[np.zeros((64, 64, 3), np.uint8)], t=[0.0])
    foreign.save(folders[0] / "t=4.0.session")
    notes.clear()
    run(tmp_path, "repaired", settings=reread, memory_cache=cache, progress=notes.append)
    assert any("other write-side settings; ignored and recomputed" in n for n in notes)
    assert _key(read_jsonl(tmp_path / "repaired" / "results.jsonl")) == _key(cached)
    assert StreamSession.load(folders[0] / "t=4.0.session", model).settings.video_tokens == SETTINGS.video_tokens
    notes.clear()
    run(tmp_path, "repaired2", settings=reread, memory_cache=cache, progress=notes.append)
    assert any("from the memory cache" in n for n in notes) and not any("ignored" in n for n in notes)
    # a key.json that does not match its folder: the folder's states are dropped, nothing is trusted
    (folders[0] / "key.json").write_text('{"video": "another"}')
    notes.clear()
    run(tmp_path, "rekeyed", settings=reread, memory_cache=cache, progress=notes.append)
    assert any("key.json does not match" in n for n in notes) and not any("from the memory cache" in n for n in notes)
    assert _key(read_jsonl(tmp_path / "rekeyed" / "results.jsonl")) == _key(cached)


def test_questions_after_the_end_are_asked_at_the_end_and_counted(media, model, tmp_path):
    bench = LateBench(_refs(media)[:1])
    summary = _run(media, model, tmp_path, bench=bench)
    rows = {r["qid"]: r for r in read_jsonl(tmp_path / "results.jsonl")}
    late = rows["v0late"]
    assert late["asked_at_end"] is True and late["stream_time"] == pytest.approx(30.0) and late["ask_time"] == 45.0
    assert all(r["asked_at_end"] is False and "stream_time" not in r for q, r in rows.items() if q != "v0late")
    assert summary["counts"]["asked_after_end"] == 1


# accuracy plot, launcher shards, summary keys ---------------------------------------------------------------------

def test_accuracy_plot(full_run, tmp_path):
    assert (full_run / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [{"qid": "a", "video": "v1", "correct": True, "ask_time": 30.0},
            {"qid": "b", "video": "v1", "correct": False, "ask_time": None},
            {"qid": "b", "video": "v1", "correct": True, "ask_time": None},  # duplicate: first kept
            {"qid": "c", "video": "v2", "correct": True, "ask_time": 900.0, "asked_at_end": True,
             "stream_time": 700.0},
            {"qid": "d", "video": "v2", "correct": None, "ask_time": 10.0},  # unjudged
            {"qid": "e", "video": "v3", "correct": False, "ask_time": 5.0}]  # no length recorded
    videos = [{"video": "v1", "stream_end": 100.0}, {"video": "v2", "stream_end": 700.0}]
    tables = accuracy_buckets(rows, videos)
    assert tables["length"] == {"1-3 min": (1, 2), "10-20 min": (1, 1)}
    assert tables["ask_time"] == {"<1 min": (1, 2), "1-3 min": (0, 1), "10-20 min": (1, 1)}
    assert plot_accuracy(rows, videos, tmp_path / "a.png") == tmp_path / "a.png"
    assert plot_accuracy([{**rows[4]}], videos, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_launcher_environment_gives_shard_and_device():
    assert launcher_shard({}, 8) is None
    assert launcher_shard({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}, 2) == ((3, 4), "cuda:1")
    assert launcher_shard({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3"}, 0) == ((3, 4), None)
    assert launcher_shard({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, 1) == ((1, 2), "cuda:0")
    assert launcher_shard({"RANK": "0", "WORLD_SIZE": "1"}, 1) == ((0, 1), "cuda:0")
    for env, count in (({"RANK": "4", "WORLD_SIZE": "4"}, 0), ({"RANK": "x", "WORLD_SIZE": "2"}, 0),
                       ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "3"}, 2)):
        with pytest.raises(ValueError, match="RANK|LOCAL_RANK"):
            launcher_shard(env, count)


def test_cli_under_a_launcher_runs_its_shard(media, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["eval", str(media / "test.json"), "--benchmark", "synth", "--out", str(out),
                                 "--model", "tiny-qwen3-vl", "--video-tokens", "64", "--max-pixels", "4096",
                                 "--bank-step", "32", "--max-new-tokens", "3", "--no-audio", "--method", "likelihood",
                                 "--device", "cpu"],
                           env={"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert result.exit_code == 0, result.output
    assert "shard 1/2" in result.stderr and "1 of 2 shards done" in result.stderr
    rows = read_jsonl(out / "results.shard-1-of-2.jsonl")
    loaded = get_benchmark("synth").load(media / "test.json")
    assert {r["qid"] for r in rows} == {q.qid for v in shard_videos(loaded.videos, (1, 2)) for q in v.questions}
    assert shards_done(out, 2) == [1]


def test_summary_keeps_the_benchmark_names_and_counts_apart(tmp_path):
    """OVO-Bench's own ``unparseable`` rate and per-task ``counts`` next to the runner's counts."""
    out = tmp_path / "ovo"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"config": {"benchmark": "ovobench", "method": "generate",
                                                         "model": {"source": "m"}}, "info": {}}))
    rows = [{"qid": "1", "video": "a.mp4", "task": "EPM", "fields": {}, "kind": "mcq", "ask_time": 5.0,
             "answer": "A", "reply": "A", "predicted": "A", "correct": True, "method": "generate",
             "asked_at_end": False},
            {"qid": "2", "video": "a.mp4", "task": "EPM", "fields": {}, "kind": "mcq", "ask_time": 99.0,
             "answer": "B", "reply": "no idea", "predicted": None, "correct": False, "method": "generate",
             "asked_at_end": True, "stream_time": 60.0}]
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = runner.invoke(app, ["eval-merge", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["unparseable"] == 0.5 and summary["counts"]["unparseable"] == 1  # rate (OVO) vs count (runner)
    assert summary["ovobench_counts"] == {"EPM": 2} and summary["counts"]["answered"] == 2
    assert summary["counts"]["asked_after_end"] == 1 and summary["overall"] == 50.0
    assert "counts.unparseable" in result.stdout and "counts.asked_after_end" in result.stdout
    assert "1 questions have an ask time after the end" in result.stderr
    assert (out / "accuracy.png").is_file()


def test_question_windows_combine_the_benchmark_window_and_context_seconds():
    """question_window: the later of the benchmark's own window and N seconds before the ask time (the end of the
    stream for end-of-video questions); None when the whole memory is read."""
    from avmem.eval.benchmarks import BenchQuestion
    from avmem.eval.benchmarks.streamingbench import StreamingBench
    from avmem.eval.run import question_window

    class Stream:  # the one thing question_window asks of a session
        def stats(self):
            return type("S", (), {"seconds": 50.0})()

    bench = StreamingBench()
    q = BenchQuestion("q", "v.mp4", "?", ["a", "b"], "A", ask_time=30.0, extra={"window_start": 0.0})
    assert question_window(Stream(), bench, q) is None
    assert question_window(Stream(), bench, q, context_seconds=10) == 20.0
    assert question_window(Stream(), bench, q, context_seconds=60) is None
    q.extra["window_start"] = 25.0  # e.g. StreamingBench(context_time=5) or a proactive look-back
    assert question_window(Stream(), bench, q) == 25.0
    assert question_window(Stream(), bench, q, context_seconds=10) == 25.0
    end = BenchQuestion("e", "v.mp4", "?", ["a", "b"], "A")
    assert question_window(Stream(), bench, end, context_seconds=10) == 40.0
