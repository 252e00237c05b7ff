"""Session snapshots: a safetensors file (tensors only, it cannot carry code) with a JSON header, written
crash-safely and checked field by field before anything is read.

Layout: the safetensors ``__metadata__`` holds one entry ``"avmem"``, a JSON object ``{"format", "settings",
"model", "counters"}``; the tensors are

    ttt.*                 the memory layer's state (TTT: fast.W1/b1/W2/b2 [1,H,..], lag_tail [1,n,D], last_loss [1],
                          tokens []; Mamba-2: ssm [1,H,P,N], conv [1,C,K-1])
    video.tokens / .ids   the video bank [n, 1 + deepstack, D] / [n] (n <= video_tokens)
    audio.tokens / .ids   the audio bank [n, D] / [n] (n <= audio_tokens)
    pending.frames/.times resized frames not yet absorbed, uint8 [k, h, w, 3] / float64 [k] (k < chunk_frames)
    pending.audio         16 kHz samples not yet encoded, float32 [m] (m < audio_pieces * 30 s)
    patches.*             the patch log (times [p], grid [p, 2], first_id [p], n_ts [p])
    audio_log.*           where each encoded audio piece starts (first_id [a], start [a])

Restored from a snapshot: the state above and the settings that decide what the memory holds
(:data:`WRITE_SETTINGS`). Never restored: the settings that only decide how questions read the memory
(:data:`READ_SETTINGS`: answer length, reader, its budgets, ``budget_file`` ...): those are the caller's.

Loading reads the header first (bounded: :data:`MAX_HEADER_BYTES`) and checks the format, every tensor's name,
dtype and shape against the model and the settings, and that the file is exactly as long as the header says;
only then are tensors read, and their values (times finite and increasing, ids in range, counts consistent)
checked before a session is built. Any defect is one ``ValueError`` line naming the file.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .fsutil import atomic_write

if TYPE_CHECKING:
    from .model import AVMemModel
    from .session import SessionSettings, StreamSession

WRITE_SETTINGS = ("fps", "max_pixels", "min_pixels", "video_tokens", "audio_tokens", "use_audio", "use_ttt",
                  "video_policy", "audio_policy", "bank_step", "chunk_frames", "vision_patches", "audio_pieces")
"""Settings that change what the memory holds (sampling, capacities, policies, compression and call sizes): saved
with a snapshot and restored from it."""
READ_SETTINGS = ("max_new_tokens", "max_wrappers", "reader", "read_tokens", "read_chunk", "read_joint", "budget_file",
                 "omni_lambda", "incremental", "block_tokens")
"""Settings that only change how a question reads the memory: never taken from a snapshot (the caller's)."""
MAX_HEADER_BYTES = 1 << 20
"""The largest JSON header accepted (a session's is a few KB)."""
META_KEY = "avmem"
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "U8": torch.uint8}
_FLOATS = ("F64", "F32", "F16", "BF16")
_PIECE = 30 * 16000  # samples per encoded audio piece (session.AUDIO_RATE * 30)


def _fail(path: Path, problem: str) -> ValueError:
    return ValueError(f"{path}: {problem}")


# writing -------------------------------------------------------------------------------------------------------

def _write_payload(tmp: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """The bytes of a snapshot into ``tmp`` (safetensors, ``meta`` as JSON in its header)."""
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={META_KEY: json.dumps(meta, allow_nan=False)})


def write_snapshot(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` and ``meta`` to ``path`` crash-safely (temporary file, fsync, rename, folder fsync): until
    the new file is complete the previous one stays in place and loadable.

    Raises:
        OSError: the file could not be written (full disk, no permission); ``path`` is unchanged.
    """
    path = Path(path)
    try:
        atomic_write(path, lambda tmp: _write_payload(tmp, tensors, meta), fsync=True)
    except OSError as exc:
        raise OSError(exc.errno, f"{path}: snapshot not written ({exc.strerror or exc}); the previous file is "
                                 f"unchanged") from None
    return path


# reading: structure -------------------------------------------------------------------------------------------

def read_header(path: str | Path) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, Any]]:
    """The tensor table ``{name: (dtype, shape)}`` and the avmem metadata of a snapshot, from its header alone.

    Checks that the header is bounded, well-formed JSON, that each tensor's byte range matches its dtype and shape,
    that the ranges tile the data exactly and that the file is exactly as long as they say.

    Raises:
        ValueError: one line naming the file and the problem.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            size = fh.seek(0, 2)
            if len(head) < 8:
                raise _fail(path, "not an avmem session file (too short)")
            (n,) = struct.unpack("<Q", head)
            if head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and n > MAX_HEADER_BYTES):  # torch.save: zip, pickle
                raise _fail(path, "an old pickle-based session file (avmem-session/1); it is not loaded because "
                                  "pickle can run code: re-create the snapshot with this version")
            if n > MAX_HEADER_BYTES or n + 8 > size:
                raise _fail(path, f"not an avmem session file (header of {n} bytes in a {size}-byte file)")
            fh.seek(8)
            raw = fh.read(n)
    except OSError as exc:
        raise _fail(path, f"cannot read ({exc.strerror or exc})") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _fail(path, "not an avmem session file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise _fail(path, "not an avmem session file (its header is not an object)")
    extra = header.pop("__metadata__", None)
    if not isinstance(extra, dict) or not isinstance(extra.get(META_KEY), str):
        raise _fail(path, "not an avmem session file (no avmem metadata)")
    try:
        meta = json.loads(extra[META_KEY], parse_constant=_refuse_constant)
    except ValueError:
        raise _fail(path, "the avmem metadata is not valid JSON (or holds NaN/Infinity)") from None
    if not isinstance(meta, dict):
        raise _fail(path, "the avmem metadata is not an object")
    table: dict[str, tuple[str, tuple[int, ...]]] = {}
    ranges = []
    for name, entry in header.items():
        if not (isinstance(entry, dict) and set(entry) == {"dtype", "shape", "data_offsets"}):
            raise _fail(path, f"tensor '{name}': malformed header entry")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _DTYPES:
            raise _fail(path, f"tensor '{name}': unsupported dtype {dtype!r}")
        if not (isinstance(shape, list) and len(shape) <= 4 and all(_is_int(d) and d >= 0 for d in shape)):
            raise _fail(path, f"tensor '{name}': bad shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise _fail(path, f"tensor '{name}': bad data offsets {offsets!r}")
        nbytes = math.prod(shape) * _DTYPES[dtype].itemsize
        if offsets[1] - offsets[0] != nbytes:
            raise _fail(path, f"tensor '{name}': {offsets[1] - offsets[0]} bytes for shape {shape} {dtype}")
        table[name] = (dtype, tuple(shape))
        ranges.append(tuple(offsets))
    end = 0
    for start, stop in sorted(ranges):
        if start != end:
            raise _fail(path, "tensor data ranges overlap or leave holes")
        end = stop
    if 8 + n + end != size:
        raise _fail(path, f"truncated or padded: the header describes {8 + n + end} bytes, the file has {size}")
    return table, meta


def read_tensors(path: str | Path, table: dict[str, tuple[str, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    """The tensors of ``table`` (from :func:`read_header`), read from ``path`` and checked against it."""
    path = Path(path)
    out = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            for name, (dtype, shape) in table.items():
                t = fh.get_tensor(name)
                if t.dtype != _DTYPES[dtype] or tuple(t.shape) != shape:
                    raise _fail(path, f"tensor '{name}' changed while it was read")
                out[name] = t
    except (OSError, RuntimeError) as exc:  # safetensors' own errors, a file replaced meanwhile
        raise _fail(path, f"unreadable tensor data ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") \
            from None
    return out


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# sessions ------------------------------------------------------------------------------------------------------

def save_session(session: StreamSession, path: str | Path) -> Path:
    """Write ``session``'s memory state and its :data:`WRITE_SETTINGS` to ``path`` (crash-safe)."""
    from .session import SESSION_FORMAT

    st = session.state
    tensors: dict[str, torch.Tensor] = {}
    if st.ttt is not None:
        tensors.update({f"ttt.{k}": v for k, v in st.ttt.tensors().items()})
    for name, bank in (("video", st.video), ("audio", st.audio)):
        if bank is not None:
            tensors[f"{name}.tokens"] = bank.tokens
            tensors[f"{name}.ids"] = bank.ids
    if st.pending_frames:
        tensors["pending.frames"] = torch.stack([f for _, f in st.pending_frames])
    tensors["pending.times"] = torch.tensor([t for t, _ in st.pending_frames], dtype=torch.float64, device="cpu")
    tensors["pending.audio"] = torch.from_numpy(np.ascontiguousarray(st.pending_audio, dtype=np.float32)).to("cpu")
    for name in ("times", "grid", "first_id", "n_ts"):
        tensors[f"patches.{name}"] = torch.from_numpy(np.ascontiguousarray(getattr(st.patches, name))).to("cpu")
    tensors["audio_log.first_id"] = torch.from_numpy(np.ascontiguousarray(st.audio_log.first_id)).to("cpu")
    tensors["audio_log.start"] = torch.from_numpy(np.ascontiguousarray(st.audio_log.start)).to("cpu")
    meta = {
        "format": SESSION_FORMAT,
        "settings": {k: getattr(session.settings, k) for k in WRITE_SETTINGS},
        "model": session._model_fingerprint(),
        "counters": {"pending_audio_start": st.pending_audio_start, "video_ids": st.video_ids,
                     "audio_ids": st.audio_ids, "audio_samples": st.audio_samples, "frames": st.frames,
                     "last_time": st.last_time, "drops": st.drops, "questions": session._questions},
    }
    return write_snapshot(path, tensors, meta)


def _restored_settings(path: Path, saved: Any, base: SessionSettings) -> SessionSettings:
    """``base`` with the snapshot's :data:`WRITE_SETTINGS` (each type-checked; ranges by ``check`` later)."""
    from .session import SessionSettings

    if not isinstance(saved, dict) or set(saved) != set(WRITE_SETTINGS):
        got = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
        raise _fail(path, f"settings must hold exactly {list(WRITE_SETTINGS)}, got {got}")
    kinds = {f.name: f.type for f in fields(SessionSettings)}
    for name, value in saved.items():
        kind = kinds[name]
        ok = (isinstance(value, bool) if kind == "bool" else
              isinstance(value, str) if kind == "str" else
              (_is_int(value) or (value is None and "None" in kind)) if kind.startswith("int") else
              isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))
        if not ok:
            raise _fail(path, f"setting {name}={value!r} is not a valid {kind}")
    return replace(base, **saved)


def _expect(path: Path, table: dict, name: str, dtypes: tuple[str, ...], shape: tuple[int | None, ...]) -> tuple:
    """Check one tensor's dtype and shape (None: any length); its shape."""
    if name not in table:
        raise _fail(path, f"missing tensor '{name}'")
    dtype, got = table[name]
    if dtype not in dtypes:
        raise _fail(path, f"tensor '{name}' has dtype {dtype}, expected {' or '.join(dtypes)}")
    if len(got) != len(shape) or any(e is not None and e != g for e, g in zip(shape, got)):
        want = ", ".join("n" if e is None else str(e) for e in shape)
        raise _fail(path, f"tensor '{name}' has shape {list(got)}, expected [{want}]")
    return got


def frame_pixel_limit(settings: SessionSettings, factor: int) -> int:
    """The largest frame area (pixels) ``smart_resize`` can give under ``settings``: ``max_pixels``, a side clamped to
    one ``factor`` at the largest accepted aspect ratio (200), or a frame scaled up to ``min_pixels`` plus rounding."""
    return max(settings.max_pixels, 200 * factor * factor) + 16 * factor * math.isqrt(settings.min_pixels) + factor ** 2


def _check_table(path: Path, table: dict, model: AVMemModel, s: SessionSettings) -> None:
    """Every tensor's name, dtype and shape against the model and the settings (before any data is read)."""
    from .memory.ttt import TTTMemory

    names = set(table)
    hidden = model.hidden_size
    known = {"pending.frames", "pending.times", "pending.audio", "audio_log.first_id", "audio_log.start",
             "video.tokens", "video.ids", "audio.tokens", "audio.ids", *(f"patches.{n}" for n in
                                                                          ("times", "grid", "first_id", "n_ts"))}
    ttt_names = {n for n in names if n.startswith("ttt.")}
    if ttt_names:
        if not s.use_ttt or model.ttt is None:
            raise _fail(path, "holds a memory-layer state but the session does not use one")
        if isinstance(model.ttt, TTTMemory):
            cfg = model.ttt.cfg
            for part, param in zip(("W1", "b1", "W2", "b2"), (model.ttt.ttt.W1, model.ttt.ttt.b1, model.ttt.ttt.W2,
                                                             model.ttt.ttt.b2)):
                _expect(path, table, f"ttt.fast.{part}", _FLOATS, (1, *param.shape))
            _expect(path, table, "ttt.tokens", ("I64",), ())
            allowed = {"ttt.fast.W1", "ttt.fast.b1", "ttt.fast.W2", "ttt.fast.b2", "ttt.tokens"}
            if "ttt.lag_tail" in names:
                got = _expect(path, table, "ttt.lag_tail", _FLOATS, (1, None, hidden))
                if got[1] > max(cfg.lag_distance, cfg.mini_batch):
                    raise _fail(path, f"tensor 'ttt.lag_tail' holds {got[1]} rows, more than the layer keeps")
                allowed.add("ttt.lag_tail")
            if "ttt.last_loss" in names:
                _expect(path, table, "ttt.last_loss", _FLOATS, (1,))
                allowed.add("ttt.last_loss")
        else:
            cfg = model.ttt.cfg
            _expect(path, table, "ttt.ssm", _FLOATS, (1, cfg.heads, cfg.headdim, cfg.d_state))
            _expect(path, table, "ttt.conv", _FLOATS, (1, model.ttt.conv_dim, cfg.d_conv - 1))
            allowed = {"ttt.ssm", "ttt.conv"}
        if ttt_names - allowed:
            raise _fail(path, f"unknown tensor '{min(ttt_names - allowed)}'")
    unknown = sorted(names - known - ttt_names)
    if unknown:
        raise _fail(path, f"unknown tensor '{unknown[0]}'")
    if "video.tokens" in names or "video.ids" in names:
        n = _expect(path, table, "video.tokens", _FLOATS, (None, 1 + model.backbone.num_deepstack, hidden))[0]
        _expect(path, table, "video.ids", ("I64",), (n,))
        if n > s.video_tokens:
            raise _fail(path, f"the video memory holds {n} tokens, more than video_tokens={s.video_tokens}")
    if "audio.tokens" in names or "audio.ids" in names:
        if not s.use_audio:
            raise _fail(path, "holds an audio memory but use_audio is off")
        n = _expect(path, table, "audio.tokens", _FLOATS, (None, hidden))[0]
        _expect(path, table, "audio.ids", ("I64",), (n,))
        if n > s.audio_tokens:
            raise _fail(path, f"the audio memory holds {n} tokens, more than audio_tokens={s.audio_tokens}")
    k = _expect(path, table, "pending.times", ("F64",), (None,))[0]
    if k >= s.chunk_frames:
        raise _fail(path, f"{k} pending frames, but a chunk ({s.chunk_frames} frames) is absorbed when full")
    if k:
        factor = model.backbone.vision.factor
        _, h, w, _ = _expect(path, table, "pending.frames", ("U8",), (k, None, None, 3))
        if h % factor or w % factor or not 0 < h * w <= frame_pixel_limit(s, factor):
            raise _fail(path, f"pending frames of {h}x{w} do not fit max_pixels={s.max_pixels} (factor {factor})")
    elif "pending.frames" in names:
        raise _fail(path, "pending frames without their times")
    m = _expect(path, table, "pending.audio", ("F32",), (None,))[0]
    if m >= s.audio_pieces * _PIECE or (m and not s.use_audio):
        raise _fail(path, f"{m} pending audio samples, more than audio_pieces={s.audio_pieces} pieces of 30 s")
    p = _expect(path, table, "patches.times", ("F64",), (None,))[0]
    _expect(path, table, "patches.grid", ("I64",), (p, 2))
    _expect(path, table, "patches.first_id", ("I64",), (p,))
    _expect(path, table, "patches.n_ts", ("I64",), (p,))
    a = _expect(path, table, "audio_log.first_id", ("I64",), (None,))[0]
    _expect(path, table, "audio_log.start", ("F64",), (a,))
    if a and not s.use_audio:
        raise _fail(path, "holds encoded audio but use_audio is off")


def _check_counters(path: Path, counters: Any) -> dict:
    names = {"pending_audio_start", "video_ids", "audio_ids", "audio_samples", "frames", "last_time", "drops",
             "questions"}
    if not isinstance(counters, dict) or set(counters) != names:
        raise _fail(path, f"counters must hold exactly {sorted(names)}")
    for name in ("video_ids", "audio_ids", "audio_samples", "frames", "drops", "questions"):
        if not (_is_int(counters[name]) and 0 <= counters[name] < 1 << 53):
            raise _fail(path, f"{name} must be an int >= 0, got {counters[name]!r}")
    for name in ("pending_audio_start", "last_time"):
        v = counters[name]
        if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                  and v >= 0):
            raise _fail(path, f"{name} must be a finite number >= 0 or null, got {v!r}")
    return counters


def _increasing(x: np.ndarray, strict: bool = True) -> bool:
    d = np.diff(x)
    return bool(np.all(d > 0) if strict else np.all(d >= 0))


def _check_values(path: Path, t: dict[str, torch.Tensor], c: dict, model: AVMemModel, s: SessionSettings) -> None:
    """Times finite and increasing, ids in range and increasing, counts consistent, float state finite."""
    times = t["patches.times"].numpy()
    grid, first = t["patches.grid"].numpy(), t["patches.first_id"].numpy()
    n_ts = t["patches.n_ts"].numpy()
    factor = model.backbone.vision.factor
    if not (np.isfinite(times).all() and (times >= 0).all() and _increasing(times)):
        raise _fail(path, "patch times must be finite, >= 0 and increasing")
    if len(grid) and ((grid < 1).any() or (grid.prod(axis=1) * factor ** 2 > frame_pixel_limit(s, factor)).any()):
        raise _fail(path, f"a patch grid does not fit max_pixels={s.max_pixels}")
    if (n_ts < 1).any() or (n_ts > 64).any():
        raise _fail(path, "timestamp token counts must be in 1..64")
    expected = np.concatenate([[0], np.cumsum(grid.prod(axis=1))]) if len(grid) else np.zeros(1, dtype=np.int64)
    if not np.array_equal(first, expected[:-1]) or c["video_ids"] != int(expected[-1]):
        raise _fail(path, f"patch token ids are inconsistent with video_ids={c['video_ids']}")
    pending = t["pending.times"].numpy()
    p, k = len(times), len(pending)
    if not (np.isfinite(pending).all() and _increasing(pending) and (p == 0 or k == 0 or pending[0] > times[-1])):
        raise _fail(path, "pending frame times must be finite, increasing and after the absorbed frames")
    if not (p + k <= c["frames"] <= 2 * p + k):
        raise _fail(path, f"frames={c['frames']} is inconsistent with {p} patches and {k} pending frames")
    last = c["last_time"]
    if (last is None) != (c["frames"] == 0) or (last is not None and (
            (k and last < pending[-1]) or (p and last < times[-1]))):
        raise _fail(path, f"last_time={last!r} is inconsistent with the frame times")
    for name, total in (("video", c["video_ids"]), ("audio", c["audio_ids"])):
        if f"{name}.ids" in t:
            ids = t[f"{name}.ids"].numpy()
            if len(ids) and not (ids[0] >= 0 and ids[-1] < total and _increasing(ids)):
                raise _fail(path, f"{name} memory ids must increase within 0..{total - 1}")
            if not bool(torch.isfinite(t[f"{name}.tokens"]).all()):
                raise _fail(path, f"the {name} memory holds NaN or Inf")
    a_first, a_start = t["audio_log.first_id"].numpy(), t["audio_log.start"].numpy()
    per_piece = model.audio.num_tokens(_PIECE) if model.audio is not None else 0
    if len(a_first):
        steps = np.diff(np.append(a_first, c["audio_ids"]))
        if a_first[0] != 0 or (steps < 1).any() or (steps > per_piece).any():
            raise _fail(path, f"audio token ids are inconsistent with audio_ids={c['audio_ids']}")
        if not (np.isfinite(a_start).all() and (a_start >= 0).all() and _increasing(a_start)):
            raise _fail(path, "audio piece times must be finite, >= 0 and increasing")
    elif c["audio_ids"]:
        raise _fail(path, f"audio_ids={c['audio_ids']} without any encoded audio piece")
    audio = t["pending.audio"]
    if not bool(torch.isfinite(audio).all()):
        raise _fail(path, "pending audio holds NaN or Inf")
    if c["audio_samples"] < len(audio) or (c["pending_audio_start"] is None) != (c["audio_samples"] == 0) \
            or (len(a_start) and c["pending_audio_start"] is not None and c["pending_audio_start"] < a_start[-1]):
        raise _fail(path, "audio_samples / pending_audio_start are inconsistent with the audio held")
    ttt = {k[4:]: v for k, v in t.items() if k.startswith("ttt.")}
    if any(v.is_floating_point() and not bool(torch.isfinite(v).all()) for v in ttt.values()):
        raise _fail(path, "the memory layer's state holds NaN or Inf")
    if "tokens" in ttt and not 0 <= int(ttt["tokens"]) <= c["video_ids"]:
        raise _fail(path, f"the TTT state has seen {int(ttt['tokens'])} tokens, more than video_ids={c['video_ids']}")


def load_session(path: str | Path, model: AVMemModel, settings: SessionSettings | None = None) -> StreamSession:
    """A session restored from ``path`` onto ``model``: the snapshot's memory state and :data:`WRITE_SETTINGS`,
    ``settings``' (default: :class:`SessionSettings`'s) :data:`READ_SETTINGS`.

    Raises:
        ValueError: one line naming the file and the first problem (not a snapshot, an old pickle-based one, another
            model, a tensor of the wrong name / dtype / shape, sizes beyond the settings, inconsistent values).
    """
    from .memory.bank import BankState
    from .memory.ssm import Mamba2State
    from .memory.ttt import TTTState
    from .session import SESSION_FORMAT, AudioLog, PatchLog, SessionSettings, StreamSession, without_runtime

    path = Path(path)
    table, meta = read_header(path)
    if meta.get("format") != SESSION_FORMAT:
        raise _fail(path, f"unsupported session format {meta.get('format')!r} (this version reads {SESSION_FORMAT})")
    settings = _restored_settings(path, meta.get("settings"), settings or SessionSettings())
    try:
        settings.check(model)
    except ValueError as exc:
        raise _fail(path, f"settings out of range: {exc}") from None
    saved_model = meta.get("model")
    session = StreamSession(model, settings)
    if not isinstance(saved_model, dict) or not isinstance(saved_model.get("ttt"), (dict, type(None))):
        raise _fail(path, "no model fingerprint")
    if dict(saved_model, ttt=without_runtime(saved_model["ttt"])) != session._model_fingerprint():
        raise _fail(path, f"saved with a different model ({saved_model.get('backbone_type')}, hidden "
                          f"{saved_model.get('hidden_size')}); load it with the model it was made with")
    counters = _check_counters(path, meta.get("counters"))
    _check_table(path, table, model, settings)
    tensors = read_tensors(path, table)
    _check_values(path, tensors, counters, model, settings)
    device = model.device
    st = session.state
    parts = {k[4:]: v.to(device) for k, v in tensors.items() if k.startswith("ttt.")}
    if parts:
        st.ttt = Mamba2State.from_tensors(parts) if model.spec.memory_layer == "mamba2" else TTTState.from_tensors(parts)
    for name in ("video", "audio"):
        if f"{name}.tokens" in tensors:
            setattr(st, name, BankState(tokens=tensors[f"{name}.tokens"].to(device),
                                        ids=tensors[f"{name}.ids"].to(device)))
    st.patches = PatchLog(**{n: tensors[f"patches.{n}"].numpy() for n in ("times", "grid", "first_id", "n_ts")})
    st.audio_log = AudioLog(tensors["audio_log.first_id"].numpy(), tensors["audio_log.start"].numpy())
    if "pending.frames" in tensors:
        st.pending_frames = list(zip(tensors["pending.times"].tolist(), list(tensors["pending.frames"].to(device))))
    st.pending_audio = tensors["pending.audio"].numpy()
    st.pending_audio_start = counters["pending_audio_start"]
    st.video_ids, st.audio_ids, st.audio_samples = counters["video_ids"], counters["audio_ids"], counters["audio_samples"]
    st.frames, st.last_time, st.drops = counters["frames"], counters["last_time"], counters["drops"]
    session._questions = counters["questions"]
    return session
