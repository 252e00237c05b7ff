"""Adapters for the Qwen2.5-VL and Qwen3-VL backbones (through their ``transformers`` classes).

An adapter exposes what the streaming model needs and nothing else: the vision tower run on a chunk
of frames (split per temporal patch, with Qwen3-VL's DeepStack features), token embeddings, and greedy
generation from pre-assembled input embeddings with explicit multimodal RoPE positions (kept memory
tokens keep their original positions, so positions cannot be recomputed from input ids).

The pixel preprocessing re-implements the Qwen processors' layout (the processors themselves need
torchvision): frames resized to multiples of patch * merge, normalised, a temporal patch of 2 frames,
flattened in (t, h/m, w/m, m, m, C, tp, p, p) order.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import (
    AutoTokenizer,
    DynamicCache,
    PreTrainedTokenizerBase,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3VLForConditionalGeneration,
)

from safetensors import SafetensorError

from .attention import NAME as ATTENTION
from .tokenizer import PromptTokens

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


@functools.cache
def cache_keyword(text_model: type) -> str:
    """Name of the KV-cache argument of ``text_model.forward`` in the installed ``transformers``: ``cache`` since
    5.x renamed it (passing ``past_key_values`` there raises a FutureWarning), ``past_key_values`` before. Read
    from the signature once per class."""
    params = inspect.signature(text_model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@dataclass(frozen=True)
class VisionSpec:
    """Patch geometry and normalisation of a vision tower."""

    patch_size: int
    merge_size: int
    temporal_patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def factor(self) -> int:
        """Frame sides must be multiples of this (patch * merge)."""
        return self.patch_size * self.merge_size


@dataclass
class PatchFeatures:
    """Vision features of one temporal patch: tokens [n, D] (n = Hm*Wm), deepstack [n, k, D] or None."""

    tokens: Tensor
    deepstack: Tensor | None
    grid_hw: tuple[int, int]


def patchify(frames: np.ndarray | Tensor, spec: VisionSpec) -> tuple[Tensor, tuple[int, int, int]]:
    """Qwen processor layout of frames [T, H, W, 3] uint8 (H, W multiples of ``spec.factor``), computed on the
    frames' device (numpy input: on the CPU).

    Returns pixel rows [gt*gh*gw, 3*tp*p*p] (float32) and the grid (gt, gh, gw) before merging.
    """
    x = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames,
                        device=frames.device if isinstance(frames, Tensor) else "cpu")
    if x.dim() != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {x.dtype} {list(x.shape)}")
    t, h, w, _ = x.shape
    p, m, tp = spec.patch_size, spec.merge_size, spec.temporal_patch_size
    if h % spec.factor or w % spec.factor:
        raise ValueError(f"frame size {h}x{w} is not a multiple of {spec.factor}")
    if t % tp:
        x = torch.cat([x, x[-1:].expand(tp - t % tp, -1, -1, -1)])
        t = x.shape[0]
    mean = torch.tensor(spec.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, 3, 1, 1)
    pix = (x.permute(0, 3, 1, 2).float() / 255.0 - mean) / std  # [T, C, H, W]
    gt, gh, gw = t // tp, h // p, w // p
    pix = pix.reshape(gt, tp, 3, gh // m, m, p, gw // m, m, p)
    pix = pix.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return pix.reshape(gt * gh * gw, 3 * tp * p * p), (gt, gh, gw)


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic (antialiased) resize of frames [T, H, W, 3] uint8 to ``size`` = (height, width), on the CPU.

    The reference of :func:`resize_frames_tensor` (the path the session uses, on the model's device)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).to("cpu").permute(0, 3, 1, 2).float()
    y = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def resize_frames_tensor(frames: Tensor, size: tuple[int, int]) -> Tensor:
    """:func:`resize_frames` on the frames' own device: uint8 [T, H, W, 3] -> uint8 [T, height, width, 3].

    Same float32 bicubic (antialiased) kernel, rounded to uint8 like the Qwen processor. On the CPU the result
    equals :func:`resize_frames` exactly; on a GPU the float kernels differ in the last bits, so a pixel may
    round to the neighbouring level (documented tolerance: at most 1 of 255).
    """
    if frames.dim() != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    x = frames.permute(0, 3, 1, 2).float()
    y = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
    return y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def fit_to_factor(frames: np.ndarray | Tensor, factor: int) -> np.ndarray | Tensor:
    """Resize frames [T, H, W, 3] uint8 (numpy: on the CPU; a tensor: on its device) to the nearest multiples
    of ``factor`` if needed."""
    t, h, w, _ = frames.shape
    nh, nw = max(factor, round(h / factor) * factor), max(factor, round(w / factor) * factor)
    if (nh, nw) == (h, w):
        return frames
    return resize_frames_tensor(frames, (nh, nw)) if isinstance(frames, Tensor) else resize_frames(frames, (nh, nw))


def deepstack_slice(visual_mask: Tensor | None, deepstack: Tensor | None, start: int,
                    stop: int | None = None) -> tuple[Tensor | None, Tensor | None]:
    """Visual mask and DeepStack rows [k, n, D] of the input rows [start, stop) (None, None without DeepStack).

    ``deepstack`` holds one row per True entry of the whole ``visual_mask``, in order.
    """
    if deepstack is None:
        return None, None
    rows = torch.cumsum(visual_mask.long(), 0) - 1
    mask = visual_mask[start:stop]
    return mask, deepstack[:, rows[start:stop][mask]]


class QwenVLBackbone:
    """Common part of the two Qwen adapters. Use :meth:`from_pretrained` or a subclass constructor."""

    model_class: type = None  # set by subclasses
    default_mean: tuple[float, float, float] = HALF
    default_std: tuple[float, float, float] = HALF

    def __init__(self, model, tokenizer: PreTrainedTokenizerBase, need_audio: bool, mean=None, std=None) -> None:
        self.model = model
        model.model.language_model.config._attn_implementation = ATTENTION  # per-layer causal masks (attention.py)
        self.tokenizer = tokenizer
        self.tokens = PromptTokens.from_tokenizer(tokenizer, need_audio)
        vc = model.config.vision_config
        self.vision = VisionSpec(
            patch_size=vc.patch_size, merge_size=vc.spatial_merge_size, temporal_patch_size=vc.temporal_patch_size,
            mean=tuple(mean or self.default_mean), std=tuple(std or self.default_std),
        )
        self.hidden_size = model.config.text_config.hidden_size
        if model.config.video_token_id != self.tokens.video_pad:
            raise ValueError(
                f"tokenizer <|video_pad|> id {self.tokens.video_pad} != model video_token_id {model.config.video_token_id}"
            )

    @property
    def num_deepstack(self) -> int:
        return 0

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @classmethod
    def from_pretrained(cls, path: str | Path, need_audio: bool = False, dtype: torch.dtype | None = None,
                        device: str | torch.device = "cpu") -> "QwenVLBackbone":
        """Load model, tokenizer and the processor's normalisation from a local folder or hub id.

        Raises:
            ValueError: unreadable or incomplete weights, config or tokenizer (one line).
        """
        try:
            model = cls.model_class.from_pretrained(str(path), dtype=dtype or "auto").to(device).eval()
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        except (OSError, RuntimeError, SafetensorError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{path}: cannot load the backbone ({first})") from None
        mean = std = None
        pre = Path(str(path)) / "preprocessor_config.json"
        if pre.is_file():
            cfg = json.loads(pre.read_text())
            mean, std = cfg.get("image_mean"), cfg.get("image_std")
        return cls(model, tokenizer, need_audio, mean, std)

    def embed(self, ids: Tensor) -> Tensor:
        """Token embeddings [L, D] of ids [L]."""
        return self.model.get_input_embeddings()(ids.to(self.device))

    def encode_frames(self, frames: np.ndarray | Tensor) -> list[PatchFeatures]:
        """Run the vision tower on frames [T, H, W, 3] uint8 (numpy, or a tensor on any device); one entry per
        temporal patch (2 frames), all in one tower call. Resizing to the patch grid and the pixel layout run on
        the model's device. Runs in the caller's grad mode (the session runs it without a graph unless the tower
        is being trained)."""
        x = frames if isinstance(frames, Tensor) else torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        x = fit_to_factor(x.to(self.device), self.vision.factor)
        pixels, (gt, gh, gw) = patchify(x, self.vision)
        grid = torch.tensor([[gt, gh, gw]], device=self.device)
        out = self.model.model.visual(pixels.to(self.dtype), grid_thw=grid)
        m = self.vision.merge_size
        hm, wm = gh // m, gw // m
        main = out.pooler_output.view(gt, hm * wm, -1)
        deep = self._deepstack(out, gt, hm * wm)
        return [PatchFeatures(main[i], None if deep is None else deep[i], (hm, wm)) for i in range(gt)]

    def _deepstack(self, out, gt: int, n: int) -> Tensor | None:
        return None

    def forward_embeds(self, embeds: Tensor, positions: Tensor, cache: DynamicCache, visual_mask: Tensor | None,
                       deepstack: Tensor | None) -> Tensor:
        """Run the language model on embeddings [L, D] at positions [3, L], extending ``cache``.

        ``deepstack`` [k, n_visual, D] is added at ``visual_mask`` [L] after the first k layers (Qwen3-VL).
        Returns the logits of the last row, [vocab] (float32).
        """
        return self.model.lm_head(self.hidden_states(embeds, positions, cache, visual_mask, deepstack)[-1:]).float()[0]

    def hidden_states(self, embeds: Tensor, positions: Tensor, cache: DynamicCache | None, visual_mask: Tensor | None,
                      deepstack: Tensor | None) -> Tensor:
        """Final hidden states [L, D] of the language model on embeddings [L, D] at positions [3, L], extending
        ``cache`` (None: no cache kept, as in training)."""
        lm = self.model.model.language_model
        kwargs = {cache_keyword(type(lm)): cache}
        if deepstack is not None:
            kwargs.update(visual_pos_masks=visual_mask[None], deepstack_visual_embeds=list(deepstack))
        out = lm(inputs_embeds=embeds[None], position_ids=positions[:, None, :].to(self.device),
                 use_cache=cache is not None, **kwargs)
        return out.last_hidden_state[0]

    def answer_loss(self, embeds: Tensor, positions: Tensor, targets: Tensor, cache: DynamicCache | None = None,
                    visual_mask: Tensor | None = None, deepstack: Tensor | None = None) -> tuple[Tensor, int]:
        """Next-token cross-entropy on the answer tokens: ``targets`` [L] holds, at row i, the token id row i must
        predict, or -100 (no loss). Returns (sum of the losses, number of predicted tokens); the LM head runs
        only on the predicting rows.
        """
        if targets.shape != embeds.shape[:1]:
            raise ValueError(f"targets must be [{embeds.shape[0]}], got {list(targets.shape)}")
        hidden = self.hidden_states(embeds, positions, cache, visual_mask, deepstack)
        rows = torch.nonzero(targets != -100).flatten().to(hidden.device)
        if len(rows) == 0:
            raise ValueError("answer_loss: no target tokens")
        logits = self.model.lm_head(hidden[rows]).float()
        loss = torch.nn.functional.cross_entropy(logits, targets.to(hidden.device)[rows], reduction="sum")
        return loss, len(rows)

    @torch.no_grad()
    def generate(self, embeds: Tensor, positions: Tensor, visual_mask: Tensor | None = None,
                 deepstack: Tensor | None = None, max_new_tokens: int = 64) -> list[int]:
        """Greedy decoding from input embeddings [L, D] with positions [3, L] (t, h, w).

        ``deepstack`` [k, n_visual, D] is added after the first k decoder layers at ``visual_mask`` [L]
        (Qwen3-VL). Decoding continues at max(positions) + 1.
        """
        cache = DynamicCache(config=self.model.config.text_config)
        logits = self.forward_embeds(embeds, positions, cache, visual_mask, deepstack)
        return self.decode(cache, logits, int(positions.max()) + 1, max_new_tokens)

    @torch.no_grad()
    def sequence_logprob(self, cache: DynamicCache, logits: Tensor, next_position: int, ids: list[int]) -> float:
        """log p(ids) continuing a prefilled ``cache`` whose last logits are ``logits`` (the cache is left as
        it was)."""
        if not ids:
            raise ValueError("sequence_logprob: empty continuation")
        total = torch.log_softmax(logits.float(), dim=-1)[ids[0]]
        if len(ids) > 1:
            branch = copy.deepcopy(cache)
            n = len(ids) - 1
            dev = self.device
            pos = torch.arange(next_position, next_position + n, device=dev).expand(3, n)
            hidden = self.hidden_states(self.embed(torch.tensor(ids[:-1], device=dev)), pos, branch, None, None)
            logp = torch.log_softmax(self.model.lm_head(hidden).float(), dim=-1)
            total = total + logp[torch.arange(n, device=dev), torch.tensor(ids[1:], device=dev)].sum()
        return float(total)

    def decode(self, cache: DynamicCache, logits: Tensor, next_position: int, max_new_tokens: int) -> list[int]:
        """Greedy decoding from a prefilled ``cache`` whose last logits are ``logits``."""
        nxt = next_position
        out: list[int] = []
        for _ in range(max_new_tokens):
            tok = int(torch.argmax(logits))
            if tok in self.tokens.eos:
                break
            out.append(tok)
            emb = self.embed(torch.tensor([tok], device=self.device))
            pos = torch.full((3, 1), nxt, dtype=torch.long, device=self.device)
            nxt += 1
            logits = self.forward_embeds(emb, pos, cache, None, None)
        return out


class Qwen25VLBackbone(QwenVLBackbone):
    """Qwen2.5-VL (CLIP normalisation, patch 14, no DeepStack)."""

    model_class = Qwen2_5_VLForConditionalGeneration
    default_mean = CLIP_MEAN
    default_std = CLIP_STD


class Qwen3VLBackbone(QwenVLBackbone):
    """Qwen3-VL (mean/std 0.5, patch 16, DeepStack features bypass TTT and are added in the first layers)."""

    model_class = Qwen3VLForConditionalGeneration

    @property
    def num_deepstack(self) -> int:
        return len(self.model.config.vision_config.deepstack_visual_indexes)

    def _deepstack(self, out, gt: int, n: int) -> Tensor | None:
        return torch.stack([f.view(gt, n, -1) for f in out.deepstack_features], dim=2)


BACKBONES: dict[str, type[QwenVLBackbone]] = {"qwen2_5_vl": Qwen25VLBackbone, "qwen3_vl": Qwen3VLBackbone}


def backbone_class(model_type: str) -> type[QwenVLBackbone]:
    """Adapter for a ``config.json`` ``model_type``."""
    if model_type not in BACKBONES:
        raise ValueError(f"unsupported backbone model_type '{model_type}' (supported: {sorted(BACKBONES)})")
    return BACKBONES[model_type]
