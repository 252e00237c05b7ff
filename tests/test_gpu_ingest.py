"""Fast ingestion: device-side resize and log-mel against their CPU references, batched vision and audio against
unbatched, decoding on a background thread (errors, no thread left behind), and out-of-memory handling (one clear
error, the session unchanged and still usable)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from avmem.backbones.qwen import patchify, resize_frames, resize_frames_tensor
from avmem.encoders.audio import PIECE_SAMPLES, AudioEncoder, split_pieces, tiny_audio_encoder_config
from avmem.media import FileSource, MediaError
from avmem.media.prefetch import Prefetch
from avmem.model import load_model
from avmem.session import DeviceMemoryError, SessionState, StreamSession
from avmem.synth import write_test_pattern_clip

from .conftest import TEST_DEVICE

ROOT = Path(__file__).resolve().parents[1]
RESIZE_TOLERANCE = 1  # uint8 levels: the device kernel may round a pixel to the neighbouring level
LOG_MEL_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    os.environ.setdefault("AVMEM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    return load_model("tiny-qwen3-vl")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_test_pattern_clip(tmp_path_factory.mktemp("clip") / "c.mp4", seconds=40, fps=4, size=(90, 160))


def _frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = rng.integers(0, 256, (n, h // 4 + 1, w // 4 + 1, 3)).repeat(4, 1).repeat(4, 2)[:, :h, :w]
    return np.ascontiguousarray(np.clip(smooth + rng.integers(-20, 21, (n, h, w, 3)), 0, 255).astype(np.uint8))


# device-side preprocessing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("src, size", [((90, 160), (64, 96)), ((360, 640), (288, 544)), ((50, 70), (96, 128))])
def test_device_resize_matches_cpu_reference(src, size):
    frames = _frames(3, *src)
    ref = resize_frames(frames, size)
    out = resize_frames_tensor(torch.from_numpy(frames).to(TEST_DEVICE), size)
    assert out.device.type == torch.device(TEST_DEVICE).type and out.dtype == torch.uint8
    diff = (out.cpu().int() - torch.from_numpy(ref).int()).abs()
    assert out.shape == (3, *size, 3) and int(diff.max()) <= RESIZE_TOLERANCE
    if TEST_DEVICE == "cpu":
        assert int(diff.max()) == 0  # same kernel on the same device: identical


def test_device_pixel_layout_matches_cpu_reference(model):
    spec = model.backbone.vision
    frames = _frames(3, 96, 128)  # odd count: the last frame is repeated
    ref, grid = patchify(frames, spec)
    out, grid_dev = patchify(torch.from_numpy(frames).to(TEST_DEVICE), spec)
    assert grid == grid_dev and out.device.type == torch.device(TEST_DEVICE).type
    torch.testing.assert_close(out.cpu(), ref, rtol=0, atol=1e-6)


def test_encode_frames_numpy_and_device_tensor_agree(model):
    frames = _frames(4, 100, 130)  # not multiples of the factor: resized inside
    a = model.backbone.encode_frames(frames)
    b = model.backbone.encode_frames(torch.from_numpy(frames).to(model.device))
    for x, y in zip(a, b):
        torch.testing.assert_close(x.tokens, y.tokens)
        assert x.grid_hw == y.grid_hw


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return AudioEncoder(tiny_audio_encoder_config(64)).eval().to(TEST_DEVICE)


@pytest.fixture(scope="module")
def audio_75s():
    rng = np.random.default_rng(1)
    t = np.arange(75 * 16000) / 16000
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def test_device_log_mel_matches_feature_extractor_and_numpy(encoder, audio_75s):
    pieces = split_pieces(audio_75s)
    ref = encoder.log_mel(pieces).float().cpu()  # WhisperFeatureExtractor (CPU)
    fe = encoder.feature_extractor
    padded = np.stack([np.pad(p, (0, PIECE_SAMPLES - len(p))) for p in pieces])
    numpy_ref = torch.from_numpy(fe._np_extract_fbank_features(padded, "cpu")).float()  # pure numpy
    out = encoder.log_mel_tensor(torch.from_numpy(padded).to(TEST_DEVICE))
    assert out.shape == (3, 80, 3000) and out.device.type == torch.device(TEST_DEVICE).type
    torch.testing.assert_close(out.cpu(), ref, rtol=0, atol=LOG_MEL_TOLERANCE)
    torch.testing.assert_close(out.cpu(), numpy_ref, rtol=0, atol=LOG_MEL_TOLERANCE)


@pytest.mark.parametrize("seconds", [0.4, 30.0, 75.0])
def test_encode_with_device_log_mel_matches_reference_path(encoder, audio_75s, seconds):
    audio = audio_75s[:int(seconds * 16000)]
    with torch.no_grad():
        ref = torch.cat([encoder(encoder.log_mel([p])).flatten(0, 1) for p in split_pieces(audio)])
        ref = ref[:encoder.num_tokens(len(audio))]
        for batch in (1, 2, 16):
            torch.testing.assert_close(encoder.encode(audio, max_batch_pieces=batch), ref, rtol=1e-4, atol=1e-4)


# batching in the session -------------------------------------------------------------------------------------


def _assert_states_equal(a: SessionState, b: SessionState, tol: float = 0.0) -> None:
    """Field by field: tensors (within ``tol``, relative and absolute), arrays, lists of (time, frame), plain
    values."""

    def same(x, y, name):
        if isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor) and x.shape == y.shape and x.dtype == y.dtype, name
            torch.testing.assert_close(x, y, rtol=tol, atol=tol, msg=name)
        elif isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=name)
        elif isinstance(x, list):
            assert len(x) == len(y), name
            for i, (u, v) in enumerate(zip(x, y)):
                same(u, v, f"{name}[{i}]")
        elif isinstance(x, tuple):
            for i, (u, v) in enumerate(zip(x, y, strict=True)):
                same(u, v, f"{name}[{i}]")
        elif x is None or isinstance(x, (int, float, str)):
            assert x == y, (name, x, y)
        elif hasattr(x, "tensors"):  # TTT / Mamba-2 state
            for k, v in x.tensors().items():
                same(v, y.tensors()[k], f"{name}.{k}")
        else:  # dataclasses: banks, logs
            for f in fields(x):
                same(getattr(x, f.name), getattr(y, f.name), f"{name}.{f.name}")

    for f in fields(SessionState):
        same(getattr(a, f.name), getattr(b, f.name), f.name)


def _stream(session: StreamSession, seconds: int, h: int = 72, w: int = 120) -> None:
    frames = _frames(seconds, h, w, seed=3)
    rng = np.random.default_rng(4)
    for k in range(seconds):
        session.feed(frames=frames[k], t=float(k), audio=(0.1 * rng.standard_normal(16000)).astype(np.float32),
                     audio_t=float(k))


def test_vision_and_audio_batches_do_not_change_the_memory(model):
    """vision_patches / audio_pieces only change how many patches / pieces go through one call."""
    settings = dict(video_tokens=40, audio_tokens=24, chunk_frames=12, max_pixels=64 * 96, bank_step=16)
    small = StreamSession(model, vision_patches=1, audio_pieces=1, **settings)
    large = StreamSession(model, vision_patches=5, audio_pieces=3, **settings)
    for s in (small, large):
        _stream(s, 80)
    assert small.state.audio_ids == 120 and large.state.audio_ids == 0  # large: waits for 3 complete pieces
    small.flush()
    large.flush()
    _assert_states_equal(small.state, large.state, tol=1e-4)
    assert small.ask("What?") == large.ask("What?")


def test_settings_validate_batch_sizes(model):
    for name in ("vision_patches", "audio_pieces"):
        with pytest.raises(ValueError, match=name):
            StreamSession(model, **{name: 0})


# decoding on a background thread ------------------------------------------------------------------------------


def _decode_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "avmem-decode"]


def _wait_no_decode_threads() -> None:
    assert not _decode_threads(), [t.name for t in _decode_threads()]


def test_prefetch_order_bound_and_errors():
    produced = []

    def source():
        for i in range(50):
            produced.append(i)
            yield i

    with Prefetch(source(), size=4) as items:
        first = next(items)
        for _ in range(100):  # let the producer run ahead as far as it may
            if len(produced) >= 6:
                break
            threading.Event().wait(0.01)
        assert first == 0 and len(produced) <= 1 + 4 + 1  # taken + queued + the one waiting for room
        assert [first, *items] == list(range(50))
    _wait_no_decode_threads()

    def failing():
        yield 1
        raise MediaError("x.mp4: cannot decode video (broken)")

    got = []
    with pytest.raises(MediaError, match=r"^x.mp4: cannot decode video \(broken\)$"):
        for item in Prefetch(failing()):
            got.append(item)
    assert got == [1]
    _wait_no_decode_threads()


def test_prefetch_early_exit_closes_the_source_in_its_thread():
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                i += 1
                yield i
        finally:
            closed.set()

    with Prefetch(endless(), size=2) as items:
        assert next(items) == 1
    assert closed.is_set()
    _wait_no_decode_threads()


def test_feed_file_matches_the_media_items_fed_one_by_one(model, clip):
    a = StreamSession(model, video_tokens=48, audio_tokens=16, chunk_frames=6, max_pixels=64 * 96)
    b = StreamSession(model, video_tokens=48, audio_tokens=16, chunk_frames=6, max_pixels=64 * 96)
    a.feed_file(clip)
    for item in b.media(clip):
        b.feed_item(item)
    _wait_no_decode_threads()
    _assert_states_equal(a.state, b.state)
    assert a.stats().frames == 40 and a.state.pending_frames[0][1].shape == (32, 96, 3)  # resized here


def test_feed_file_decoder_error_has_the_same_message_and_leaves_no_thread(model, tmp_path):
    path = write_test_pattern_clip(tmp_path / "g.mp4", 4, fps=5, size=(64, 64), audio=False)
    data = bytearray(path.read_bytes())
    i = data.find(b"mdat")
    size = int.from_bytes(data[i - 4:i], "big")
    data[i + 4:i - 4 + size] = np.random.default_rng(0).integers(0, 256, size - 8, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(MediaError) as direct:
        list(FileSource(path, audio=False, max_pixels=None))
    session = StreamSession(model, use_audio=False)
    with pytest.raises(MediaError) as threaded:
        session.feed_file(path)
    assert str(threaded.value) == str(direct.value) and "cannot decode video" in str(direct.value)
    _wait_no_decode_threads()


def test_feed_file_stopped_by_progress_keeps_what_was_fed(model, clip):
    session = StreamSession(model, video_tokens=48, audio_tokens=16, chunk_frames=8)
    seen = []

    def progress(item):
        seen.append(item)
        if len(seen) == 21:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        session.feed_file(clip, progress=progress)
    _wait_no_decode_threads()
    assert session.stats().frames == 11  # items alternate frame, audio chunk: 11 frames, 10 chunks
    assert session.ask("What?") is not None


# out of memory ------------------------------------------------------------------------------------------------


class _FailOnce:
    """Wraps a bound method so that its ``n``-th call raises ``error`` (fault injection)."""

    def __init__(self, fn, error: BaseException, n: int = 1) -> None:
        self.fn, self.error, self.n, self.calls = fn, error, n, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.n:
            raise self.error
        return self.fn(*args, **kwargs)


def _session(model) -> StreamSession:
    s = StreamSession(model, video_tokens=40, audio_tokens=24, chunk_frames=8, max_pixels=64 * 96)
    _stream(s, 37)
    return s


def _snapshot(session: StreamSession) -> SessionState:
    st = session.state
    return SessionState(**{f.name: (list(getattr(st, f.name)) if f.name == "pending_frames" else getattr(st, f.name))
                           for f in fields(SessionState)})


@pytest.mark.parametrize("target, stage, needle", [
    ("vision", "vision tower", "vision_patches"),
    ("audio", "audio encoder", "audio_pieces"),
    ("ttt", "TTT memory", "chunk_frames"),
])
def test_out_of_memory_while_feeding(model, monkeypatch, target, stage, needle):
    session = _session(model)
    before, answer = _snapshot(session), session.ask("What?")
    owner, name = {"vision": (model.backbone, "encode_frames"), "audio": (model.audio, "encode"),
                   "ttt": (model.ttt, "forward")}[target]
    monkeypatch.setattr(owner, name, _FailOnce(getattr(owner, name), torch.OutOfMemoryError("CUDA out of memory")))
    frames = _frames(40, 72, 120, seed=9)
    with pytest.raises(DeviceMemoryError) as err:  # 40 frames + 40 s of audio: every stage runs
        session.feed(frames=list(frames), t=[37.0 + k for k in range(40)],
                     audio=np.zeros(40 * 16000, dtype=np.float32), audio_t=37.0)
    message = str(err.value)
    assert "\n" not in message and message.startswith("out of ") and stage in message and needle in message
    assert "nothing fed earlier is lost" in message
    _assert_states_equal(session.state, before)
    assert session.ask("What?") == answer  # usable, and the memory is what it was
    session.feed(frames=list(frames), t=[37.0 + k for k in range(40)])  # the fault is gone: feeding works again
    assert session.stats().frames == 77


def test_out_of_memory_while_answering(model, monkeypatch):
    session = _session(model)
    before, answer, questions = _snapshot(session), session.ask("What?"), session.stats().questions
    bb = model.backbone
    monkeypatch.setattr(bb, "forward_embeds", _FailOnce(bb.forward_embeds, torch.OutOfMemoryError("out of memory")))
    with pytest.raises(DeviceMemoryError, match=r"language model while answering: lower the memory tokens "
                                                r"video_tokens / audio_tokens \(now 40 / 24\).*read_chunk"):
        session.ask("What?")
    _assert_states_equal(session.state, before)
    assert session.stats().questions == questions
    assert session.ask("What?") == answer


def test_out_of_memory_in_feed_file_keeps_the_items_before(model, clip, monkeypatch):
    session = StreamSession(model, video_tokens=48, audio_tokens=16, chunk_frames=8)
    bb = model.backbone
    monkeypatch.setattr(bb, "encode_frames", _FailOnce(bb.encode_frames, torch.OutOfMemoryError("oom"), n=3))
    with pytest.raises(DeviceMemoryError, match="vision_patches"):
        session.feed_file(clip)
    _wait_no_decode_threads()
    assert session.stats().frames == 23  # the 24th frame completes the 3rd chunk, whose vision call failed
    assert len(session.state.pending_frames) == 7 and session.ask("What?") is not None


def test_cli_turns_out_of_memory_into_one_line_exit_2(tmp_path):
    """The CLI in a subprocess whose vision tower always runs out of memory."""
    clip = write_test_pattern_clip(tmp_path / "c.mp4", seconds=6, fps=2, size=(64, 64))
    code = ("import sys, torch\n"
            "from avmem.backbones.qwen import QwenVLBackbone\n"
            "def fail(self, frames):\n"
            "    raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')\n"
            "QwenVLBackbone.encode_frames = fail\n"
            "from avmem.cli import app\n"
            "sys.argv = ['avmem'] + sys.argv[1:]\n"
            "app()\n")
    env = {**os.environ, "AVMEM_CACHE": os.environ.get("AVMEM_CACHE", str(tmp_path / "cache"))}
    result = subprocess.run([sys.executable, "-c", code, "ask", str(clip), "-q", "What?", "--model", "tiny-qwen3-vl",
                             "--max-new-tokens", "2"], capture_output=True, text=True, env=env, cwd=ROOT,
                            timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("avmem: error:")]
    assert len(lines) == 1 and "vision tower" in lines[0] and "vision_patches" in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_gpu_ingest_benchmark_quick_run_on_cpu(tmp_path):
    """CI smoke run of benchmarks/gpu_ingest.py: every row is printed (speed targets are not checked here)."""
    env = {**os.environ, "AVMEM_CACHE": os.environ.get("AVMEM_CACHE", str(tmp_path / "cache"))}
    result = subprocess.run([sys.executable, "benchmarks/gpu_ingest.py", "--model", "tiny-qwen3-vl", "--device", "cpu",
                             "--quick"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    for needle in ("| generate files |", "| decode alone", "| x real time, 36 s file, decode included |",
                   "| stage s per 300 s", "resize", "vision", "ttt", "bank", "audio", "| host peak RSS, long / short |"):
        assert needle in result.stdout, (needle, result.stdout)
