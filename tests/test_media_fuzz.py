"""Fuzz corpus: truncated, bit-flipped and header-corrupted variants of generated clips (always) and of
../shared/media files (when present). Every variant must decode to items or fail with a one-line MediaError: no
other exception, no hang beyond a fixed limit per case, no memory beyond a fixed limit.

The cases run in one child process (``python -m tests.test_media_fuzz CASE_DIR``) that reports each case as a JSON
line, so a case stuck in native code is caught by the parent's per-case deadline, and the child's peak RSS is
measured apart from pytest's."""

from __future__ import annotations

import json
import os
import queue
import resource
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

CASE_SECONDS = 20.0  # per case, generous for a loaded 2-core machine (a case takes ~0.05 s)
RSS_LIMIT_MB = 1500.0
ROOT = Path(__file__).resolve().parents[1]


def variants(data: bytes, seed: int, n_trunc: int, n_flip: int, n_header: int) -> list[tuple[str, bytes]]:
    """Damaged copies of ``data``: truncations, scattered bit flips, overwritten header bytes, zeroed stretches."""
    rng = np.random.default_rng(seed)
    size = len(data)
    out: list[tuple[str, bytes]] = []
    for i, frac in enumerate(np.linspace(0.02, 0.98, n_trunc)):
        out.append((f"trunc{i}", data[: max(1, int(size * frac))]))
    for i in range(n_flip):
        buf = bytearray(data)
        for pos in rng.integers(0, size, int(rng.integers(1, 64))):
            buf[pos] ^= 1 << int(rng.integers(0, 8))
        out.append((f"flip{i}", bytes(buf)))
    for i in range(n_header):
        buf = bytearray(data)
        head = min(size, 4096)
        start = int(rng.integers(0, max(1, head - 16)))
        length = int(rng.integers(1, 64))
        buf[start:start + length] = rng.integers(0, 256, len(buf[start:start + length]), dtype=np.uint8).tobytes()
        out.append((f"head{i}", bytes(buf)))
    for i in range(max(1, n_flip // 4)):
        buf = bytearray(data)
        a = int(rng.integers(0, size))
        b = min(size, a + int(rng.integers(16, max(17, size // 8))))
        buf[a:b] = bytes(b - a)
        out.append((f"zero{i}", bytes(buf)))
    return out


def write_cases(folder: Path, bases: list[Path], per_base: tuple[int, int, int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for j, base in enumerate(bases):
        for name, blob in variants(base.read_bytes(), j, *per_base):
            path = folder / f"{base.stem}-{name}{base.suffix}"
            path.write_bytes(blob)
            cases.append(path)
    return cases


def run_corpus(cases: list[Path]) -> dict[str, int]:
    """Run every case in a child; returns the outcome counts. Fails on a hang, a foreign exception or the RSS limit."""
    listing = cases[0].parent / "cases.txt"
    listing.write_text("\n".join(str(c) for c in cases))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.test_media_fuzz", str(listing)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
    counts = {"items": 0, "media_error": 0}
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    done = 0
    try:
        while done < len(cases):
            try:
                line = lines.get(timeout=CASE_SECONDS)
            except queue.Empty:
                raise AssertionError(f"{cases[done]}: no result within {CASE_SECONDS:g} s (hang)") from None
            if line is None:
                proc.wait()
                raise AssertionError(f"the fuzz child died (exit {proc.returncode}) after {done} of {len(cases)} "
                                     f"cases; next: {cases[done]}")
            record = json.loads(line)
            assert record["kind"] in counts, f"{record['case']}: {record['kind']}: {record['detail']}"
            counts[record["kind"]] += 1
            done += 1
        line = lines.get(timeout=CASE_SECONDS)
        rss = json.loads(line)["mb"]
        assert rss < RSS_LIMIT_MB, f"child peak RSS {rss:.0f} MB"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return counts


def _child(listing: Path) -> None:
    """Decode every case listed (one path per line); print one JSON line per case, then the peak RSS."""
    import warnings

    from avmem.media import FileSource, MediaError

    warnings.simplefilter("ignore")
    for line in listing.read_text().splitlines():
        record = {"case": line}
        try:
            source = FileSource(line, fps=2.0, max_pixels=64 * 64, timeout=5.0)
            n = sum(1 for _ in source)
            record.update(kind="items", detail=n)
        except MediaError as exc:
            message = str(exc)
            record.update(kind="media_error" if message and "\n" not in message else "bad_message", detail=message)
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test
            import traceback

            record.update(kind="exception", detail=traceback.format_exc(limit=-3))
        print(json.dumps(record), flush=True)
    print(json.dumps({"kind": "rss", "mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> list[Path]:
    import av

    from avmem.synth import write_test_pattern_clip

    folder = tmp_path_factory.mktemp("fuzz-bases")
    mp4 = write_test_pattern_clip(folder / "pattern.mp4", seconds=3, fps=10, size=(64, 96))
    ts = folder / "pattern.ts"
    with av.open(str(mp4)) as src, av.open(str(ts), "w", format="mpegts") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in src.streams if s.type in ("video", "audio")}
        for packet in src.demux():
            if packet.dts is not None and packet.stream.index in streams:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
    silent = write_test_pattern_clip(folder / "novideo.mp4", seconds=2, fps=5, size=(32, 32))
    audio_only = folder / "audio.m4a"
    with av.open(str(silent)) as src, av.open(str(audio_only), "w", format="mp4") as out:
        stream = out.add_stream_from_template(src.streams.audio[0])
        for packet in src.demux(src.streams.audio[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return [mp4, ts, audio_only]


def test_generated_clip_corpus(generated, tmp_path, capsys):
    cases = write_cases(tmp_path / "cases", generated, (20, 50, 30))
    counts = run_corpus(cases)
    with capsys.disabled():
        print(f"\nfuzz (generated): {len(cases)} cases: {counts}")
    assert sum(counts.values()) == len(cases) >= 300
    assert counts["items"] > 0 and counts["media_error"] > 0


def test_shared_media_corpus(tmp_path, capsys):
    from .conftest import SHARED

    folder = SHARED / "media"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (shared test media)")
    bases = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix != ".md" and p.stat().st_size < 3_000_000),
                   key=lambda p: p.stat().st_size)[:5]
    if not bases:
        pytest.skip(f"no small media files in {folder}")
    cases = write_cases(tmp_path / "cases", bases, (8, 16, 8))
    counts = run_corpus(cases)
    with capsys.disabled():
        print(f"\nfuzz (../shared/media, {len(bases)} files): {len(cases)} cases: {counts}")
    assert sum(counts.values()) == len(cases)


@pytest.mark.parametrize("kind", ["trunc3", "flip0", "head1"])
def test_damaged_clips_through_ask_answer_or_fail_in_one_line(generated, tmp_path, kind):
    from typer.testing import CliRunner

    from avmem.cli import app

    blob = dict(variants(generated[0].read_bytes(), 0, 6, 2, 2))[kind]
    path = tmp_path / f"{kind}.mp4"
    path.write_bytes(blob)
    result = CliRunner().invoke(app, ["ask", str(path), "-q", "What?", "--model", "tiny-qwen3-vl", "--video-tokens",
                                      "64", "--audio-tokens", "8", "--max-new-tokens", "2", "--json"])
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output
    if result.exit_code == 0:
        report = json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])
        assert report["answers"] and "media" in report
    else:
        assert result.stderr.strip().splitlines()[-1].startswith("avmem: error:"), result.stderr


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
