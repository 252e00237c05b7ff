"""Session snapshots (avmem.snapshot): safetensors + JSON, crash-safe writes, every field checked on load."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from avmem import snapshot
from avmem.model import load_model
from avmem.session import SessionSettings, StreamSession


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    os.environ.setdefault("AVMEM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    return load_model("tiny-qwen3-vl")


def frames(n: int, seed: int = 0, size=(64, 96)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (*size, 3), dtype=np.uint8) for _ in range(n)]


def fed(model, **kw) -> StreamSession:
    """11 frames (8 absorbed, 3 pending) and 35 s of audio (one piece encoded, 5 s pending)."""
    s = StreamSession(model, **{"video_tokens": 24, "audio_tokens": 16, "chunk_frames": 4, **kw})
    s.feed(frames=frames(11), t=[float(i) for i in range(11)])
    rng = np.random.default_rng(1)
    s.feed(audio=(0.1 * rng.standard_normal(35 * 16000)).astype(np.float32), audio_t=0.0)
    return s


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory) -> Path:
    """A snapshot of :func:`fed` (read only: tests write their variants elsewhere)."""
    return fed(model).save(tmp_path_factory.mktemp("saved") / "s.avmem")


def rewrite(src: Path, dst: Path, edit) -> Path:
    """``src``'s tensors and metadata, changed by ``edit(tensors, meta)``, written as a plain safetensors file."""
    table, meta = snapshot.read_header(src)
    tensors = snapshot.read_tensors(src, table)
    edit(tensors, meta)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dst), metadata={"avmem": json.dumps(meta)})
    return dst


def test_round_trip_is_exact_and_read_settings_are_the_callers(model, tmp_path):
    s = fed(model, max_new_tokens=5, read_tokens=128)
    path = s.save(tmp_path / "s.avmem")
    assert path.read_bytes()[:1] != b"\x80" and not path.read_bytes().startswith(b"PK")  # no pickle, no zip
    loaded = StreamSession.load(path, model)
    a, b = s.state, loaded.state
    assert torch.equal(a.video.tokens, b.video.tokens) and torch.equal(a.audio.ids, b.audio.ids)
    assert [t for t, _ in a.pending_frames] == [t for t, _ in b.pending_frames]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(a.pending_frames, b.pending_frames))
    assert np.array_equal(a.pending_audio, b.pending_audio) and a.pending_audio_start == b.pending_audio_start
    assert (a.video_ids, a.audio_ids, a.audio_samples, a.frames, a.last_time) == \
        (b.video_ids, b.audio_ids, b.audio_samples, b.frames, b.last_time)
    # restored: what the memory holds; not restored: how questions read it
    assert loaded.settings.video_tokens == 24 and loaded.settings.chunk_frames == 4
    assert loaded.settings.max_new_tokens == SessionSettings().max_new_tokens
    assert loaded.settings.read_tokens == SessionSettings().read_tokens
    mine = StreamSession.load(path, model, SessionSettings(max_new_tokens=3, video_tokens=999))
    assert mine.settings.max_new_tokens == 3 and mine.settings.video_tokens == 24
    s2 = StreamSession(model, max_new_tokens=3, video_tokens=24, audio_tokens=16, chunk_frames=4)
    s2.state = s.state
    assert mine.ask("What happened?") == s2.ask("What happened?")


def test_budget_file_and_answer_length_never_come_from_a_file(model, saved, tmp_path):
    hostile = rewrite(saved, tmp_path / "h.avmem", lambda t, m: m["settings"].update(
        budget_file="/etc/passwd", max_new_tokens=10 ** 9))
    with pytest.raises(ValueError, match="settings must hold exactly"):
        StreamSession.load(hostile, model)


def test_old_pickle_snapshots_are_refused_without_unpickling(model, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    old = tmp_path / "old.avmem"
    torch.save({"meta": {"format": "avmem-session/1"}, "tensors": {}, "x": Evil()}, old)
    with pytest.raises(ValueError, match=r"old.avmem: an old pickle-based session file"):
        StreamSession.load(old, model)
    assert not marker.exists()


@pytest.mark.parametrize("edit, message", [
    (lambda t, m: m["settings"].update(video_tokens=4), "more than video_tokens=4"),
    (lambda t, m: m["settings"].update(fps=1000.0), "settings out of range: fps"),
    (lambda t, m: m["settings"].update(chunk_frames="4"), "chunk_frames='4' is not a valid int"),
    (lambda t, m: m["counters"].update(audio_ids=10 ** 12), "audio token ids are inconsistent"),
    (lambda t, m: m["counters"].update(video_ids=10 ** 12), "patch token ids are inconsistent"),
    (lambda t, m: m["counters"].update(frames=10 ** 6), "frames=1000000 is inconsistent"),
    (lambda t, m: m["counters"].update(last_time=None), "last_time=None is inconsistent"),
    (lambda t, m: m.update(format="avmem-session/9"), "unsupported session format"),
    (lambda t, m: t.update({"ttt.fast.W1": torch.zeros(1, 4, 16, 8)}), r"'ttt.fast.W1' has shape \[1, 4, 16, 8\]"),
    (lambda t, m: t.update({"video.tokens": t["video.tokens"].to(torch.int64)}), "'video.tokens' has dtype I64"),
    (lambda t, m: t.update({"video.tokens": t["video.tokens"][:, :1]}), "'video.tokens' has shape"),
    (lambda t, m: t.update({"patches.times": t["patches.times"].flip(0)}), "patch times must be finite"),
    (lambda t, m: t["patches.times"].__setitem__(0, float("nan")), "patch times must be finite"),
    (lambda t, m: t.update({"pending.times": torch.zeros(7, dtype=torch.float64)}), "7 pending frames"),
    (lambda t, m: t.update({"pending.audio": torch.zeros(16000 * 31)}), "pending audio samples"),
    (lambda t, m: t.update({"extra": torch.zeros(1)}), "unknown tensor 'extra'"),
    (lambda t, m: t.pop("audio_log.start"), "missing tensor 'audio_log.start'"),
    (lambda t, m: t["video.tokens"].__setitem__(0, float("inf")), "video memory holds NaN or Inf"),
    (lambda t, m: t.update({"video.ids": t["video.ids"].flip(0)}), "video memory ids must increase"),
])
def test_every_field_is_checked(model, saved, tmp_path, edit, message):
    bad = rewrite(saved, tmp_path / "bad.avmem", edit)
    with pytest.raises(ValueError, match=message) as info:
        StreamSession.load(bad, model)
    assert str(info.value).startswith(str(bad)) and "\n" not in str(info.value)


def test_sizes_are_checked_from_the_header_before_any_data_is_read(model, saved, tmp_path, monkeypatch):
    path = saved
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header["pending.audio"]["shape"] = [200_000_000]  # 800 MB of samples declared in a small file
    start, _ = header["pending.audio"]["data_offsets"]
    header["pending.audio"]["data_offsets"] = [start, start + 800_000_000]
    raw = json.dumps(header).encode()
    huge = tmp_path / "huge.avmem"
    huge.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(data[8 + n:]))
    monkeypatch.setattr(snapshot, "read_tensors", lambda *a: pytest.fail("tensor data read before the checks"))
    with pytest.raises(ValueError, match="truncated or padded|overlap"):
        StreamSession.load(huge, model)
    (tmp_path / "short.avmem").write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        StreamSession.load(tmp_path / "short.avmem", model)
    (tmp_path / "junk.avmem").write_bytes((10 ** 9).to_bytes(8, "little") + b"{}")
    with pytest.raises(ValueError, match="not an avmem session file"):
        StreamSession.load(tmp_path / "junk.avmem", model)


def test_a_full_disk_leaves_the_previous_snapshot_intact(model, tmp_path, monkeypatch):
    s = fed(model)
    path = s.save(tmp_path / "s.avmem")
    before = path.read_bytes()
    real = snapshot._write_payload

    def full_disk(tmp, tensors, meta):
        real(tmp, tensors, meta)
        with open(tmp, "r+b") as fh:  # the disk filled up half-way through
            fh.truncate(os.path.getsize(tmp) // 2)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(snapshot, "_write_payload", full_disk)
    s.feed(frames=frames(1, seed=5), t=11.0)
    with pytest.raises(OSError, match="snapshot not written .*previous file is unchanged") as info:
        s.save(path)
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["s.avmem"]
    assert StreamSession.load(path, model).stats().frames == 11


KILL_TRIALS = 5
WRITER = textwrap.dedent("""
    import sys
    from avmem import snapshot
    src, dst = sys.argv[1], sys.argv[2]
    table, meta = snapshot.read_header(src)
    tensors = snapshot.read_tensors(src, table)
    i = 0
    while True:
        meta["counters"]["drops"] = i
        snapshot.write_snapshot(dst, tensors, meta)
        print(i, flush=True)
        i += 1
""")


def test_killing_a_save_at_any_moment_leaves_a_loadable_snapshot(model, tmp_path):
    """A process saving in a loop is SIGKILLed at random moments: the snapshot always loads, holding one of the
    completed saves (a large pending-frame buffer makes most kills land inside a write)."""
    s = StreamSession(model, video_tokens=64, chunk_frames=128, max_pixels=448 * 448, use_audio=False)
    s.feed(frames=frames(40, size=(448, 448)), t=[float(i) for i in range(40)])
    src = s.save(tmp_path / "src.avmem")
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rng = random.Random(0)
    mid_write = 0
    for trial in range(KILL_TRIALS):
        dst = tmp_path / f"dst{trial}.avmem"
        proc = subprocess.Popen([sys.executable, str(script), str(src), str(dst)], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(Path(snapshot.__file__).parents[1])})
        try:
            assert proc.stdout.readline().strip() == "0"  # the first save is complete
            time.sleep(rng.uniform(0.0, 0.6))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            done = [int(line) for line in proc.stdout.read().split()]
        finally:
            proc.kill()
            proc.stdout.close()
        loaded = StreamSession.load(dst, model)
        assert loaded.state.drops in (0, *done, (done[-1] if done else 0) + 1)
        assert loaded.stats().frames == 40
        mid_write += any(p.name.startswith(f".{dst.name}.") for p in tmp_path.iterdir())
    print(f"{KILL_TRIALS} kills, {mid_write} inside a write")
