"""The egress proxy of ``avmem serve`` (loopback only, bounded): FFmpeg reaches http(s) and HLS sources only through
it, every connection (redirects and playlist segments included) is checked against the source policy and made to
the address that was checked. 127.0.0.1 is allowed (``--allow-hosts``), 127.0.0.2 (also loopback) is not."""

from __future__ import annotations

import base64
import http.server
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[dev]'")
import av
from fastapi.testclient import TestClient

from avmem.serve import ServeConfig, create_app
from avmem.serve.egress import EgressProxy
from avmem.synth import write_test_pattern_clip

from .serve_common import SMALL, model  # noqa: F401 (fixtures)

ALLOWED, REFUSED = "127.0.0.1", "127.0.0.2"


@pytest.fixture(scope="module")
def www(tmp_path_factory):
    """A folder with clip.mp4 (2 s) and seg.ts (the same video remuxed to MPEG-TS, for HLS playlists)."""
    folder = tmp_path_factory.mktemp("www")
    clip = write_test_pattern_clip(folder / "clip.mp4", seconds=2, fps=10, size=(64, 96))
    with av.open(str(clip)) as src, av.open(str(folder / "seg.ts"), "w", format="mpegts") as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)
    return folder


class Server:
    """A loopback HTTP server over a folder (optionally TLS) that records the paths asked and can redirect."""

    def __init__(self, host: str, folder, redirects: dict[str, str] | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.seen: list[str] = []
        seen, redirects = self.seen, redirects or {}

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kw):
                super().__init__(*args, directory=str(folder), **kw)

            def do_GET(self):
                seen.append(self.path)
                if self.path in redirects:
                    self.send_response(302)
                    self.send_header("Location", redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        class Quiet(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # FFmpeg closing a connection early (a probe) is not an error here

        self.httpd = Quiet((host, 0), Handler)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_port
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://{self.httpd.server_address[0]}:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers(www):
    """(allowed server, refused server) over the same folder."""
    refused = Server(REFUSED, www)
    allowed = Server(ALLOWED, www)
    yield allowed, refused
    allowed.close()
    refused.close()


def config(**kw) -> ServeConfig:
    return ServeConfig(model="tiny-qwen3-vl", session_defaults=dict(SMALL), allow_hosts=[ALLOWED], source_timeout=5,
                       **kw)


def wait_status(c: TestClient, sid: str, done=("ended", "failed"), timeout: float = 60.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = c.get(f"/v1/sessions/{sid}").json()
        if st["status"] in done:
            return st
        time.sleep(0.05)
    raise AssertionError(f"session {sid} still {st['status']}")


def test_recording_redirect_to_a_refused_address_is_never_followed(model, www, servers):
    allowed, refused = servers
    allowed_redirects = Server(ALLOWED, www, redirects={"/r.mp4": refused.url("/clip.mp4"),
                                                        "/ok.mp4": allowed.url("/clip.mp4")})
    try:
        with TestClient(create_app(config(), model)) as c:
            r = c.post("/v1/sessions", json={"source": allowed_redirects.url("/r.mp4")})
            assert r.status_code == 403, r.text
            message = r.json()["error"]["message"]
            assert REFUSED in message and "--allow-hosts" in message and "\n" not in message
            assert refused.seen == []  # the redirect target was never contacted
            # a redirect within the policy is followed through the proxy, and the recording decodes
            r = c.post("/v1/sessions", json={"source": allowed_redirects.url("/ok.mp4")})
            assert r.status_code == 201, r.text
            sid = r.json()["id"]
            st = wait_status(c, sid)
            assert st["status"] == "ended" and st["frames"] == 2, st
            assert c.post(f"/v1/sessions/{sid}/ask", json={"question": "What?"}).status_code == 200
            assert "/clip.mp4" in allowed.seen
            assert c.app.state.manager.egress.refused >= 1
            metrics = {line.split(" ")[0]: float(line.split(" ")[1]) for line in c.get("/metrics").text.splitlines()
                       if line.startswith("avmem_egress_")}
            counters = c.app.state.manager.egress.counters()
            assert metrics == {f"avmem_egress_{k}_total": float(v) for k, v in counters.items()}
            assert metrics["avmem_egress_refused_total"] >= 1 and metrics["avmem_egress_allowed_total"] >= 1
    finally:
        allowed_redirects.close()


def test_hls_segments_on_a_refused_address_are_refused(model, www, servers):
    allowed, refused = servers
    (www / "bad.m3u8").write_text("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n"
                                  f"{refused.url('/seg.ts')}\n#EXT-X-ENDLIST\n")
    with TestClient(create_app(config(), model)) as c:
        r = c.post("/v1/sessions", json={"source": allowed.url("/bad.m3u8")})  # FFmpeg opens a segment to probe
        assert r.status_code == 403 and REFUSED in r.json()["error"]["message"], r.text
    assert "/bad.m3u8" in allowed.seen and refused.seen == []


def test_allowed_recording_and_live_hls_decode_through_the_proxy(model, www, servers):
    allowed, _ = servers
    (www / "good.m3u8").write_text("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n"
                                   f"{allowed.url('/seg.ts')}\n#EXT-X-ENDLIST\n")
    with TestClient(create_app(config(), model)) as c:
        egress = c.app.state.manager.egress
        rec = c.post("/v1/sessions", json={"source": allowed.url("/clip.mp4")}).json()["id"]
        live = c.post("/v1/sessions", json={"source": allowed.url("/good.m3u8")})
        assert live.status_code == 201, live.text
        for sid in (rec, live.json()["id"]):
            st = wait_status(c, sid)
            assert st["status"] == "ended" and st["frames"] >= 1, st  # live: paced, 1-2 frames of 2 s at 1 fps
            answer = c.post(f"/v1/sessions/{sid}/ask", json={"question": "What?"})
            assert answer.status_code == 200 and answer.json()["tokens"] >= 1
        assert egress.refused == 0 and egress.allowed >= 3  # clip (probe + decode), playlist, segment
        assert "/seg.ts" in allowed.seen
    assert not egress.running  # stopped with the server


def _request(port: int, text: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        if text:
            s.sendall(text.encode())
            s.shutdown(socket.SHUT_WR)
        data = b""
        while piece := s.recv(65536):
            data += piece
    return data


def _auth(tag: str) -> str:
    return "Proxy-Authorization: Basic " + base64.b64encode(f"{tag}:x".encode()).decode()


def test_proxy_refuses_connect_and_get_to_refused_addresses(www, servers):
    allowed, refused = servers
    proxy = EgressProxy(config())
    proxy.start()
    try:
        proxy.options("t1")
        head = f"CONNECT {REFUSED}:{refused.port} HTTP/1.1\r\nHost: {REFUSED}:{refused.port}\r\n"
        reply = _request(proxy.port, head + _auth("t1") + "\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 403 ") and b"--allow-hosts" in reply
        assert REFUSED in proxy.refusal("t1")
        reply = _request(proxy.port, f"GET {refused.url('/clip.mp4')} HTTP/1.1\r\n{_auth('t1')}\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 403 ")
        assert refused.seen == []
        # no credentials, or a forgotten tag: 407 (only the server's own decoders use the proxy)
        assert _request(proxy.port, head + "\r\n").startswith(b"HTTP/1.1 407 ")
        proxy.forget("t1")
        assert _request(proxy.port, head + _auth("t1") + "\r\n\r\n").startswith(b"HTTP/1.1 407 ")
        proxy.options("t2")
        assert _request(proxy.port, f"POST {allowed.url('/x')} HTTP/1.1\r\n{_auth('t2')}\r\n\r\n").startswith(
            b"HTTP/1.1 405 ")
        assert _request(proxy.port, f"GET {allowed.url('/x')} HTTP/1.1\r\n{_auth('t2')}\r\nContent-length: 3\r\n\r\n"
                                    "abc").startswith(b"HTTP/1.1 400 ")
        # an allowed CONNECT tunnels bytes both ways (here: plain HTTP through the tunnel)
        reply = _request(proxy.port, f"CONNECT {ALLOWED}:{allowed.port} HTTP/1.1\r\n{_auth('t2')}\r\n\r\n"
                                     f"GET /seg.ts HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.0 200 ")
        assert reply.endswith((www / "seg.ts").read_bytes())
        # an allowed GET is relayed with the origin-form path
        reply = _request(proxy.port, f"GET {allowed.url('/clip.mp4')} HTTP/1.1\r\nHost: x\r\n{_auth('t2')}\r\n\r\n")
        assert reply.startswith(b"HTTP/1.0 200 ") and reply.endswith((www / "clip.mp4").read_bytes())
        assert allowed.seen[-2:] == ["/seg.ts", "/clip.mp4"]
    finally:
        proxy.stop()


def test_proxy_bounds_connections_and_idle_time(servers, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # FFmpeg would bypass the proxy for these hosts
    proxy = EgressProxy(config(), max_connections=1, idle_timeout=0.5)
    proxy.start()
    assert "no_proxy" not in os.environ
    try:
        first = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        time.sleep(0.2)  # the first connection holds the only slot
        assert _request(proxy.port, "").startswith(b"HTTP/1.1 503 ")  # answered at once, nothing read
        first.settimeout(5)
        assert first.recv(100) == b""  # closed after 0.5 s without a request
        first.close()
        time.sleep(0.2)
        assert _request(proxy.port, "GET / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 407 ")  # the slot is free again
        assert proxy.busy == 1
    finally:
        proxy.stop()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl (to make a test certificate) is not installed")
def test_https_goes_through_connect_and_is_checked(model, www, tmp_path):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "k.pem"),
                    "-out", str(tmp_path / "c.pem"), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,IP:127.0.0.2"], check=True,
                   capture_output=True, timeout=60)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    allowed = Server(ALLOWED, www, tls=tls)
    redirect = Server(REFUSED, www, redirects={"/r.mp4": allowed.url("/clip.mp4", "https")}, tls=tls)
    try:
        try:
            av.open(allowed.url("/clip.mp4", "https"), timeout=10).close()
        except av.error.FFmpegError:
            av.open(allowed.url("/clip.mp4", "https"), options={"tls_verify": "0"}, timeout=10).close()
            pytest.skip("this FFmpeg verifies TLS certificates and the test's self-signed one is not trusted")
        del allowed.seen[:]
        with TestClient(create_app(config(), model)) as c:
            egress = c.app.state.manager.egress
            sid = c.post("/v1/sessions", json={"source": allowed.url("/clip.mp4", "https")}).json()["id"]
            assert wait_status(c, sid)["status"] == "ended"
            assert egress.allowed >= 2 and "/clip.mp4" in allowed.seen  # FFmpeg's TLS ran through CONNECT
            # the policy is read per connection: allow only 127.0.0.2, whose https URL redirects to 127.0.0.1
            c.app.state.manager.config.allow_hosts = [REFUSED]
            before, seen = egress.allowed, len(allowed.seen)
            r = c.post("/v1/sessions", json={"source": redirect.url("/r.mp4", "https")})
            assert r.status_code == 403 and ALLOWED in r.json()["error"]["message"], r.text
            assert egress.allowed > before and redirect.seen == ["/r.mp4"] and len(allowed.seen) == seen
    finally:
        allowed.close()
        redirect.close()
