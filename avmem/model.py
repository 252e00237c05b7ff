"""The streaming audio-visual model: backbone + TTT memory + audio encoder, and how to load one.

    vision tower (per 2-frame temporal patch) -> TTT memory (main features only) -> video token bank
    Whisper + window Q-Former (2 tokens/s)                                      -> audio token bank
    banks + timestamps + question -> LLM (kept tokens at their original positions) -> answer

Loading (:func:`load_model`):

* ``"tiny-qwen3-vl"`` / ``"tiny-qwen2.5-vl"``: tiny *randomly initialised* models of the real
  ``transformers`` classes (tests); ``"small-qwen3-vl"``: a wider, 4-layer one (the demo model's starting
  point). Built once into a cache folder.
* ``"random-qwen3-vl-8b"`` / ``"random-qwen2.5-vl-7b"``: the full released architectures (Qwen3-VL-8B-Instruct /
  Qwen2.5-VL-7B-Instruct + the released TTT block + Whisper-large-v3 audio encoder and window Q-Former) with
  *random* weights, built in memory on the target device (bf16 unless ``dtype`` says otherwise); ``device="meta"``
  builds them without memory, for inspection. See :mod:`avmem.backbones.presets`.
* a folder written by :meth:`AVMemModel.save_pretrained` (``avmem.json`` + ``backbone/`` +
  ``ttt.safetensors`` / ``audio.safetensors``): every tensor must be present.
* the official video-SALMONN S release folder (``base/`` + adapter), or an avmem training run (same
  layout), or a release base folder alone (backbone + audio, no TTT): see :mod:`avmem.official_release`.
* a plain Qwen2.5-VL / Qwen3-VL folder or hub id: the backbone only. Untrained TTT or audio weights are
  never used, so TTT and audio are off unless you pass trained weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .backbones.qwen import QwenVLBackbone, backbone_class
from .backbones.tiny import save_tiny_backbone
from .memory.ttt import TTTConfig, TTTMemory
from .model_source import PRESETS, RELEASE_PRESETS, TINY_PRESETS, check_model_source

__all__ = ["PRESETS", "RELEASE_PRESETS", "TINY_PRESETS", "AVMemModel", "ModelSpec", "check_model_source",
           "load_model", "load_safetensors"]

MODEL_FILE = "avmem.json"


def load_safetensors(file: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file.

    Raises:
        ValueError: one line: missing, or not a safetensors file (pickle-based ``torch.save`` files are refused).
    """
    file = Path(file)
    if not file.is_file():
        raise ValueError(f"{file}: missing weights file")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as exc:
        with open(file, "rb") as fh:
            head = fh.read(4)
        pickled = head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"
        why = ("a pickle-based torch.save file; such weights are not loaded (pickle can run code): convert them to "
               "safetensors" if pickled else f"not a safetensors file ({str(exc).splitlines()[0]})")
        raise ValueError(f"{file}: {why}") from None


@dataclass
class ModelSpec:
    """What an avmem model folder holds (``avmem.json``)."""

    backbone_type: str
    ttt: dict | None = None
    audio: dict | None = None
    memory_layer: str = "ttt"
    random_weights: bool = False
    format: str = "avmem-model/1"


@dataclass
class AVMemModel:
    """Backbone adapter + optional TTT memory + optional audio encoder.

    Attributes:
        backbone: the Qwen adapter (vision tower, embeddings, generation).
        ttt: the memory layer on video tokens — the TTT block, or a Mamba-2 layer when
            ``spec.memory_layer == "mamba2"`` (the memory study's comparison) — or None (token bank only).
        audio: the audio encoder (``encode(samples) -> [n, D]``), or None (video only).
        spec: what was loaded; ``random_weights`` marks presets that are not trained.
        source: the path or id it was loaded from.
    """

    backbone: QwenVLBackbone
    ttt: TTTMemory | None
    audio: object | None
    spec: ModelSpec
    source: str = ""
    extras: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def hidden_size(self) -> int:
        return self.backbone.hidden_size

    def save_backbone(self, folder: str | Path) -> Path:
        """Write the backbone as a Hugging Face folder: weights, config, tokenizer, image normalisation."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.backbone.model.save_pretrained(folder)
        self.backbone.tokenizer.save_pretrained(folder)
        pre = {"image_mean": list(self.backbone.vision.mean), "image_std": list(self.backbone.vision.std)}
        (folder / "preprocessor_config.json").write_text(json.dumps(pre))
        return folder

    def save_pretrained(self, path: str | Path) -> Path:
        """Write backbone, TTT and audio weights and ``avmem.json`` to ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.save_backbone(path / "backbone")
        if self.ttt is not None:
            save_file({k: v.contiguous() for k, v in self.ttt.state_dict().items()}, path / "ttt.safetensors")
        if self.audio is not None:
            tensors = self.audio.official_state_dict(prefix="")
            save_file({k: v.contiguous() for k, v in tensors.items()}, path / "audio.safetensors")
        (path / MODEL_FILE).write_text(json.dumps(asdict(self.spec), indent=2))
        return path


def _cache_dir() -> Path:
    return Path(os.environ.get("AVMEM_CACHE", Path.home() / ".cache" / "avmem"))


def _tiny_ttt_config(dim: int) -> TTTConfig:
    return TTTConfig(dim=dim, num_heads=4, hidden_mult=1, mini_batch=64, base_lr=0.1, update="hf",
                     lag_distance=64, compat="clean")


def _build_tiny(kind: str, size: str, device: str | torch.device, seed: int) -> AVMemModel:
    folder = _cache_dir() / (f"tiny-{kind}-seed{seed}" if size == "tiny" else f"{size}-{kind}-seed{seed}")
    if not (folder / "config.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        save_tiny_backbone(folder, kind, seed=seed, size=size)
    backbone = backbone_class(kind).from_pretrained(folder, need_audio=True, dtype=torch.float32, device=device)
    torch.manual_seed(seed)
    ttt_cfg = _tiny_ttt_config(backbone.hidden_size)
    ttt = TTTMemory(ttt_cfg).to(device)
    audio = _make_audio(_tiny_audio_config(backbone.hidden_size), device)
    spec = ModelSpec(backbone_type=kind, ttt=ttt_cfg.to_dict(), audio=_audio_config_to_dict(audio),
                     random_weights=True)
    return AVMemModel(backbone=backbone, ttt=ttt, audio=audio, spec=spec, source=f"{size}-{kind}")


def release_ttt_config(dim: int) -> TTTConfig:
    """The released video-SALMONN S TTT block at width ``dim``: 8 heads, hidden_mult 1, mini-batch 1024, base_lr 0.1,
    the lag objective at distance 1024 with weight 0.1, ``compat="official"``, and the release script's update
    (``hf`` with ``cg_iters=0``, a plain gradient step). Reference §0.1, §5.2, §5.5 and the settings
    :func:`avmem.official_release.load_official_release` gives the release. ``dim=4096`` (Qwen3-VL-8B) is the
    release itself, 104,943,624 parameters; ``dim=3584`` (Qwen2.5-VL-7B) is the same recipe at that width."""
    return TTTConfig(dim=dim, num_heads=8, hidden_mult=1, mini_batch=1024, base_lr=0.1, update="hf", cg_iters=0,
                     lag_distance=1024, lag_weight=0.1, compat="official")


@contextmanager
def _building_on(device: torch.device, dtype: torch.dtype, seed: int) -> Iterator[None]:
    """Create tensors on ``device`` in ``dtype`` by default, with the global RNG seeded and restored afterwards."""
    previous = torch.get_default_dtype()
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), device:
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            yield
        finally:
            torch.set_default_dtype(previous)


def _build_release(kind: str, device: str | torch.device, dtype: torch.dtype, seed: int,
                   overrides: dict | None = None, audio_config=None) -> AVMemModel:
    """A release-architecture model of ``kind`` with random weights, built on ``device`` in ``dtype``.

    The backbone and audio encoder are constructed without default initialisation and then filled once from a
    generator on ``device`` seeded with ``seed`` (:func:`~avmem.backbones.presets.random_init_`); the TTT block keeps
    its own initialisation (gate 0.1, LayerNorm targets 1/0, fast weights N(0, 0.02), Linear defaults) drawn from
    the seeded global RNG. ``overrides`` (config field overrides, see
    :func:`~avmem.backbones.presets.qwen3_vl_8b_config`) and ``audio_config`` exist for reduced-size tests only;
    the presets pass neither.
    """
    from transformers.initialization import no_init_weights

    from .backbones.presets import RELEASE_CONFIGS, device_generator, random_init_, release_tokenizer
    from .encoders.audio import AudioEncoder, release_audio_encoder_config

    if kind not in RELEASE_CONFIGS:
        raise ValueError(f"unknown release backbone kind {kind!r} (choose from {sorted(RELEASE_CONFIGS)})")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point type, got {dtype}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device}: no CUDA device is available")
    config = RELEASE_CONFIGS[kind](**(overrides or {}))
    hidden = config.text_config.hidden_size
    audio_cfg = audio_config if audio_config is not None else release_audio_encoder_config(hidden)
    if audio_cfg.llm_dim != hidden:
        raise ValueError(f"audio llm_dim {audio_cfg.llm_dim} != backbone hidden size {hidden}")
    ttt_cfg = release_ttt_config(hidden)
    generator = device_generator(dev, seed)
    with _building_on(dev, dtype, seed):
        with no_init_weights():
            hf_model = backbone_class(kind).model_class(config)
            audio = AudioEncoder(audio_cfg)
        random_init_(hf_model, generator, config.text_config.initializer_range)
        random_init_(audio, generator, audio_cfg.qformer.initializer_range)
        ttt = TTTMemory(ttt_cfg)
    backbone = backbone_class(kind)(hf_model.eval(), release_tokenizer(), need_audio=True)
    spec = ModelSpec(backbone_type=kind, ttt=ttt_cfg.to_dict(), audio=audio_cfg.to_dict(), random_weights=True)
    return AVMemModel(backbone=backbone, ttt=ttt, audio=audio.eval(), spec=spec, source=f"random-{kind}")


def _tiny_audio_config(llm_dim: int):
    from .encoders.audio import tiny_audio_encoder_config

    return tiny_audio_encoder_config(llm_dim)


def _make_audio(config, device):
    from .encoders.audio import AudioEncoder

    return AudioEncoder(config).to(device).eval()


def _audio_config_to_dict(audio) -> dict:
    return audio.audio_config.to_dict()


def _audio_config_from_dict(data: dict):
    from .encoders.audio import AudioEncoderConfig

    return AudioEncoderConfig.from_dict(data)


def load_model(source: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
               seed: int = 0, cg_iters: int | None = None) -> AVMemModel:
    """Load a model from a preset name (:data:`PRESETS`), an avmem folder, the official video-SALMONN S release
    folder (``base/`` + the LoRA/TTT adapter folder), or a Qwen2.5-VL / Qwen3-VL folder or hub id.

    ``dtype``: the weights' precision (None: the folder's own; bfloat16 for the ``random-*`` presets; the
    ``tiny-*`` presets: float32 unless ``dtype`` says otherwise). ``seed`` seeds the random weights of the presets.
    ``cg_iters`` overrides the CG iterations of the TTT update (None keeps the model's own: the release
    script's 0 for the official release, the saved value for avmem folders).

    Raises:
        ValueError: unknown preset, unreadable folder, missing or mis-shaped tensors.
    """
    name = str(source)
    check_model_source(name)
    if name in TINY_PRESETS:
        model = _build_tiny(*TINY_PRESETS[name], device, seed)
        if dtype is not None and dtype != torch.float32:
            model = _to_dtype(model, dtype)
        return _with_cg_iters(model, cg_iters)
    if name in RELEASE_PRESETS:
        model = _build_release(RELEASE_PRESETS[name], device, dtype or torch.bfloat16, seed)
        model.source = name
        return _with_cg_iters(model, cg_iters)
    path = Path(name).expanduser()
    if (path / MODEL_FILE).is_file():
        return _with_cg_iters(_load_avmem_folder(path, device, dtype), cg_iters)
    if path.is_dir():
        from .official_release import find_release, load_official_release

        release = find_release(path)
        if release is not None:
            return load_official_release(*release, cg_iters=cg_iters, device=device, dtype=dtype)
        from .official_release import is_release_base, load_release_base

        if is_release_base(path):
            return load_release_base(path, device=device, dtype=dtype)
    if path.exists() and not (path / "config.json").is_file():
        raise ValueError(f"{path}: not a model folder (no {MODEL_FILE} and no config.json)")
    model_type = _model_type(name)
    backbone = backbone_class(model_type).from_pretrained(name, need_audio=False, dtype=dtype, device=device)
    return AVMemModel(backbone=backbone, ttt=None, audio=None, spec=ModelSpec(backbone_type=model_type), source=name)


def _to_dtype(model: AVMemModel, dtype: torch.dtype) -> AVMemModel:
    """The same model with its backbone, memory layer and audio encoder cast to ``dtype`` (floating point only)."""
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point type, got {dtype}")
    model.backbone.model.to(dtype)
    if model.ttt is not None:
        model.ttt.to(dtype)
    if model.audio is not None:
        model.audio.to(dtype)
    return model


def _with_cg_iters(model: AVMemModel, cg_iters: int | None) -> AVMemModel:
    """Rebuild the TTT update rule with ``cg_iters`` CG iterations (same weights)."""
    if cg_iters is None or not isinstance(model.ttt, TTTMemory) or cg_iters == model.ttt.cfg.cg_iters:
        return model
    from dataclasses import replace

    from .memory.ttt.update import make_update_rule

    cfg = replace(model.ttt.cfg, cg_iters=cg_iters)
    old = model.ttt.update
    new = make_update_rule(cfg).to(device=model.device, dtype=model.ttt.dtype)
    if type(new) is type(old):
        new.load_state_dict(old.state_dict())  # e.g. Muon's learned step survives
    model.ttt.cfg = cfg
    model.ttt.update = new
    model.spec.ttt = cfg.to_dict()
    return model


def _model_type(name: str) -> str:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name).model_type
    except (OSError, ValueError) as exc:
        raise ValueError(f"{name}: cannot read a model config ({str(exc).splitlines()[0]})") from None


def _load_avmem_folder(path: Path, device, dtype) -> AVMemModel:
    try:
        spec = ModelSpec(**json.loads((path / MODEL_FILE).read_text()))
    except (TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path / MODEL_FILE}: not a valid avmem model file ({exc})") from None
    backbone = backbone_class(spec.backbone_type).from_pretrained(
        path / "backbone", need_audio=spec.audio is not None, dtype=dtype, device=device)
    ttt = None
    if spec.ttt is not None and spec.memory_layer == "mamba2":
        ttt = _load_mamba2(spec.ttt, _tensors(path / "ttt.safetensors")).to(device=device, dtype=backbone.dtype)
    elif spec.ttt is not None:
        if spec.memory_layer != "ttt":
            raise ValueError(f"{path / MODEL_FILE}: unknown memory_layer {spec.memory_layer!r} (ttt or mamba2)")
        ttt = TTTMemory.from_official_state_dict(_tensors(path / "ttt.safetensors"), TTTConfig.from_dict(spec.ttt))
        ttt = ttt.to(device=device, dtype=backbone.dtype)
    audio = None
    if spec.audio is not None:
        audio = _make_audio(_audio_config_from_dict(spec.audio), device)
        audio.load_official_state_dict(_tensors(path / "audio.safetensors"))
        audio = audio.to(dtype=backbone.dtype)
    return AVMemModel(backbone=backbone, ttt=ttt, audio=audio, spec=spec, source=str(path))


def _load_mamba2(config: dict, tensors: dict[str, torch.Tensor]):
    from .memory.ssm import Mamba2Config, Mamba2Memory

    try:
        layer = Mamba2Memory(Mamba2Config(**config))
    except TypeError as exc:
        raise ValueError(f"not a Mamba-2 configuration ({exc})") from None
    own = layer.state_dict()
    missing = sorted(set(own) - set(tensors))
    if missing:
        raise ValueError(f"Mamba-2 weights are missing '{missing[0]}'")
    for name, t in own.items():
        if tensors[name].shape != t.shape:
            raise ValueError(f"Mamba-2 tensor '{name}' has shape {list(tensors[name].shape)}, expected {list(t.shape)}")
    layer.load_state_dict({k: tensors[k] for k in own})
    return layer


def _tensors(file: Path) -> dict[str, torch.Tensor]:
    return load_safetensors(file)
