"""Audio encoder (Whisper + window Q-Former): token counts, piece independence, official math and key layout,
official state-dict loading, input validation."""

from __future__ import annotations

import dataclasses
import math

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avmem.encoders import (
    AudioEncoder,
    AudioEncoderConfig,
    QFormerConfig,
    WhisperTrunkConfig,
    official_audio_key,
    tiny_audio_encoder_config,
    to_official_audio_key,
    validate_audio,
)
from avmem.encoders.audio import PIECE_SAMPLES, SAMPLE_RATE

from .conftest import shared_path

LLM_DIM = 48


def _noise(seconds: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(round(seconds * SAMPLE_RATE))).astype(np.float32)


@pytest.fixture(scope="module")
def model() -> AudioEncoder:
    torch.manual_seed(0)
    return AudioEncoder(tiny_audio_encoder_config(LLM_DIM)).eval()


@pytest.fixture(scope="module")
def audio_61s() -> np.ndarray:
    return _noise(61.0)


@pytest.mark.parametrize("seconds, real, padded", [(0.3, 1, 60), (1.0, 2, 60), (29.9, 60, 60), (30.0, 60, 60),
                                                   (61.0, 122, 180)])
def test_token_counts_in_both_modes(model, seconds, real, padded):
    audio = _noise(seconds)
    for keep_padding, expected in ((False, real), (True, padded)):
        tokens = model.encode(audio, keep_padding=keep_padding)
        assert tokens.shape == (expected, LLM_DIM)
        assert tokens.dtype == torch.float32 and torch.isfinite(tokens).all()
        assert model.num_tokens(audio.shape[0], keep_padding=keep_padding) == expected


def test_count_follows_query_length_and_real_windows():
    cfg = tiny_audio_encoder_config(LLM_DIM)
    cfg = dataclasses.replace(cfg, qformer=dataclasses.replace(cfg.qformer, query_length=3))
    encoder = AudioEncoder(cfg)
    assert encoder.num_tokens(8000) == 3 and encoder.num_tokens(8001) == 6
    assert encoder.num_tokens(PIECE_SAMPLES + 1) == 183 and encoder.num_tokens(PIECE_SAMPLES + 1, True) == 360
    assert [math.ceil(s * 2) for s in (0.3, 1.0, 29.9, 61.0)] == [encoder.num_tokens(round(s * SAMPLE_RATE)) // 3
                                                                for s in (0.3, 1.0, 29.9, 61.0)]


def test_padding_tokens_are_a_suffix(model, audio_61s):
    real = model.encode(audio_61s)
    padded = model.encode(audio_61s, keep_padding=True)
    torch.testing.assert_close(real, padded[:122], rtol=0, atol=0)


def test_pieces_are_independent_of_later_audio(model, audio_61s):
    whole = model.encode(audio_61s)
    first = model.encode(audio_61s[:PIECE_SAMPLES])
    torch.testing.assert_close(first, whole[:60], rtol=1e-5, atol=1e-5)
    rest = model.encode(audio_61s[PIECE_SAMPLES:])
    torch.testing.assert_close(torch.cat([first, rest]), whole, rtol=1e-5, atol=1e-5)
    rest_padded = model.encode(audio_61s[PIECE_SAMPLES:], keep_padding=True)
    torch.testing.assert_close(torch.cat([first, rest_padded]), model.encode(audio_61s, keep_padding=True),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.encode(audio_61s, max_batch_pieces=1), whole, rtol=1e-5, atol=1e-5)


def test_forward_gives_official_shape(model, audio_61s):
    features = model.log_mel([audio_61s[:PIECE_SAMPLES], audio_61s[PIECE_SAMPLES:PIECE_SAMPLES + 16000]])
    assert features.shape == (2, 80, 3000)
    assert model(features).shape == (2, 60, LLM_DIM)


def _reference_tokens(sd: dict[str, torch.Tensor], states: torch.Tensor, cfg: AudioEncoderConfig) -> torch.Tensor:
    """The official window cut + LAVIS Q-Former + projection, written from the official tensor names."""
    q, hidden = cfg.qformer, cfg.qformer.hidden_size
    head = hidden // q.num_heads
    windows = torch.stack([states[p, j * 25:j * 25 + 25] for p in range(states.shape[0]) for j in range(60)])

    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, sd[name + ".weight"], sd[name + ".bias"])

    def norm(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, (hidden,), sd[name + ".weight"], sd[name + ".bias"], q.layer_norm_eps)

    def attention(x: torch.Tensor, kv: torch.Tensor, name: str) -> torch.Tensor:
        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(t.shape[0], t.shape[1], q.num_heads, head).transpose(1, 2)
        qh, kh, vh = split(linear(x, name + ".self.query")), split(linear(kv, name + ".self.key")), split(
            linear(kv, name + ".self.value"))
        probs = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(head), dim=-1)
        context = (probs @ vh).transpose(1, 2).reshape(x.shape)
        return norm(linear(context, name + ".output.dense") + x, name + ".output.LayerNorm")

    h = norm(sd["q_tokens"].expand(windows.shape[0], -1, -1), "qformer.bert.embeddings.LayerNorm")
    for i in range(q.num_layers):
        layer = f"qformer.bert.encoder.layer.{i}"
        h = attention(h, h, layer + ".attention")
        if i % q.cross_attention_freq == 0:
            h = attention(h, windows, layer + ".crossattention")
        ff = F.gelu(linear(h, layer + ".intermediate_query.dense"))
        h = norm(linear(ff, layer + ".output_query.dense") + h, layer + ".output_query.LayerNorm")
    return linear(h, "audio_proj").reshape(states.shape[0], -1, cfg.llm_dim)


def test_matches_official_math_with_several_queries_and_layers(audio_61s):
    base = tiny_audio_encoder_config(LLM_DIM)
    cfg = dataclasses.replace(base, qformer=dataclasses.replace(base.qformer, query_length=2, num_layers=2))
    encoder = AudioEncoder(cfg).eval()
    features = encoder.log_mel([audio_61s[:PIECE_SAMPLES], audio_61s[PIECE_SAMPLES:2 * PIECE_SAMPLES]])
    with torch.no_grad():
        states = encoder.encoder_states(features)
        ours = encoder(features)
    sd = encoder.official_state_dict(prefix="")
    reference = _reference_tokens(sd, states, cfg)
    assert ours.shape == (2, 120, LLM_DIM)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)


def _expected_official_keys(cfg: AudioEncoderConfig) -> set[str]:
    keys = {f"{m}.{p}" for m in ("conv1", "conv2", "layer_norm", "audio_proj") for p in ("weight", "bias")}
    keys |= {"embed_positions.weight", "q_tokens", "qformer.bert.embeddings.LayerNorm.weight",
             "qformer.bert.embeddings.LayerNorm.bias"}
    for n in range(cfg.whisper.num_layers):
        keys.add(f"layers.{n}.self_attn.k_proj.weight")
        for m in ("self_attn.q_proj", "self_attn.v_proj", "self_attn.out_proj", "self_attn_layer_norm", "fc1", "fc2",
                  "final_layer_norm"):
            keys |= {f"layers.{n}.{m}.weight", f"layers.{n}.{m}.bias"}
    for n in range(cfg.qformer.num_layers):
        for block in ("attention", "crossattention"):
            for m in ("self.query", "self.key", "self.value", "output.dense", "output.LayerNorm"):
                keys |= {f"qformer.bert.encoder.layer.{n}.{block}.{m}.{p}" for p in ("weight", "bias")}
        for m in ("intermediate_query.dense", "output_query.dense", "output_query.LayerNorm"):
            keys |= {f"qformer.bert.encoder.layer.{n}.{m}.{p}" for p in ("weight", "bias")}
    return {"model.audio." + k for k in keys}


def test_state_dict_follows_official_layout(model):
    cfg = model.audio_config
    official = model.official_state_dict()
    assert set(official) == _expected_official_keys(cfg)
    assert official["model.audio.qformer.bert.encoder.layer.0.crossattention.self.key.weight"].shape == (32, 32)
    ours = set(model.state_dict())
    assert {k for k in ours if k.startswith("layers.")} and "conv1.weight" in ours and "layer_norm.weight" in ours
    assert all(k.split(".")[0] in {"conv1", "conv2", "embed_positions", "layers", "layer_norm", "qformer", "q_tokens",
                                   "audio_proj"} for k in ours)
    assert all(k.startswith("qformer.bert.") for k in ours if k.startswith("qformer"))


def test_cross_attention_key_width_is_whisper_width():
    base = tiny_audio_encoder_config(LLM_DIM)
    cfg = dataclasses.replace(base, whisper=dataclasses.replace(base.whisper, d_model=40, num_heads=4))
    sd = AudioEncoder(cfg).official_state_dict(prefix="")
    assert sd["qformer.bert.encoder.layer.0.crossattention.self.key.weight"].shape == (32, 40)
    assert sd["qformer.bert.encoder.layer.0.crossattention.self.value.weight"].shape == (32, 40)
    assert sd["qformer.bert.encoder.layer.0.attention.self.key.weight"].shape == (32, 32)


def test_key_mapping_between_official_and_ours(model):
    assert official_audio_key("model.audio.qformer.bert.encoder.layer.3.crossattention.self.key.weight") == \
        "qformer.bert.encoder.layer.3.crossattention.attention.key.weight"
    assert official_audio_key("qformer.bert.encoder.layer.0.attention.self.query.bias") == \
        "qformer.bert.encoder.layer.0.attention.attention.query.bias"
    assert official_audio_key("model.audio.qformer.bert.embeddings.LayerNorm.weight") == "qformer.bert.layernorm.weight"
    assert official_audio_key("model.audio.qformer.bert.embeddings.position_ids") is None
    for unchanged in ("layers.7.self_attn.out_proj.weight", "qformer.bert.encoder.layer.0.attention.output.dense.bias",
                      "qformer.bert.encoder.layer.1.output_query.LayerNorm.weight", "q_tokens", "audio_proj.bias"):
        assert official_audio_key("model.audio." + unchanged) == unchanged
    for name in model.state_dict():
        assert official_audio_key(to_official_audio_key(name)) == name


def test_official_state_dict_round_trip(model, audio_61s):
    torch.manual_seed(1)
    other = AudioEncoder(tiny_audio_encoder_config(LLM_DIM)).eval()
    clip = audio_61s[:3 * SAMPLE_RATE]
    assert not torch.allclose(other.encode(clip), model.encode(clip))
    checkpoint = model.official_state_dict()
    checkpoint["model.audio.qformer.bert.embeddings.position_ids"] = torch.arange(512).expand(1, -1)
    checkpoint["model.visual.blocks.0.attn.qkv.weight"] = torch.zeros(3, 3)
    checkpoint["lm_head.weight"] = torch.zeros(2, 2)
    other.load_official_state_dict(checkpoint)
    torch.testing.assert_close(other.encode(clip), model.encode(clip), rtol=0, atol=0)

    unprefixed = AudioEncoder.from_official_state_dict(model.official_state_dict(prefix=""),
                                                       tiny_audio_encoder_config(LLM_DIM)).eval()
    torch.testing.assert_close(unprefixed.encode(clip), model.encode(clip), rtol=0, atol=0)

    half = {k: v.to(torch.bfloat16) for k, v in model.official_state_dict().items()}
    other.load_official_state_dict(half)
    assert other.q_tokens.dtype == torch.float32
    torch.testing.assert_close(other.q_tokens, model.q_tokens.to(torch.bfloat16).float(), rtol=0, atol=0)


def test_official_load_errors_name_the_tensor(model):
    target = AudioEncoder(tiny_audio_encoder_config(LLM_DIM))
    before = {k: v.clone() for k, v in target.state_dict().items()}

    missing = model.official_state_dict()
    del missing["model.audio.qformer.bert.encoder.layer.0.crossattention.self.value.bias"]
    with pytest.raises(ValueError, match=r"missing tensor 'model\.audio\.qformer\.bert\.encoder\.layer\.0\."
                                         r"crossattention\.self\.value\.bias'"):
        target.load_official_state_dict(missing)

    misshaped = model.official_state_dict()
    misshaped["model.audio.audio_proj.weight"] = torch.zeros(4096, 32)
    with pytest.raises(ValueError, match=r"'model\.audio\.audio_proj\.weight' has shape \(4096, 32\), expected "
                                         r"\(48, 32\)"):
        target.load_official_state_dict(misshaped)

    unexpected = model.official_state_dict()
    unexpected["model.audio.qformer.bert.encoder.layer.0.intermediate.dense.weight"] = torch.zeros(64, 32)
    with pytest.raises(ValueError, match=r"unexpected tensor .*layer\.0\.intermediate\.dense\.weight"):
        target.load_official_state_dict(unexpected)

    with pytest.raises(ValueError, match="none under 'model.audio.'"):
        target.load_official_state_dict({"model.visual.x": torch.zeros(1)})
    with pytest.raises(ValueError, match="missing tensor 'model.audio.conv1.weight'"):
        target.load_official_state_dict({"q_tokens": model.q_tokens.detach()})
    for name, tensor in target.state_dict().items():
        assert torch.equal(tensor, before[name]), name


@pytest.mark.parametrize("samples, kwargs, message", [
    (np.zeros(16000, dtype=np.float64), {}, "float32"),
    (np.zeros(16000, dtype=np.int16), {}, "float32"),
    (np.zeros((2, 16000), dtype=np.float32), {}, "mono 1-D"),
    (np.zeros((16000, 1), dtype=np.float32), {}, "mono 1-D"),
    (np.zeros(0, dtype=np.float32), {}, "empty"),
    (np.array([0.0, np.nan, 0.1], dtype=np.float32), {}, "NaN or infinite"),
    (np.array([0.0, np.inf], dtype=np.float32), {}, "NaN or infinite"),
    (torch.full((100,), float("nan")), {}, "NaN or infinite"),
    (np.zeros(44100, dtype=np.float32), {"sample_rate": 44100}, "16000 Hz"),
    (np.zeros(16000, dtype=np.float32), {"max_batch_pieces": 0}, "max_batch_pieces"),
])
def test_bad_audio_is_rejected(model, samples, kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        model.encode(samples, **kwargs)
    assert "\n" not in str(info.value)


def test_non_array_audio_is_a_type_error(model):
    with pytest.raises(TypeError, match="numpy array or torch tensor"):
        model.encode([0.0] * 16000)


def test_tensor_input_matches_numpy(model):
    clip = _noise(2.0)
    torch.testing.assert_close(model.encode(torch.from_numpy(clip)), model.encode(clip), rtol=0, atol=0)
    assert validate_audio(clip) is clip
    with pytest.raises(ValueError, match="n_samples"):
        model.num_tokens(0)


def test_configs_express_the_real_sizes_and_reject_bad_ones():
    real = AudioEncoderConfig()
    assert (real.window_frames, real.stride_frames, real.windows_per_piece) == (25, 25, 60)
    with torch.device("meta"):
        encoder = AudioEncoder(real)
    sd = encoder.official_state_dict(prefix="")
    assert sd["conv1.weight"].shape == (1280, 128, 3)
    assert sd["layers.31.fc1.weight"].shape == (5120, 1280)
    assert sd["qformer.bert.encoder.layer.1.crossattention.self.key.weight"].shape == (3072, 1280)
    assert sd["audio_proj.weight"].shape == (4096, 3072)

    official = {"num_mel_bins": 128, "encoder_layers": 32, "d_model": 1280, "encoder_attention_heads": 20,
                "encoder_ffn_dim": 5120, "second_per_window": 0.5, "second_stride": 0.5,
                "qformer_config": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                                   "intermediate_size": 3072, "encoder_width": 1280, "query_length": 1,
                                   "cross_attention_freq": 1}}
    parsed = AudioEncoderConfig.from_official(official, llm_dim=4096)
    assert parsed.qformer == QFormerConfig(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072)
    assert parsed.whisper == WhisperTrunkConfig() and parsed.llm_dim == 4096
    with pytest.raises(ValueError, match="encoder_width"):
        AudioEncoderConfig.from_official({**official, "d_model": 1024}, llm_dim=4096)
    with pytest.raises(ValueError, match="qformer_config"):
        AudioEncoderConfig.from_official({"d_model": 1280}, llm_dim=4096)

    with pytest.raises(ValueError, match="max_source_positions"):
        AudioEncoderConfig(whisper=WhisperTrunkConfig(max_source_positions=750))
    with pytest.raises(ValueError, match="divisible"):
        AudioEncoderConfig(qformer=QFormerConfig(hidden_size=100, num_heads=12))
    with pytest.raises(TypeError, match="num_layers"):
        AudioEncoderConfig(qformer=QFormerConfig(num_layers=2.0))
    with pytest.raises(ValueError, match="query_length"):
        AudioEncoderConfig(qformer=QFormerConfig(query_length=0))
    with pytest.raises(ValueError, match="second_per_window"):
        AudioEncoderConfig(qformer=QFormerConfig(second_per_window=0.001))
    with pytest.raises(NotImplementedError):
        AudioEncoder.from_pretrained("any/id")


def _decode_mono_16k(path) -> np.ndarray:
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    chunks = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.float32)


def test_real_speech_clip(model):
    audio = _decode_mono_16k(shared_path("media", "speech_16k_mono.wav"))
    assert abs(audio.shape[0] / SAMPLE_RATE - 11.0) < 0.05 and np.abs(audio).max() <= 1.0
    tokens = model.encode(audio)
    assert tokens.shape == (math.ceil(audio.shape[0] / 8000), LLM_DIM) and torch.isfinite(tokens).all()
    features = model.log_mel([audio])
    speech_frames = features[0, :, :1100]
    assert speech_frames.std() > 0.1 and features[0, :, 1200:].std() < 1e-6
