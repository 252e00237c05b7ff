"""``avmem serve`` (registered in avmem/cli.py) and ``avmem stream SOURCE --server URL`` (a small HTTP client)."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import typer

from .config import ServeConfig, is_loopback_host, read_api_keys


LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
"""uvicorn's log levels (``--log-level``)."""


def serve_command(
    model: str = typer.Option(..., "--model", help="Model folder, hub id or preset (random-qwen3-vl-8b, "
                              "tiny-qwen3-vl, ...)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (non-loopback needs --api-key-file)."),
    port: int = typer.Option(8000, help="TCP port (0: any free port)."),
    api_key_file: str = typer.Option(None, "--api-key-file", help="API keys, one per line (>= 16 characters)."),
    max_sessions: int = typer.Option(64, "--max-sessions", help="Sessions held at once, all keys together."),
    max_sessions_per_key: int = typer.Option(16, "--max-sessions-per-key", help="Sessions one key may hold."),
    max_upload_mb: float = typer.Option(1024, "--max-upload-mb", help="Largest upload (MiB)."),
    max_uploads_per_key: int = typer.Option(2, "--max-uploads-per-key", help="Uploads one key may send at once."),
    max_upload_mb_per_key: float = typer.Option(4096, "--max-upload-mb-per-key", help="Upload MiB one key may hold "
                                                "on the server at once (being received or not yet decoded)."),
    max_push_rate: float = typer.Option(240, "--max-push-rate", help="WebSocket messages per second one push "
                                        "connection may send."),
    snapshot_dir: str = typer.Option(None, "--snapshot-dir", help="Save sessions here and restore them at start."),
    snapshot_every: float = typer.Option(300, "--snapshot-every", help="Seconds between snapshots (0: only on "
                                         "shutdown and on request)."),
    allow_local_files: bool = typer.Option(False, "--allow-local-files", help="Let clients name local paths."),
    allow_hosts: list[str] = typer.Option([], "--allow-hosts", help="Host, address or CIDR network a URL may "
                                          "reach although it is not public (repeat for several)."),
    fps: float = typer.Option(1.0, help="Default frames per second of new sessions."),
    video_tokens: int = typer.Option(16384, "--video-tokens", help="Default video token memory."),
    audio_tokens: int = typer.Option(4096, "--audio-tokens", help="Default audio token memory."),
    chunk_frames: int = typer.Option(16, "--chunk-frames", help="Default frames per TTT / bank update (even)."),
    device: str = typer.Option("auto", help="torch device: auto, cpu, cuda, cuda:N."),
    dtype: str = typer.Option("auto", help="Weights dtype: auto, float32, bfloat16, float16."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
    ray: bool = typer.Option(False, "--ray", help="Scale out on Ray Serve: --replicas replicas (a GPU each when the "
                             "Ray cluster has GPUs) behind a session-affine router (RAY_ADDRESS: join a cluster)."),
    replicas: int = typer.Option(None, "--replicas", help="Replicas with --ray (default 2)."),
) -> None:
    """Serve live sessions over HTTP: an API (docs/serving.md), an OpenAI-compatible endpoint and a web page."""
    try:
        import uvicorn

        from .app import create_app
    except ImportError as exc:
        raise ValueError(f"avmem serve needs the serve extra: pip install 'avmem[serve]' ({exc.name} is missing)") \
            from None
    keys = read_api_keys(api_key_file) if api_key_file else []
    if not keys and not is_loopback_host(host):
        raise ValueError(f"refusing to listen on {host} without API keys: give --api-key-file, or listen on a "
                         f"loopback address (127.0.0.1, ::1)")
    if log_level.lower() not in LOG_LEVELS:
        raise ValueError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    for flag, value in (("--max-upload-mb", max_upload_mb), ("--max-upload-mb-per-key", max_upload_mb_per_key),
                        ("--max-uploads-per-key", max_uploads_per_key), ("--max-push-rate", max_push_rate)):
        if not value > 0:
            raise ValueError(f"{flag} must be > 0, got {value}")
    if snapshot_dir:
        Path(snapshot_dir).mkdir(parents=True, exist_ok=True)
    config = ServeConfig(model=model, device=device, dtype=dtype, host=host, port=port, api_keys=keys,
                         max_sessions=max_sessions, max_sessions_per_key=max_sessions_per_key,
                         max_upload_bytes=int(max_upload_mb * 2**20), max_uploads_per_key=max_uploads_per_key,
                         max_upload_bytes_per_key=int(max_upload_mb_per_key * 2**20), max_push_rate=max_push_rate,
                         snapshot_dir=snapshot_dir,
                         snapshot_every=snapshot_every, allow_local_files=allow_local_files,
                         allow_hosts=list(allow_hosts),
                         session_defaults={"fps": fps, "video_tokens": video_tokens, "audio_tokens": audio_tokens,
                                           "chunk_frames": chunk_frames})
    config.check()
    if replicas is not None and not ray:
        raise ValueError("--replicas needs --ray")
    if ray:
        # every other flag is honoured under --ray: the config goes to each replica's app (keys, limits, policy,
        # snapshots, session defaults, device, dtype); --host / --port to Ray's HTTP proxy; --log-level to Ray
        # Serve's and avmem's loggers
        replicas = 2 if replicas is None else replicas
        if replicas < 1:
            raise ValueError(f"--replicas must be >= 1, got {replicas}")
        try:
            from .ray_app import start, wait_for_interrupt
        except ImportError as exc:
            raise ValueError(f"avmem serve --ray needs Ray Serve: pip install 'avmem[ray]' ({exc.name} is missing)") \
                from None
        _note_skipped(start(config, replicas, log_level=log_level.lower()))
        wait_for_interrupt()
        return
    app = create_app(config)
    _note_skipped(app.state.manager.restore_errors)
    uvicorn.run(app, host=host, port=port, log_level=log_level.lower(), timeout_graceful_shutdown=30,
                ws_max_size=config.max_push_bytes)


def _note_skipped(restore_errors: list[str]) -> None:
    if restore_errors:
        print(f"avmem: note: {len(restore_errors)} snapshot(s) skipped (see the log)", file=sys.stderr)


class Client:
    """A minimal client of the avmem server (standard library only): JSON calls and server-sent events."""

    def __init__(self, server: str, api_key: str | None = None, timeout: float = 600.0) -> None:
        if not server.startswith(("http://", "https://")):
            raise ValueError(f"--server must be an http(s) URL, got {server!r}")
        self.base = server.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout

    def _open(self, method: str, path: str, data=None, headers: dict | None = None):
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={**self.headers, **(headers or {})})
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = exc.reason
            raise ValueError(f"server: HTTP {exc.code}: {message}") from None
        except urllib.error.URLError as exc:
            raise ValueError(f"server {self.base}: {exc.reason}") from None

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        with self._open(method, path, data, {"Content-Type": "application/json"} if data else None) as r:
            return json.loads(r.read())

    def create(self, source: str, live: bool | None = None, settings: dict | None = None) -> str:
        """A session on the server: a URL is decoded there, an existing local file is uploaded."""
        if "://" not in source and Path(source).is_file():
            path = Path(source)
            query = "?live=true" if live else ""
            with path.open("rb") as f:
                headers = {"Content-Type": "application/octet-stream", "Content-Length": str(path.stat().st_size)}
                with self._open("POST", "/v1/sessions" + query, f, headers) as r:
                    return json.loads(r.read())["id"]
        body = {"source": source, **({} if live is None else {"live": live}),
                **({} if settings is None else {"settings": settings})}
        return self.call("POST", "/v1/sessions", body)["id"]

    def ask_stream(self, sid: str, question: str):
        """Text pieces of the answer as the server streams them; the final event's result is returned last as a
        dict."""
        data = json.dumps({"question": question, "stream": True}).encode()
        with self._open("POST", f"/v1/sessions/{sid}/ask", data, {"Content-Type": "application/json"}) as r:
            event = None
            for raw in r:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    payload = json.loads(line[6:])
                    if event == "error":
                        raise ValueError(payload["error"]["message"])
                    yield payload if event == "done" else payload["token"]
                    event = None


def stream_via_server(source: str, server: str) -> None:
    """``avmem stream SOURCE --server URL``: create a session there, answer each stdin line from it."""
    client = Client(server, os.environ.get("AVMEM_API_KEY"))
    sid = client.create(source)
    print(f"session {sid} on {server}; waiting for the first frames...", file=sys.stderr)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        st = client.call("GET", f"/v1/sessions/{sid}")
        if st["frames"] or st["audio_seconds"] or st["status"] in ("ended", "failed"):
            break
        time.sleep(0.2)
    if st["status"] == "failed":
        raise ValueError(f"server: the source failed: {st['error']}")
    print("type a question and press Enter (Ctrl-D to stop)", file=sys.stderr)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            result = {}
            print("A: ", end="", flush=True)
            for piece in client.ask_stream(sid, line.strip()):
                if isinstance(piece, dict):
                    result = piece
                else:
                    print(piece, end="", flush=True)
            st = client.call("GET", f"/v1/sessions/{sid}")
            print(f"   [{st['stream_seconds']:.0f} s received, {st['video_tokens_held']} video + "
                  f"{st['audio_tokens_held']} audio tokens, {st['drops']} dropped]"
                  + (" (cut at the length limit)" if result.get("finish_reason") == "length" else ""), flush=True)
        except ValueError as exc:
            print(f"(cannot answer: {exc})", flush=True)
