"""URLs and live sources against servers on 127.0.0.1 only: pacing, drops, dead sources, timeouts."""

from __future__ import annotations

import functools
import http.server
import socket
import threading
import time

import numpy as np
import pytest

from avmem.media import AudioChunk, FileSource, LiveSource, MediaError, VideoFrame, probe
from avmem.synth import write_test_pattern_clip


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(local clip path, its http://127.0.0.1 URL): a 3 s Matroska clip served from a thread."""
    root = tmp_path_factory.mktemp("www")
    clip = write_test_pattern_clip(root / "clip.mkv", seconds=3, fps=10, size=(64, 96))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=root))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield clip, f"http://127.0.0.1:{server.server_address[1]}/clip.mkv"
    server.shutdown()
    server.server_close()


@pytest.fixture()
def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


@pytest.fixture()
def stalling_server(served):
    """URL of a server that sends the headers and half of the clip, then nothing (socket kept open)."""
    clip, _ = served
    data = clip.read_bytes()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()
    conns: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conns.append(conn)
            conn.recv(65536)
            head = f"HTTP/1.1 200 OK\r\nContent-Type: video/x-matroska\r\nContent-Length: {len(data)}\r\n\r\n"
            conn.sendall(head.encode() + data[: len(data) // 2])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/clip.mkv"
    stop.set()
    thread.join()
    for conn in conns:
        conn.close()
    listener.close()


def test_file_source_over_http_matches_the_local_file(served):
    clip, url = served
    remote, local = list(FileSource(url, fps=2.0)), list(FileSource(clip, fps=2.0))
    assert len(remote) == len(local) == 12
    for a, b in zip(remote, local):
        assert type(a) is type(b) and a.t == b.t
        assert np.array_equal(a.image if isinstance(a, VideoFrame) else a.samples,
                              b.image if isinstance(b, VideoFrame) else b.samples)
    assert probe(url).video.coded_width == 96


def test_live_source_is_paced_by_the_wall_clock(served):
    _, url = served
    src = LiveSource(url, fps=2.0)
    start = time.monotonic()
    items = list(src)
    elapsed = time.monotonic() - start
    assert [type(i) for i in items] == [VideoFrame, AudioChunk] * 6
    assert [i.t for i in items if isinstance(i, VideoFrame)] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert all(len(i.samples) == 8000 for i in items if isinstance(i, AudioChunk))
    assert 2.3 < elapsed < 6.0, elapsed
    assert src.stats.dropped == 0 and src.stats.frames == 6
    with pytest.raises(RuntimeError, match="once"):
        list(src)


def test_slow_consumer_drops_oldest_steps_and_counts_them(served):
    _, url = served
    src = LiveSource(url, fps=4.0, queue_size=1, audio=False)
    got = []
    for item in src:
        got.append(item)
        time.sleep(0.6)
    assert src.stats.dropped > 0
    assert len(got) + src.stats.dropped == 12
    assert [f.t for f in got] == sorted(f.t for f in got)


def test_explicit_ffmpeg_format_like_a_capture_device():
    src = LiveSource("testsrc2=size=96x64:rate=10:duration=2", format="lavfi", audio=False, max_pixels=None)
    frames = list(src)
    assert [f.t for f in frames] == [0.0, 1.0] and frames[0].image.shape == (64, 96, 3)


def test_stopping_early_ends_the_decoding_thread(served):
    _, url = served
    before = {t for t in threading.enumerate() if t.name == "avmem-live-decode"}
    src = LiveSource(url, fps=10.0)
    for _ in src:
        break
    del _
    after = {t for t in threading.enumerate() if t.name == "avmem-live-decode" and t.is_alive()}
    assert after <= before


def test_close_during_iteration_ends_it_promptly(served):
    _, url = served
    src = LiveSource(url, fps=10.0, audio=False)
    start = time.monotonic()
    got = []
    for item in src:
        got.append(item)
        if len(got) == 3:
            src.close()
    assert 3 <= len(got) < 30 and time.monotonic() - start < 2.0


def test_unreachable_url_fails_fast(closed_port):
    url = f"http://127.0.0.1:{closed_port}/nothing.mp4"
    for build in (LiveSource, FileSource, probe):
        start = time.monotonic()
        with pytest.raises(MediaError, match="connection refused") as err:
            build(url, timeout=1.0)
        assert url in str(err.value) and time.monotonic() - start < 2.0


def test_silent_server_times_out_instead_of_hanging():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/live"
        start = time.monotonic()
        with pytest.raises(MediaError, match="no data for 1 s"):
            LiveSource(url, timeout=1.0)
        assert time.monotonic() - start < 4.0
    finally:
        listener.close()


def test_source_that_stops_sending_mid_stream_raises_after_its_data(stalling_server):
    src = LiveSource(stalling_server, fps=2.0, timeout=1.0)
    got = []
    start = time.monotonic()
    with pytest.raises(MediaError, match="timed out"):
        for item in src:
            got.append(item)
    assert got and time.monotonic() - start < 8.0


def test_live_source_validation(tmp_path):
    with pytest.raises(MediaError, match="unsupported URL scheme"):
        LiveSource("ftp://127.0.0.1/x.mp4")
    with pytest.raises(MediaError, match="no such file"):
        LiveSource(str(tmp_path / "nope.mkv"))
    for kwargs, needle in (({"queue_size": 0}, "queue_size"), ({"max_av_skew": 0}, "max_av_skew"),
                           ({"timeout": -1}, "timeout"), ({"fps": -1}, "fps")):
        with pytest.raises(MediaError, match=needle):
            LiveSource("testsrc2=duration=1", format="lavfi", **kwargs)
    with pytest.raises(MediaError, match="no audio stream"):
        LiveSource("testsrc2=duration=1", format="lavfi", video=False)
