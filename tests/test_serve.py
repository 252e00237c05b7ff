"""avmem serve through FastAPI's TestClient (in process, tiny model): sessions from uploads and pushed frames,
asks (JSON, SSE, OpenAI format), stats, metrics, snapshots, auth, validation and the URL policy."""

from __future__ import annotations

import base64
import fractions
import json
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[dev]'")
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from avmem.serve import ServeConfig, create_app
from avmem.serve.manager import NotFound
from avmem.serve.policy import PolicyError, check_container, check_source
from avmem.serve.push import encode_message, image_size, parse_message

from .serve_common import KEY_A, KEY_B, SMALL, clip, config, model, wait_for  # noqa: F401 (fixtures)



def upload(c: TestClient, clip, headers=None) -> str:
    r = c.post("/v1/sessions", files={"file": ("clip.mp4", clip.read_bytes(), "video/mp4")}, headers=headers)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    wait_for(lambda: c.get(f"/v1/sessions/{sid}", headers=headers).json()["status"] == "ended")
    return sid


def frame_message(t: float, value: int, size=(64, 96)) -> bytes:
    h, w = size
    img = np.full((h, w, 3), value, np.uint8)
    return encode_message({"type": "frame", "t": t, "format": "rgb24", "width": w, "height": h}, img.tobytes())


def encode_image(image: np.ndarray, fmt: str) -> bytes:
    """PNG or JPEG bytes of an RGB uint8 image (FFmpeg's encoders, through PyAV)."""
    import av

    h, w = image.shape[:2]
    codec = av.CodecContext.create("png" if fmt == "png" else "mjpeg", "w")
    codec.width, codec.height = w, h
    codec.pix_fmt = "rgb24" if fmt == "png" else "yuvj444p"
    codec.time_base = fractions.Fraction(1, 1)
    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
    if fmt != "png":
        frame = frame.reformat(format="yuvj444p")
    return b"".join(bytes(p) for p in codec.encode(frame) + codec.encode(None))


def end_push(ws) -> dict:
    """Say the push is over; the server's reply (after the last frame is queued) carries the session's stats."""
    ws.send_text(json.dumps({"type": "end"}))
    reply = json.loads(ws.receive_text())
    assert reply["type"] == "ended"
    return reply


def parse_metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@pytest.fixture(scope="module")
def client(model):
    with TestClient(create_app(config(), model)) as c:
        yield c


def test_upload_ask_json_and_sse_and_stats(client, clip):
    sid = upload(client, clip)
    answer = client.post(f"/v1/sessions/{sid}/ask", json={"question": "What colour is it?"}).json()
    assert answer["answer"] and answer["finish_reason"] in ("stop", "length") and answer["tokens"] <= 6
    with client.stream("POST", f"/v1/sessions/{sid}/ask", json={"question": "What colour is it?", "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    tokens = [json.loads(line[6:])["token"] for line in lines[:-2]]
    assert lines[-2] == "event: done" and json.loads(lines[-1][6:])["answer"] == answer["answer"]
    assert "".join(tokens) == answer["answer"]  # the same stream so far, asked twice: the same answer
    st = client.get(f"/v1/sessions/{sid}").json()
    assert st["frames"] == 4 and st["status"] == "ended" and st["drops"] == 0 and st["queue_depth"] == 0
    assert st["video_tokens_held"] > 0 and st["memory_bytes"] > 0 and st["questions"] == 2
    assert sid in [s["id"] for s in client.get("/v1/sessions").json()["sessions"]]
    assert client.delete(f"/v1/sessions/{sid}").json()["deleted"]
    assert client.get(f"/v1/sessions/{sid}").status_code == 404


def test_push_over_websocket_then_ask(client):
    sid = client.post("/v1/sessions", json={"push": True, "settings": {"use_audio": True}}).json()["id"]
    with client.websocket_connect(f"/v1/sessions/{sid}/push") as ws:
        for i in range(6):
            ws.send_bytes(frame_message(float(i), 40 * i))
            audio = (0.1 * np.sin(np.arange(16000) / 10)).astype(np.float32)
            ws.send_bytes(encode_message({"type": "audio", "t": float(i), "format": "f32le", "rate": 16000,
                                          "channels": 1}, audio.tobytes()))
        ws.send_text(json.dumps({"type": "stats"}))
        assert json.loads(ws.receive_text())["status"] == "streaming"
        assert end_push(ws)["stream_seconds"] == 6
    wait_for(lambda: client.get(f"/v1/sessions/{sid}").json()["frames"] == 6)
    st = client.get(f"/v1/sessions/{sid}").json()
    assert st["status"] == "waiting" and st["audio_seconds"] > 0
    assert client.post(f"/v1/sessions/{sid}/ask", json={"question": "What?"}).json()["answer"]
    with client.websocket_connect(f"/v1/sessions/{sid}/push") as ws:  # a reconnect continues the stream's clock
        ws.send_bytes(frame_message(0.0, 200))
        end_push(ws)
    wait_for(lambda: client.get(f"/v1/sessions/{sid}").json()["frames"] == 7)
    assert client.get(f"/v1/sessions/{sid}").json()["stream_seconds"] > 6
    client.delete(f"/v1/sessions/{sid}")


def test_websocket_push_refuses_bad_messages(client):
    sid = client.post("/v1/sessions", json={"push": True}).json()["id"]
    bad = [b"\x00\x00", encode_message({"type": "frame", "t": 0, "format": "rgb24", "width": 96, "height": 64}, b"x"),
           encode_message({"type": "frame", "t": 0, "format": "rgb24", "width": 10**4, "height": 10**4}, b""),
           encode_message({"type": "frame", "t": -1, "format": "rgb24", "width": 2, "height": 2}, bytes(12)),
           encode_message({"type": "pickle"}, b"")]
    for message in bad:
        with client.websocket_connect(f"/v1/sessions/{sid}/push") as ws:
            ws.send_bytes(message)
            with pytest.raises(WebSocketDisconnect) as info:
                ws.receive_text()
            assert info.value.code == 1003
    with pytest.raises(WebSocketDisconnect):
        with client.websocket_connect("/v1/sessions/nope/push") as ws:
            ws.receive_text()
    client.delete(f"/v1/sessions/{sid}")


def test_push_message_format_checks_sizes_before_decoding():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (3, 2, 3), dtype=np.uint8)
    png = encode_image(image, "png")
    assert image_size(png, "png") == (3, 2)
    item = parse_message(encode_message({"type": "frame", "t": 1.5, "format": "png"}, png), max_bytes=10**6,
                         max_pixels=100)
    assert item.t == 1.5 and np.array_equal(item.image, image)  # lossless
    jpeg = encode_image(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8), "jpeg")
    assert image_size(jpeg, "jpeg") == (16, 24)
    item = parse_message(encode_message({"type": "frame", "t": 0, "format": "jpeg"}, jpeg), max_bytes=10**6,
                         max_pixels=1000)
    assert item.image.shape == (16, 24, 3)
    bomb = bytearray(jpeg)  # a header claiming 60000 x 60000: refused before any decoding
    at = bytes(bomb).index(b"\xff\xc0")
    bomb[at + 5:at + 9] = (60000).to_bytes(2, "big") * 2
    with pytest.raises(ValueError, match="over"):
        parse_message(encode_message({"type": "frame", "t": 0, "format": "jpeg"}, bytes(bomb)), max_bytes=10**6,
                      max_pixels=3840 * 2160)
    with pytest.raises(ValueError, match="over"):
        parse_message(encode_message({"type": "frame", "t": 0, "format": "png"}, png), max_bytes=10**6, max_pixels=5)
    with pytest.raises(ValueError, match="over the limit"):
        parse_message(bytes(100), max_bytes=50, max_pixels=100)
    pcm = np.arange(8, dtype="<i2").tobytes()
    item = parse_message(encode_message({"type": "audio", "t": 0, "format": "s16le", "rate": 8000, "channels": 2},
                                        pcm), max_bytes=10**6, max_pixels=100)
    assert item.samples.shape == (4, 2) and item.samples.dtype == np.int16


def test_openai_models_and_chat_completions(client, clip):
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "tiny-qwen3-vl"
    data = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()
    messages = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": data}},
                                             {"type": "text", "text": "What colour is it?"}]}]
    r = client.post("/v1/chat/completions", json={"model": "tiny-qwen3-vl", "messages": messages, "max_tokens": 5})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "chat.completion" and out["choices"][0]["message"]["role"] == "assistant"
    assert out["usage"]["completion_tokens"] <= 5 and out["choices"][0]["finish_reason"] in ("stop", "length")
    assert client.get("/v1/sessions").json()["sessions"] == []  # the video's session was ephemeral
    sid = upload(client, clip)
    want = client.post(f"/v1/sessions/{sid}/ask", json={"question": "Hi?", "max_new_tokens": 5}).json()["answer"]
    body = {"model": "m", "stream": True, "max_tokens": 5, "avmem_session": sid,
            "messages": [{"role": "user", "content": "Hi?"}]}
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == want
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    for bad, status in [({"messages": [{"role": "user", "content": "no video"}]}, 400),
                        ({"messages": []}, 400),
                        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400),
                        ({"avmem_session": "nope", "messages": [{"role": "user", "content": "q"}]}, 404),
                        ({"messages": [{"role": "user", "content": [
                            {"type": "video_url", "video_url": {"url": "file:///etc/passwd"}},
                            {"type": "text", "text": "q"}]}]}, 403)]:
        r = client.post("/v1/chat/completions", json=bad)
        assert r.status_code == status, (bad, r.text)
        assert r.json()["error"]["message"]
    client.delete(f"/v1/sessions/{sid}")


def test_refused_streamed_chat_closes_its_video_session(client, clip):
    data = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()
    body = {"stream": True, "max_tokens": 10**6, "messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": data}}, {"type": "text", "text": "q"}]}]}
    manager = client.app.state.manager
    before = {sid for sid, e in manager._sessions.items() if not e.closed}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400 and "max_new_tokens" in r.json()["error"]["message"]
    assert {sid for sid, e in manager._sessions.items() if not e.closed} == before  # the ephemeral one is closed
    assert client.app.state.uploads.usage("local") == (0, 0)


def test_bad_default_session_settings_are_refused_at_start(model):
    with pytest.raises(ValueError, match="default session settings: chunk_frames must be even"):
        create_app(ServeConfig(model="tiny-qwen3-vl", session_defaults={"chunk_frames": 3}), model)


def test_metrics_in_prometheus_format(client, clip):
    sid = upload(client, clip)
    client.post(f"/v1/sessions/{sid}/ask", json={"question": "Q?"})
    text = client.get("/metrics").text
    values = parse_metrics(text)
    assert values["avmem_sessions"] >= 1
    assert values[f'avmem_session_frames_total{{session="{sid}"}}'] == 4
    assert values[f'avmem_session_dropped_frames_total{{session="{sid}"}}'] == 0
    assert values[f'avmem_session_memory_bytes{{session="{sid}"}}'] > 0
    assert f'avmem_session_frames_per_second{{session="{sid}"}}' in values
    assert values['avmem_ask_latency_seconds_bucket{le="+Inf"}'] == values["avmem_ask_latency_seconds_count"] >= 1
    assert "# TYPE avmem_ask_latency_seconds histogram" in text and "avmem_queue_depth" in values
    assert values["avmem_egress_refused_total"] == 0 and "# TYPE avmem_egress_allowed_total counter" in text
    client.delete(f"/v1/sessions/{sid}")


def test_validation_errors_are_clear_4xx(client, clip):
    sid = client.post("/v1/sessions", json={"push": True}).json()["id"]
    cases = [
        (client.post("/v1/sessions", content=b"{not json", headers={"content-type": "application/json"}), 400, "JSON"),
        (client.post("/v1/sessions", json=[1]), 400, "object"),
        (client.post("/v1/sessions", json={}), 400, "'source' is required"),
        (client.post("/v1/sessions", json={"source": 5}), 400, "must be str"),
        (client.post("/v1/sessions", json={"push": True, "settings": {"bogus": 1}}), 400, "unknown session settings"),
        (client.post("/v1/sessions", json={"push": True, "settings": {"fps": 0}}), 400, "fps"),
        (client.post("/v1/sessions", json={"push": True, "settings": {"max_new_tokens": 10**6}}), 400, "max_new"),
        (client.post("/v1/sessions", content=b"hello", headers={"content-type": "text/plain"}), 415, "send JSON"),
        (client.post("/v1/sessions", files={"file": ("x.m3u8", b"#EXTM3U\nfile:///etc/passwd\n")}), 415, "container"),
        (client.post("/v1/sessions", content=b"ffconcat version 1.0\nfile /etc/passwd\n",
                     headers={"content-type": "application/octet-stream"}), 415, "container"),
        (client.post(f"/v1/sessions/{sid}/ask", json={}), 400, "'question' is required"),
        (client.post(f"/v1/sessions/{sid}/ask", json={"question": " "}), 400, "non-empty"),
        (client.post(f"/v1/sessions/{sid}/ask", json={"question": "q", "max_new_tokens": 0}), 400, "max_new_tokens"),
        (client.post(f"/v1/sessions/{sid}/ask", json={"question": "q", "stream": "yes"}), 400, "bool"),
        (client.post(f"/v1/sessions/{sid}/ask", json={"question": "q"}), 400, "nothing has been fed"),
        (client.post(f"/v1/sessions/{sid}/ask", json={"question": "q", "stream": True}), 400, "nothing has been fed"),
        (client.post("/v1/sessions/nope/ask", json={"question": "q"}), 404, "no session"),
        (client.post(f"/v1/sessions/{sid}/snapshot"), 409, "snapshot-dir"),
    ]
    for r, status, words in cases:
        assert r.status_code == status, (words, r.text)
        assert words in r.json()["error"]["message"]
    client.delete(f"/v1/sessions/{sid}")


def test_upload_limit(model, clip):
    with TestClient(create_app(config(max_upload_bytes=1000), model)) as c:
        r = c.post("/v1/sessions", files={"file": ("clip.mp4", clip.read_bytes(), "video/mp4")})
        assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
        r = c.post("/v1/sessions", content=clip.read_bytes(), headers={"content-type": "video/mp4"})
        assert r.status_code == 413


def test_api_keys_and_per_key_limits(model, tmp_path):
    cfg = config(api_keys=[KEY_A, KEY_B], max_sessions_per_key=1, max_sessions=2)
    a, b = {"Authorization": f"Bearer {KEY_A}"}, {"X-API-Key": KEY_B}
    with TestClient(create_app(cfg, model)) as c:
        assert c.get("/health").status_code == 200
        for path in ("/v1/models", "/v1/sessions", "/metrics"):
            assert c.get(path).status_code == 401
            assert c.get(path, headers={"Authorization": "Bearer " + KEY_A[:-1] + "x"}).status_code == 401
        r = c.post("/v1/sessions", json={"push": True})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        sid = c.post("/v1/sessions", json={"push": True}, headers=a).json()["id"]
        r = c.post("/v1/sessions", json={"push": True}, headers=a)
        assert r.status_code == 429 and "this key" in r.json()["error"]["message"]
        assert c.get(f"/v1/sessions/{sid}", headers=b).status_code == 404  # not B's session
        assert c.get("/v1/sessions", headers=b).json()["sessions"] == []
        assert c.post("/v1/sessions", json={"push": True}, headers=b).status_code == 201
        with pytest.raises(WebSocketDisconnect):
            with c.websocket_connect(f"/v1/sessions/{sid}/push") as ws:
                ws.receive_text()
        with c.websocket_connect(f"/v1/sessions/{sid}/push?api_key={KEY_A}") as ws:
            ws.send_bytes(frame_message(0.0, 1))
            assert end_push(ws)["stream_seconds"] == 1


def test_binding_without_keys_is_loopback_only(tmp_path):
    from typer.testing import CliRunner

    from avmem.cli import app

    with pytest.raises(ValueError, match="without API keys"):
        ServeConfig(host="0.0.0.0").check()
    ServeConfig(host="::1").check()
    r = CliRunner().invoke(app, ["serve", "--model", "tiny-qwen3-vl", "--host", "0.0.0.0"])
    assert r.exit_code == 2 and "avmem: error: refusing to listen on 0.0.0.0 without API keys" in r.output
    keys = tmp_path / "keys"
    keys.write_text("short\n")
    r = CliRunner().invoke(app, ["serve", "--model", "tiny-qwen3-vl", "--api-key-file", str(keys)])
    assert r.exit_code == 2 and "at least 16 characters" in r.output
    r = CliRunner().invoke(app, ["serve", "--model", "tiny-qwen3-vl", "--replicas", "3"])  # ignored without --ray
    assert r.exit_code == 2 and "avmem: error: --replicas needs --ray" in r.output


@pytest.mark.parametrize("source, words", [
    ("file:///etc/passwd", "scheme file:"), ("concat:/a.mp4|/b.mp4", "scheme concat:"),
    ("subfile:,start,0,end,0,:/etc/passwd", "scheme subfile:"), ("gopher://example.com/x", "scheme gopher:"),
    ("http://127.0.0.1:8000/x.mp4", "non-public"), ("http://localhost/x.mp4", "non-public"),
    ("http://10.1.2.3/x.mp4", "non-public"), ("http://192.168.0.1/x.mp4", "non-public"),
    ("http://169.254.169.254/latest/meta-data", "non-public"), ("http://[::1]/x.mp4", "non-public"),
    ("http://[::ffff:127.0.0.1]/x.mp4", "non-public"), ("http://0.0.0.0/x.mp4", "non-public"),
    ("rtsp://100.64.0.1/cam", "non-public"), ("/etc/passwd", "local files"), ("http:///x", "no host"),
    ("http://a b/x", "spaces"),
])
def test_url_policy_refuses(source, words):
    with pytest.raises(PolicyError, match=words):
        check_source(source, ServeConfig())


def test_url_policy_allows():
    assert check_source("http://127.0.0.1:9/x.mp4", ServeConfig(allow_hosts=["127.0.0.1"]))[1]
    assert check_source("http://127.0.0.5/x.mp4", ServeConfig(allow_hosts=["127.0.0.0/8"]))[1]
    assert check_source("rtsp://93.184.216.34/cam", ServeConfig())[1]  # a public address literal
    with pytest.raises(PolicyError, match="no such file"):
        check_source("/no/such/file.mp4", ServeConfig(allow_local_files=True))
    check_container(b"\x00\x00\x00\x18ftypisom")
    with pytest.raises(PolicyError):
        check_container(b"#EXTM3U\n")


def test_snapshots_restore_after_restart_and_skip_corrupt_ones(model, clip, tmp_path):
    snaps = tmp_path / "snaps"
    cfg = config(snapshot_dir=str(snaps), snapshot_every=0)
    with TestClient(create_app(cfg, model)) as c:
        sid = upload(c, clip)
        push_id = c.post("/v1/sessions", json={"push": True}).json()["id"]
        with c.websocket_connect(f"/v1/sessions/{push_id}/push") as ws:
            for i in range(3):
                ws.send_bytes(frame_message(float(i), 60 * i))
            end_push(ws)
        wait_for(lambda: c.get(f"/v1/sessions/{push_id}").json()["frames"] == 3)
        before = c.post(f"/v1/sessions/{sid}/ask", json={"question": "What colour?"}).json()["answer"]
        before_push = c.post(f"/v1/sessions/{push_id}/ask", json={"question": "What colour?"}).json()["answer"]
        assert c.post(f"/v1/sessions/{sid}/snapshot").json()["snapshot"] == "gen-0000000001"
    # shutdown wrote one more generation of each and removed the older one
    assert sorted(p.name for p in (snaps / sid).iterdir()) == ["gen-0000000002"]
    (snaps / "corrupt" / "gen-0000000001").mkdir(parents=True)
    (snaps / "corrupt" / "gen-0000000001" / "served.json").write_text("{broken")
    foreign = snaps / "foreign" / "gen-0000000001"
    shutil.copytree(snaps / sid / "gen-0000000002", foreign)
    for f in foreign.rglob("session*"):
        if f.is_file():
            f.write_bytes(b"not a session")
    (snaps / sid / ".tmp-crashed").mkdir()  # an interrupted write
    app = create_app(cfg, model)
    with TestClient(app) as c:
        errors = app.state.manager.restore_errors
        assert len(errors) == 2 and all("\n" not in e and "skipping snapshot" in e for e in errors)
        listed = {s["id"]: s for s in c.get("/v1/sessions").json()["sessions"]}
        assert set(listed) == {sid, push_id}
        assert listed[sid]["status"] == "detached" and listed[sid]["frames"] == 4
        assert c.post(f"/v1/sessions/{sid}/ask", json={"question": "What colour?"}).json()["answer"] == before
        assert c.post(f"/v1/sessions/{push_id}/ask", json={"question": "What colour?"}).json()["answer"] == before_push
        with c.websocket_connect(f"/v1/sessions/{push_id}/push") as ws:  # pushing continues after the restore
            ws.send_bytes(frame_message(0.0, 250))
            end_push(ws)
        wait_for(lambda: c.get(f"/v1/sessions/{push_id}").json()["frames"] == 4)
        c.delete(f"/v1/sessions/{sid}")
    assert not (snaps / sid).exists() and not (snaps / sid / ".tmp-crashed").exists()


def test_close_during_a_snapshot_does_not_bring_the_session_back(model, tmp_path):
    cfg = config(snapshot_dir=str(tmp_path), snapshot_every=0)
    app = create_app(cfg, model)
    manager = app.state.manager
    with TestClient(app) as c:
        sid = c.post("/v1/sessions", json={"push": True}).json()["id"]
        with c.websocket_connect(f"/v1/sessions/{sid}/push") as ws:
            ws.send_bytes(frame_message(0.0, 90))
            end_push(ws)
        entry = manager.get(sid, None)
        entered, release = threading.Event(), threading.Event()
        save = entry.session.save

        def slow_save(path):  # the worker is inside write_snapshot when the client closes the session
            entered.set()
            assert release.wait(30)
            return save(path)

        entry.session.save = slow_save
        writing = manager.call(lambda: manager.snapshot_now(entry))
        assert entered.wait(30)
        closer = threading.Thread(target=manager.close, args=(sid, None))
        closer.start()
        wait_for(lambda: entry.closed)
        assert closer.is_alive()  # the folder's removal waits behind the snapshot being written
        release.set()
        writing.result(timeout=30)
        closer.join(timeout=30)
        assert not closer.is_alive() and not (tmp_path / sid).exists()
        with pytest.raises(NotFound):  # a snapshot of a closed session is refused
            manager.call(lambda: manager.snapshot_now(entry)).result(timeout=30)
        assert c.delete(f"/v1/sessions/{sid}").status_code == 404
    assert not (tmp_path / sid).exists()
    with TestClient(create_app(cfg, model)) as c:
        assert c.get("/v1/sessions").json()["sessions"] == []


def test_delete_of_a_session_closed_after_its_lookup_is_404(model):
    app = create_app(config(), model)
    manager = app.state.manager
    close = manager.close

    def close_twice(sid, owner):  # another request closes the session between DELETE's lookup and its close
        close(sid, owner)
        close(sid, owner)

    with TestClient(app) as c:
        sid = c.post("/v1/sessions", json={"push": True}).json()["id"]
        manager.close = close_twice
        r = c.delete(f"/v1/sessions/{sid}")
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_uploads_wait_in_a_server_owned_folder_cleared_at_start(model, clip, tmp_path):
    snaps = tmp_path / "snaps"
    (snaps / ".uploads").mkdir(parents=True)
    (snaps / ".uploads" / "avmem-upload-stale.media").write_bytes(b"left by kill -9")
    app = create_app(config(snapshot_dir=str(snaps), snapshot_every=0), model)
    with TestClient(app) as c:
        assert list((snaps / ".uploads").iterdir()) == []
        r = c.post("/v1/sessions?live=true", files={"file": ("clip.mp4", clip.read_bytes(), "video/mp4")})
        assert r.status_code == 201, r.text
        held = app.state.manager.get(r.json()["id"], None).temp_file  # replayed in real time: still decoding
        assert held is not None and Path(held).parent == snaps / ".uploads"
        c.delete(f"/v1/sessions/{r.json()['id']}")
        assert list((snaps / ".uploads").iterdir()) == []
        assert c.get("/v1/sessions").json()["sessions"] == []  # the folder is never read as a session


def test_private_upload_folder_is_removed_at_stop_and_stale_ones_at_start(model, clip, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = tmp_path / f"avmem-uploads-{gone.pid}-x1"
    alive = tmp_path / f"avmem-uploads-{os.getppid()}-x2"  # another server still running
    for folder in (stale, alive):
        folder.mkdir()
        (folder / "avmem-upload-a.media").write_bytes(b"x")
    app = create_app(config(), model)
    with TestClient(app) as c:
        own = app.state.manager.upload_folder()
        assert not stale.exists() and alive.exists()
        assert own.parent == tmp_path and own.name.startswith(f"avmem-uploads-{os.getpid()}-")
        upload(c, clip)
        assert list(own.iterdir()) == []  # decoded: deleted
    assert not own.exists()


def test_periodic_snapshots(model, tmp_path):
    with TestClient(create_app(config(snapshot_dir=str(tmp_path), snapshot_every=0.2), model)) as c:
        sid = c.post("/v1/sessions", json={"push": True}).json()["id"]
        with c.websocket_connect(f"/v1/sessions/{sid}/push") as ws:
            ws.send_bytes(frame_message(0.0, 9))
            end_push(ws)
        first = wait_for(lambda: sorted((tmp_path / sid).glob("gen-*")))[-1].name
        wait_for(lambda: sorted((tmp_path / sid).glob("gen-*"))[-1].name > first)  # and again
        assert len(list((tmp_path / sid).glob("gen-*"))) <= 2  # older generations are removed


def test_slow_live_session_drops_frames_and_stays_bounded(model):
    app = create_app(config(ingest_queue=2), model)
    manager = app.state.manager
    with TestClient(app) as c:
        sid = c.post("/v1/sessions", json={"push": True, "settings": {"use_audio": False}}).json()["id"]
        gate = threading.Event()
        blocked = manager.call(gate.wait)  # the model worker is busy: nothing is absorbed meanwhile
        entry = manager.get(sid, None)
        with c.websocket_connect(f"/v1/sessions/{sid}/push") as ws:
            for i in range(12):
                ws.send_bytes(frame_message(float(i), 20 * i))
            wait_for(lambda: entry.drops >= 8)
            assert len(entry.queue) <= 2
            end_push(ws)
            assert len(entry.queue) <= 2
        gate.set()
        blocked.result(timeout=10)
        st = wait_for(lambda: (s := c.get(f"/v1/sessions/{sid}").json())["queue_depth"] == 0
                      and s["status"] == "waiting" and s)
        assert st["drops"] > 0 and st["frames"] + st["drops"] == 12
        assert parse_metrics(c.get("/metrics").text)[f'avmem_session_dropped_frames_total{{session="{sid}"}}'] == \
            st["drops"]


def test_manager_stops_generation_when_the_client_goes(model, clip):
    app = create_app(config(), model)
    manager = app.state.manager
    with TestClient(app) as c:
        sid = upload(c, clip)
        entry = manager.get(sid, None)
        got = []
        result = manager.call(manager.ask_job(entry, "Tell me everything.", 6, lambda p: got.append(p) and False))
        out = result.result(timeout=30)
        assert out["finish_reason"] == "cancelled" and len(got) == 1 and out["tokens"] < 6


def test_plain_answer_stops_when_its_client_disconnects(model, clip):
    import asyncio

    app = create_app(config(), model)
    manager = app.state.manager
    with TestClient(app) as c:
        sid = upload(c, clip)
        gate = threading.Event()
        blocked = manager.call(gate.wait)  # the question waits behind this job
        body = json.dumps({"question": "Tell me everything.", "max_new_tokens": 6}).encode()
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": f"/v1/sessions/{sid}/ask", "raw_path": f"/v1/sessions/{sid}/ask".encode(),
                 "query_string": b"", "root_path": "", "headers": [(b"content-type", b"application/json")],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        sent: list[dict] = []
        calls = 0

        async def receive():
            nonlocal calls
            calls += 1
            if calls == 1:
                return {"type": "http.request", "body": body, "more_body": False}
            # the server sees the disconnect in this step of its task; the worker runs the question after it
            asyncio.get_running_loop().call_soon(gate.set)
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        asyncio.run(asyncio.wait_for(app(scope, receive, send), 60))
        blocked.result(timeout=10)
        assert gate.is_set()
        result = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
        assert result["finish_reason"] == "cancelled" and result["tokens"] < 6
