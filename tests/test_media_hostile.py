"""Hostile inputs (issue 15): timestamp gaps of hours, damaged middles, huge frames, paths that look like FFmpeg
protocols, URLs outside the allow-list. Files are generated here with PyAV; servers are not needed."""

from __future__ import annotations

import os
import resource
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from avmem.media import AudioChunk, FileSource, LiveSource, MediaError, SourceStats, VideoFrame, probe
from avmem.media._decode import ffmpeg_input
from avmem.synth import write_test_pattern_clip
from avmem.synth.hostile import write_gap


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_gap_of_ten_hours_is_one_shared_image_not_36000_copies(tmp_path):
    path = write_gap(tmp_path / "gap.mp4", 36000.0, size=640)
    before = rss_mb()
    src = FileSource(path, fps=1.0, max_pixels=None)
    first, count, same = None, 0, 0
    for item in src:
        first = first if first is not None else item.image
        count += 1
        same += item.image is first
    assert count == 36001 and same == 36000  # 36000 grid points of frame 0, then frame 1
    assert src.stats.repeated_frames == 35999
    assert rss_mb() - before < 200  # 36000 copies of 640x640 RGB would be 44 GB


def test_repeated_items_are_marked_and_audio_stays_bounded_across_a_gap(tmp_path):
    path = write_gap(tmp_path / "gap.mp4", 600.0, audio_seconds=601.0)
    items = list(FileSource(path, fps=2.0))
    frames = [i for i in items if isinstance(i, VideoFrame)]
    chunks = [i for i in items if isinstance(i, AudioChunk)]
    assert len(frames) == len(chunks) == 1201
    assert not frames[0].repeat and all(f.repeat for f in frames[1:1200]) and not frames[1200].repeat
    assert all(f.image is frames[0].image for f in frames[:1200])
    assert all(c.samples.size == 8000 for c in chunks)


def write_damaged(tmp_path: Path, seconds: int = 20) -> Path:
    clip = write_test_pattern_clip(tmp_path / "c.mp4", seconds=seconds, fps=25, size=(128, 160))
    data = bytearray(clip.read_bytes())
    a, b = int(len(data) * 0.45), int(len(data) * 0.55)
    data[a:b] = np.random.default_rng(0).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    return bad


def test_a_damaged_middle_is_skipped_and_decoding_goes_on(tmp_path):
    bad = write_damaged(tmp_path)
    src = FileSource(bad, fps=5.0)
    with pytest.warns(Warning):
        items = list(src)
    frames = [i for i in items if isinstance(i, VideoFrame)]
    chunks = [i for i in items if isinstance(i, AudioChunk)]
    assert len(frames) == 100 and src.stats.seconds == pytest.approx(20.0)  # all of it, not the 9 s before the damage
    assert src.stats.expected_seconds == pytest.approx(20.0, abs=0.1)
    assert src.stats.holes and all(5.0 < a <= b < 15.0 for a, b in src.stats.holes)
    loud = [c.t for c in chunks if np.abs(c.samples).max() > 0.1]
    assert loud[0] < 1.0 and loud[-1] > 18.0  # the tone before and after the damage survives
    assert any("damaged" in w for w in src.stats.warnings)


def test_holes_are_merged_sorted_and_bounded():
    stats = SourceStats()
    for a, b in [(5.0, 6.0), (1.0, 2.0), (1.5, 3.0), (7.0, 7.5)]:
        stats.add_hole(a, b)
    assert stats.holes == [(1.0, 3.0), (5.0, 6.0), (7.0, 7.5)]
    for i in range(3 * SourceStats.MAX_HOLES):
        stats.add_hole(10.0 + 2 * i, 10.5 + 2 * i)
    assert len(stats.holes) == SourceStats.MAX_HOLES and stats.holes[-1][1] == 10.5 + 2 * (3 * SourceStats.MAX_HOLES - 1)
    stats.seconds, stats.expected_seconds = 8.0, 20.0
    assert stats.shortfall(1.0) == 12.0 and SourceStats(seconds=19.5, expected_seconds=20.0).shortfall(1.0) == 0.0


def test_huge_frames_are_scaled_down_while_decoding(tmp_path):
    path = tmp_path / "big.nut"
    with av.open(str(path), "w") as out:
        video = out.add_stream("rawvideo", rate=5)
        video.width, video.height, video.pix_fmt = 4000, 2000, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((2000, 4000, 3), np.uint8), format="rgb24").reformat(
            format="yuv420p")
        frame.pts, frame.time_base = 0, Fraction(1, 5)
        out.mux(video.encode(frame))
        out.mux(video.encode())
    image = next(iter(FileSource(path, max_pixels=None, decode_pixels=200_000))).image
    assert image.shape[0] * image.shape[1] <= 200_000 and abs(image.shape[1] / image.shape[0] - 2.0) < 0.02
    assert next(iter(FileSource(path, max_pixels=None))).image.shape == (2000, 4000, 3)
    with pytest.raises(MediaError, match="decode_pixels"):
        FileSource(path, decode_pixels=0)


def test_paths_that_look_like_ffmpeg_protocols_open_that_file(tmp_path, monkeypatch):
    decoy = write_test_pattern_clip(tmp_path / "decoy.mp4", seconds=3, fps=5, size=(64, 64), audio=False)
    real = write_test_pattern_clip(tmp_path / "real.mp4", seconds=1, fps=5, size=(64, 64), audio=False)
    monkeypatch.chdir(tmp_path)
    for name in (f"concat:{decoy}", "subfile,,start,0,end,0,,:decoy.mp4"):
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(real.read_bytes())
        rel = os.path.relpath(target, tmp_path)
        assert probe(rel).duration == pytest.approx(1.0, abs=0.3)  # the local file, not the decoy (3 s)
        assert len(list(FileSource(rel, audio=False))) == 1
    opened, opts = ffmpeg_input(f"concat:{decoy}")
    assert opened == "file:" + str(tmp_path / f"concat:{decoy}") and opts["protocol_whitelist"] == "file"


@pytest.mark.parametrize("url, needle", [
    ("tcp://127.0.0.1:9/x?listen=1", "not allowed"),
    ("udp://127.0.0.1:9", "protocol 'udp' is not allowed"),
    ("http://127.0.0.1:9/x.ts?listen=1", "listen mode"),
    ("rtmp://127.0.0.1:9/app?x=1&listen=2", "listen mode"),
])
def test_urls_outside_the_allow_list_or_listening_are_refused(url, needle):
    with pytest.raises(MediaError, match=needle):
        probe(url)
    with pytest.raises(MediaError, match=needle):
        LiveSource(url, timeout=1.0)


def test_url_whitelist_keeps_redirects_within_allowed_protocols(monkeypatch):
    _, opts = ffmpeg_input("https://example.invalid/x.m3u8")
    allowed = set(opts["protocol_whitelist"].split(","))
    assert "file" not in allowed and {"https", "tls", "tcp"} <= allowed
    with pytest.raises(MediaError, match="not allowed"):
        ffmpeg_input("http://127.0.0.1:9/x", options={"listen": "1"})
    with pytest.raises(MediaError, match="not allowed"):
        ffmpeg_input("http://127.0.0.1:9/x", options={"protocol_whitelist": "file,http"})
    monkeypatch.setenv("AVMEM_PROTOCOLS", "udp")
    assert ffmpeg_input("udp://127.0.0.1:9")[1]["protocol_whitelist"] == "udp"
    with pytest.raises(MediaError, match="not allowed"):
        ffmpeg_input("http://127.0.0.1:9/x")
    monkeypatch.setenv("AVMEM_PROTOCOLS", "gopher")
    with pytest.raises(MediaError, match="unknown protocol"):
        ffmpeg_input("http://127.0.0.1:9/x")


def test_training_data_check_does_not_fetch_urls_unless_asked(tmp_path):
    from avmem.train.data import Record, check_media

    clip = write_test_pattern_clip(tmp_path / "c.mp4", seconds=1, fps=5, size=(64, 64), audio=False)
    record = Record(source="data.json[0]", videos=(str(clip), "http://127.0.0.1:9/never.mp4"), use_audio=False,
                    turns=(("q", "a"),), timestamps=None)
    assert check_media([record], 1) == 1  # the URL is counted, not contacted
    with pytest.raises(ValueError, match="data.json\\[0\\]"):
        check_media([record], 1, fetch_urls=True)


def test_a_download_cut_short_is_reported_as_incomplete(tmp_path):
    """An HTTP server (127.0.0.1) that announces the whole file, sends 60 % of it and closes the connection."""
    import socket
    import threading

    raw = write_test_pattern_clip(tmp_path / "raw.mp4", seconds=10, fps=5, size=(64, 64))
    clip = tmp_path / "c.mp4"  # the index first (faststart), as a web server would serve it
    with av.open(str(raw)) as src, av.open(str(clip), "w", options={"movflags": "faststart"}) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in src.streams}
        for packet in src.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
    data = clip.read_bytes()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.recv(65536)
                head = f"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: {len(data)}\r\n\r\n"
                conn.sendall(head.encode() + data[: len(data) * 6 // 10])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/c.mp4"
        src = FileSource(url, fps=2.0, timeout=5.0)
        with pytest.warns(Warning):
            frames = [i for i in src if isinstance(i, VideoFrame)]
        assert frames and src.stats.shortfall(1.0) > 1.0 and src.stats.expected_seconds == pytest.approx(10, abs=0.5)
    finally:
        stop.set()
        thread.join()
        listener.close()
