"""avmem serve on a real uvicorn server on 127.0.0.1 (ephemeral port): sessions from URLs decoded server-side
(a recording and a live stream from a loopback HTTP server allowed with allow_hosts), the standard-library client
and ``avmem stream SOURCE --server URL``."""

from __future__ import annotations

import functools
import http.server
import threading

import pytest

uvicorn = pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install -e '.[dev]'")
from avmem.model import load_model
from avmem.serve import ServeConfig, create_app
from avmem.serve.cli import Client
from avmem.synth import write_test_pattern_clip

from .serve_common import wait_for


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:
        pass


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """(local clip, its http://127.0.0.1 URL) from a loopback file server."""
    root = tmp_path_factory.mktemp("www")
    clip = write_test_pattern_clip(root / "clip.mp4", seconds=4, fps=10, size=(64, 96))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=root))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield clip, f"http://127.0.0.1:{httpd.server_address[1]}/clip.mp4"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def server():
    """The base URL of avmem serve (tiny model) on 127.0.0.1, loopback media allowed."""
    cfg = ServeConfig(model="tiny-qwen3-vl", allow_hosts=["127.0.0.1"], source_timeout=5,
                      session_defaults=dict(video_tokens=48, audio_tokens=32, chunk_frames=4, max_new_tokens=6))
    app = create_app(cfg, load_model("tiny-qwen3-vl"))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    wait_for(lambda: srv.started)
    yield f"http://127.0.0.1:{srv.servers[0].sockets[0].getsockname()[1]}"
    srv.should_exit = True
    thread.join(timeout=30)


def test_recording_and_live_urls_decoded_by_the_server(server, media):
    _, url = media
    client = Client(server)
    sid = client.create(url)
    assert wait_for(lambda: (s := client.call("GET", f"/v1/sessions/{sid}"))["status"] == "ended" and s)["frames"] == 4
    pieces = list(client.ask_stream(sid, "What colour is it?"))
    done = pieces.pop()
    assert done["answer"] == "".join(pieces) == client.call("POST", f"/v1/sessions/{sid}/ask",
                                                            {"question": "What colour is it?"})["answer"]
    live = client.create(url, live=True)  # paced at real time by the server's LiveSource
    st = wait_for(lambda: (s := client.call("GET", f"/v1/sessions/{live}"))["frames"] >= 2 and s, timeout=20)
    assert st["source"]["live"] and st["drops"] == 0
    for s in (sid, live):
        client.call("DELETE", f"/v1/sessions/{s}")
    with pytest.raises(ValueError, match="HTTP 403.*non-public"):
        client.create(url.replace("127.0.0.1", "127.0.0.2"))  # loopback, but not the allowed address
    with pytest.raises(ValueError, match="HTTP 422"):
        client.create(url.replace("clip.mp4", "missing.mp4"))


def test_cli_stream_with_server_uploads_and_answers(server, media, monkeypatch):
    from typer.testing import CliRunner

    from avmem.cli import app

    clip, _ = media
    r = CliRunner().invoke(app, ["stream", str(clip), "--server", server], input="What colour is it?\n\n")
    assert r.exit_code == 0, r.output
    assert "A: " in r.output and "received" in r.output
    r = CliRunner().invoke(app, ["stream", str(clip), "--server", "ftp://x"])
    assert r.exit_code == 2 and "avmem: error: --server must be an http(s) URL" in r.output


def test_background_server_refuses_oversized_push_messages_before_buffering():
    """BackgroundServer gives uvicorn the app's push message limit: a bigger message closes with 1009 (too big)."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from avmem.serve.background import BackgroundServer
    from avmem.serve.cli import Client

    app = create_app(ServeConfig(model="tiny-qwen3-vl", max_upload_bytes=4096), load_model("tiny-qwen3-vl"))
    with BackgroundServer(app) as url:
        sid = Client(url).call("POST", "/v1/sessions", {"push": True})["id"]
        with connect(url.replace("http://", "ws://") + f"/v1/sessions/{sid}/push") as ws:
            ws.send(bytes(20000))
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=30)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
