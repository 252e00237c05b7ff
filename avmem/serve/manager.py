"""Sessions of one shared model, driven by one worker thread (usable without HTTP: Ray replicas wrap it).

Threads: one **worker** owns every model call (ingest, asks, snapshots); one **pump** per session reads its media
source (decoder, live URL, uploaded file or pushed frames) into a bounded queue. The worker serves jobs (asks,
stats, snapshots, closes) before ingest and checks for them between sessions, so asks are not starved by ingest.
An ingest round stages every session's queued frames (``StreamSession.stage_frames``) and absorbs the complete
chunks of all sessions with shared vision-tower calls (:func:`~avmem.serve.batching.absorb_together`); TTT and the
banks run per session. A live session whose queue is full drops its oldest item (frames counted as drops), so a
session slower than real time never holds more than ``ingest_queue`` items.
"""

from __future__ import annotations

import concurrent.futures
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..media import AudioChunk, LiveSource, MediaError, PushSource, VideoFrame
from ..session import AUDIO_RATE, SessionSettings, StreamSession
from . import snapshots, uploads
from .batching import absorb_audio_together, absorb_together
from .config import SESSION_SETTING_KEYS, ServeConfig
from .egress import EgressProxy, new_tag
from .policy import PolicyError, check_url
from .quota import UploadTicket
from .sampling import Sampling, StopFilter

log = logging.getLogger("avmem.serve")
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RECONNECT_WAIT_S = 10.0  # a push client reconnecting waits this long for the previous client's pump to end


class NotFound(KeyError):
    """No such session (or not the caller's)."""


class LimitError(ValueError):
    """A session or size limit is reached (HTTP 429 / 413)."""


@dataclass
class SourceSpec:
    """Where a session's media comes from (kept in snapshots).

    Attributes:
        kind: "url" (decoded server-side), "upload" (a file sent by the client), "push" (WebSocket), "file"
            (a local path, only with allow_local_files).
        url: the URL or path (url / file kinds).
        live: read in real time with drops (LiveSource) rather than as fast as the model absorbs (FileSource).
    """

    kind: str
    url: str | None = None
    live: bool = False


@dataclass
class ServedSession:
    """A session as the server holds it."""

    id: str
    owner: str
    session: StreamSession
    spec: SourceSpec
    created: float = field(default_factory=time.time)
    hidden: bool = False  # an ephemeral session of /v1/chat/completions (not listed)
    status: str = "waiting"  # waiting (push: no client), streaming, ended, failed, detached (restored recording)
    error: str | None = None
    queue: deque = field(default_factory=deque)
    queue_drops: int = 0  # frames dropped from the ingest queue
    source_drops: int = 0  # sampling steps a live source dropped itself
    end_time: float = 0.0  # stream time (s) after the last queued item: where a new source continues
    offset: float = 0.0  # added to the times of the current source's items
    source: object | None = None
    pump: threading.Thread | None = None
    closed: bool = False
    fed_walls: deque = field(default_factory=lambda: deque(maxlen=512))
    cached: dict = field(default_factory=dict)
    ingest_error: str | None = None
    temp_file: str | None = None
    upload: UploadTicket | None = None  # the per-key upload bytes of temp_file, released with it
    egress_tag: str | None = None  # the egress proxy's tag of the current URL source (its refusals are named)

    def frames_per_second(self, window: float = 10.0) -> float:
        """Frames absorbed per wall-clock second over the last ``window`` seconds."""
        now = time.monotonic()
        recent = [w for w in self.fed_walls if now - w <= window]
        return len(recent) / window

    @property
    def drops(self) -> int:
        return self.queue_drops + self.source_drops


class SessionManager:
    """All sessions of one model; every model call runs on the worker thread.

    Args:
        config: the server's settings (limits, snapshot folder, policy, session defaults).
        model: the loaded AVMemModel shared by all sessions.
    """

    def __init__(self, config: ServeConfig, model) -> None:
        self.config = config
        self.model = model
        self._cond = threading.Condition()
        self._sessions: dict[str, ServedSession] = {}
        self._jobs: deque[tuple[Callable[[], object], concurrent.futures.Future]] = deque()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._ticker: threading.Thread | None = None
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.asks = 0
        self.ask_errors = 0
        self.restore_errors: list[str] = []
        self._uploads: tuple[Path, bool] | None = None  # (folder, private) of uploaded files, see upload_folder
        # FFmpeg reaches http(s) / HLS sources only through this proxy (checked and pinned per connection); a
        # recording opens up to two connections at once, probes and HLS segments a few more in turn
        self.egress = EgressProxy(config, max_connections=max(64, 4 * config.max_sessions),
                                  connect_timeout=config.source_timeout, idle_timeout=600.0)

    # lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Restore the snapshots (when a folder is set) and start the worker and the snapshot timer."""
        if self._worker is not None:
            return
        self.egress.start()
        self.upload_folder()  # made now, stale files of a killed server removed
        if self.config.snapshot_dir:
            self.restore_all()
        self._worker = threading.Thread(target=self._run, name="avmem-worker", daemon=True)
        self._worker.start()
        if self.config.snapshot_dir and self.config.snapshot_every > 0:
            self._ticker = threading.Thread(target=self._tick, name="avmem-snapshots", daemon=True)
            self._ticker.start()

    def stop(self, snapshot: bool = True) -> None:
        """Stop the sources, snapshot every session (when a folder is set and ``snapshot``), stop the worker."""
        with self._cond:
            entries = list(self._sessions.values())
        for e in entries:
            self.detach(e)
        if snapshot and self.config.snapshot_dir and self._worker is not None:
            try:
                self.call(self.snapshot_all_now).result(timeout=600)
            except Exception as exc:  # noqa: BLE001 - shutting down: report, go on
                log.error("avmem serve: final snapshot failed: %s", exc)
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=60)
            self._worker = None
        for e in entries:
            if e.pump is not None:
                e.pump.join(timeout=10)
        self.egress.stop()
        with self._cond:
            folder, self._uploads = self._uploads, None
        if folder is not None:
            uploads.close_folder(*folder)

    def upload_folder(self) -> Path:
        """The folder uploaded files wait in (made on first use; see :mod:`avmem.serve.uploads`): under
        ``--snapshot-dir`` when set, else a private folder of this process removed at :meth:`stop`."""
        with self._cond:
            if self._uploads is None:
                self._uploads = uploads.open_folder(self.config.snapshot_dir)
            return self._uploads[0]

    def _tick(self) -> None:
        while not self._stop.wait(self.config.snapshot_every):
            try:
                self.call(self.snapshot_all_now).result()
            except Exception as exc:  # noqa: BLE001 - the next tick tries again
                log.error("avmem serve: periodic snapshot failed: %s", exc)

    # the worker -------------------------------------------------------------------------------------------

    def call(self, fn: Callable[[], object]) -> concurrent.futures.Future:
        """Run ``fn`` on the worker before any further ingest; its result (or exception) in the future."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._stop.is_set():
                fut.set_exception(RuntimeError("the server is stopping"))
                return fut
            self._jobs.append((fn, fut))
            self._cond.notify_all()
        return fut

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._stop.is_set() and not self._has_ingest():
                    self._cond.wait(0.5)
                if self._stop.is_set() and not self._jobs:
                    return
            if not self._run_jobs():
                self._ingest_round()

    def _run_jobs(self) -> bool:
        """Run the queued jobs; False when there were none."""
        ran = False
        while True:
            with self._cond:
                if not self._jobs:
                    return ran
                fn, fut = self._jobs.popleft()
            ran = True
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    fut.set_exception(exc)

    def _has_ingest(self) -> bool:
        return any(e.queue or e.session.ready_frames() or e.session.ready_audio() for e in self._sessions.values()
                   if not e.closed)

    def _ingest_round(self) -> None:
        """Stage every session's queued items; absorb the complete chunks (vision tower) and whole audio pieces
        (audio encoder) of all sessions together."""
        with self._cond:
            entries = [e for e in self._sessions.values()
                       if not e.closed and (e.queue or e.session.ready_frames() or e.session.ready_audio())]
        ready = []
        for e in entries:
            self._drain(e)
            if e.session.ready_frames() or e.session.ready_audio():
                ready.append(e)
            self._run_jobs()  # asks first
        live = [e for e in ready if not e.closed]
        if not live:
            return
        self._absorb([e for e in live if e.session.ready_frames()], absorb_together, "ready_frames", "pending_frames")
        self._run_jobs()
        self._absorb([e for e in live if e.session.ready_audio()], absorb_audio_together, "ready_audio",
                     "pending_audio")
        for e in live:
            self._refresh(e)

    def _absorb(self, entries: list[ServedSession], together, ready: str, pending: str) -> None:
        """Run ``together`` (a shared-call absorb of :mod:`avmem.serve.batching`) on the sessions; a session whose
        absorb fails loses the input it could not absorb (frames counted as drops) instead of retrying forever."""
        if not entries:
            return
        by_session = {id(e.session): e for e in entries}
        try:
            failed = together([e.session for e in entries])
        except Exception as exc:  # noqa: BLE001 - the shared call failed: no session changed
            failed = [(e.session, exc) for e in entries]
        for session, exc in failed:
            e = by_session[id(session)]
            e.ingest_error = _one_line(exc)
            log.error("avmem serve: session %s: ingest failed: %s", e.id, e.ingest_error)
            n = getattr(session, ready)()
            setattr(session.state, pending, getattr(session.state, pending)[n:])
            if pending == "pending_frames":
                e.queue_drops += n
            else:  # the audio after the dropped samples keeps its times
                session.state.pending_audio_start += n / AUDIO_RATE

    def _drain(self, e: ServedSession) -> None:
        """Stage the queued items of one session (frames wait in the session until a whole chunk is there)."""
        with self._cond:
            items = list(e.queue)
            e.queue.clear()
            self._cond.notify_all()  # wakes a blocked recording pump
        if not items:
            return
        frames, times = [], []
        try:
            for item, offset in items:
                if isinstance(item, VideoFrame):
                    frames.append(item.image)
                    times.append(item.t + offset)
                elif isinstance(item, AudioChunk) and e.session.settings.use_audio:
                    e.session.stage_audio(item.samples, item.t + offset)
            if frames:
                e.session.stage_frames(frames, times)
                now = time.monotonic()
                e.fed_walls.extend([now] * len(frames))
        except Exception as exc:  # noqa: BLE001 - a bad item: the session keeps what it had, the stream goes on
            e.ingest_error = _one_line(exc)
            log.error("avmem serve: session %s: %s", e.id, e.ingest_error)
        self._refresh(e)

    def _refresh(self, e: ServedSession) -> None:
        """Cache the session's telemetry (read by HTTP handlers without touching the session)."""
        st = e.session.stats()
        pending = sum(f.numel() for _, f in e.session.state.pending_frames)
        last_loss = getattr(e.session.state.ttt, "last_loss", None)  # TTT reconstruction loss of the last update
        e.cached = {**asdict(st), "pending_frames": len(e.session.state.pending_frames),
                    "memory_bytes": st.memory_bytes + pending, "drops": e.drops,
                    "ttt_loss": None if last_loss is None else float(last_loss.float().mean())}

    # sessions -------------------------------------------------------------------------------------------

    def settings_for(self, overrides: dict | None) -> SessionSettings:
        """Session settings: the server's defaults, the client's overrides (only ``SESSION_SETTING_KEYS``), and
        audio / TTT switched off where the model has none unless the client asked for them.

        Raises:
            ValueError: unknown or invalid setting.
        """
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(SESSION_SETTING_KEYS))
        if unknown:
            raise ValueError(f"unknown session settings {unknown} (allowed: {', '.join(SESSION_SETTING_KEYS)})")
        merged = {**self.config.session_defaults, **overrides}
        merged.setdefault("use_audio", self.model.audio is not None)
        merged.setdefault("use_ttt", self.model.ttt is not None)
        if merged.get("max_new_tokens", 1) > self.config.max_new_tokens:
            raise ValueError(f"max_new_tokens must be <= {self.config.max_new_tokens}")
        try:
            settings = SessionSettings(**merged)
            settings.check(self.model)
        except TypeError as exc:
            raise ValueError(f"bad session settings ({exc})") from None
        return settings

    def _admit(self, owner: str) -> None:
        held = [e for e in self._sessions.values() if not e.closed]
        if len(held) >= self.config.max_sessions:
            raise LimitError(f"the server holds its maximum of {self.config.max_sessions} sessions")
        if sum(e.owner == owner for e in held) >= self.config.max_sessions_per_key:
            raise LimitError(f"this key holds its maximum of {self.config.max_sessions_per_key} sessions")

    def create(self, owner: str, spec: SourceSpec, settings: dict | None = None, *, hidden: bool = False,
               temp_file: str | None = None, upload: UploadTicket | None = None) -> ServedSession:
        """A new session reading ``spec`` (push sessions wait for a client). ``temp_file`` (an upload) and its
        ``upload`` ticket belong to the session from here on: deleted and released once decoded, when the session
        closes, or now when it cannot be created.

        Raises:
            LimitError: too many sessions. ValueError / MediaError: bad settings or unreadable source.
            PolicyError: the URL is refused.
        """
        try:
            chosen = self.settings_for(settings)
            with self._cond:
                self._admit(owner)
                sid = secrets.token_urlsafe(12)
                entry = ServedSession(sid, owner, StreamSession(self.model, chosen), spec, hidden=hidden,
                                      temp_file=temp_file, upload=upload)
                self._sessions[sid] = entry
        except BaseException:
            if temp_file:
                Path(temp_file).unlink(missing_ok=True)
            if upload is not None:
                upload.release()
            raise
        try:
            if spec.kind != "push":
                self._attach(entry)
        except BaseException:
            self._forget(entry)
            raise
        return entry

    def get(self, sid: str, owner: str | None) -> ServedSession:
        """The session ``sid`` of ``owner`` (None: any owner). Raises NotFound."""
        with self._cond:
            e = self._sessions.get(sid)
        if e is None or e.closed or (owner is not None and e.owner != owner):
            raise NotFound(sid)
        return e

    def list(self, owner: str | None) -> list[ServedSession]:
        with self._cond:
            return [e for e in self._sessions.values()
                    if not e.closed and not e.hidden and (owner is None or e.owner == owner)]

    def _source_for(self, e: ServedSession):
        s = e.session.settings
        factor = self.model.backbone.vision.factor
        if e.spec.kind == "url":
            check_url(e.spec.url, self.config)  # again: the policy may have changed since a snapshot
        http = e.spec.kind == "url" and e.spec.url.split(":", 1)[0].lower() in ("http", "https", "hls")
        options = None
        if http:
            # every connection (redirects and HLS segments too) goes through the egress proxy: checked, pinned
            if not self.egress.running:
                self.egress.start()
            if e.egress_tag is not None:
                self.egress.forget(e.egress_tag)
            e.egress_tag = new_tag()
            options = self.egress.options(e.egress_tag)
        try:
            if e.spec.live:
                # a live source gives its final URL: a redirect is an error (recordings follow theirs, checked)
                return LiveSource(e.spec.url, fps=s.fps, audio=s.use_audio, max_pixels=s.max_pixels,
                                  min_pixels=s.min_pixels, factor=factor, timeout=self.config.source_timeout,
                                  options={**options, "max_redirects": "0"} if http else None)
            return e.session.media(e.spec.url, options=options)
        except (MediaError, ValueError) as exc:
            refused = self._refused(e)
            if refused:
                raise PolicyError(f"{e.spec.url}: {refused}") from exc
            raise

    def _refused(self, e: ServedSession) -> str | None:
        """What the egress proxy refused to the session's current source, in one line (None: nothing)."""
        refused = self.egress.refusal(e.egress_tag) if e.egress_tag else None
        return f"the server refused a connection ({refused})" if refused else None

    def _attach(self, e: ServedSession, source=None) -> None:
        """Start a pump from ``source`` (default: the session's own spec) continuing after what is queued."""
        source = source if source is not None else self._source_for(e)
        with self._cond:
            e.offset = e.end_time
            e.source, e.status, e.error = source, "streaming", None
            e.pump = threading.Thread(target=self._pump, args=(e, source), name=f"avmem-pump-{e.id}", daemon=True)
            e.pump.start()

    def _pump(self, e: ServedSession, source) -> None:
        live = isinstance(source, (LiveSource, PushSource))
        cap = self.config.ingest_queue
        fps = e.session.settings.fps
        base = e.source_drops
        try:
            for item in source:
                with self._cond:
                    if e.closed or source is not e.source:
                        break
                    while not live and len(e.queue) >= cap and not e.closed and source is e.source:
                        self._cond.wait(0.5)
                    if live and len(e.queue) >= cap:
                        old, _ = e.queue.popleft()
                        e.queue_drops += isinstance(old, VideoFrame)
                    e.queue.append((item, e.offset))
                    end = e.offset + item.t + (1.0 / fps if isinstance(item, VideoFrame) else item.duration)
                    e.end_time = max(e.end_time, end)
                    e.source_drops = base + source.stats.dropped
                    self._cond.notify_all()
            status, error = ("waiting" if e.spec.kind == "push" else "ended"), None
        except Exception as exc:  # noqa: BLE001 - a source that dies mid-stream: the session stays, with its memory
            status, error = "failed", _one_line(exc)
            refused = self._refused(e)
            if refused:
                error = f"{error}; {refused}"
            log.error("avmem serve: session %s: source failed: %s", e.id, error)
        finally:
            source.close()
            self._remove_upload(e)
        with self._cond:
            if e.source is source:
                e.source, e.status, e.error = None, status, error
            self._cond.notify_all()

    def push_source(self, e: ServedSession) -> PushSource:
        """Attach a new PushSource to a push session (a WebSocket client); times continue after the stream so
        far. A client reconnecting right after the last one left waits up to ``RECONNECT_WAIT_S`` for that client's
        pump to finish. Raises ValueError when another client is pushing. Blocking: call it off the event loop."""
        if e.spec.kind != "push":
            raise ValueError("this session reads its own source; push to a session created with {\"push\": true}")
        previous = e.source
        if isinstance(previous, PushSource) and previous.closed:
            self.wait_pumped(e, previous, RECONNECT_WAIT_S)  # the last client left: its pump is finishing
        if e.source is not None:
            raise ValueError("another client is pushing to this session")
        s = e.session.settings
        source = PushSource(fps=s.fps, video=True, audio=s.use_audio, max_pixels=s.max_pixels,
                            min_pixels=s.min_pixels, factor=self.model.backbone.vision.factor,
                            queue_size=self.config.ingest_queue, name=f"push:{e.id}")
        self._attach(e, source)
        return source

    def detach(self, e: ServedSession) -> None:
        """Stop the session's source (its pump ends; the memory and queued items stay): before a shutdown, or
        before a session moves to another server (Ray replica) through its snapshot."""
        with self._cond:
            source = e.source
            e.source = None
            self._cond.notify_all()
        if source is not None:
            source.close()

    def resume(self, e: ServedSession) -> None:
        """Undo :meth:`detach` (a move to another server failed): as after a restore, a live URL session re-attaches
        from the live edge, a push session waits for a client, a recording or upload stays "detached" (its file or
        decoder is gone). Raises NotFound when the session was closed meanwhile."""
        if e.closed:
            raise NotFound(e.id)
        if e.source is not None:
            return
        if e.spec.kind == "url" and e.spec.live:
            try:
                self._attach(e)
                return
            except (MediaError, PolicyError, ValueError, OSError) as exc:
                error = _one_line(exc)
                log.error("avmem serve: session %s: cannot re-attach %s: %s", e.id, e.spec.url, error)
        else:
            error = None
        with self._cond:
            e.status, e.error = ("waiting" if e.spec.kind == "push" else "detached"), error

    def _forget(self, e: ServedSession) -> None:
        with self._cond:
            e.closed = True
            self._sessions.pop(e.id, None)
            self._cond.notify_all()
        self.detach(e)
        self._remove_upload(e)
        if e.egress_tag is not None:
            self.egress.forget(e.egress_tag)

    @staticmethod
    def _remove_upload(e: ServedSession) -> None:
        """Delete the session's uploaded file (decoded, or the session is gone) and release its per-key bytes."""
        if e.temp_file:
            Path(e.temp_file).unlink(missing_ok=True)
            e.temp_file = None
        if e.upload is not None:
            e.upload.release()

    def close(self, sid: str, owner: str | None) -> None:
        """Stop and forget a session; its snapshots are deleted by a worker job, so after any snapshot of it the
        worker is writing (which would recreate the folder), and before this returns. Raises NotFound."""
        e = self.get(sid, owner)
        self._forget(e)
        if not self.config.snapshot_dir:
            return

        def remove() -> None:
            snapshots.remove(self.config.snapshot_dir, sid)

        if e.hidden or self._worker is None or threading.current_thread() is self._worker:
            remove()  # never snapshotted (hidden), or no worker to order against (or this is the worker)
            return
        fut = self.call(remove)
        try:
            fut.result(timeout=600)
        except RuntimeError:  # the worker is stopping: no snapshot starts any more
            remove()

    def wait_pumped(self, e: ServedSession, source, timeout: float) -> bool:
        """Wait until the pump of ``source`` has queued its last item (True when so)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while e.source is source:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
        return True

    def wait_idle(self, e: ServedSession, timeout: float) -> bool:
        """Wait until the session's source ended and its queue is absorbed (recordings; True when so)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while e.source is not None or e.queue:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
        return True

    # asking (run on the worker) ---------------------------------------------------------------------------

    def ask_job(self, e: ServedSession, question: str, max_new_tokens: int | None, on_piece: Callable[[str], bool],
                since: float | None = None, sampling: Sampling | None = None) -> Callable[[], dict]:
        """A worker job answering ``question`` from everything the session has received: the queued items are
        staged first; ``on_piece`` gets each text piece and returns False to stop generation (client gone).
        ``sampling`` chooses the tokens (None: greedy) and cuts the answer at its stop sequences. The job returns
        ``{"answer", "tokens", "prompt_tokens", "finish_reason"}`` (finish_reason: stop, length or cancelled)."""
        if max_new_tokens is not None and not 1 <= max_new_tokens <= self.config.max_new_tokens:
            raise ValueError(f"max_new_tokens must be in 1 .. {self.config.max_new_tokens}")
        sampling = sampling or Sampling()
        submitted = time.monotonic()

        def job() -> dict:
            ok = False
            try:
                if e.closed:
                    raise NotFound(e.id)
                self._drain(e)
                stream = e.session.ask_stream(question, max_new_tokens=max_new_tokens, since=since,
                                              pick=sampling.picker(self.model.device))
                stops = StopFilter(sampling.stop)
                stopped = False
                for piece in stream:
                    out = stops.feed(piece)
                    if (out and not on_piece(out)) or stops.stopped:
                        stopped = not stops.stopped
                        break
                else:
                    rest = stops.flush()
                    if rest and not on_piece(rest):
                        stopped = True
                ok = True
                self._refresh(e)
                finish = "cancelled" if stopped else ("stop" if stops.stopped or not stream.hit_limit else "length")
                return {"answer": stops.answer(), "tokens": len(stream.tokens), "prompt_tokens": stream.prompt_tokens,
                        "finish_reason": finish}
            finally:
                self._observe(time.monotonic() - submitted, ok)

        return job

    def _observe(self, seconds: float, ok: bool) -> None:
        self.asks += 1
        self.ask_errors += not ok
        self.latency_sum += seconds
        for i, edge in enumerate(LATENCY_BUCKETS):
            if seconds <= edge:
                self.latency_counts[i] += 1
                return
        self.latency_counts[-1] += 1

    # snapshots --------------------------------------------------------------------------------------------

    def _served(self, e: ServedSession) -> dict:
        return {"id": e.id, "owner": e.owner, "created": e.created, "source": asdict(e.spec), "drops": e.drops,
                "end_time": e.end_time, "settings": asdict(e.session.settings)}

    def snapshot_now(self, e: ServedSession) -> str:
        """Write a snapshot of one session (worker job; queued items are staged first). Returns its folder."""
        if not self.config.snapshot_dir:
            raise ValueError("the server has no --snapshot-dir")
        if e.closed:  # a closed session is never written again (its folder is being removed)
            raise NotFound(e.id)
        self._drain(e)
        # a snapshot holds less than one chunk of frames and one batch of audio pieces pending, as a session fed
        # alone does
        for _, exc in absorb_together([e.session]) + absorb_audio_together([e.session]):
            raise exc
        return str(snapshots.write_snapshot(self.config.snapshot_dir, e.id, e.session, self._served(e)))

    def snapshot_all_now(self) -> int:
        """Snapshot every session (worker job); returns how many were written."""
        with self._cond:
            entries = [x for x in self._sessions.values() if not x.closed and not x.hidden]
        n = 0
        for e in entries:
            try:
                self.snapshot_now(e)
                n += 1
            except Exception as exc:  # noqa: BLE001 - one failing session does not stop the others
                log.error("avmem serve: snapshot of %s failed: %s", e.id, _one_line(exc))
        return n

    def restore_all(self) -> int:
        """Load every session of the snapshot folder; a corrupt or foreign one is logged (one line) and skipped.
        Live URL sessions re-attach to their source from the live edge; recordings and uploads are not decoded
        again (status "detached"); push sessions wait for a client. Returns how many were restored."""
        n = 0
        for sid, gen in snapshots.latest(self.config.snapshot_dir):
            try:
                self.restore_one(sid, gen)
            except Exception as exc:  # noqa: BLE001 - a corrupt or foreign snapshot is skipped
                msg = f"avmem serve: skipping snapshot {gen}: {_one_line(exc)}"
                log.error(msg)
                self.restore_errors.append(msg)
                continue
            n += 1
        return n

    def restore_one(self, sid: str, gen: Path) -> ServedSession:
        """Load one snapshot generation as session ``sid`` (also how a Ray replica takes over a moved session).

        Raises:
            ValueError: ``sid`` is held already, or the snapshot is corrupt / foreign (and OSError, KeyError).
        """
        served = snapshots.read_served(gen)
        spec = SourceSpec(**served["source"])
        session = _load_session(gen / "session", self.model, served.get("settings"))
        e = ServedSession(sid, str(served["owner"]), session, spec, created=float(served["created"]),
                          status="detached" if spec.kind != "push" else "waiting")
        e.end_time = max(float(served.get("end_time", 0.0)), session.stats().seconds)
        e.queue_drops = int(served.get("drops", 0))
        with self._cond:
            if sid in self._sessions and not self._sessions[sid].closed:
                raise ValueError(f"session {sid!r} is held already")
            self._sessions[sid] = e
        self._refresh(e)
        if spec.kind == "url" and spec.live:
            try:
                self._attach(e)
            except (MediaError, PolicyError, ValueError, OSError) as exc:
                e.status, e.error = "detached", _one_line(exc)
                log.error("avmem serve: session %s: cannot re-attach %s: %s", sid, spec.url, e.error)
        return e

    # telemetry --------------------------------------------------------------------------------------------

    def describe(self, e: ServedSession) -> dict:
        """JSON stats of a session (cached telemetry; no model call)."""
        if not e.cached:
            self._refresh(e)
        cached = dict(e.cached)
        cached["busy_frames_per_second"] = cached.pop("frames_per_second", 0.0)  # frames per second of model time
        return {**cached, "id": e.id, "status": e.status, "error": e.error, "ingest_error": e.ingest_error,
                "source": asdict(e.spec), "created": e.created, "queue_depth": len(e.queue),
                "frames_per_second": round(e.frames_per_second(), 3), "stream_seconds": round(e.end_time, 3),
                "settings": asdict(e.session.settings), "drops": e.drops, "queue_drops": e.queue_drops,
                "source_drops": e.source_drops}

    def queue_depth(self) -> int:
        with self._cond:
            return len(self._jobs) + sum(len(e.queue) for e in self._sessions.values())

    def jobs_waiting(self) -> int:
        with self._cond:
            return len(self._jobs)


def _load_session(path: Path, model, settings: dict | None) -> StreamSession:
    """``StreamSession.load`` with the session's own reading settings (answer length, reader): the snapshot file
    restores what the memory holds; how questions read it is the server's to keep."""
    if settings is None:
        return StreamSession.load(path, model)
    if not isinstance(settings, dict):
        raise ValueError("served.json: settings must be an object")
    return StreamSession.load(path, model, SessionSettings(**settings))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
