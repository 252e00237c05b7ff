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
* ``videos.jsonl`` (``videos.shard-I-of-N.jsonl``): one line per video streamed (or answered from the memory
  cache) to its end: its stream length, questions answered, wall time;
* ``summary.json``: the benchmark's official aggregates over every results file of the folder, plus
  ``overall``, ``counts`` (the runner's counts, only there) and the extraction rule; rewritten after each video;
* ``accuracy.png``: accuracy per video length and per ask time, written with the final ``summary.json``;
* ``done.shard-I-of-N.json``: written when shard I finished (all its questions answered or their videos failed).

With a memory cache (``memory_cache=DIR``) the session state right before each question is saved under ``DIR``,
keyed by the video file, the model and the write-side settings (:data:`WRITE_SETTINGS`); a later run that differs
only in read-side settings (:data:`READ_SETTINGS`) or in the method answers from those states without decoding
the video (:class:`MemoryCache`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

from .. import __version__
from ..fsutil import atomic_write
from ..session import SESSION_FORMAT, DeviceMemoryError, SessionSettings, StreamSession, without_runtime
from ..snapshot import READ_SETTINGS, WRITE_SETTINGS
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


def videos_file(out_dir: Path, shard: tuple[int, int]) -> Path:
    return Path(out_dir) / f"videos{_suffix(shard)}.jsonl"


def done_file(out_dir: Path, shard: tuple[int, int]) -> Path:
    return Path(out_dir) / f"done.shard-{shard[0]}-of-{shard[1]}.json"


def shards_done(out_dir: str | Path, n: int) -> list[int]:
    """The shards ``i`` of ``n`` whose ``done`` marker is in ``out_dir`` (they finished)."""
    return [i for i in range(n) if done_file(Path(out_dir), (i, n)).is_file()]


def launcher_shard(env: Mapping[str, str], cuda_devices: int) -> tuple[tuple[int, int], str | None] | None:
    """The shard and device of a process started by ``torchrun`` / ``accelerate launch``: shard
    ``RANK/WORLD_SIZE`` and device ``cuda:LOCAL_RANK`` when ``cuda_devices`` > 0 (``cuda:0`` when the launcher
    left each process one visible GPU), else None. Returns None when ``RANK`` / ``WORLD_SIZE`` are not set.

    Raises:
        ValueError: values that are not integers, or ``RANK`` outside ``[0, WORLD_SIZE)``.
    """
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
    except ValueError:
        raise ValueError(f"the launcher's RANK / WORLD_SIZE / LOCAL_RANK must be integers, got "
                         f"{env.get('RANK')!r} / {env.get('WORLD_SIZE')!r} / {env.get('LOCAL_RANK')!r}") from None
    if not (world >= 1 and 0 <= rank < world and local >= 0):
        raise ValueError(f"the launcher's RANK={rank} / WORLD_SIZE={world} / LOCAL_RANK={local} is not a shard")
    device = None
    if cuda_devices > 0:
        if local < cuda_devices:
            device = f"cuda:{local}"
        elif cuda_devices == 1:
            device = "cuda:0"
        else:
            raise ValueError(f"LOCAL_RANK={local} but only {cuda_devices} CUDA devices are visible")
    return (rank, world), device


# memory cache ------------------------------------------------------------------------------------------------

CACHE_FORMAT = "avmem-memory-cache/1"


def write_settings(settings: SessionSettings) -> dict[str, Any]:
    """The write-side part of ``settings`` (:data:`WRITE_SETTINGS`).

    Raises:
        ValueError: a ``SessionSettings`` field in neither :data:`WRITE_SETTINGS` nor :data:`READ_SETTINGS`.
    """
    names = [f.name for f in fields(SessionSettings)]
    unknown = [n for n in names if n not in WRITE_SETTINGS and n not in READ_SETTINGS]
    if unknown:
        raise ValueError(f"SessionSettings fields {unknown} are not classified as write- or read-side")
    return {n: getattr(settings, n) for n in WRITE_SETTINGS}


def weights_fingerprint(model, samples: int = 64) -> str:
    """A hash of ``model``'s weights: name, shape and dtype of every parameter and buffer of the backbone, memory
    layer and audio encoder, and ``samples`` evenly spaced values of each (one transfer from the device)."""
    import torch

    digest = hashlib.sha256()
    picked = []
    for part in (model.backbone.model, model.ttt, model.audio):
        if not isinstance(part, torch.nn.Module):
            digest.update(b"-")
            continue
        for name, tensor in part.state_dict().items():
            flat = tensor.detach().reshape(-1)
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
            if flat.numel() == 0:
                continue
            index = torch.linspace(0, flat.numel() - 1, min(samples, flat.numel()), device=flat.device).long()
            picked.append(flat[index].float().to(model.device))
    if picked:
        digest.update(torch.cat(picked).to("cpu").numpy().tobytes())
    return digest.hexdigest()


def _atomic_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, sort_keys=True)), fsync=True)


class MemoryCache:
    """Session states saved right before each question, so runs that differ only in read-side settings or method
    answer without decoding the videos again.

    ``root / <key hash> /`` per video holds ``key.json`` (the key: video path, size and mtime; model source,
    dtype, structure and :func:`weights_fingerprint`; :data:`WRITE_SETTINGS`; formats), ``end.json`` (where the
    decoded stream ended: ``last_item`` = the ask time from which a question is asked at the end, ``stream_end`` =
    the stream's length) once a pass reached the end, and one :meth:`StreamSession.save` file per ask time
    (``t=<T>.session``) and for the end (``end.session``). Files are written atomically (temporary file, fsync,
    rename). A file that does not load, belongs to another key or another model, or holds a state past its time is
    ignored with a note and recomputed.
    """

    def __init__(self, root: str | Path, model, settings: SessionSettings, model_source: str | None = None,
                 note: Callable[[str], None] | None = _stderr) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"--memory-cache {self.root} is a file, not a folder")
        self.root.mkdir(parents=True, exist_ok=True)
        self.model = model
        self.write = write_settings(settings)
        spec = model.spec
        self.model_key = {"source": model_source or model.source,
                          "dtype": str(model.backbone.dtype).replace("torch.", ""),
                          "backbone_type": spec.backbone_type, "memory_layer": spec.memory_layer,
                          "ttt": without_runtime(spec.ttt),
                          "weights": weights_fingerprint(model)}
        self.note = note or (lambda line: None)

    def key(self, video: Path) -> dict[str, Any]:
        """What the states of ``video`` depend on (JSON)."""
        stat = Path(video).stat()
        return json.loads(json.dumps({
            "format": CACHE_FORMAT, "session_format": SESSION_FORMAT, "avmem_version": __version__,
            "video": {"path": str(Path(video).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
            "model": self.model_key, "settings": self.write}, default=str))

    def folder(self, video: Path) -> Path:
        """The folder of ``video``'s states (created, with ``key.json``; a foreign ``key.json`` is replaced)."""
        key = self.key(video)
        folder = self.root / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        folder.mkdir(exist_ok=True)
        path = folder / "key.json"
        try:
            saved = json.loads(path.read_text()) if path.is_file() else None
        except (OSError, json.JSONDecodeError):
            saved = "unreadable"
        if saved != key:
            if saved is not None:
                self.note(f"avmem: note: memory cache {folder.name}: key.json does not match; its states are "
                          f"ignored and recomputed")
                for f in folder.glob("*.session"):
                    f.unlink(missing_ok=True)
                (folder / "end.json").unlink(missing_ok=True)
            _atomic_json(path, key)
        return folder

    @staticmethod
    def name(ask_time: float | None) -> str:
        return "end" if ask_time is None else f"t={float(ask_time)!r}"

    def end(self, folder: Path) -> dict[str, float] | None:
        """``end.json`` of a folder (None: absent or unreadable)."""
        path = folder / "end.json"
        if not path.is_file():
            return None
        try:
            end = json.loads(path.read_text())
            return {"last_item": float(end["last_item"]), "stream_end": float(end["stream_end"])}
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
            self.note(f"avmem: note: memory cache {path}: unreadable, ignored")
            return None

    def plan(self, folder: Path, questions: list[BenchQuestion]) -> tuple[dict[str, str], dict[str, float]] | None:
        """The state each question is answered from (``{qid: name}``) and the video's ``end.json`` when every
        state is in the cache; None when the video must be streamed."""
        end = self.end(folder)
        if end is None:
            return None
        names = {}
        for q in questions:
            at_end = q.ask_time is None or q.ask_time >= end["last_item"]
            names[q.qid] = "end" if at_end else self.name(q.ask_time)
        if all((folder / f"{n}.session").is_file() for n in set(names.values())):
            return names, end
        return None

    def save(self, folder: Path, name: str, session: StreamSession) -> None:
        """``session``'s state as ``folder / name.session`` (atomically)."""
        path = folder / f"{name}.session"
        session.save(path)

    def save_end(self, folder: Path, last_item: float, stream_end: float) -> None:
        _atomic_json(folder / "end.json", {"last_item": last_item, "stream_end": stream_end})

    def load(self, folder: Path, name: str, settings: SessionSettings, ask_time: float | None) -> StreamSession | None:
        """A session with ``settings`` over the state saved as ``name`` (None, with a note, when the file does not
        load, was saved with other write-side settings, or holds frames after ``ask_time``)."""
        path = folder / f"{name}.session"
        try:
            saved = StreamSession.load(path, self.model)
            if write_settings(saved.settings) != self.write:
                raise ValueError(f"{path}: saved with other write-side settings")
            last = saved.state.last_time
            if ask_time is not None and last is not None and last > ask_time:
                raise ValueError(f"{path}: holds frames up to {last} s, after its time {ask_time} s")
        except ValueError as exc:
            self.note(f"avmem: note: memory cache: {str(exc).splitlines()[0]}; ignored and recomputed")
            path.unlink(missing_ok=True)
            return None
        session = StreamSession(self.model, settings)
        session.state = saved.state
        return session


def run_config(bench: Benchmark, annotations: str | Path | None, model, settings: SessionSettings, method: str,
               shards: int, model_source: str | None = None, context_seconds: float | None = None) -> dict[str, Any]:
    """What a run is; a resumed run must have exactly this (``run.json`` ``config``)."""
    spec = model.spec
    ttt = without_runtime(spec.ttt)
    return {
        "format": RUN_FORMAT,
        "benchmark": bench.name,
        "annotations": None if annotations is None else str(Path(annotations).resolve()),
        "extraction": bench.extraction,
        "model": {"source": model_source or model.source, "dtype": str(model.backbone.dtype).replace("torch.", ""),
                  "backbone_type": spec.backbone_type, "memory_layer": spec.memory_layer, "ttt": ttt,
                  "random_weights": spec.random_weights},
        "method": method,
        "context_seconds": context_seconds,
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
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1, default=str)))


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


def question_window(session: StreamSession, bench: Benchmark, q: BenchQuestion,
                    context_seconds: float | None = None) -> float | None:
    """The stream time from which ``q`` reads the memory: the later of the benchmark's own window
    (:meth:`Benchmark.window_start`) and ``context_seconds`` before the ask time (the end of the stream for
    questions without one); None: the whole memory."""
    start = bench.window_start(q) or 0.0
    if context_seconds is not None:
        now = q.ask_time if q.ask_time is not None else session.stats().seconds
        start = max(start, float(now) - float(context_seconds))
    return start if start > 0 else None


def answer_question(session: StreamSession, bench: Benchmark, q: BenchQuestion, method: str,
                    max_new_tokens: int | None = None, context_seconds: float | None = None) -> dict[str, Any]:
    """Ask ``q`` of ``session`` now (from a flushed copy: the stream is not changed) and score it: the result row.

    ``likelihood`` (multiple choice only): the question's own letters ``q.letters`` rated as the first answer
    token after the benchmark's prompt; otherwise (and always for open / probe questions) a generated reply,
    read with the benchmark's extraction rule. The memory read is limited to :func:`question_window` (recorded
    as ``window_start``).
    """
    start = time.perf_counter()
    prompt = bench.prompt(q)
    prefix = bench.answer_prefix(q)
    since = question_window(session, bench, q, context_seconds)
    scores = None
    if method == "likelihood" and q.kind == "mcq":
        index, scores = session.choose(prompt, list(q.letters), prefix=prefix, since=since)
        reply, predicted, used = None, q.letters[index], "likelihood"
    else:
        reply = prefix + session.ask(prompt, max_new_tokens=max_new_tokens, prefix=prefix, since=since)
        predicted, used = bench.extract(reply, q), "generate"
    row = {"qid": q.qid, "video": q.video, "task": q.task, "fields": q.fields, "kind": q.kind,
           "ask_time": q.ask_time, "answer": q.answer, "reply": reply, "predicted": predicted,
           "correct": bench.correct(predicted, q), "seconds": round(time.perf_counter() - start, 4), "method": used}
    if since is not None:
        row["window_start"] = since
    if scores is not None:
        row["scores"] = scores
    return row


def stream_video(session: StreamSession, path: Path, questions: list[BenchQuestion],
                 on_question: Callable[[BenchQuestion], None],
                 on_end: Callable[[float], None] | None = None) -> None:
    """Stream ``path`` through ``session``; call ``on_question(q)`` when the stream reaches ``q.ask_time`` (all
    frames at ``t <= ask_time`` and the audio before it fed), then for the questions left at the end.

    ``on_end(last_item)`` is called once the whole file is fed, before the questions left: ``last_item`` is the
    largest frame time and audio chunk end, so exactly the questions with ``ask_time >= last_item`` (or None)
    are asked at the end."""
    from ..media import SAMPLE_RATE, AudioChunk
    from ..media.prefetch import Prefetch
    from ..session import DECODE_QUEUE_ITEMS

    end = float("inf")
    pending = sorted(questions, key=lambda q: end if q.ask_time is None else q.ask_time)

    def due() -> float:
        return end if not pending or pending[0].ask_time is None else pending[0].ask_time

    items = Prefetch(session.media(path), DECODE_QUEUE_ITEMS)
    last_item = 0.0
    try:
        for item in items:
            if isinstance(item, AudioChunk):
                samples, cursor = item.samples, 0
                last_item = max(last_item, item.t + len(samples) / SAMPLE_RATE)
                while due() < item.t + len(samples) / SAMPLE_RATE:
                    cut = min(max(int(round((due() - item.t) * SAMPLE_RATE)), cursor), len(samples))
                    if cut > cursor:
                        session.feed(audio=samples[cursor:cut], audio_t=item.t + cursor / SAMPLE_RATE)
                        cursor = cut
                    on_question(pending.pop(0))
                if cursor < len(samples):
                    session.feed(audio=samples[cursor:], audio_t=item.t + cursor / SAMPLE_RATE)
            else:
                last_item = max(last_item, item.t)
                while due() < item.t:
                    on_question(pending.pop(0))
                session.feed_item(item)
    finally:
        items.close()
        session.stage_seconds["decode_wait"] += items.waited
    if on_end is not None:
        on_end(last_item)
    for q in pending:
        on_question(q)


def run_benchmark(bench: Benchmark, loaded: Loaded, model, settings: SessionSettings, out_dir: str | Path,
                  method: str = "generate", shard: tuple[int, int] = (0, 1), max_new_tokens: int | None = None,
                  progress: Callable[[str], None] | None = _stderr, max_videos: int | None = None,
                  annotations: str | Path | None = None, model_source: str | None = None,
                  video_root: str | Path | None = None, memory_cache: str | Path | None = None,
                  context_seconds: float | None = None) -> dict[str, Any]:
    """Answer every question of ``loaded`` (this shard's videos) with ``model`` under ``settings``; see the module
    docstring for the files written to ``out_dir``. Returns the summary (``summary.json``).

    Videos whose ``path`` is unset are resolved with ``bench.resolve(loaded, video_root)``. ``max_videos``: only
    the first K videos of this shard. ``progress`` gets one line per video and the memory cache's notes (None:
    silent). ``memory_cache``: a folder of saved session states (:class:`MemoryCache`), read and written.
    ``context_seconds``: each question reads only the memory of the last N seconds before it (and never more than
    its benchmark's own window, :func:`question_window`).

    A question whose ask time is past the end of the decoded stream is asked at the end: its row has
    ``asked_at_end`` true and ``stream_time`` (the stream's length); every other row has ``asked_at_end`` false.

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
    if context_seconds is not None and not context_seconds > 0:
        raise ValueError(f"--context-seconds must be > 0, got {context_seconds}")
    config = run_config(bench, annotations, model, settings, method, shard[1], model_source, context_seconds)
    info = {"videos": len(loaded.videos), "questions": len(loaded.questions), "defects": loaded.defects,
            "skipped": getattr(bench, "skipped", {}), "device": str(model.device), "started": time.time(),
            "memory_cache": None if memory_cache is None else str(Path(memory_cache).resolve())}
    open_run_dir(out_dir, config, info)
    cache = None if memory_cache is None else MemoryCache(memory_cache, model, settings, model_source, progress)
    res_path, fail_path, vid_path = results_file(out_dir, shard), failures_file(out_dir, shard), \
        videos_file(out_dir, shard)
    for path in (res_path, fail_path, vid_path):
        _repair_tail(path)
    done = {r["qid"] for r in read_jsonl(res_path)}
    results, failures, video_log = _Appender(res_path), _Appender(fail_path), _Appender(vid_path)
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
            atomic_write(fail_path, lambda tmp: tmp.write_text("".join(json.dumps(f) + "\n" for f in keep)))

    started, streamed, answered_now, worked = time.perf_counter(), 0.0, 0, 0
    for k, video in enumerate(mine):
        todo = [q for q in video.questions if q.qid not in done]
        if not todo:
            continue
        n_before = answered_now
        if video.ref in missing:
            reason = f"missing: {video.path} not found"
            if failed.get(video.ref, {}).get("reason") != reason:
                fail(video, reason, 0)
            continue
        t0 = time.perf_counter()
        folder = None if cache is None else cache.folder(Path(video.path))

        def record(q: BenchQuestion, session: StreamSession, stream_end: float | None) -> None:
            """Answer ``q`` now; ``stream_end``: the stream's length when asked after the whole video was fed."""
            nonlocal answered_now
            row = answer_question(session, bench, q, method, settings.max_new_tokens, context_seconds)
            beyond = stream_end is not None and q.ask_time is not None and q.ask_time > stream_end
            row["asked_at_end"] = beyond
            if beyond:
                row["stream_time"] = stream_end
            results.write(row)
            done.add(q.qid)
            answered_now += 1

        left, length = _answer_from_cache(cache, folder, todo, settings, record)
        from_cache = not left
        try:
            if left:
                length = _stream_and_answer(model, settings, Path(video.path), left, record, cache, folder)
        except VIDEO_ERRORS as exc:
            fail(video, f"{type(exc).__name__}: {exc}", answered_now - n_before)
        else:
            recovered(video)
            video_log.write({"video": video.ref, "stream_end": length, "answered": answered_now - n_before,
                             "from_cache": from_cache, "seconds": round(time.perf_counter() - t0, 3)})
            streamed += length or 0.0
        worked += 1
        write_summary(out_dir, bench, plot=False)
        if progress is not None:
            wall = time.perf_counter() - started
            remaining = sum(1 for v in mine[k + 1:] if any(q.qid not in done for q in v.questions))
            eta = wall / worked * remaining
            progress(f"[{k + 1}/{len(mine)} videos] {answered_now} answered, "
                     f"{streamed / wall if wall > 0 else 0:.2f}x real time, ETA {_clock(eta)}"
                     f" ({video.ref}: {answered_now - n_before} questions in {time.perf_counter() - t0:.1f} s"
                     f"{', from the memory cache' if from_cache else ''}"
                     f"{', FAILED: ' + failed[video.ref]['reason'] if video.ref in failed else ''})")
    if shard[1] > 1:
        mine_questions = [q for v in mine for q in v.questions]
        _write_json(done_file(out_dir, shard), {
            "shard": list(shard), "questions": len(mine_questions),
            "answered": sum(q.qid in done for q in mine_questions),
            "failed_videos": sorted(v.ref for v in mine if v.ref in failed), "time": time.time()})
    return write_summary(out_dir, bench, plot=True)


def _answer_from_cache(cache: MemoryCache | None, folder: Path | None, todo: list[BenchQuestion],
                       settings: SessionSettings,
                       record: Callable[[BenchQuestion, StreamSession, float | None], None]
                       ) -> tuple[list[BenchQuestion], float | None]:
    """Answer ``todo`` from the states saved in ``folder`` when all are there; returns the questions left to
    stream (all of them on a miss, those after a state that failed to load) and the cached stream length."""
    plan = None if cache is None else cache.plan(folder, todo)
    if plan is None:
        return todo, None
    names, end = plan
    ordered = sorted(todo, key=lambda q: (names[q.qid] == "end", q.ask_time or 0.0))
    session, loaded_name = None, None
    for i, q in enumerate(ordered):
        name = names[q.qid]
        if name != loaded_name:
            session = cache.load(folder, name, settings, None if name == "end" else q.ask_time)
            loaded_name = name
            if session is None:
                return ordered[i:], None
        record(q, session, end["stream_end"] if name == "end" else None)
    return [], end["stream_end"]


def _stream_and_answer(model, settings: SessionSettings, path: Path, todo: list[BenchQuestion],
                       record: Callable[[BenchQuestion, StreamSession, float | None], None],
                       cache: MemoryCache | None, folder: Path | None) -> float:
    """One streaming pass over ``path`` answering ``todo`` at their times (saving each state to the cache, once
    per ask time); returns the stream's length (the later of the last frame's end and the audio's end)."""
    session = StreamSession(model, settings)
    saved: set[str] = set()
    end: dict[str, float] = {}

    def on_end(last_item: float) -> None:
        st = session.stats()
        end.update(last_item=last_item, stream_end=max(st.seconds, st.audio_seconds))
        if cache is not None:
            cache.save_end(folder, **end)

    def on_question(q: BenchQuestion) -> None:
        name = "end" if end else MemoryCache.name(q.ask_time)
        if cache is not None and name not in saved:
            cache.save(folder, name, session)
            saved.add(name)
        record(q, session, end.get("stream_end"))

    stream_video(session, path, todo, on_question, on_end)
    return end["stream_end"]


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60:02d}:{seconds % 60:02d}"


def summarize_rows(bench: Benchmark, rows: list[dict], failures: list[dict], info: dict | None = None) -> dict:
    """``bench.summarize`` of ``rows`` (de-duplicated by question id, first kept, in question-id order) with
    ``overall`` (micro accuracy over judged rows when the benchmark gives none), ``counts`` (the runner's counts,
    only there) and the extraction rule.

    The benchmark's aggregates keep their own names at the top level; one whose name the runner uses
    (:data:`RUNNER_KEYS`, e.g. OVO-Bench's per-task ``counts``) is kept as ``"{benchmark}_{name}"``."""
    unique: dict[str, dict] = {}
    for r in rows:
        unique.setdefault(r["qid"], r)
    ordered = [unique[q] for q in sorted(unique)]
    official = dict(bench.summarize(ordered)) if ordered else {}
    summary = {}
    for key, value in official.items():
        if key in RUNNER_KEYS and not (key == "extraction" and value == bench.extraction):
            summary[f"{bench.name}_{key}"] = value
        else:
            summary[key] = value
    if "overall" not in summary:
        summary["overall"] = micro([bool(r["correct"]) for r in ordered if r["correct"] is not None])
    answered_videos = {r["video"] for r in ordered}
    failed_videos = sorted({f["video"] for f in failures})
    counts = {"answered": len(ordered), "duplicates": len(rows) - len(ordered),
              "videos_answered": len(answered_videos), "failed_videos": len(failed_videos),
              "missing_videos": len({f["video"] for f in failures if f.get("reason", "").startswith("missing")}),
              "unparseable": sum(1 for r in ordered if r["kind"] == "mcq" and r["method"] == "generate"
                                 and r["predicted"] is None),
              "unjudged": sum(1 for r in ordered if r["correct"] is None),
              "asked_after_end": sum(1 for r in ordered if r.get("asked_at_end"))}
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


RUNNER_KEYS = ("counts", "extraction", "benchmark", "method", "model", "failed")
"""Top-level keys of ``summary.json`` that the runner writes."""


def _finite(x: Any) -> Any:
    """NaN -> None (JSON has no NaN), recursively."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def write_summary(out_dir: Path, bench: Benchmark, plot: bool = True) -> dict:
    """Summarize every results file of ``out_dir`` into ``out_dir/summary.json`` (and ``accuracy.png``)."""
    return merge_runs([out_dir], out=out_dir, bench=bench, plot=plot)


LENGTH_BINS = ((60, "<1 min"), (180, "1-3 min"), (600, "3-10 min"), (1200, "10-20 min"), (1800, "20-30 min"),
               (3600, "30-60 min"), (7200, "1-2 h"), (math.inf, ">2 h"))
"""Upper edges (seconds, exclusive) and labels of the accuracy plot's buckets."""


def _bucket(seconds: float) -> int:
    return next(i for i, (edge, _) in enumerate(LENGTH_BINS) if seconds < edge)


def accuracy_buckets(rows: list[dict], videos: list[dict]) -> dict[str, dict[str, tuple[int, int]]]:
    """``{"length": {label: (correct, judged)}, "ask_time": {...}}`` over the judged rows (``correct`` not None):
    by the length of the question's video (its stream length in ``videos`` records; rows of videos without one
    are left out of that table) and by the time the question was asked from the video's start (the ask time, or
    the stream length for questions asked at the end)."""
    length = {v["video"]: v["stream_end"] for v in videos if v.get("stream_end") is not None}
    out: dict[str, dict[int, list[int]]] = {"length": {}, "ask_time": {}}
    seen: set[str] = set()
    for r in rows:
        if r.get("correct") is None or r["qid"] in seen:
            continue
        seen.add(r["qid"])
        asked = r.get("stream_time") if r.get("asked_at_end") else r.get("ask_time")
        asked = length.get(r["video"]) if asked is None else asked
        for table, seconds in (("length", length.get(r["video"])), ("ask_time", asked)):
            if seconds is not None:
                cell = out[table].setdefault(_bucket(float(seconds)), [0, 0])
                cell[0] += bool(r["correct"])
                cell[1] += 1
    return {t: {LENGTH_BINS[b][1]: (c[0], c[1]) for b, c in sorted(cells.items())} for t, cells in out.items()}


def plot_accuracy(rows: list[dict], videos: list[dict], path: str | Path, title: str = "") -> Path | None:
    """Write a PNG of :func:`accuracy_buckets` (two bar charts, each bar labelled with its count) to ``path``;
    None (nothing written) when no row is judged."""
    tables = accuracy_buckets(rows, videos)
    if not any(tables.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (table, xlabel) in zip(axes, (("length", "video length"),
                                          ("ask_time", "asked at (time from the video's start)"))):
        cells = tables[table]
        labels = list(cells)
        acc = [c / n for c, n in cells.values()]
        bars = ax.bar(range(len(labels)), acc, color="tab:blue")
        for bar, (c, n) in zip(bars, cells.values()):
            ax.annotate(f"{c}/{n}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom", fontsize=8)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (judged questions)")
        if not labels:
            ax.text(0.5, 0.5, "no video lengths recorded", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100), suffix=".tmp.png")
    plt.close(fig)
    return path


def _run_meta(folder: Path) -> dict:
    path = folder / "run.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise ValueError(f"{folder}: no readable run.json (not an avmem eval run folder)") from None


def merge_runs(paths: Iterable[str | Path], out: str | Path | None = None, bench: Benchmark | None = None,
               plot: bool = True) -> dict:
    """Merge run folders (all their ``results*.jsonl`` / ``failures*.jsonl``) or single results files: rows
    concatenated and de-duplicated by question id, summarized with the run's benchmark into ``out/summary.json``
    (default: the first folder), with ``accuracy.png`` when ``plot`` (video lengths from the folders'
    ``videos*.jsonl``). Returns the summary.

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
    if plot:
        videos = [v for folder in dict.fromkeys([*folders, *(p for p in paths if p.is_dir())])
                  for f in sorted(folder.glob("videos*.jsonl")) for v in read_jsonl(f)]
        plot_accuracy(rows, videos, target / "accuracy.png",
                      f"{summary.get('benchmark')} - {summary.get('model')} ({summary.get('method')})")
    return summary
