"""Audio encoder of video-SALMONN S: Whisper encoder + window-level Q-Former + projection to the LLM width.

Audio (16 kHz mono float32) is cut into 30 s pieces; each piece becomes a 128x3000 log-mel
(``WhisperFeatureExtractor``, zero-padded to 30 s) and goes through the Whisper encoder
(1500 frames, 50 frames/s). The encoder output is cut into non-overlapping windows of
``round(50 * second_per_window)`` = 25 frames (0.5 s); learned query tokens cross-attend to each window
through a BLIP-2 style Q-Former, and ``audio_proj`` maps them to the LLM width:
``query_length`` tokens per 0.5 s (2 tokens/s with ``query_length=1``).

Pieces never see each other (Whisper attends within one 30 s piece only), so encoding successive
30 s-aligned pieces separately gives the same tokens as encoding them together: a streaming caller
may feed audio in multiples of :data:`PIECE_SAMPLES` and concatenate the results.

Checkpoint layout: the module's parameters follow the official ``model.audio.*`` names, except inside the
Q-Former, which is ``transformers``' ``Blip2QFormerModel`` (the official Q-Former is the LAVIS/BLIP-2 one).
:func:`official_audio_key` and :func:`to_official_audio_key` translate between the two.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from transformers import WhisperConfig, WhisperFeatureExtractor
from transformers.models.blip_2.configuration_blip_2 import Blip2QFormerConfig
from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerModel
from transformers.models.whisper.modeling_whisper import WhisperEncoder

SAMPLE_RATE = 16000
"""The only accepted sample rate (Hz)."""
PIECE_SECONDS = 30
"""Whisper's fixed input length: audio is encoded in independent 30 s pieces."""
PIECE_SAMPLES = PIECE_SECONDS * SAMPLE_RATE
"""Samples per 30 s piece (480000)."""
HOP_LENGTH = 160
"""Mel hop (10 ms); the encoder halves the rate again, so one encoder frame is 320 samples (20 ms)."""
MIN_SAMPLES = SAMPLE_RATE
"""Clips shorter than 1 s are zero-padded to 1 s, as the official data code does."""
OFFICIAL_PREFIX = "model.audio."
"""Prefix of the audio encoder's tensors in the official video-SALMONN S checkpoint."""

_ENCODER_FRAMES = PIECE_SAMPLES // (2 * HOP_LENGTH)
_SAMPLES_PER_FRAME = 2 * HOP_LENGTH
_IGNORED_OFFICIAL_KEYS = frozenset({"qformer.bert.embeddings.position_ids"})


@dataclass(frozen=True)
class WhisperTrunkConfig:
    """Whisper encoder sizes. Defaults: the whisper-large-v3 encoder (the official ``WhisperConfig`` defaults)."""

    num_mel_bins: int = 128
    num_layers: int = 32
    d_model: int = 1280
    num_heads: int = 20
    ffn_dim: int = 5120
    max_source_positions: int = 1500
    activation: str = "gelu"


@dataclass(frozen=True)
class QFormerConfig:
    """Window-level Q-Former sizes and windowing.

    Size defaults are the official ``BertConfig`` code defaults (hidden 3072, 2 layers, 12 heads, FFN 12288);
    a real checkpoint's values come from its ``config.json`` (see :meth:`AudioEncoderConfig.from_official`).
    Cross-attention to the Whisper output (width ``d_model``) sits in every ``cross_attention_freq``-th layer.
    """

    hidden_size: int = 3072
    num_layers: int = 2
    num_heads: int = 12
    intermediate_size: int = 12288
    query_length: int = 1
    second_per_window: float = 0.5
    second_stride: float = 0.5
    cross_attention_freq: int = 1
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    initializer_range: float = 0.02


@dataclass(frozen=True)
class AudioEncoderConfig:
    """Whisper trunk + Q-Former + projection to ``llm_dim`` (4096 for Qwen3-VL-8B)."""

    whisper: WhisperTrunkConfig = field(default_factory=WhisperTrunkConfig)
    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    llm_dim: int = 4096
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        w, q = self.whisper, self.qformer
        positive = {"whisper.num_mel_bins": w.num_mel_bins, "whisper.num_layers": w.num_layers,
                    "whisper.d_model": w.d_model, "whisper.num_heads": w.num_heads, "whisper.ffn_dim": w.ffn_dim,
                    "qformer.hidden_size": q.hidden_size, "qformer.num_layers": q.num_layers,
                    "qformer.num_heads": q.num_heads, "qformer.intermediate_size": q.intermediate_size,
                    "qformer.query_length": q.query_length, "qformer.cross_attention_freq": q.cross_attention_freq,
                    "llm_dim": self.llm_dim}
        for name, value in positive.items():
            if not isinstance(value, int):
                raise TypeError(f"AudioEncoderConfig.{name} must be an int, got {value!r}")
            if value < 1:
                raise ValueError(f"AudioEncoderConfig.{name} must be >= 1, got {value}")
        if w.d_model % w.num_heads:
            raise ValueError(f"whisper.d_model {w.d_model} is not divisible by whisper.num_heads {w.num_heads}")
        if q.hidden_size % q.num_heads:
            raise ValueError(f"qformer.hidden_size {q.hidden_size} is not divisible by qformer.num_heads {q.num_heads}")
        if w.max_source_positions != _ENCODER_FRAMES:
            raise ValueError(f"whisper.max_source_positions must be {_ENCODER_FRAMES} (one 30 s piece), "
                             f"got {w.max_source_positions}")
        if not 1 <= self.window_frames <= _ENCODER_FRAMES or self.stride_frames < 1:
            raise ValueError(f"qformer.second_per_window={q.second_per_window} / second_stride={q.second_stride} give "
                             f"{self.window_frames}-frame windows with stride {self.stride_frames}; need 1..1500 and >= 1")
        if self.attn_implementation not in ("eager", "sdpa"):
            raise ValueError(f"attn_implementation must be 'eager' or 'sdpa', got {self.attn_implementation!r}")

    @property
    def window_frames(self) -> int:
        """Encoder frames per Q-Former window: ``round(1500 * second_per_window / 30)`` (25)."""
        return round(_ENCODER_FRAMES * self.qformer.second_per_window / PIECE_SECONDS)

    @property
    def stride_frames(self) -> int:
        """Encoder frames between window starts: ``round(1500 * second_stride / 30)`` (25)."""
        return round(_ENCODER_FRAMES * self.qformer.second_stride / PIECE_SECONDS)

    @property
    def windows_per_piece(self) -> int:
        """Q-Former windows per 30 s piece (60)."""
        return (_ENCODER_FRAMES - self.window_frames) // self.stride_frames + 1

    def to_whisper_config(self) -> WhisperConfig:
        """The ``transformers`` config of the Whisper trunk (inference: no dropout)."""
        w = self.whisper
        return WhisperConfig(num_mel_bins=w.num_mel_bins, encoder_layers=w.num_layers, d_model=w.d_model,
                             encoder_attention_heads=w.num_heads, encoder_ffn_dim=w.ffn_dim,
                             max_source_positions=w.max_source_positions, activation_function=w.activation,
                             dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0,
                             attn_implementation=self.attn_implementation)

    def to_qformer_config(self) -> Blip2QFormerConfig:
        """The ``transformers`` config of the Q-Former (no dropout); cross-attention keys/values have width ``d_model``."""
        q = self.qformer
        return Blip2QFormerConfig(hidden_size=q.hidden_size, num_hidden_layers=q.num_layers,
                                  num_attention_heads=q.num_heads, intermediate_size=q.intermediate_size,
                                  hidden_act=q.hidden_act, layer_norm_eps=q.layer_norm_eps,
                                  initializer_range=q.initializer_range, cross_attention_frequency=q.cross_attention_freq,
                                  encoder_hidden_size=self.whisper.d_model, use_qformer_text_input=False,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                  attn_implementation=self.attn_implementation)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON-serialisable); inverse of :meth:`from_dict`."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AudioEncoderConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys are an error."""
        try:
            return cls(whisper=WhisperTrunkConfig(**data["whisper"]), qformer=QFormerConfig(**data["qformer"]),
                       **{k: v for k, v in data.items() if k not in ("whisper", "qformer")})
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an AudioEncoderConfig dict ({exc})") from None

    def to_official(self) -> dict[str, Any]:
        """The official ``config.json`` ``audio_config`` dict (``qformer_config`` nested); inverse of
        :meth:`from_official` for a given ``llm_dim``."""
        w, q = self.whisper, self.qformer
        return {
            "num_mel_bins": w.num_mel_bins, "encoder_layers": w.num_layers, "d_model": w.d_model,
            "encoder_attention_heads": w.num_heads, "encoder_ffn_dim": w.ffn_dim,
            "max_source_positions": w.max_source_positions, "activation_function": w.activation,
            "second_per_window": q.second_per_window, "second_stride": q.second_stride,
            "qformer_config": {
                "hidden_size": q.hidden_size, "num_hidden_layers": q.num_layers, "num_attention_heads": q.num_heads,
                "intermediate_size": q.intermediate_size, "encoder_width": w.d_model, "query_length": q.query_length,
                "cross_attention_freq": q.cross_attention_freq, "layer_norm_eps": q.layer_norm_eps,
                "hidden_act": q.hidden_act, "initializer_range": q.initializer_range,
            },
        }

    @classmethod
    def from_official(cls, audio_config: Mapping[str, Any], *, llm_dim: int,
                      qformer_config: Mapping[str, Any] | None = None) -> AudioEncoderConfig:
        """Sizes from an official ``config.json``'s ``audio_config`` dict (its ``qformer_config`` nested or given).

        Keys absent from the dicts take the official config classes' defaults, exactly as the official code
        does. ``llm_dim`` is the text hidden size (the official code forces ``out_hidden_size`` to it).
        """
        qf = qformer_config if qformer_config is not None else audio_config.get("qformer_config")
        if qf is None:
            raise ValueError("official audio_config has no 'qformer_config' and none was given")
        if not isinstance(qf, Mapping):
            raise TypeError(f"qformer_config must be a dict, got {type(qf).__name__}")
        d_model = audio_config.get("d_model", WhisperTrunkConfig.d_model)
        if qf.get("encoder_width", 1280) != d_model:
            raise ValueError(f"qformer_config.encoder_width {qf.get('encoder_width', 1280)} != audio d_model {d_model}")
        if qf.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"qformer_config.position_embedding_type {qf['position_embedding_type']!r} is not supported")
        whisper = WhisperTrunkConfig(
            num_mel_bins=audio_config.get("num_mel_bins", 128), num_layers=audio_config.get("encoder_layers", 32),
            d_model=d_model, num_heads=audio_config.get("encoder_attention_heads", 20),
            ffn_dim=audio_config.get("encoder_ffn_dim", 5120),
            max_source_positions=audio_config.get("max_source_positions", 1500),
            activation=audio_config.get("activation_function", "gelu"))
        qformer = QFormerConfig(
            hidden_size=qf.get("hidden_size", 3072), num_layers=qf.get("num_hidden_layers", 2),
            num_heads=qf.get("num_attention_heads", 12), intermediate_size=qf.get("intermediate_size", 12288),
            query_length=qf.get("query_length", 1), second_per_window=audio_config.get("second_per_window", 0.5),
            second_stride=audio_config.get("second_stride", 0.5), cross_attention_freq=qf.get("cross_attention_freq", 1),
            layer_norm_eps=qf.get("layer_norm_eps", 1e-12), hidden_act=qf.get("hidden_act", "gelu"),
            initializer_range=qf.get("initializer_range", 0.02))
        return cls(whisper=whisper, qformer=qformer, llm_dim=llm_dim)


def tiny_audio_encoder_config(llm_dim: int = 64) -> AudioEncoderConfig:
    """A very small encoder for tests: Whisper d_model 32, 2 layers, 80 mels; Q-Former hidden 32, 1 layer."""
    return AudioEncoderConfig(
        whisper=WhisperTrunkConfig(num_mel_bins=80, num_layers=2, d_model=32, num_heads=2, ffn_dim=64),
        qformer=QFormerConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
        llm_dim=llm_dim)


def release_audio_encoder_config(llm_dim: int = 4096) -> AudioEncoderConfig:
    """The released video-SALMONN S audio encoder: the whisper-large-v3 encoder (128 mels, 32 layers, d_model 1280,
    20 heads, FFN 5120, 1500 positions; official ``WhisperConfig`` defaults, configuration_qwen3_vl.py:153-196)
    and the window Q-Former of the official ``BertConfig`` defaults (hidden 3072, 2 layers, 12 heads, FFN 12288,
    cross-attention in every layer to width 1280, 1 query per 0.5 s window; :94-140), projected to ``llm_dim``
    (4096 for Qwen3-VL-8B; the official code forces it to the text hidden size, :460). Reference
    ``official_vsalmonn_s.md`` §1.2 / §1.4. 929,651,712 parameters for ``llm_dim=4096``."""
    return AudioEncoderConfig(whisper=WhisperTrunkConfig(), qformer=QFormerConfig(), llm_dim=llm_dim)


_OFFICIAL_TO_OURS = (
    (re.compile(r"^qformer\.bert\.embeddings\.LayerNorm\."), "qformer.bert.layernorm."),
    (re.compile(r"^(qformer\.bert\.encoder\.layer\.\d+\.(?:attention|crossattention))\.self\."), r"\1.attention."),
)
_OURS_TO_OFFICIAL = (
    (re.compile(r"^qformer\.bert\.layernorm\."), "qformer.bert.embeddings.LayerNorm."),
    (re.compile(r"^(qformer\.bert\.encoder\.layer\.\d+\.(?:attention|crossattention))\.attention\."), r"\1.self."),
)


def official_audio_key(name: str) -> str | None:
    """Our parameter name for an official audio tensor name (with or without ``model.audio.``).

    Only Q-Former names change: ``embeddings.LayerNorm`` -> ``layernorm`` and ``{attention,crossattention}.self``
    -> ``{attention,crossattention}.attention``. Returns None for ``qformer.bert.embeddings.position_ids``, an
    ``arange`` buffer the query-only Q-Former never reads.
    """
    name = name.removeprefix(OFFICIAL_PREFIX)
    if name in _IGNORED_OFFICIAL_KEYS:
        return None
    for pattern, replacement in _OFFICIAL_TO_OURS:
        name = pattern.sub(replacement, name)
    return name


def to_official_audio_key(name: str) -> str:
    """The official name (relative to ``model.audio.``) of one of our parameter names."""
    for pattern, replacement in _OURS_TO_OFFICIAL:
        name = pattern.sub(replacement, name)
    return name


def validate_audio(samples: np.ndarray | Tensor, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Check and return 16 kHz mono float32 audio as a numpy array [n].

    Raises ValueError (TypeError for a non-array) with a one-line reason.
    """
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"audio must be sampled at {SAMPLE_RATE} Hz, got {sample_rate} Hz; resample it first")
    if isinstance(samples, Tensor):
        samples = samples.detach().cpu().numpy()
    if not isinstance(samples, np.ndarray):
        raise TypeError(f"audio must be a numpy array or torch tensor, got {type(samples).__name__}")
    if samples.dtype != np.float32:
        raise ValueError(f"audio must be float32 in [-1, 1], got dtype {samples.dtype}")
    if samples.ndim != 1:
        raise ValueError(f"audio must be mono 1-D [n], got shape {tuple(samples.shape)}; downmix channels first")
    if samples.shape[0] == 0:
        raise ValueError("audio is empty")
    if not np.isfinite(samples).all():
        raise ValueError(f"audio contains {int((~np.isfinite(samples)).sum())} NaN or infinite samples")
    return samples


def split_pieces(audio: np.ndarray) -> list[np.ndarray]:
    """Pad a clip shorter than 1 s to 1 s, then cut it into 30 s pieces (the last one may be shorter)."""
    if audio.shape[0] < MIN_SAMPLES:
        audio = np.pad(audio, (0, MIN_SAMPLES - audio.shape[0]))
    return [audio[k:k + PIECE_SAMPLES] for k in range(0, audio.shape[0], PIECE_SAMPLES)]


class AudioEncoder(WhisperEncoder):
    """Whisper encoder (its modules at the top level, as in the checkpoint) + ``qformer.bert`` + ``q_tokens`` +
    ``audio_proj``. Build it with an :class:`AudioEncoderConfig`; load weights with
    :meth:`load_official_state_dict`. There is no dropout, so train and eval mode compute the same;
    ``encode`` runs without gradients.
    """

    def __init__(self, config: AudioEncoderConfig) -> None:
        super().__init__(config.to_whisper_config())
        self.audio_config = config
        q = config.qformer
        self.qformer = nn.ModuleDict({"bert": Blip2QFormerModel(config.to_qformer_config())})
        self.q_tokens = nn.Parameter(torch.empty(1, q.query_length, q.hidden_size).normal_(0.0, q.initializer_range))
        self.audio_proj = nn.Linear(q.hidden_size, config.llm_dim)
        self.feature_extractor = WhisperFeatureExtractor(feature_size=config.whisper.num_mel_bins,
                                                         sampling_rate=SAMPLE_RATE, hop_length=HOP_LENGTH,
                                                         chunk_length=PIECE_SECONDS)

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> AudioEncoder:
        """Not supported: build ``AudioEncoder(config)`` and call :meth:`load_official_state_dict`."""
        raise NotImplementedError("AudioEncoder has no hub loader; use AudioEncoder.from_official_state_dict(sd, config)")

    @classmethod
    def from_official_state_dict(cls, state_dict: Mapping[str, Tensor], config: AudioEncoderConfig) -> AudioEncoder:
        """Build an encoder from ``config`` and load official weights into it (see :meth:`load_official_state_dict`)."""
        model = cls(config)
        model.load_official_state_dict(state_dict)
        return model

    def encoder_states(self, input_features: Tensor) -> Tensor:
        """Whisper encoder output [P, 1500, d_model] for log-mel pieces [P, n_mels, 3000]."""
        return super().forward(input_features).last_hidden_state

    def forward(self, input_features: Tensor) -> Tensor:
        """Audio tokens [P, windows_per_piece * query_length, llm_dim] for log-mel pieces [P, n_mels, 3000],
        including the windows of padded silence (the official output)."""
        states = self.encoder_states(input_features.to(self.conv1.weight.dtype))
        pieces, _, width = states.shape
        cfg = self.audio_config
        windows = states.unfold(1, cfg.window_frames, cfg.stride_frames)
        windows = windows.permute(0, 1, 3, 2).reshape(-1, cfg.window_frames, width)
        queries = self.q_tokens.expand(windows.shape[0], -1, -1)
        out = self.qformer["bert"](query_embeds=queries, encoder_hidden_states=windows).last_hidden_state
        return self.audio_proj(out.to(self.audio_proj.weight.dtype)).reshape(pieces, -1, cfg.llm_dim)

    def log_mel(self, pieces: Sequence[np.ndarray]) -> Tensor:
        """Log-mel features [P, n_mels, 3000] of float32 pieces of up to 30 s, each zero-padded to 30 s, computed on
        the CPU by ``WhisperFeatureExtractor`` (the reference of :meth:`log_mel_tensor`)."""
        features = self.feature_extractor(list(pieces), sampling_rate=SAMPLE_RATE, padding="max_length",
                                          max_length=PIECE_SAMPLES, truncation=False,
                                          return_tensors="pt")["input_features"]
        return features.to(device=self.conv1.weight.device, dtype=self.conv1.weight.dtype)

    def log_mel_tensor(self, pieces: Tensor) -> Tensor:
        """Log-mel features [P, n_mels, 3000] (float32) of zero-padded 30 s pieces [P, 480000] on their own device.

        The same computation as :meth:`log_mel` (Whisper: periodic Hann window of ``n_fft`` samples, hop 160,
        reflect-padded centred STFT, power spectrum without the last frame, Slaney mel filters, log10 floored at
        1e-10, clipped to 8 below each piece's maximum, (x + 4) / 4) with torch ops in float32; it matches
        :meth:`log_mel` within 1e-4 (see tests/test_gpu_ingest.py).
        """
        if pieces.dim() != 2 or pieces.shape[1] != PIECE_SAMPLES:
            raise ValueError(f"pieces must be [P, {PIECE_SAMPLES}], got {list(pieces.shape)}")
        fe = self.feature_extractor
        device = pieces.device
        window = torch.hann_window(fe.n_fft, device=device)
        stft = torch.stft(pieces.float(), fe.n_fft, fe.hop_length, window=window, return_complex=True)
        power = (stft[..., :-1].abs() ** 2).contiguous()
        filters = torch.from_numpy(fe.mel_filters).to(device=device, dtype=torch.float32)
        log_spec = torch.clamp(filters.T @ power, min=1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.amax(dim=(1, 2), keepdim=True) - 8.0)
        return (log_spec + 4.0) / 4.0

    def num_tokens(self, n_samples: int, keep_padding: bool = False) -> int:
        """Tokens :meth:`encode` returns for ``n_samples`` of 16 kHz audio.

        ``keep_padding=True``: ``ceil(n / 30 s) * 60 * query_length`` (the official count). ``False``: only windows
        that start inside real audio, ``ceil(seconds * 2) * query_length`` with the default 0.5 s windows.
        """
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        cfg = self.audio_config
        pieces = math.ceil(max(n_samples, MIN_SAMPLES) / PIECE_SAMPLES)
        if keep_padding:
            return pieces * cfg.windows_per_piece * cfg.qformer.query_length
        last = n_samples - (pieces - 1) * PIECE_SAMPLES
        last_windows = min(cfg.windows_per_piece, math.ceil(last / (cfg.stride_frames * _SAMPLES_PER_FRAME)))
        return ((pieces - 1) * cfg.windows_per_piece + last_windows) * cfg.qformer.query_length

    def encode(self, samples: np.ndarray | Tensor, *, keep_padding: bool = False, sample_rate: int = SAMPLE_RATE,
               max_batch_pieces: int = 16) -> Tensor:
        """Audio tokens [n_tokens, llm_dim] for 16 kHz mono float32 audio [n], in time order (in the caller's
        grad mode).

        ``keep_padding=False`` (default) drops the tokens of windows that lie wholly in the zero padding of the last
        30 s piece; ``True`` keeps them, reproducing the official count (see :meth:`num_tokens`). Pieces go through
        the log-mel (:meth:`log_mel_tensor`, on the encoder's device) and the encoder ``max_batch_pieces`` at a
        time (the official code sends all at once; pieces are independent, so only memory use changes). Audio cut
        at multiples of :data:`PIECE_SAMPLES` may be encoded part by part.
        """
        if max_batch_pieces < 1:
            raise ValueError(f"max_batch_pieces must be >= 1, got {max_batch_pieces}")
        audio = validate_audio(samples, sample_rate)
        n = audio.shape[0]
        n_pieces = math.ceil(max(n, MIN_SAMPLES) / PIECE_SAMPLES)
        padded = torch.zeros(n_pieces * PIECE_SAMPLES, dtype=torch.float32, device=self.conv1.weight.device)
        padded[:n] = torch.from_numpy(audio).to(padded.device)
        pieces = padded.view(n_pieces, PIECE_SAMPLES)
        tokens = torch.cat([self(self.log_mel_tensor(pieces[i:i + max_batch_pieces])).flatten(0, 1)
                            for i in range(0, n_pieces, max_batch_pieces)])
        return tokens[:self.num_tokens(n, keep_padding)]

    def official_state_dict(self, prefix: str = OFFICIAL_PREFIX) -> dict[str, Tensor]:
        """This encoder's weights under the official names, each prefixed with ``prefix``."""
        return {prefix + to_official_audio_key(name): tensor for name, tensor in self.state_dict().items()}

    def load_official_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load official audio weights, keys with or without ``model.audio.`` (other ``model.*`` keys are skipped).

        Every tensor of this module must be present with the same shape; values are cast to the module's dtype.
        Raises ValueError naming the first missing, mis-shaped or unexpected tensor (nothing is loaded then).
        """
        prefixed = any(key.startswith(OFFICIAL_PREFIX) for key in state_dict)
        if not prefixed and any(key.startswith("model.") for key in state_dict):
            raise ValueError(f"state dict has 'model.*' tensors but none under {OFFICIAL_PREFIX!r}: no audio encoder")
        ours = self.state_dict()
        mapped: dict[str, Tensor] = {}
        for key, tensor in state_dict.items():
            if prefixed and not key.startswith(OFFICIAL_PREFIX):
                continue
            name = official_audio_key(key)
            if name is None:
                continue
            if name not in ours:
                raise ValueError(f"unexpected tensor {key!r} in the official audio state dict")
            mapped[name] = tensor
        for name, target in ours.items():
            official = OFFICIAL_PREFIX + to_official_audio_key(name)
            if name not in mapped:
                raise ValueError(f"official audio state dict is missing tensor {official!r}")
            if tuple(mapped[name].shape) != tuple(target.shape):
                raise ValueError(f"tensor {official!r} has shape {tuple(mapped[name].shape)}, "
                                 f"expected {tuple(target.shape)} for this config")
        self.load_state_dict(mapped, strict=True)
