"""``avmem serve --ray``: the same server scaled out on Ray Serve (see docs/serving.md, "Scale-out on Ray Serve").

Layout: N **replica** deployments (``avmem-replica-0`` .. ``avmem-replica-{N-1}``, one Ray actor each, one GPU each
when the cluster has GPUs), each holding the full avmem app of :func:`~avmem.serve.app.create_app` (its own model,
SessionManager and snapshot folder ``<snapshot_dir>/replica-<i>``), and one **router** ingress deployment that Ray's
HTTP proxy sends every request to. The router keeps the session id -> replica map (session affinity; after a router
restart it asks the replicas who holds an id), creates new sessions on the replica holding the fewest, and forwards
requests to the replica's app unchanged (the app itself checks keys, validates, streams): HTTP requests through an
in-process ASGI call with the response body streamed back (server-sent answers included; a client that goes away
cancels the call, so generation stops), the push WebSocket message by message. Its own endpoints:

- ``POST /v1/sessions/{id}/move`` (JSON ``{"to": replica}`` optional): snapshot the session on its replica, restore
  that snapshot on the other replica (the least loaded unless named), then close it on the first;
- ``GET /v1/replicas``: sessions per replica;
- ``/health`` and ``/metrics`` (every replica's metrics with a ``replica`` label).

``serve run avmem.serve.ray_app:app_builder model=tiny-qwen3-vl replicas=2`` runs it from Ray's own CLI.
"""


import asyncio
import json
import logging
import re
import shutil
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from ray import serve

from . import snapshots
from .app import CHAT_DATA_BYTES, MAX_JSON_BYTES, MULTIPART_SLACK
from .config import KeyRing, ServeConfig

log = logging.getLogger("avmem.serve")
_SESSION_PATH = re.compile(r"^/v1/sessions/([A-Za-z0-9_-]{1,64})(/.*)?$")
_HOP_HEADERS = {b"content-length", b"transfer-encoding", b"connection", b"host"}


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


# --- a replica: the avmem app behind in-process ASGI calls ---------------------------------------------------


async def asgi_http(app, method: str, path: str, query: bytes, headers: list, body: bytes):
    """Run one HTTP request through the ASGI ``app``; yield ``{"status", "headers"}`` first, then body chunks.

    Closing the generator early (the client went away) tells the app the client disconnected."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query, "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 80)}
    out: asyncio.Queue = asyncio.Queue()
    gone = asyncio.Event()
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def run():
        try:
            await app(scope, receive, out.put)
        finally:
            await out.put(None)

    task = asyncio.create_task(run())
    try:
        while True:
            msg = await out.get()
            if msg is None:
                break
            if msg["type"] == "http.response.start":
                yield {"status": msg["status"], "headers": [(k, v) for k, v in msg.get("headers", [])
                                                            if k.lower() not in _HOP_HEADERS]}
            elif msg["type"] == "http.response.body":
                if msg.get("body"):
                    yield msg["body"]
                if not msg.get("more_body", False):
                    break
    finally:
        gone.set()
        if not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), 10)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - the request's own errors were answered
                task.cancel()


class _Socket:
    """One WebSocket connection into the replica's app: messages in through a queue, messages out collected."""

    def __init__(self, app, path: str, query: bytes, headers: list) -> None:
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.outbox: asyncio.Queue = asyncio.Queue()
        scope = {"type": "websocket", "asgi": {"version": "3.0"}, "scheme": "ws", "path": path,
                 "raw_path": path.encode(), "query_string": query, "root_path": "", "headers": headers,
                 "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 80), "subprotocols": []}
        self.inbox.put_nowait({"type": "websocket.connect"})

        async def run():
            try:
                await app(scope, self.inbox.get, self.outbox.put)
            finally:
                await self.outbox.put({"type": "websocket.close", "code": 1011, "reason": ""})

        self.task = asyncio.create_task(run())

    async def next_out(self, timeout: float | None = None) -> dict | None:
        try:
            return await asyncio.wait_for(self.outbox.get(), timeout)
        except asyncio.TimeoutError:
            return None

    def drain(self) -> list[dict]:
        msgs = []
        while not self.outbox.empty():
            msgs.append(self.outbox.get_nowait())
        return msgs


class Replica:
    """One avmem server (model, sessions, snapshots) inside a Ray actor; the router calls its methods."""

    def __init__(self, config: ServeConfig, index: int, log_level: str | None = None) -> None:
        from .app import create_app

        if log_level is not None:
            logging.getLogger("avmem.serve").setLevel(log_level)
        root = Path(config.snapshot_dir) if config.snapshot_dir else Path(tempfile.gettempdir()) / "avmem-ray"
        config = ServeConfig(**{**asdict(config), "snapshot_dir": str(root / f"replica-{index}")})
        Path(config.snapshot_dir).mkdir(parents=True, exist_ok=True)
        self.index = index
        self.app = create_app(config)
        self.manager = self.app.state.manager
        self.manager.start()  # restores this replica's snapshots (a restarted replica keeps its sessions)
        self.sockets: dict[str, _Socket] = {}

    def __del__(self) -> None:
        self.manager.stop()

    async def http(self, method: str, path: str, query: bytes, headers: list, body: bytes):
        """A request to this replica's app (streamed: head dict, then body chunks)."""
        async for part in asgi_http(self.app, method, path, query, headers, body):
            yield part

    def count(self) -> int:
        return len(self.manager.list(None))

    def has(self, sid: str) -> bool:
        try:
            self.manager.get(sid, None)
            return True
        except KeyError:
            return False

    async def ws_open(self, path: str, query: bytes, headers: list) -> dict:
        """Open a push connection; ``{"conn": id}`` when the app accepted it, else ``{"close": code, "reason"}``."""
        sock = _Socket(self.app, path, query, headers)
        first = await sock.next_out(30)
        if first is None or first["type"] != "websocket.accept":
            sock.task.cancel()
            return {"close": (first or {}).get("code", 1011), "reason": (first or {}).get("reason", "")}
        conn = uuid.uuid4().hex
        self.sockets[conn] = sock
        return {"conn": conn}

    async def ws_send(self, conn: str, message: dict) -> list[dict]:
        """Hand one client message (``websocket.receive`` / ``websocket.disconnect``) to the app; returns what the
        app sent back so far (a stats reply, a close)."""
        sock = self.sockets.get(conn)
        if sock is None:
            return [{"type": "websocket.close", "code": 1011, "reason": "the push connection is gone"}]
        await sock.inbox.put(message)
        if message["type"] == "websocket.disconnect":
            self.sockets.pop(conn, None)
            try:
                await asyncio.wait_for(sock.task, 10)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - the app's handler closed the source
                sock.task.cancel()
            return []
        if message.get("text") is not None:  # a control message: wait for its answer
            reply = await sock.next_out(10)
            out = [reply] if reply is not None else []
        else:
            await asyncio.sleep(0)
            out = []
        out += sock.drain()
        if any(m["type"] == "websocket.close" for m in out):
            self.sockets.pop(conn, None)
        return out

    async def export_session(self, sid: str, owner: str | None) -> bytes:
        """Stop the session's source, snapshot it, return the snapshot generation as a tar archive (the session
        stays here until :meth:`drop`, or :meth:`resume` when the move fails). Raises KeyError when ``owner`` holds
        no session ``sid``; when the snapshot fails the source is resumed before the error is raised."""
        e = self.manager.get(sid, owner)
        self.manager.detach(e)
        try:
            gen = await asyncio.wrap_future(self.manager.call(lambda: self.manager.snapshot_now(e)))
            return snapshots.export_generation(gen)
        except BaseException:
            self.manager.resume(e)
            raise

    def import_session(self, sid: str, archive: bytes) -> dict:
        """Restore a session exported by another replica (written to this replica's snapshot folder first).

        Raises:
            ValueError: this replica holds ``sid`` already (nothing written), or the archive / snapshot is refused
                (what was written for it is removed again; and OSError, KeyError, tarfile.TarError).
        """
        if self.has(sid):
            raise ValueError(f"replica {self.index} holds a session {sid!r} already")
        root = self.manager.config.snapshot_dir
        gen = None
        try:
            gen = snapshots.import_generation(root, sid, archive)
            return self.manager.describe(self.manager.restore_one(sid, gen))
        except BaseException:
            if self.has(sid):  # held meanwhile by another import: only this generation goes
                if gen is not None:
                    shutil.rmtree(gen, ignore_errors=True)
            else:
                snapshots.remove(root, sid)
            raise

    def resume(self, sid: str) -> dict:
        """Re-attach a session whose move failed after :meth:`export_session` (see ``SessionManager.resume``)."""
        e = self.manager.get(sid, None)
        self.manager.resume(e)
        return self.manager.describe(e)

    def restore_errors(self) -> list[str]:
        """The snapshots this replica skipped at start (one line each)."""
        return list(self.manager.restore_errors)

    def drop(self, sid: str) -> None:
        """Forget a session that moved away (its snapshots here are deleted)."""
        self.manager.close(sid, None)

    def metrics(self) -> str:
        from .metrics import render_metrics

        return render_metrics(self.manager)


# --- moving a session between replicas --------------------------------------------------------------------------


class MoveError(Exception):
    """A move that did not happen; the session stays where it was. ``status``: 409 refused, 500 failed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _cause(exc: BaseException) -> str:
    """One line naming what went wrong on a replica (a Ray task error carries the replica's exception)."""
    cause = getattr(exc, "cause", None) or exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__


def _remote(handle) -> Callable[..., Awaitable]:
    """``call(method, *args)`` on a Ray Serve deployment handle."""
    return lambda name, *args: getattr(handle, name).remote(*args)


async def move_session(src: Callable[..., Awaitable], dst: Callable[..., Awaitable], sid: str, owner: str | None,
                       src_index: int = 0, dst_index: int = 1) -> dict:
    """Move session ``sid`` from one replica to another through its snapshot; ``src`` / ``dst`` are
    ``call(method, *args)`` of the two :class:`Replica` objects. Returns the session's stats on ``dst``.

    A move to a replica holding ``sid`` is refused before anything stops; when the import fails, the replica removes
    what it wrote and the session's source is resumed on ``src`` (it never exists twice, nor nowhere).

    Raises:
        KeyError: ``owner`` holds no session ``sid`` on ``src``.
        MoveError: refused (409) or failed (500), the session staying on ``src``.
    """
    if await dst("has", sid):
        raise MoveError(409, f"replica {dst_index} holds a session {sid!r} already; the session stays on replica "
                             f"{src_index}")
    try:
        archive = await src("export_session", sid, owner)
    except KeyError:
        raise
    except Exception as exc:  # noqa: BLE001 - the snapshot failed: the replica resumed the source itself
        raise MoveError(500, f"cannot snapshot session {sid!r} on replica {src_index} ({_cause(exc)}); it stays "
                             "there") from None
    try:
        stats = await dst("import_session", sid, archive)
    except Exception as exc:  # noqa: BLE001 - reported to the client; the session goes back to its source
        why = _cause(exc)
        log.error("avmem serve: moving session %s to replica %d failed: %s", sid, dst_index, why)
        try:
            await src("resume", sid)
            where = f"it stays on replica {src_index}"
        except Exception as again:  # noqa: BLE001 - e.g. closed meanwhile
            where = f"and it could not resume on replica {src_index} ({_cause(again)})"
        raise MoveError(500, f"moving session {sid!r} to replica {dst_index} failed ({why}); {where}") from None
    await src("drop", sid)
    return stats


# --- the router ------------------------------------------------------------------------------------------------

router_api = FastAPI(title="avmem (Ray Serve)")


def _label_metrics(text: str, index: int) -> list[str]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        if "{" in name:
            name = name.replace("{", f'{{replica="{index}",', 1)
        else:
            name = f'{name}{{replica="{index}"}}'
        out.append(f"{name} {value}")
    return out


@serve.ingress(router_api)
class Router:
    """The ingress: session affinity, placement of new sessions, moves."""

    def __init__(self, config: ServeConfig, *replicas) -> None:
        self.replicas = list(replicas)
        self.where: dict[str, int] = {}
        self.keys = KeyRing(config.api_keys)
        self.max_body = max(config.max_upload_bytes + MULTIPART_SLACK,
                            min(config.max_upload_bytes, CHAT_DATA_BYTES) * 4 // 3 + MAX_JSON_BYTES)

    async def body(self, request: Request) -> bytes | None:
        """The request body, read up to the largest body a replica accepts (an upload; a chat request with an
        inline video); None past it (no Content-Length needed: reading stops there)."""
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return None
        parts, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                return None
            parts.append(chunk)
        return b"".join(parts)

    async def locate(self, sid: str) -> int | None:
        if sid in self.where:
            return self.where[sid]
        found = await asyncio.gather(*(r.has.remote(sid) for r in self.replicas))
        for i, held in enumerate(found):
            if held:
                self.where[sid] = i
                return i
        return None

    async def least_loaded(self) -> int:
        counts = await asyncio.gather(*(r.count.remote() for r in self.replicas))
        return min(range(len(counts)), key=lambda i: (counts[i], i))

    def owner(self, request: Request) -> str | None:
        from .app import _presented_key

        return self.keys.owner(_presented_key(request.headers))

    async def forward(self, i: int, request: Request, body: bytes) -> Response:
        gen = self.replicas[i].options(stream=True).http.remote(
            request.method, request.url.path, request.url.query.encode(), list(request.headers.raw), body)
        head = await gen.__anext__()
        headers = {k.decode(): v.decode() for k, v in head["headers"]}
        if headers.get("content-type", "").startswith("text/event-stream"):
            async def rest():
                try:
                    async for chunk in gen:
                        yield chunk
                finally:
                    gen.cancel()  # the client went away: the replica's app sees the disconnect

            return StreamingResponse(rest(), status_code=head["status"], headers=headers)
        chunks = [chunk async for chunk in gen]
        return Response(b"".join(chunks), status_code=head["status"], headers=headers)

    @router_api.get("/health")
    async def health(self):
        counts = await asyncio.gather(*(r.count.remote() for r in self.replicas))
        return {"status": "ok", "replicas": len(self.replicas), "sessions": sum(counts)}

    @router_api.get("/v1/replicas")
    async def replicas_info(self, request: Request):
        if self.owner(request) is None:
            return _error(401, "missing or invalid API key (Authorization: Bearer KEY)", "authentication_error")
        counts = await asyncio.gather(*(r.count.remote() for r in self.replicas))
        return {"replicas": [{"index": i, "sessions": n} for i, n in enumerate(counts)]}

    @router_api.get("/metrics")
    async def metrics(self, request: Request):
        if self.owner(request) is None:
            return _error(401, "missing or invalid API key (Authorization: Bearer KEY)", "authentication_error")
        texts = await asyncio.gather(*(r.metrics.remote() for r in self.replicas))
        lines = []
        for i, text in enumerate(texts):
            lines += _label_metrics(text, i)
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    @router_api.post("/v1/sessions/{sid}/move")
    async def move(self, sid: str, request: Request):
        owner = self.owner(request)
        if owner is None:
            return _error(401, "missing or invalid API key (Authorization: Bearer KEY)", "authentication_error")
        body = await self.body(request)
        if body is None or len(body) > MAX_JSON_BYTES:
            return _error(413, f"JSON body over {MAX_JSON_BYTES} bytes")
        try:
            to = json.loads(body or b"{}").get("to")
        except (json.JSONDecodeError, AttributeError):
            return _error(400, "the body must be a JSON object like {\"to\": 1}")
        src = await self.locate(sid)
        if src is None:
            return _error(404, f"no session {sid!r}", "not_found_error")
        if to is None:
            counts = await asyncio.gather(*(r.count.remote() for r in self.replicas))
            others = [i for i in range(len(self.replicas)) if i != src]
            if not others:
                return _error(409, "there is only one replica")
            to = min(others, key=lambda i: (counts[i], i))
        if isinstance(to, bool) or not isinstance(to, int) or not 0 <= to < len(self.replicas) or to == src:
            return _error(400, f"'to' must be a replica index in 0 .. {len(self.replicas) - 1} other than {src}")
        keyed = None if not self.keys.enabled else owner
        try:
            stats = await move_session(_remote(self.replicas[src]), _remote(self.replicas[to]), sid, keyed,
                                       src, to)
        except KeyError:
            return _error(404, f"no session {sid!r}", "not_found_error")
        except MoveError as exc:
            return _error(exc.status, str(exc), "move_error")
        self.where[sid] = to
        return {"id": sid, "from": src, "to": to, "frames": stats["frames"], "status": stats["status"]}

    @router_api.websocket("/v1/sessions/{sid}/push")
    async def push(self, ws: WebSocket, sid: str):
        i = await self.locate(sid)
        if i is None:
            await ws.close(code=1008, reason=f"no session {sid!r}")
            return
        replica = self.replicas[i]
        opened = await replica.ws_open.remote(ws.url.path, ws.url.query.encode(), list(ws.headers.raw))
        if "conn" not in opened:
            await ws.close(code=opened["close"], reason=opened["reason"][:120])
            return
        conn = opened["conn"]
        await ws.accept()
        try:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    await replica.ws_send.remote(conn, {"type": "websocket.disconnect", "code": 1000})
                    return
                replies = await replica.ws_send.remote(conn, {"type": "websocket.receive", "bytes": msg.get("bytes"),
                                                              "text": msg.get("text")})
                for reply in replies:
                    if reply["type"] == "websocket.send":
                        if reply.get("text") is not None:
                            await ws.send_text(reply["text"])
                        else:
                            await ws.send_bytes(reply["bytes"])
                    elif reply["type"] == "websocket.close":
                        await replica.ws_send.remote(conn, {"type": "websocket.disconnect", "code": 1000})
                        await ws.close(code=reply.get("code", 1000), reason=(reply.get("reason") or "")[:120])
                        return
        except WebSocketDisconnect:
            await replica.ws_send.remote(conn, {"type": "websocket.disconnect", "code": 1000})

    @router_api.api_route("/{path:path}", methods=["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"])
    async def anything(self, path: str, request: Request):
        body = await self.body(request)
        if body is None:
            return _error(413, f"request body over {self.max_body} bytes")
        route = request.url.path
        m = _SESSION_PATH.match(route)
        if m:
            i = await self.locate(m.group(1))
            if i is None:
                return _error(404, f"no session {m.group(1)!r}", "not_found_error")
            response = await self.forward(i, request, body)
            if request.method == "DELETE" and route == f"/v1/sessions/{m.group(1)}" and response.status_code == 200:
                self.where.pop(m.group(1), None)  # the router's table holds live sessions only
            return response
        if route == "/v1/sessions" and request.method == "GET":
            parts = [await self.forward(i, request, b"") for i in range(len(self.replicas))]
            if any(p.status_code != 200 for p in parts):
                return next(p for p in parts if p.status_code != 200)
            return {"sessions": [s for p in parts for s in json.loads(p.body)["sessions"]]}
        if route == "/v1/sessions" and request.method == "POST":
            i = await self.least_loaded()
            response = await self.forward(i, request, body)
            if response.status_code == 201:
                self.where[json.loads(response.body)["id"]] = i
            return response
        if route == "/v1/chat/completions" and request.method == "POST":
            try:
                live = json.loads(body or b"{}").get("avmem_session")
            except (json.JSONDecodeError, AttributeError):
                live = None
            i = await self.locate(live) if isinstance(live, str) else await self.least_loaded()
            if i is None:
                return _error(404, f"no session {live!r}", "not_found_error")
            return await self.forward(i, request, body)
        return await self.forward(0, request, body)  # the web page, /v1/models


# --- building and running --------------------------------------------------------------------------------------


def build(config: ServeConfig, replicas: int, gpus_per_replica: float | None = None,
          cpus_per_replica: float = 1.0, log_level: str | None = None):
    """The Ray Serve application: ``replicas`` avmem replicas behind the router.

    Args:
        config: the server's settings (``config.snapshot_dir``: each replica snapshots under ``replica-<i>``).
        replicas: how many replicas (>= 1).
        gpus_per_replica: GPUs each replica reserves (None: 1 when the Ray cluster has GPUs, else 0).
        cpus_per_replica: CPUs each replica reserves (the router reserves none).
        log_level: the Python logging level of avmem's logger in the replicas (None: unchanged).
    """
    import ray

    config.check()
    if replicas < 1:
        raise ValueError(f"--replicas must be >= 1, got {replicas}")
    if gpus_per_replica is None:
        gpus_per_replica = 1.0 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    handles = [serve.deployment(Replica, name=f"avmem-replica-{i}", num_replicas=1,
                                ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
                                max_ongoing_requests=1000).bind(config, i, log_level)
               for i in range(replicas)]
    router = serve.deployment(Router, name="avmem-router", num_replicas=1, ray_actor_options={"num_cpus": 0},
                              max_ongoing_requests=1000)
    return router.bind(config, *handles)


def app_builder(args: dict):
    """For ``serve run avmem.serve.ray_app:app_builder model=M replicas=N [snapshot_dir=D api_key_file=F]``."""
    from .config import read_api_keys

    known = {"model", "replicas", "snapshot_dir", "api_key_file", "device", "dtype", "max_sessions"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"unknown arguments {unknown} (known: {', '.join(sorted(known))})")
    keys = read_api_keys(args["api_key_file"]) if args.get("api_key_file") else []
    config = ServeConfig(model=args.get("model", "tiny-qwen3-vl"), device=args.get("device", "auto"),
                         dtype=args.get("dtype", "auto"), api_keys=keys, snapshot_dir=args.get("snapshot_dir"),
                         max_sessions=int(args.get("max_sessions", 64)),
                         host="0.0.0.0" if keys else "127.0.0.1")
    return build(config, int(args.get("replicas", 2)))


PYTHON_LEVELS = {"critical": "CRITICAL", "error": "ERROR", "warning": "WARNING", "info": "INFO", "debug": "DEBUG",
                 "trace": "DEBUG"}
"""``--log-level`` (uvicorn's names) as Python logging levels."""


def start(config: ServeConfig, replicas: int, log_level: str = "info") -> list[str]:
    """Join the Ray cluster (``RAY_ADDRESS``) or start a local one and deploy the app on ``config.host:config.port``
    with ``log_level`` (uvicorn's names) for Ray Serve's and avmem's loggers (access logs at info and below).
    Returns the replicas' restore errors (snapshots skipped, one line each)."""
    import os

    import ray

    level = PYTHON_LEVELS[log_level]
    logging.getLogger("avmem.serve").setLevel(level)
    logging_config = {"log_level": level, "enable_access_log": level in ("INFO", "DEBUG")}
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False,
                 logging_level=getattr(logging, level))
    serve.start(http_options={"host": config.host, "port": config.port}, logging_config=logging_config)
    serve.run(build(config, replicas, log_level=level), name="avmem", route_prefix="/",
              logging_config=logging_config)
    errors = []
    for i in range(replicas):
        handle = serve.get_deployment_handle(f"avmem-replica-{i}", app_name="avmem")
        errors += handle.restore_errors.remote().result()
    return errors


def wait_for_interrupt() -> None:
    """Block until Ctrl-C (KeyboardInterrupt is raised: the caller shuts down)."""
    import time

    while True:
        time.sleep(10)


def run(config: ServeConfig, replicas: int, log_level: str = "info") -> None:
    """``avmem serve --ray --replicas N``: :func:`start`, then serve until interrupted."""
    start(config, replicas, log_level)
    wait_for_interrupt()
