"""avmem as an lmms-eval model: ``lmms-eval --model avmem --model_args pretrained=MODEL,... --tasks videomme,...``.

lmms-eval (0.7.x) finds the model through the ``lmms_eval.models`` entry point of avmem's package metadata: the
entry point names :func:`manifest`, which tells lmms-eval's registry the model id ``avmem`` and the class path of
:class:`AVMem` (an entry point may not name the class itself: lmms-eval calls a callable payload to get the
manifest, which would instantiate the model).

Importing this module does not import lmms-eval; :class:`AVMem` (a subclass of lmms-eval's ``lmms``) is built
on first access and needs it. The work itself is done by :class:`VideoQA`, which needs no lmms-eval:

- the model is loaded once (``pretrained`` is a preset, an avmem folder, the official release folder or a
  Qwen-VL folder / hub id, as in ``avmem ask --model``);
- each video is streamed once through a :class:`~avmem.session.StreamSession` with the session settings of
  ``model_args``; its questions are asked of that session (``ask`` answers from a flushed copy, so one question
  never changes what another sees); the ``cached_videos`` most recently streamed sessions are kept;
- ``generate_until``: greedy decoding (``StreamSession.ask``) with the task's ``max_new_tokens``, cut at the first
  of its ``until`` strings; sampling (``temperature > 0``, ``do_sample``, ``num_beams > 1``) is refused;
- ``loglikelihood``: log p(continuation | memory, context) with the context as the user turn and the continuation
  (leading whitespace removed) as the start of the assistant turn, and whether greedy decoding would produce it.
"""

from __future__ import annotations

import math
import os
import types
import typing
from collections import Counter, OrderedDict
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

MODEL_ID = "avmem"
CLASS_PATH = "avmem.integrations._lmms_model.AVMem"
LOAD_ARGS: dict[str, type] = {"pretrained": str, "device": str, "dtype": str, "cg_iters": int, "seed": int}
"""model_args that load the model (as ``avmem ask``'s --model, --device, --dtype, --cg-iters; ``seed`` seeds the
weights of the random presets)."""
PLUGIN_ARGS: dict[str, type] = {"cached_videos": int, "on_error": str}
"""model_args of the plug-in: streamed videos kept in memory, and what a video that cannot be read does
(``raise``: stop the run; ``empty``: answer its questions with an empty reply, logprob -inf, and go on)."""
LMMS_ARGS = ("batch_size", "max_batch_size")
"""Passed by lmms-eval to every model; avmem answers one question at a time and ignores them."""
ON_ERROR = ("raise", "empty")
AUTO_FEATURES = ("use_audio", "use_ttt")
"""Session settings that default to what the model has (as in ``avmem ask``): audio when it has an audio encoder,
the TTT memory when it has one; ``true`` with a model lacking it is an error."""


def manifest():
    """The lmms-eval model manifest for ``avmem`` (payload of the ``lmms_eval.models`` entry point)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)


def __getattr__(name: str) -> Any:
    if name == "AVMem":
        try:
            from ._lmms_model import AVMem
        except ImportError as exc:
            raise ImportError(f"avmem.integrations.lmms_eval.AVMem needs lmms-eval (pip install lmms_eval): "
                              f"{exc}") from exc
        return AVMem
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ModelArgsError(ValueError):
    """A bad ``--model_args`` entry (one line naming it)."""


def _session_types() -> dict[str, tuple[type, bool]]:
    """SessionSettings field -> (base type, optional)."""
    from ..session import SessionSettings

    hints = typing.get_type_hints(SessionSettings)
    out: dict[str, tuple[type, bool]] = {}
    for f in fields(SessionSettings):
        hint = hints[f.name]
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
            else ()
        if args:
            out[f.name] = (next(a for a in args if a is not type(None)), type(None) in args)
        else:
            out[f.name] = (hint, False)
    return out


def _coerce(name: str, value: Any, typ: type, optional: bool) -> Any:
    """``value`` (as lmms-eval parses ``key=value``: bool, int, float or str) as a ``typ``; ModelArgsError if not."""
    if optional and (value is None or (isinstance(value, str) and value.lower() == "none")):
        return None
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif typ in (int, float):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if typ is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if typ is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif typ is str:
        if isinstance(value, bool):
            return str(value).lower()
        return str(value)
    kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(typ, typ.__name__)
    raise ModelArgsError(f"avmem model_args: {name} must be {kind}{' or none' if optional else ''}, got {value!r}")


def parse_model_args(args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Split and type-check model_args: (load options, session setting overrides, plug-in options).

    Raises:
        ModelArgsError: an unknown key or a value of the wrong type (one line).
    """
    session_types = _session_types()
    load, session, plugin = {}, {}, {}
    for key, value in args.items():
        if key in LMMS_ARGS:
            continue
        if key in LOAD_ARGS:
            optional = key in ("cg_iters", "device", "dtype")
            load[key] = _coerce(key, value, LOAD_ARGS[key], optional)
        elif key in PLUGIN_ARGS:
            plugin[key] = _coerce(key, value, PLUGIN_ARGS[key], False)
        elif key in session_types:
            session[key] = _coerce(key, value, *session_types[key])
        else:
            known = sorted({*LOAD_ARGS, *PLUGIN_ARGS, *session_types})
            raise ModelArgsError(f"avmem model_args: unknown key {key!r} (known: {', '.join(known)})")
    if not load.get("pretrained"):
        raise ModelArgsError("avmem model_args: give pretrained=MODEL: the official release folder, an avmem folder, "
                             "a Qwen2.5-VL / Qwen3-VL folder or hub id, or a preset (random-qwen3-vl-8b, "
                             "tiny-qwen3-vl, ...)")
    if plugin.get("cached_videos", 1) < 1:
        raise ModelArgsError(f"avmem model_args: cached_videos must be >= 1, got {plugin['cached_videos']}")
    if plugin.get("on_error", "raise") not in ON_ERROR:
        raise ModelArgsError(f"avmem model_args: on_error must be one of {', '.join(ON_ERROR)}, "
                             f"got {plugin['on_error']!r}")
    return load, session, plugin


def video_of(visuals: Any, where: str = "") -> str:
    """The one media file a question is about, from a task's ``doc_to_visual`` result.

    Raises:
        ValueError: no visual at all.
        NotImplementedError: several visuals, or images / arrays instead of a file path.
    """
    items = list(visuals) if isinstance(visuals, (list, tuple)) else ([] if visuals is None else [visuals])
    if not items:
        raise ValueError(f"avmem: {where}the task gives no video for this question (avmem answers about a stream)")
    if len(items) != 1 or not isinstance(items[0], (str, os.PathLike)):
        kinds = ", ".join(sorted({type(v).__name__ for v in items}))
        raise NotImplementedError(f"avmem: {where}the task gives {len(items)} visual(s) of type {kinds}; avmem answers "
                                  f"about one video or audio file (a path) per question")
    return str(items[0])


def generation_limits(gen_kwargs: dict[str, Any] | None, default_max_new_tokens: int) -> tuple[int, list[str]]:
    """(max_new_tokens, until strings) from a task's generation kwargs; avmem decodes greedily only.

    Raises:
        ValueError: sampling or beam search asked for, or a bad ``until`` / ``max_new_tokens``.
    """
    kw = dict(gen_kwargs or {})
    temperature = kw.get("temperature") or 0
    if temperature > 0 or kw.get("do_sample") or (kw.get("num_beams") or 1) > 1:
        asked = {k: kw[k] for k in ("temperature", "do_sample", "num_beams") if k in kw}
        raise ValueError(f"avmem decodes greedily only, the task asks for {asked}: set temperature=0 (and do_sample="
                         f"false, num_beams=1) in --gen_kwargs")
    until = kw.get("until") or []
    if isinstance(until, str):
        until = [until]
    if not isinstance(until, (list, tuple)) or not all(isinstance(u, str) for u in until):
        raise ValueError(f"avmem: gen_kwargs until must be a string or a list of strings, got {until!r}")
    limit = kw.get("max_new_tokens") or default_max_new_tokens
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise ValueError(f"avmem: gen_kwargs max_new_tokens must be a positive integer, got {limit!r}")
    return limit, [u for u in until if u]


def cut_at(text: str, until: list[str]) -> str:
    """``text`` up to the first occurrence of any of ``until``."""
    end = min((i for i in (text.find(u) for u in until) if i >= 0), default=len(text))
    return text[:end]


class VideoQA:
    """A loaded avmem model answering questions about videos, each video streamed once into a session.

    ``streams[video]`` counts how often each video was streamed; ``failed[video]`` holds the one-line reason of a
    video that could not be read (with ``on_error="empty"``).
    """

    def __init__(self, model, settings, cached_videos: int = 1, on_error: str = "raise") -> None:
        settings.check(model)
        self.model = model
        self.settings = settings
        self.cached_videos = cached_videos
        self.on_error = on_error
        self.streams: Counter[str] = Counter()
        self.failed: dict[str, str] = {}
        self._sessions: OrderedDict[str, Any] = OrderedDict()

    @classmethod
    def from_model_args(cls, args: dict[str, Any]) -> "VideoQA":
        """Parse lmms-eval model_args, load the model and check the session settings.

        Raises:
            ModelArgsError: bad model_args or settings the model cannot run (one line).
        """
        from ..memory.kv.readers import get_reader
        from ..model import load_model
        from ..runtime import resolve_device, resolve_dtype
        from ..session import SessionSettings

        load, overrides, plugin = parse_model_args(args)
        try:
            if "reader" in overrides:
                get_reader(overrides["reader"])  # an unknown reader fails before the model loads
            if load.get("cg_iters") is not None and load["cg_iters"] < 0:
                raise ValueError(f"cg_iters must be >= 0, got {load['cg_iters']}")
            device = load.get("device") or "auto"
            world = int(os.environ.get("WORLD_SIZE", "1"))
            if device == "auto" and world > 1 and os.environ.get("LOCAL_RANK") is not None:
                import torch

                if torch.cuda.is_available():
                    device = f"cuda:{int(os.environ['LOCAL_RANK'])}"  # one GPU per process (accelerate / torchrun)
            dev = resolve_device(device)
            dtype = resolve_dtype(load.get("dtype"))
            settings = replace(SessionSettings(), **overrides)
            if settings.budget_file is not None and not Path(settings.budget_file).is_file():
                raise ValueError(f"budget_file {settings.budget_file}: no such file")
        except ValueError as exc:
            raise ModelArgsError(f"avmem model_args: {str(exc).removeprefix('--')}") from None
        try:
            model = load_model(load["pretrained"], device=dev, dtype=dtype, seed=load.get("seed", 0),
                               cg_iters=load.get("cg_iters"))
        except ValueError as exc:
            raise ModelArgsError(f"avmem model_args: pretrained={load['pretrained']}: {exc}") from None
        auto = {k: getattr(model, "audio" if k == "use_audio" else "ttt") is not None
                for k in AUTO_FEATURES if k not in overrides}
        settings = replace(settings, **auto)
        try:
            return cls(model, settings, **plugin)
        except ValueError as exc:
            raise ModelArgsError(f"avmem model_args: {exc}") from None

    def session(self, video: str):
        """The session holding ``video`` streamed to its end (streamed now unless cached).

        Raises:
            avmem.media.MediaError: the video cannot be read (its ``failed`` entry is set).
        """
        from ..media import MediaError
        from ..session import StreamSession

        if video in self.failed:
            raise MediaError(self.failed[video])
        if video in self._sessions:
            self._sessions.move_to_end(video)
            return self._sessions[video]
        while len(self._sessions) >= self.cached_videos:
            self._sessions.popitem(last=False)
        session = StreamSession(self.model, self.settings)
        self.streams[video] += 1
        try:
            session.feed_file(video)
        except MediaError as exc:
            self.failed[video] = str(exc)
            raise
        self._sessions[video] = session
        return session

    def _usable(self, video: str):
        """The video's session, or None when it cannot be read and ``on_error`` is ``empty``."""
        from ..media import MediaError

        try:
            return self.session(video)
        except MediaError:
            if self.on_error == "raise":
                raise
            return None

    def generate(self, video: str, prompt: str, gen_kwargs: dict[str, Any] | None = None) -> str:
        """The greedy reply to ``prompt`` about ``video`` (cut at the task's ``until`` strings)."""
        limit, until = generation_limits(gen_kwargs, self.settings.max_new_tokens)
        session = self._usable(video)
        if session is None:
            return ""
        return cut_at(session.ask(prompt, max_new_tokens=limit), until)

    def loglikelihood(self, video: str, context: str, continuation: str) -> tuple[float, bool]:
        """(log p(continuation | memory, context), whether greedy decoding gives exactly the continuation).

        The context is the user turn; the continuation, leading whitespace removed (lmms-eval puts the target
        delimiter there), starts the assistant turn.
        """
        text = continuation.lstrip()
        if not context.strip() or not text:
            raise NotImplementedError("avmem: loglikelihood needs a non-empty context and continuation (unconditional "
                                      "scores such as acc_mutual_info are not supported)")
        session = self._usable(video)
        if session is None:
            return -math.inf, False
        return self.score_ids(session, context, self.model.backbone.tokenizer(text, add_special_tokens=False).input_ids)

    def score_ids(self, session, context: str, ids: list[int]) -> tuple[float, bool]:
        """(log p(ids | memory, context), whether greedy decoding gives exactly ``ids``) from ``session``."""
        return session.continuation_logprob(context, ids)
