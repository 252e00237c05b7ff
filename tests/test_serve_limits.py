"""avmem serve's limits and safety (tiny model, in process, loopback only): per-key upload limits (uploads at once,
bytes held), bounded JSON bodies (chunked too), pushed message size and rate, data: URLs checked before decoding,
API keys compared by digest, live HTTP sources not following redirects, and the public snapshot export / import
a session moves with."""

from __future__ import annotations

import base64
import http.server
import io
import json
import tarfile
import threading

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[dev]'")
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from avmem.serve import create_app, snapshots
from avmem.serve.app import RateLimit
from avmem.serve.config import KeyRing
from avmem.serve.push import encode_message
from avmem.serve.quota import QuotaError, UploadQuota
from avmem.session import StreamSession

from .serve_common import KEY_A, KEY_B, SMALL, clip, config, model, wait_for  # noqa: F401 (fixtures)



def frame(t: float, size=(32, 32)) -> bytes:
    h, w = size
    return encode_message({"type": "frame", "t": t, "format": "rgb24", "width": w, "height": h}, bytes(h * w * 3))


def test_upload_quota_counts_uploads_and_bytes_per_key():
    q = UploadQuota(max_concurrent=2, max_bytes=100)
    a1, a2 = q.begin("a"), q.begin("a")
    with pytest.raises(QuotaError, match="2 uploads at once") as exc:
        q.begin("a")
    assert exc.value.status == 429
    q.begin("b").release()  # another key is not limited by a's uploads
    a1.grow(60)
    with pytest.raises(QuotaError, match="holds 60 bytes") as exc:
        a2.grow(50)
    assert exc.value.status == 429
    with pytest.raises(QuotaError, match="over this key's limit") as exc:
        a2.grow(101)
    assert exc.value.status == 413
    a1.received()
    assert q.usage("a") == (1, 60)  # received: no longer in progress, its bytes still held
    a1.release()
    a1.release()  # idempotent
    a2.grow(100)
    assert q.usage("a") == (1, 100)
    with pytest.raises(QuotaError) as exc:
        q.begin("a", expected=1)
    assert exc.value.status == 429
    a2.release()
    assert q.usage("a") == (0, 0)
    with pytest.raises(QuotaError) as exc:
        q.begin("a", expected=101)
    assert exc.value.status == 413 and q.usage("a") == (0, 0)


def test_per_key_upload_limits_over_http(model, clip):
    size = len(clip.read_bytes())
    cfg = config(api_keys=[KEY_A, KEY_B], max_uploads_per_key=1, max_upload_bytes_per_key=size + size // 2)
    a, b = {"Authorization": f"Bearer {KEY_A}"}, {"Authorization": f"Bearer {KEY_B}"}
    owner_a = KeyRing([KEY_A, KEY_B]).owner(KEY_A)
    raw = {"content-type": "video/mp4"}
    with TestClient(create_app(cfg, model)) as c:
        uploads = c.app.state.uploads
        busy = uploads.begin(owner_a)  # an upload of key A in progress
        r = c.post("/v1/sessions", content=clip.read_bytes(), headers={**a, **raw})
        assert r.status_code == 429 and "uploads at once" in r.json()["error"]["message"]
        assert r.json()["error"]["type"] == "rate_limit_error"
        r = c.post("/v1/sessions", files={"file": ("clip.mp4", clip.read_bytes(), "video/mp4")}, headers=b)
        assert r.status_code == 201, r.text  # key B is not held back by key A
        busy.received()
        busy.grow(size)  # key A holds one upload's bytes (not decoded yet)
        r = c.post("/v1/sessions", content=clip.read_bytes(), headers={**a, **raw})
        assert r.status_code == 429 and "holds" in r.json()["error"]["message"]
        data = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()
        chat = {"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": data}},
                                                          {"type": "text", "text": "q"}]}], "max_tokens": 2}
        assert c.post("/v1/chat/completions", json=chat, headers=a).status_code == 429  # data: URLs count too
        busy.release()
        assert uploads.usage(owner_a) == (0, 0)
        r = c.post("/v1/sessions", content=clip.read_bytes() * 2, headers={**a, **raw})
        assert r.status_code == 413 and "this key's limit" in r.json()["error"]["message"]
        r = c.post("/v1/sessions", content=clip.read_bytes(), headers={**a, **raw})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        wait_for(lambda: c.get(f"/v1/sessions/{sid}", headers=a).json()["status"] == "ended")
        assert uploads.usage(owner_a) == (0, 0)  # decoded: the file is gone and its bytes released
        assert c.post("/v1/chat/completions", json=chat, headers=a).status_code == 200
        assert uploads.usage(owner_a) == (0, 0)
        r = c.post("/v1/sessions?settings=%5B1%5D", content=clip.read_bytes(), headers={**a, **raw})
        assert r.status_code == 400 and uploads.usage(owner_a) == (0, 0)  # a refused upload gives its bytes back


def test_bodies_messages_and_data_urls_are_bounded_before_use(model):
    cfg = config(max_upload_bytes=1000, max_frame_pixels=64 * 64, max_push_rate=5)
    with TestClient(create_app(cfg, model)) as c:
        def chunked():
            for _ in range(40):
                yield b" " * 65536

        r = c.post("/v1/sessions", content=chunked(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "JSON body over" in r.json()["error"]["message"]  # no Content-Length
        payload = "A" * 4000
        chat = {"messages": [{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": "data:video/mp4;base64," + payload}},
            {"type": "text", "text": "q"}]}]}
        r = c.post("/v1/chat/completions", json=chat)
        assert r.status_code == 413 and "1000 bytes" in r.json()["error"]["message"]
        chat["messages"][0]["content"][0]["video_url"]["url"] = "data:video/mp4;base64,@@@@"
        assert c.post("/v1/chat/completions", json=chat).status_code == 400
        assert c.app.state.uploads.usage("local") == (0, 0)
        assert cfg.max_push_bytes == 1000
        sid = c.post("/v1/sessions", json={"push": True}).json()["id"]
        with c.websocket_connect(f"/v1/sessions/{sid}/push") as ws:
            ws.send_bytes(frame(0.0, (64, 64)))  # 12 KiB: over the 1000-byte message limit
            with pytest.raises(WebSocketDisconnect) as exc:
                ws.receive_text()
            assert exc.value.code == 1003 and "over the limit" in exc.value.reason
        sid = c.post("/v1/sessions", json={"push": True}).json()["id"]
        with c.websocket_connect(f"/v1/sessions/{sid}/push") as ws:
            for i in range(12):
                ws.send_text(json.dumps({"type": "stats"}))
            with pytest.raises(WebSocketDisconnect) as exc:
                for _ in range(12):
                    ws.receive_text()
            assert exc.value.code == 1008 and "messages per second" in exc.value.reason


def test_rate_limit_bucket():
    now = [0.0]
    r = RateLimit(4, clock=lambda: now[0])
    assert [r.allow() for _ in range(5)] == [True] * 4 + [False]
    now[0] += 0.5
    assert [r.allow() for _ in range(3)] == [True, True, False]
    now[0] += 100
    assert sum(r.allow() for _ in range(10)) == 4  # bursts stay one second's worth


def test_keyring_compares_digests():
    ring = KeyRing([KEY_A, KEY_B])
    assert ring.owner(KEY_A) != ring.owner(KEY_B) and ring.owner(KEY_A).startswith("key-")
    for wrong in (KEY_A[:-1], KEY_A + "x", "", "\udcff" * 3, "é" * 40, KEY_A.upper()):
        assert ring.owner(wrong) is None
    assert KeyRing([]).owner(None) == "local"


SEEN: list[str] = []  # paths the redirecting server was asked for


class _Redirect(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        SEEN.append(self.path)
        if self.path == "/live.ts":
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.server.server_port}/target.ts")
            self.end_headers()
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args):
        pass


def test_live_http_sources_do_not_follow_redirects(model):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/live.ts"
        with TestClient(create_app(config(allow_hosts=["127.0.0.1"], source_timeout=5), model)) as c:
            r = c.post("/v1/sessions", json={"source": url, "live": True})
            assert r.status_code == 422, r.text  # the redirect is not followed (the target is never read)
        assert SEEN == ["/live.ts"]
    finally:
        server.shutdown()


def test_snapshot_export_import_is_the_public_move_api(model, clip, tmp_path):
    session = StreamSession(model, **SMALL)
    session.feed_file(clip)
    gen = snapshots.write_snapshot(tmp_path / "a", "sid-1", session, {"owner": "local"})
    archive = snapshots.export_generation(gen)
    moved = snapshots.import_generation(tmp_path / "b", "sid-1", archive)
    assert moved.name == "gen-0000000001" and snapshots.read_served(moved)["owner"] == "local"
    assert StreamSession.load(moved / "session", model).stats().frames == session.stats().frames
    assert snapshots.import_generation(tmp_path / "b", "sid-1", archive).name == "gen-0000000002"
    for bad in ("../x", "a/b", "", "x" * 65):
        assert not snapshots.valid_id(bad)
        with pytest.raises(ValueError, match="bad session id"):
            snapshots.import_generation(tmp_path / "b", bad, archive)


def _crafted(*members: tuple[str, bytes, str]) -> bytes:
    """An uncompressed tar of ``(name, kind, data)`` members: kind file, dir, symlink, hardlink, chardev, fifo."""
    kinds = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
             "hardlink": tarfile.LNKTYPE, "chardev": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = kinds[kind]
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.linkname = data.decode()
                tar.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize("members, words", [
    ((("gen", "dir", b""), ("../escaped", "file", b"x")), "not a relative name"),
    ((("gen", "dir", b""), ("/tmp/escaped", "file", b"x")), "not a relative name"),
    ((("gen", "dir", b""), ("gen/../../escaped", "file", b"x")), "not a relative name"),
    ((("gen", "dir", b""), ("other/f", "file", b"x")), "not a relative name"),
    ((("gen", "dir", b""), ("gen/link", "symlink", b"/etc/passwd")), "not a regular file"),
    ((("gen", "dir", b""), ("gen/f", "file", b"x"), ("gen/hard", "hardlink", b"gen/f")), "not a regular file"),
    ((("gen", "dir", b""), ("gen/tty", "chardev", b"")), "not a regular file"),
    ((("gen", "dir", b""), ("gen/pipe", "fifo", b"")), "not a regular file"),
    ((("gen", "dir", b""), ("gen/f", "file", b"x"), ("gen/f", "file", b"y")), "twice"),
    ((("gen/served.json", "file", b"{}"),), None),  # accepted: a file without its folder's own entry
])
def test_snapshot_import_checks_every_member(tmp_path, members, words):
    archive = _crafted(*members)
    if words is None:
        assert (snapshots.import_generation(tmp_path / "c", "sid-2", archive) / "served.json").read_bytes() == b"{}"
        return
    with pytest.raises(ValueError, match=words):
        snapshots.import_generation(tmp_path / "c", "sid-2", archive)
    assert not (tmp_path / "c" / "escaped").exists() and not (tmp_path / "escaped").exists()
    assert list((tmp_path / "c" / "sid-2").iterdir()) == []  # nothing left behind


def test_snapshot_import_refuses_compressed_and_oversized_archives(tmp_path):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:  # a compressed archive could expand without bound
        info = tarfile.TarInfo("gen/f")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(tarfile.TarError):
        snapshots.import_generation(tmp_path, "sid-3", raw.getvalue())
    big = tarfile.TarInfo("gen/f")
    big.size = 1 << 30  # a header claiming more bytes than the archive holds
    archive = big.tobuf(tarfile.USTAR_FORMAT) + bytes(1024)
    with pytest.raises((ValueError, tarfile.TarError)):
        snapshots.import_generation(tmp_path, "sid-3", archive)
    assert list((tmp_path / "sid-3").iterdir()) == []
