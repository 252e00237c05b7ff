"""Run a registered benchmark (:mod:`avmem.eval.benchmarks`) over its videos: resumable, shardable, logged.

One streaming pass per video through a fresh :class:`~avmem.session.StreamSession`; every question is asked when
the stream reaches its ``ask_time`` (None = the end of the video) and sees exactly the stream up to that time:
every frame sampled at ``t <= ask_time`` and the audio before ``ask_time`` (an audio chunk that straddles the ask
time is fed in two parts, which absorbs exactly as the whole chunk would). Questions are answered from a flushed
copy of the memory (``StreamSession.ask`` / ``choose``); the live stream is never flushed, so asking one question
never changes what a later question of the same video sees.

Files in ``RUN_DIR``:

* ``run.json``: what the run is (benchmark, annotations, model, method, every session setting, avmem version,
  number of shards); a run in an existing ``RUN_DIR`` must match it (resume) or is refused;
* ``results.jsonl`` (``results.shard-I-of-N.jsonl`` with shards): one JSON line per answered question, appended
  and flushed as it is produced; answered question ids are skipped on resume;
* ``failures.jsonl`` (``failures.shard-I-of-N.jsonl``): one line per failed video (missing, undecodable, out of
  memory) with the reason; the video's answers written before the failure are kept;
* ``summary.json``: the benchmark's official aggregates over every results file of the folder, plus
  ``overall``, ``counts`` and the extraction rule; rewritten after each video.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from .. import __version__
from ..session import RUNTIME_TTT_KEYS, DeviceMemoryError, SessionSettings, StreamSession
from .benchmarks import Benchmark, BenchQuestion, BenchVideo, Loaded, get_benchmark, micro

RUN_FORMAT = "avmem-eval-run/1"
RUN_METHODS = ("generate", "likelihood")
VIDEO_ERRORS = (ValueError, OSError, EOFError, DeviceMemoryError)
"""What makes one video fail without stopping the run: missing or undecodable media (MediaError is a ValueError,
I/O errors), running out of memory (DeviceMemoryError). Anything else is a bug and is raised."""


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def shard_videos(videos: list[BenchVideo], shard: tuple[int, int]) -> list[BenchVideo]:
    """The videos of shard ``(i, n)``: sorted by ref, every n-th from the i-th (the N shards cover all, once)."""
    i, n = shard
    if not (isinstance(n, int) and isinstance(i, int) and n >= 1 and 0 <= i < n):
        raise ValueError(f"shard must be (i, N) with 0 <= i < N, got {shard}")
    ordered = sorted(videos, key=lambda v: v.ref)
    return [v for k, v in enumerate(ordered) if k % n == i]


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must be I/N (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard I/N needs 0 <= I < N, got {text!r}")
    return i, n


def _suffix(shard: tuple[int, int]) -> str:
    return "" if shard[1] == 1 else f".shard-{shard[0]}-of-{shard[1]}"


def results_file(out_dir: Path, shard: tuple[int, int]) -> Path:
    return Path(out_dir) / f"results{_suffix(shard)}.jsonl"


def failures_file(out_dir: Path, shard: tuple[int, int]) -> Path:
    return Path(out_dir) / f"failures{_suffix(shard)}.jsonl"


def run_config(bench: Benchmark, annotations: str | Path | None, model, settings: SessionSettings, method: str,
               shards: int, model_source: str | None = None) -> dict[str, Any]:
    """What a run is; a resumed run must have exactly this (``run.json`` ``config``)."""
    spec = model.spec
    ttt = None if spec.ttt is None else {k: v for k, v in spec.ttt.items() if k not in RUNTIME_TTT_KEYS}
    return {
        "format": RUN_FORMAT,
        "benchmark": bench.name,
        "annotations": None if annotations is None else str(Path(annotations).resolve()),
        "extraction": bench.extraction,
        "model": {"source": model_source or model.source, "dtype": str(model.backbone.dtype).replace("torch.", ""),
                  "backbone_type": spec.backbone_type, "memory_layer": spec.memory_layer, "ttt": ttt,
                  "random_weights": spec.random_weights},
        "method": method,
        "settings": asdict(settings),
        "avmem_version": __version__,
        "shards": shards,
    }


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def open_run_dir(out_dir: Path, config: dict[str, Any], info: dict[str, Any] | None = None) -> None:
    """Create ``out_dir/run.json`` or check that the run there is the same run.

    Raises:
        ValueError: ``out_dir`` holds another run (one line naming what differs) or is not a folder.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file, not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "run.json"
    if path.exists():
        try:
            saved = json.loads(path.read_text())["config"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f"{path}: not an avmem evaluation run file; use another --out folder") from None
        diff = _differences(saved, json.loads(json.dumps(config)))
        if diff:
            shown = ", ".join(f"{k} ({_get(saved, k)!r} there, {_get(config, k)!r} now)" for k in diff[:3])
            raise ValueError(f"{out_dir} holds a different run: {shown}{' ...' if len(diff) > 3 else ''}; "
                             f"use another --out folder to start a new run")
        return
    _write_json(path, {"config": config, "info": info or {}})


def _get(d: dict, dotted: str) -> Any:
    for k in dotted.split("."):
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _write_json(path: Path, data: Any) -> None:
    """Write atomically (other shards may read or write the same file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict]:
    """The complete lines of a JSONL file (a partial last line, from a killed writer, is ignored)."""
    rows = []
    if not Path(path).is_file():
        return rows
    for line in Path(path).read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _repair_tail(path: Path) -> None:
    """Cut a partial last line (the writer was killed mid-line) so appended lines stay whole."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[:data.rfind(b"\n") + 1])


class _Appender:
    """One JSON line per record, written and flushed (and fsynced) as it comes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, row: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def answer_question(session: StreamSession, bench: Benchmark, q: BenchQuestion, method: str,
                    max_new_tokens: int | None = None) -> dict[str, Any]:
    """Ask ``q`` of ``session`` now (from a flushed copy: the stream is not changed) and score it: the result row.

    ``likelihood`` (multiple choice only): the question's own letters ``q.letters`` rated as the first answer
    token after the benchmark's prompt; otherwise (and always for open / probe questions) a generated reply,
    read with the benchmark's extraction rule.
    """
    start = time.perf_counter()
    prompt = bench.prompt(q)
    prefix = bench.answer_prefix(q)
    scores = None
    if method == "likelihood" and q.kind == "mcq":
        index, scores = session.choose(prompt, list(q.letters), prefix=prefix)
        reply, predicted, used = None, q.letters[index], "likelihood"
    else:
        reply = prefix + session.ask(prompt, max_new_tokens=max_new_tokens, prefix=prefix)
        predicted, used = bench.extract(reply, q), "generate"
    row = {"qid": q.qid, "video": q.video, "task": q.task, "fields": q.fields, "kind": q.kind,
           "ask_time": q.ask_time, "answer": q.answer, "reply": reply, "predicted": predicted,
           "correct": bench.correct(predicted, q), "seconds": round(time.perf_counter() - start, 4), "method": used}
    if scores is not None:
        row["scores"] = scores
    return row


def stream_video(session: StreamSession, path: Path, questions: list[BenchQuestion],
                 on_question: Callable[[BenchQuestion], None]) -> None:
    """Stream ``path`` through ``session``; call ``on_question(q)`` when the stream reaches ``q.ask_time`` (all
    frames at ``t <= ask_time`` and the audio before it fed), then for the questions left at the end."""
    from ..media import SAMPLE_RATE, AudioChunk
    from ..media.prefetch import Prefetch
    from ..session import DECODE_QUEUE_ITEMS

    end = float("inf")
    pending = sorted(questions, key=lambda q: end if q.ask_time is None else q.ask_time)

    def due() -> float:
        return end if not pending or pending[0].ask_time is None else pending[0].ask_time

    items = Prefetch(session.media(path), DECODE_QUEUE_ITEMS)
    try:
        for item in items:
            if isinstance(item, AudioChunk):
                samples, cursor = item.samples, 0
                while due() < item.t + len(samples) / SAMPLE_RATE:
                    cut = min(max(int(round((due() - item.t) * SAMPLE_RATE)), cursor), len(samples))
                    if cut > cursor:
                        session.feed(audio=samples[cursor:cut], audio_t=item.t + cursor / SAMPLE_RATE)
                        cursor = cut
                    on_question(pending.pop(0))
                if cursor < len(samples):
                    session.feed(audio=samples[cursor:], audio_t=item.t + cursor / SAMPLE_RATE)
            else:
                while due() < item.t:
                    on_question(pending.pop(0))
                session.feed_item(item)
    finally:
        items.close()
        session.stage_seconds["decode_wait"] += items.waited
    for q in pending:
        on_question(q)


def run_benchmark(bench: Benchmark, loaded: Loaded, model, settings: SessionSettings, out_dir: str | Path,
                  method: str = "generate", shard: tuple[int, int] = (0, 1), max_new_tokens: int | None = None,
                  progress: Callable[[str], None] | None = _stderr, max_videos: int | None = None,
                  annotations: str | Path | None = None, model_source: str | None = None,
                  video_root: str | Path | None = None) -> dict[str, Any]:
    """Answer every question of ``loaded`` (this shard's videos) with ``model`` under ``settings``; see the module
    docstring for the files written to ``out_dir``. Returns the summary (``summary.json``).

    Videos whose ``path`` is unset are resolved with ``bench.resolve(loaded, video_root)``. ``max_videos``: only
    the first K videos of this shard. ``progress`` gets one line per video (None: silent).

    Raises:
        ValueError: unknown method, bad shard, ``out_dir`` holding a different run, or no video found at all.
    """
    if method not in RUN_METHODS:
        raise ValueError(f"method must be one of {', '.join(RUN_METHODS)}, got {method!r}")
    if max_videos is not None and max_videos < 1:
        raise ValueError(f"--max-videos must be >= 1, got {max_videos}")
    mine = shard_videos(loaded.videos, shard)[:max_videos]
    if max_new_tokens is not None:
        settings = replace(settings, max_new_tokens=int(max_new_tokens))
    settings.check(model)
    if any(v.path is None for v in loaded.videos):
        bench.resolve(loaded, video_root)
    missing = {v.ref for v in loaded.videos if not Path(v.path).is_file()}
    if loaded.videos and len(missing) == len(loaded.videos):
        example = loaded.videos[0].path
        raise ValueError(f"none of the {len(loaded.videos)} videos was found (e.g. {example})")
    out_dir = Path(out_dir)
    config = run_config(bench, annotations, model, settings, method, shard[1], model_source)
    info = {"videos": len(loaded.videos), "questions": len(loaded.questions), "defects": loaded.defects,
            "skipped": getattr(bench, "skipped", {}), "device": str(model.device), "started": time.time()}
    open_run_dir(out_dir, config, info)
    res_path, fail_path = results_file(out_dir, shard), failures_file(out_dir, shard)
    _repair_tail(res_path)
    _repair_tail(fail_path)
    done = {r["qid"] for r in read_jsonl(res_path)}
    results, failures = _Appender(res_path), _Appender(fail_path)
    failed = {f["video"]: f for f in read_jsonl(fail_path)}

    def fail(video: BenchVideo, reason: str, answered: int) -> None:
        record = {"video": video.ref, "path": str(video.path), "reason": reason.splitlines()[0] if reason else "",
                  "answered": answered, "time": time.time()}
        failures.write(record)
        failed[video.ref] = record

    def recovered(video: BenchVideo) -> None:
        """A video that failed before and now went through: drop its failure lines (this shard's own file)."""
        if failed.pop(video.ref, None) is not None:
            keep = [f for f in read_jsonl(fail_path) if f["video"] != video.ref]
            tmp = fail_path.with_name(f".{fail_path.name}.tmp")
            tmp.write_text("".join(json.dumps(f) + "\n" for f in keep))
            os.replace(tmp, fail_path)

    started, streamed, answered_now, worked = time.perf_counter(), 0.0, 0, 0
    for k, video in enumerate(mine):
        todo = [q for q in video.questions if q.qid not in done]
        if todo:
            n_before = answered_now
            if video.ref in missing:
                reason = f"missing: {video.path} not found"
                if failed.get(video.ref, {}).get("reason") != reason:
                    fail(video, reason, 0)
            else:
                t0 = time.perf_counter()
                session = StreamSession(model, settings)

                def on_question(q: BenchQuestion) -> None:
                    nonlocal answered_now
                    row = answer_question(session, bench, q, method, settings.max_new_tokens)
                    results.write(row)
                    done.add(q.qid)
                    answered_now += 1

                try:
                    stream_video(session, Path(video.path), todo, on_question)
                except VIDEO_ERRORS as exc:
                    fail(video, f"{type(exc).__name__}: {exc}", answered_now - n_before)
                else:
                    recovered(video)
                streamed += session.stats().seconds
                worked += 1
                write_summary(out_dir, bench)
                if progress is not None:
                    wall = time.perf_counter() - started
                    left = sum(1 for v in mine[k + 1:] if any(q.qid not in done for q in v.questions))
                    eta = wall / worked * left
                    progress(f"[{k + 1}/{len(mine)} videos] {answered_now} answered, "
                             f"{streamed / wall if wall > 0 else 0:.2f}x real time, ETA {_clock(eta)}"
                             f" ({video.ref}: {answered_now - n_before} questions in {time.perf_counter() - t0:.1f} s"
                             f"{', FAILED: ' + failed[video.ref]['reason'] if video.ref in failed else ''})")
    return write_summary(out_dir, bench)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60:02d}:{seconds % 60:02d}"


def summarize_rows(bench: Benchmark, rows: list[dict], failures: list[dict], info: dict | None = None) -> dict:
    """``bench.summarize`` of ``rows`` (de-duplicated by question id, first kept, in question-id order) with
    ``overall`` (micro accuracy over judged rows when the benchmark gives none), ``counts`` and the extraction
    rule."""
    unique: dict[str, dict] = {}
    for r in rows:
        unique.setdefault(r["qid"], r)
    ordered = [unique[q] for q in sorted(unique)]
    summary = dict(bench.summarize(ordered)) if ordered else {}
    if "overall" not in summary:
        summary["overall"] = micro([bool(r["correct"]) for r in ordered if r["correct"] is not None])
    answered_videos = {r["video"] for r in ordered}
    failed_videos = sorted({f["video"] for f in failures})
    counts = {"answered": len(ordered), "duplicates": len(rows) - len(ordered),
              "videos_answered": len(answered_videos), "failed_videos": len(failed_videos),
              "missing_videos": len({f["video"] for f in failures if f.get("reason", "").startswith("missing")}),
              "unparseable": sum(1 for r in ordered if r["kind"] == "mcq" and r["method"] == "generate"
                                 and r["predicted"] is None),
              "unjudged": sum(1 for r in ordered if r["correct"] is None)}
    if info:
        counts["questions"] = info.get("questions")
        counts["videos"] = info.get("videos")
        if info.get("defects"):
            counts["left_out_defects"] = len(info["defects"])
    summary["counts"] = counts
    summary["extraction"] = bench.extraction
    summary["benchmark"] = bench.name
    if failed_videos:
        summary["failed"] = failed_videos[:50]
    return _finite(summary)


def _finite(x: Any) -> Any:
    """NaN -> None (JSON has no NaN), recursively."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def write_summary(out_dir: Path, bench: Benchmark) -> dict:
    """Summarize every results file of ``out_dir`` into ``out_dir/summary.json``."""
    return merge_runs([out_dir], out=out_dir, bench=bench)


def _run_meta(folder: Path) -> dict:
    path = folder / "run.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise ValueError(f"{folder}: no readable run.json (not an avmem eval run folder)") from None


def merge_runs(paths: Iterable[str | Path], out: str | Path | None = None, bench: Benchmark | None = None) -> dict:
    """Merge run folders (all their ``results*.jsonl`` / ``failures*.jsonl``) or single results files: rows
    concatenated and de-duplicated by question id, summarized with the run's benchmark into ``out/summary.json``
    (default: the first folder). Returns the summary.

    Raises:
        ValueError: a path that is not a run folder or results file, or runs that differ (benchmark, model,
            settings, ...).
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("give at least one run folder")
    files: list[tuple[Path, Path]] = []  # (results file, run folder)
    for p in paths:
        if p.is_dir():
            files += [(f, p) for f in sorted(p.glob("results*.jsonl"))]
            if not (p / "run.json").is_file():
                raise ValueError(f"{p}: no run.json (not an avmem eval run folder)")
        elif p.is_file() and p.name.startswith("results") and p.suffix == ".jsonl":
            files.append((p, p.parent))
        else:
            raise ValueError(f"{p}: not a run folder or a results*.jsonl file")
    folders = list(dict.fromkeys(folder for _, folder in files)) or [p for p in paths if p.is_dir()]
    metas = [_run_meta(f) for f in folders]
    first = metas[0]["config"]
    for folder, meta in zip(folders[1:], metas[1:]):
        diff = _differences(first, meta["config"])
        if diff:
            raise ValueError(f"{folder} is a different run from {folders[0]} ({', '.join(diff[:3])} differ)")
    bench = bench or get_benchmark(first["benchmark"])
    rows = [r for f, _ in files for r in read_jsonl(f)]
    failures: list[dict] = []
    for f, _ in files:
        failures += read_jsonl(f.with_name("failures" + f.name[len("results"):]))
    for p in paths:  # failures of shards that answered nothing (no results file)
        if p.is_dir():
            for f in sorted(p.glob("failures*.jsonl")):
                if not f.with_name("results" + f.name[len("failures"):]).is_file():
                    failures += read_jsonl(f)
    latest: dict[str, dict] = {}
    for f in failures:  # the latest record of each video
        latest[f["video"]] = f
    failures = list(latest.values())
    summary = summarize_rows(bench, rows, failures, metas[0].get("info"))
    summary["method"] = first.get("method")
    summary["model"] = first.get("model", {}).get("source")
    target = Path(out) if out is not None else folders[0]
    target.mkdir(parents=True, exist_ok=True)
    _write_json(target / "summary.json", summary)
    return summary
