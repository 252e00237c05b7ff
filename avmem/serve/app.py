"""The HTTP API: ``create_app(config, model=None) -> FastAPI`` (see docs/serving.md)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..media import MediaError
from .config import KeyRing, ServeConfig
from .manager import LimitError, NotFound, SessionManager, SourceSpec
from .metrics import render_metrics
from .policy import PolicyError, check_container, check_source, is_live_url
from .push import PushedFrame, PushError, parse_message
from .quota import QuotaError, UploadQuota, UploadTicket
from .sampling import Sampling, SamplingError

log = logging.getLogger("avmem.serve")
STATIC = Path(__file__).parent / "static"
MULTIPART_SLACK = 64 * 1024  # form fields and boundaries around an uploaded file
MAX_JSON_BYTES = 1 << 20
DISCONNECT_POLL = 0.25  # seconds between checks that the client of a plain (not streamed) answer is still there
CHAT_DATA_BYTES = 64 << 20  # the largest video a /v1/chat/completions request may carry inline (data: URL)


class RateLimit:
    """A token bucket: ``rate`` events per second on average, bursts of up to one second's worth."""

    def __init__(self, rate: float, clock=time.monotonic) -> None:
        self.rate, self.clock = float(rate), clock
        self.tokens, self.last = max(1.0, self.rate), clock()

    def allow(self) -> bool:
        """Take one token; False when the bucket is empty (the event is over the rate)."""
        now = self.clock()
        self.tokens = min(max(1.0, self.rate), self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class ApiError(Exception):
    """An error answered as ``{"error": {"message", "type", "code"}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def _presented_key(headers, query=None) -> str | None:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    if headers.get("x-api-key"):
        return headers.get("x-api-key").strip()
    if query is not None and query.get("api_key"):
        return query.get("api_key")
    return None


async def _json_body(request: Request, limit: int = MAX_JSON_BYTES) -> dict:
    """The request's JSON object, read up to ``limit`` bytes (413 past it, also for a chunked body without a
    Content-Length: reading stops there)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"JSON body over {limit} bytes")
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"JSON body over {limit} bytes")
        parts.append(chunk)
    raw = b"".join(parts)
    try:
        body = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


def _field(body: dict, name: str, kinds: tuple, default=None, required: bool = False):
    if name not in body or body[name] is None:
        if required:
            raise ApiError(400, f"'{name}' is required")
        return default
    value = body[name]
    if isinstance(value, bool) and bool not in kinds:
        raise ApiError(400, f"'{name}' must be {' or '.join(k.__name__ for k in kinds)}")
    if not isinstance(value, kinds):
        raise ApiError(400, f"'{name}' must be {' or '.join(k.__name__ for k in kinds)}, got {type(value).__name__}")
    return value


def _question(body: dict) -> str:
    q = _field(body, "question", (str,), required=True)
    if not q.strip() or len(q) > 8192:
        raise ApiError(400, "'question' must be non-empty and at most 8192 characters")
    return q


def _since(body: dict) -> float | None:
    since = _field(body, "since", (int, float))
    if since is not None and not (math.isfinite(since) and since >= 0):
        raise ApiError(400, "'since' must be a number of seconds >= 0")
    return since


async def _watch_disconnect(request: Request, future: asyncio.Future, gone: threading.Event) -> None:
    """Set ``gone`` when the client of ``request`` disconnects before ``future`` is done."""
    while not future.done():
        if await request.is_disconnected():
            gone.set()
            return
        await asyncio.sleep(DISCONNECT_POLL)


def create_app(config: ServeConfig, model=None) -> FastAPI:
    """The avmem server as a FastAPI app: one shared model (loaded from ``config.model`` when not given), a
    :class:`SessionManager` (``app.state.manager``) started and stopped with the app's lifespan, the API of
    docs/serving.md, and the web page from ``avmem/serve/static`` at ``/``.

    Raises:
        ValueError: bad settings (``ServeConfig.check``; binding checks apply to ``avmem serve``).
    """
    config.check()
    if model is None:
        from ..cli import _quiet_transformers
        from ..model import load_model
        from ..runtime import resolve_device, resolve_dtype

        _quiet_transformers()
        model = load_model(config.model, device=resolve_device(config.device), dtype=resolve_dtype(config.dtype))
    manager = SessionManager(config, model)
    try:
        manager.settings_for(None)  # the server's default session settings, on this model
    except ValueError as exc:
        raise ValueError(f"default session settings: {exc}") from None
    keys = KeyRing(config.api_keys)
    uploads = UploadQuota(config.max_uploads_per_key, config.max_upload_bytes_per_key)
    # a chat request may carry its video as a base64 data: URL of up to CHAT_DATA_BYTES
    chat_body_limit = min(config.max_upload_bytes, CHAT_DATA_BYTES) * 4 // 3 + MAX_JSON_BYTES
    model_id = str(config.model)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        await asyncio.to_thread(manager.start)
        try:
            yield
        finally:
            await asyncio.to_thread(manager.stop)

    app = FastAPI(title="avmem", version="1", lifespan=lifespan)
    app.state.manager = manager
    app.state.config = config
    app.state.uploads = uploads

    @app.exception_handler(ApiError)
    async def _api_error(_request, exc: ApiError):
        return _error(exc.status, exc.message, exc.kind)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}")

    def owner_of(request: Request) -> str:
        owner = keys.owner(_presented_key(request.headers))
        if owner is None:
            raise ApiError(401, "missing or invalid API key (Authorization: Bearer KEY)", "authentication_error")
        return owner

    def session_of(request: Request, sid: str):
        owner = owner_of(request)
        try:
            return manager.get(sid, owner)
        except NotFound:
            raise ApiError(404, f"no session {sid!r}", "not_found_error") from None

    def create_session(owner: str, spec: SourceSpec, settings, temp_file: str | None = None, hidden: bool = False,
                       upload: UploadTicket | None = None):
        """A session (``temp_file`` and its ``upload`` ticket are the session's from here on, or removed)."""
        if settings is not None and not isinstance(settings, dict):
            if temp_file:
                Path(temp_file).unlink(missing_ok=True)
            if upload is not None:
                upload.release()
            raise ApiError(400, "'settings' must be a JSON object")
        try:
            return manager.create(owner, spec, settings, hidden=hidden, temp_file=temp_file, upload=upload)
        except LimitError as exc:
            raise ApiError(429, str(exc), "rate_limit_error") from None
        except PolicyError as exc:
            raise ApiError(403, str(exc), "permission_error") from None
        except MediaError as exc:
            raise ApiError(422, str(exc).splitlines()[0]) from None
        except ValueError as exc:
            raise ApiError(400, str(exc).splitlines()[0]) from None

    def begin_upload(owner: str, expected: int | None = None) -> UploadTicket:
        """The per-key upload ticket of a new upload (429 / 413 when the key's limits are reached)."""
        try:
            return uploads.begin(owner, expected)
        except QuotaError as exc:
            raise ApiError(exc.status, str(exc), "rate_limit_error" if exc.status == 429 else
                           "invalid_request_error") from None

    async def save_upload(stream, ticket: UploadTicket) -> str:
        """Write an async iterable of byte chunks to a file in the server's upload folder
        (``SessionManager.upload_folder``): at most ``max_upload_bytes`` (413) and within the key's upload limits
        (``ticket``: 413 / 429), not empty (400), starting like a known media container (415). Returns the path (the
        caller owns the file and the ticket's bytes); on failure the file is removed and the ticket released."""
        limit, size, head = config.max_upload_bytes, 0, b""
        folder = await asyncio.to_thread(manager.upload_folder)
        fd, path = tempfile.mkstemp(prefix="avmem-upload-", suffix=".media", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in stream:
                    size += len(chunk)
                    if size > limit:
                        raise ApiError(413, f"upload over the limit of {limit} bytes")
                    try:
                        ticket.grow(len(chunk))
                    except QuotaError as exc:
                        raise ApiError(exc.status, str(exc), "rate_limit_error" if exc.status == 429 else
                                       "invalid_request_error") from None
                    if len(head) < 512:
                        head += chunk[:512 - len(head)]
                    f.write(chunk)
            if size == 0:
                raise ApiError(400, "the upload is empty")
            check_container(head)
        except PolicyError as exc:
            Path(path).unlink(missing_ok=True)
            ticket.release()
            raise ApiError(415, str(exc)) from None
        except BaseException:
            Path(path).unlink(missing_ok=True)
            ticket.release()
            raise
        ticket.received()
        return path

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id, "sessions": len(manager.list(None)),
                "queue_depth": manager.queue_depth()}

    @app.get("/metrics")
    async def metrics(request: Request):
        owner_of(request)
        return PlainTextResponse(render_metrics(manager), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request):
        owner_of(request)
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "avmem"}]}

    @app.post("/v1/sessions", status_code=201)
    async def create(request: Request):
        owner = owner_of(request)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json":
            body = await _json_body(request)
            settings = body.get("settings")
            if _field(body, "push", (bool,), False):
                if body.get("source") is not None:
                    raise ApiError(400, "give either 'source' or 'push', not both")
                e = create_session(owner, SourceSpec("push", None, True), settings)
            else:
                source = _field(body, "source", (str,), required=True)
                try:
                    checked, is_url = await asyncio.to_thread(check_source, source, config)
                except PolicyError as exc:
                    raise ApiError(403, str(exc), "permission_error") from None
                live = _field(body, "live", (bool,), is_url and is_live_url(checked))
                spec = SourceSpec("url" if is_url else "file", checked, bool(live))
                e = await asyncio.to_thread(create_session, owner, spec, settings)
        elif ctype == "multipart/form-data":
            length = request.headers.get("content-length")
            if length is None or not length.isdigit():
                raise ApiError(411, "a multipart upload needs a Content-Length")
            if int(length) > config.max_upload_bytes + MULTIPART_SLACK:
                raise ApiError(413, f"upload over the limit of {config.max_upload_bytes} bytes")
            ticket = begin_upload(owner, max(0, int(length) - MULTIPART_SLACK))
            try:
                form = await request.form(max_files=1, max_fields=8)
            except BaseException:
                ticket.release()
                raise
            try:
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise ApiError(400, "the multipart form needs a 'file' part")
                settings = _form_json(form.get("settings"))
                live = str(form.get("live", "false")).lower() in ("1", "true", "yes")

                async def read_parts():
                    while True:
                        chunk = await upload.read(1 << 20)
                        if not chunk:
                            return
                        yield chunk

                path = await save_upload(read_parts(), ticket)
            except BaseException:
                ticket.release()  # no-op when save_upload released it already
                raise
            finally:
                await form.close()
            e = await asyncio.to_thread(create_session, owner, SourceSpec("upload", path, live), settings, path,
                                        False, ticket)
        elif ctype.startswith(("video/", "audio/")) or ctype == "application/octet-stream":
            length = request.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > config.max_upload_bytes:
                raise ApiError(413, f"upload over the limit of {config.max_upload_bytes} bytes")
            settings = _form_json(request.query_params.get("settings"))
            live = request.query_params.get("live", "false").lower() in ("1", "true", "yes")
            ticket = begin_upload(owner, int(length) if length is not None and length.isdigit() else None)
            path = await save_upload(request.stream(), ticket)
            e = await asyncio.to_thread(create_session, owner, SourceSpec("upload", path, live), settings, path,
                                        False, ticket)
        else:
            raise ApiError(415, "send JSON {\"source\": URL} or {\"push\": true}, a multipart form with a 'file', or "
                                "the media itself as video/*, audio/* or application/octet-stream")
        return {"id": e.id, "status": e.status}

    @app.get("/v1/sessions")
    async def list_sessions(request: Request):
        owner = owner_of(request)
        return {"sessions": [manager.describe(e) for e in manager.list(None if not keys.enabled else owner)]}

    @app.get("/v1/sessions/{sid}")
    async def stats(request: Request, sid: str):
        return manager.describe(session_of(request, sid))

    @app.delete("/v1/sessions/{sid}")
    async def delete(request: Request, sid: str):
        e = session_of(request, sid)
        try:
            await asyncio.to_thread(manager.close, e.id, None)
        except NotFound:  # closed by another request since the lookup
            raise ApiError(404, f"no session {sid!r}", "not_found_error") from None
        return {"id": sid, "deleted": True}

    @app.post("/v1/sessions/{sid}/snapshot")
    async def snapshot(request: Request, sid: str):
        e = session_of(request, sid)
        if not config.snapshot_dir:
            raise ApiError(409, "the server has no --snapshot-dir")
        try:
            path = await asyncio.wrap_future(manager.call(lambda: manager.snapshot_now(e)))
        except NotFound:  # closed since the lookup
            raise ApiError(404, f"no session {sid!r}", "not_found_error") from None
        return {"id": sid, "snapshot": Path(path).name}

    async def answer(request: Request, e, question: str, max_new_tokens: int | None, since: float | None,
                     stream: bool, sse_format, sampling: Sampling | None = None):
        """The answer as JSON ``{"answer", "tokens", "finish_reason"}``, or (``stream``) a response of server-sent
        events built by ``sse_format(piece, None)`` per text piece and ``sse_format(None, result)`` at the end. A
        question that cannot be answered fails before the stream starts (400 / 404); a client that disconnects
        stops generation at the next token (a plain JSON request's connection is checked every
        ``DISCONNECT_POLL`` seconds)."""
        if not stream:
            gone = threading.Event()
            job = manager.ask_job(e, question, max_new_tokens, lambda _piece: not gone.is_set(), since, sampling)
            future = asyncio.wrap_future(manager.call(job))
            watcher = asyncio.create_task(_watch_disconnect(request, future, gone))
            try:
                return await future
            except BaseException:  # the handler was cancelled: the client is gone
                gone.set()
                raise
            finally:
                watcher.cancel()
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        cancelled: list[bool] = []

        def on_piece(piece: str) -> bool:
            if cancelled:
                return False
            loop.call_soon_threadsafe(pieces.put_nowait, piece)
            return True

        future = asyncio.wrap_future(manager.call(manager.ask_job(e, question, max_new_tokens, on_piece, since,
                                                                  sampling)))
        future.add_done_callback(lambda _f: pieces.put_nowait(None))
        try:
            first = await pieces.get()
        except BaseException:  # the client left before the first token: generation stops at the next one
            cancelled.append(True)
            raise
        if first is None:
            future.result()  # raises what made the question fail (before any event is sent)

        async def events():
            try:
                piece = first
                while piece is not None:
                    yield sse_format(piece, None)
                    piece = await pieces.get()
                try:
                    yield sse_format(None, future.result())
                except (ValueError, NotFound) as exc:
                    yield f"event: error\ndata: {json.dumps({'error': {'message': str(exc).splitlines()[0]}})}\n\n"
            finally:
                cancelled.append(True)  # done, or the client is gone: generation stops at the next token

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/sessions/{sid}/ask")
    async def ask(request: Request, sid: str):
        e = session_of(request, sid)
        body = await _json_body(request)
        question = _question(body)
        stream = _field(body, "stream", (bool,), False)
        max_new = _field(body, "max_new_tokens", (int,))
        since = _since(body)
        sampling = _sampling(body)

        def sse(piece, result):
            if result is None:
                return f"data: {json.dumps({'token': piece})}\n\n"
            return f"event: done\ndata: {json.dumps(result)}\n\n"

        try:
            out = await answer(request, e, question, max_new, since, stream, sse, sampling)
        except ValueError as exc:
            raise ApiError(400, str(exc).splitlines()[0]) from None
        except NotFound:
            raise ApiError(404, f"no session {sid!r}", "not_found_error") from None
        return out

    @app.websocket("/v1/sessions/{sid}/push")
    async def push(ws: WebSocket, sid: str):
        owner = keys.owner(_presented_key(ws.headers, ws.query_params))
        if owner is None:
            await ws.close(code=1008, reason="missing or invalid API key")
            return
        try:
            e = manager.get(sid, owner)
            source = await asyncio.to_thread(manager.push_source, e)
        except NotFound:
            await ws.close(code=1008, reason=f"no session {sid!r}")
            return
        except ValueError as exc:
            await ws.close(code=1008, reason=str(exc)[:120])
            return
        await ws.accept()
        rate = RateLimit(config.max_push_rate)
        try:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                if not rate.allow():
                    await ws.close(code=1008, reason=f"over {config.max_push_rate:g} messages per second")
                    return
                if msg.get("text") is not None:
                    try:
                        control = json.loads(msg["text"])
                    except json.JSONDecodeError:
                        control = None
                    if isinstance(control, dict) and control.get("type") == "stats":
                        await ws.send_text(json.dumps(manager.describe(e)))
                        continue
                    if isinstance(control, dict) and control.get("type") == "end":
                        source.close()  # releases the last frame; the reply says what the session received
                        await asyncio.to_thread(manager.wait_pumped, e, source, 30.0)
                        await ws.send_text(json.dumps({"type": "ended", **manager.describe(e)}))
                        break
                    await ws.close(code=1003, reason="text messages: {\"type\": \"stats\"} or {\"type\": \"end\"}")
                    return
                data = msg.get("bytes") or b""
                try:
                    item = parse_message(data, max_bytes=config.max_push_bytes, max_pixels=config.max_frame_pixels)
                    if isinstance(item, PushedFrame):
                        await asyncio.to_thread(source.push_frame, item.t, item.image)
                    else:
                        await asyncio.to_thread(source.push_audio, item.t, item.samples, item.rate)
                except (PushError, MediaError) as exc:
                    await ws.close(code=1003, reason=str(exc).splitlines()[0][:120])
                    return
            await ws.close()
        except WebSocketDisconnect:
            pass
        finally:
            source.close()

    # OpenAI-compatible ---------------------------------------------------------------------------------------

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        owner = owner_of(request)
        body = await _json_body(request, chat_body_limit)
        messages = _field(body, "messages", (list,), required=True)
        stream = _field(body, "stream", (bool,), False)
        max_new = _field(body, "max_completion_tokens", (int,))
        max_new = max_new if max_new is not None else _field(body, "max_tokens", (int,))
        live_id = _field(body, "avmem_session", (str,))
        since = _since({"since": body.get("avmem_since")})
        sampling = _sampling(body)
        _refuse_unsupported(body)
        options = _field(body, "stream_options", (dict,), {})
        if options and not stream:
            raise ApiError(400, "'stream_options' is only allowed with \"stream\": true")
        include_usage = _field(options, "include_usage", (bool,), False)
        question, videos = _chat_question(messages)
        ephemeral = None
        if live_id is not None:
            if videos:
                raise ApiError(400, "give either video_url parts or 'avmem_session', not both")
            try:
                e = manager.get(live_id, owner)
            except NotFound:
                raise ApiError(404, f"no session {live_id!r}", "not_found_error") from None
        else:
            if len(videos) != 1:
                raise ApiError(400, "give exactly one video_url content part, or 'avmem_session' naming a live session")
            e = ephemeral = await _open_video(owner, videos[0])
            try:
                idle = await asyncio.to_thread(manager.wait_idle, e, 3600)
            except BaseException:  # the client left while the video was decoding
                manager.close(e.id, None)
                raise
            if not idle:
                manager.close(e.id, None)
                raise ApiError(504, "the video took too long to decode")
            if e.status == "failed":
                manager.close(e.id, None)
                raise ApiError(422, f"cannot decode the video: {e.error}")
        created = int(time.time())
        cid = "chatcmpl-" + uuid.uuid4().hex

        def chunk(delta: dict, finish: str | None) -> str:
            return "data: " + json.dumps({"id": cid, "object": "chat.completion.chunk", "created": created,
                                          "model": model_id, "choices": [{"index": 0, "delta": delta,
                                                                          "finish_reason": finish}]}) + "\n\n"

        sent_role = []

        def sse(piece, result):
            head = "" if sent_role else chunk({"role": "assistant", "content": ""}, None)
            sent_role.append(True)
            if result is None:
                return head + chunk({"content": piece}, None)
            finish = "length" if result["finish_reason"] == "length" else "stop"
            usage = ""
            if include_usage:
                usage = "data: " + json.dumps({"id": cid, "object": "chat.completion.chunk", "created": created,
                                               "model": model_id, "choices": [], "usage": _usage(result)}) + "\n\n"
            return head + chunk({}, finish) + usage + "data: [DONE]\n\n"

        close_now = ephemeral is not None  # a streamed answer closes its ephemeral session when the stream ends
        try:
            out = await answer(request, e, question, max_new, since, stream, sse, sampling)
            close_now = close_now and not stream
        except ValueError as exc:
            raise ApiError(400, str(exc).splitlines()[0]) from None
        except NotFound:
            raise ApiError(404, f"no session {e.id!r}", "not_found_error") from None
        finally:
            if close_now:
                await asyncio.to_thread(manager.close, ephemeral.id, None)
        if stream:
            if ephemeral is not None:
                inner = out.body_iterator

                async def then_close():
                    try:
                        async for part in inner:
                            yield part
                    finally:
                        await asyncio.to_thread(manager.close, ephemeral.id, None)

                out.body_iterator = then_close()
            return out
        return {"id": cid, "object": "chat.completion", "created": created, "model": model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": out["answer"]},
                             "finish_reason": "length" if out["finish_reason"] == "length" else "stop"}],
                "usage": _usage(out)}

    async def _open_video(owner: str, url: str):
        if url.startswith("data:"):
            head, _, payload = url.partition(",")
            if ";base64" not in head:
                raise ApiError(400, "a data: video_url must be base64 (data:video/mp4;base64,...)")
            if len(payload) > config.max_upload_bytes * 4 // 3 + 4:  # checked before decoding
                raise ApiError(413, f"upload over the limit of {config.max_upload_bytes} bytes")
            ticket = begin_upload(owner, len(payload) * 3 // 4)
            try:
                data = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                ticket.release()
                raise ApiError(400, "the data: video_url is not valid base64") from None

            async def one():
                yield data

            path = await save_upload(one(), ticket)
            return await asyncio.to_thread(create_session, owner, SourceSpec("upload", path, False), None, path, True,
                                           ticket)
        try:
            checked, is_url = await asyncio.to_thread(check_source, url, config)
        except PolicyError as exc:
            raise ApiError(403, str(exc), "permission_error") from None
        spec = SourceSpec("url" if is_url else "file", checked, False)
        return await asyncio.to_thread(create_session, owner, spec, None, None, True)

    app.mount("/", StaticFiles(directory=STATIC, html=True), name="static")
    return app


def _sampling(body: dict) -> Sampling:
    try:
        return Sampling.from_request(body)
    except SamplingError as exc:
        raise ApiError(400, str(exc)) from None


# OpenAI request fields the server cannot honour: refused unless they hold their neutral value
_NEUTRAL = {"n": (1,), "presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "logprobs": (False,),
            "top_logprobs": (0,), "logit_bias": ({},), "tools": ([],), "functions": ([],), "tool_choice": ("none",),
            "function_call": ("none",), "best_of": (1,), "top_k": (-1, 0), "repetition_penalty": (1, 1.0),
            "min_tokens": (0,), "response_format": ({"type": "text"},), "echo": (False,), "suffix": ("",)}


def _refuse_unsupported(body: dict) -> None:
    """400 for an OpenAI field set to something the server does not do (n > 1, penalties, logprobs, tools, ...),
    never a silent fallback."""
    for name, neutral in _NEUTRAL.items():
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) != isinstance(neutral[0], bool) or value not in neutral:
            allowed = " or ".join(json.dumps(v) for v in neutral)
            raise ApiError(400, f"'{name}' is not supported by this server (only {allowed}), got {json.dumps(value)}")


def _usage(result: dict) -> dict:
    prompt, completion = int(result.get("prompt_tokens", 0)), int(result["tokens"])
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _form_json(value) -> dict | None:
    if value is None or value == "":
        return None
    try:
        parsed = json.loads(value if isinstance(value, str) else "")
    except json.JSONDecodeError:
        raise ApiError(400, "'settings' must be a JSON object") from None
    if not isinstance(parsed, dict):
        raise ApiError(400, "'settings' must be a JSON object")
    return parsed


def _chat_question(messages: list) -> tuple[str, list[str]]:
    """The question (text of the last user message) and the video URLs of all user messages."""
    if not messages or not all(isinstance(m, dict) for m in messages):
        raise ApiError(400, "'messages' must be a non-empty list of message objects")
    videos: list[str] = []
    question = None
    for m in messages:
        if m.get("role") != "user":
            continue
        content = m.get("content")
        texts = []
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    raise ApiError(400, "content parts must be objects")
                kind = part.get("type")
                if kind == "text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif kind == "video_url" and isinstance(part.get("video_url"), dict) \
                        and isinstance(part["video_url"].get("url"), str):
                    videos.append(part["video_url"]["url"])
                else:
                    raise ApiError(400, f"unsupported content part {kind!r} (text and video_url are supported)")
        else:
            raise ApiError(400, "message content must be a string or a list of parts")
        question = "\n".join(t for t in texts if t.strip())
    if not question or not question.strip():
        raise ApiError(400, "the last user message has no text question")
    if len(question) > 8192:
        raise ApiError(400, "the question (text of the last user message) must be at most 8192 characters")
    return question, videos
