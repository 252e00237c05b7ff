"""Full-size random presets (``random-qwen3-vl-8b`` / ``random-qwen2.5-vl-7b``): the released architectures on the
meta device (configs, exact parameter counts against closed forms from the published sizes), and one real CPU
build + forward of a reduced-size variant made by the same builder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avmem.backbones.presets import RELEASE_TOKEN_IDS, qwen3_vl_8b_config, random_init_, release_tokenizer
from avmem.encoders.audio import AudioEncoderConfig, QFormerConfig, WhisperTrunkConfig
from avmem.memory.ttt.rope import official_positions
from avmem.model import PRESETS, RELEASE_PRESETS, _build_release, load_model


def _n(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def meta_models():
    return {name: load_model(name, device="meta") for name in RELEASE_PRESETS}


# -- closed forms from the published sizes (independent of the builders) ---------------------------------------

def _text_params(vocab, d, layers, heads, kv, head_dim, inter, qkv_bias, qk_norm):
    q, k = heads * head_dim, kv * head_dim
    attn = d * q + 2 * d * k + q * d + (q + 2 * k if qkv_bias else 0) + (2 * head_dim if qk_norm else 0)
    return 2 * vocab * d + layers * (attn + 3 * d * inter + 2 * d) + d  # embed + untied head, final norm


def _qwen3_vision_params(c=1152, inter=4304, depth=27, patch=16, tp=2, pos=2304, out=4096, deepstack=3):
    m = 4 * c  # 2x2 merge
    block = 4 * c + (3 * c * c + 3 * c) + (c * c + c) + (c * inter + inter) + (inter * c + c)  # 2 LayerNorms
    merger = 2 * c + (m * m + m) + (m * out + out)
    post_shuffle = 2 * m + (m * m + m) + (m * out + out)
    return 3 * tp * patch * patch * c + c + pos * c + depth * block + merger + deepstack * post_shuffle


def _qwen25_vision_params(c=1280, inter=3420, depth=32, patch=14, tp=2, out=3584):
    m = 4 * c
    block = 2 * c + (3 * c * c + 3 * c) + (c * c + c) + 2 * (c * inter + inter) + (inter * c + c)  # 2 RMSNorms
    return 3 * tp * patch * patch * c + depth * block + c + (m * m + m) + (m * out + out)  # conv has no bias


def _ttt_params(dim, heads=8, mult=1):
    d = dim // heads
    h = mult * d
    return 6 * (dim * dim + dim) + heads * dim + heads + 2 * heads * d + 2 * heads * d * h + heads * (h + d) \
        + 2 * dim + dim


def _audio_params(llm, mels=128, d=1280, layers=32, ffn=5120, qh=3072, ql=2, qffn=12288):
    whisper = (mels * d * 3 + d) + (d * d * 3 + d) + 1500 * d + 2 * d \
        + layers * (4 * d * d + 3 * d + 4 * d + d * ffn + ffn + ffn * d + d)
    self_attn = 4 * (qh * qh + qh) + 2 * qh
    cross = 2 * (qh * qh + qh) + 2 * (d * qh + qh) + 2 * qh
    ff = qh * qffn + qffn + qffn * qh + qh + 2 * qh
    qformer = 2 * qh + ql * (self_attn + cross + ff)
    return whisper + qformer + qh + (qh * llm + llm)  # + q_tokens, audio_proj


EXPECTED = {
    "random-qwen3-vl-8b": dict(backbone=8_767_123_696, ttt=104_943_624, audio=929_651_712, total=9_801_719_032),
    "random-qwen2.5-vl-7b": dict(backbone=8_292_166_656, ttt=80_356_872, audio=928_078_336, total=9_300_601_864),
}


def test_closed_forms_give_the_stated_counts():
    text3 = _text_params(151936, 4096, 36, 32, 8, 128, 12288, qkv_bias=False, qk_norm=True)
    text25 = _text_params(152064, 3584, 28, 28, 4, 128, 18944, qkv_bias=True, qk_norm=False)
    assert text3 + _qwen3_vision_params() == EXPECTED["random-qwen3-vl-8b"]["backbone"]
    assert text25 + _qwen25_vision_params() == EXPECTED["random-qwen2.5-vl-7b"]["backbone"]
    for name, dim in (("random-qwen3-vl-8b", 4096), ("random-qwen2.5-vl-7b", 3584)):
        assert _ttt_params(dim) == EXPECTED[name]["ttt"]
        assert _audio_params(dim) == EXPECTED[name]["audio"]
    e = EXPECTED["random-qwen3-vl-8b"]
    assert e["backbone"] + e["ttt"] + e["audio"] == 9_801_719_032  # the figure


@pytest.mark.parametrize("name", sorted(RELEASE_PRESETS))
def test_meta_build_parameter_counts(meta_models, name):
    model = meta_models[name]
    counts = dict(backbone=_n(model.backbone.model), ttt=_n(model.ttt), audio=_n(model.audio))
    counts["total"] = sum(counts.values())
    assert counts == EXPECTED[name]
    assert all(p.is_meta for p in model.backbone.model.parameters())
    assert model.device.type == "meta" and model.backbone.dtype == torch.bfloat16
    assert model.ttt.dtype == torch.bfloat16 and model.audio.conv1.weight.dtype == torch.bfloat16
    lm_head, embed = model.backbone.model.lm_head.weight, model.backbone.model.get_input_embeddings().weight
    assert lm_head is not embed  # untied in both releases


def test_qwen3_vl_8b_release_config(meta_models):
    model = meta_models["random-qwen3-vl-8b"]
    cfg = model.backbone.model.config
    t, v = cfg.text_config, cfg.vision_config
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads, t.head_dim) == \
        (4096, 36, 32, 8, 128)
    assert (t.intermediate_size, t.vocab_size, t.max_position_embeddings, t.rms_norm_eps, t.hidden_act) == \
        (12288, 151936, 262144, 1e-6, "silu")
    assert t.rope_parameters["rope_theta"] == 5_000_000
    assert t.rope_parameters["mrope_section"] == [24, 20, 20] and t.rope_parameters["mrope_interleaved"] is True
    assert not t.attention_bias and not cfg.tie_word_embeddings
    assert (v.depth, v.hidden_size, v.intermediate_size, v.num_heads, v.hidden_act) == \
        (27, 1152, 4304, 16, "gelu_pytorch_tanh")
    assert (v.patch_size, v.temporal_patch_size, v.spatial_merge_size, v.out_hidden_size) == (16, 2, 2, 4096)
    assert list(v.deepstack_visual_indexes) == [8, 16, 24] and v.num_position_embeddings == 2304
    assert model.backbone.num_deepstack == 3
    assert (cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id) == \
        (151655, 151656, 151652, 151653)


def test_qwen2_5_vl_7b_release_config(meta_models):
    cfg = meta_models["random-qwen2.5-vl-7b"].backbone.model.config
    t, v = cfg.text_config, cfg.vision_config
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads) == (3584, 28, 28, 4)
    assert (t.intermediate_size, t.vocab_size, t.max_position_embeddings, t.rms_norm_eps) == \
        (18944, 152064, 128000, 1e-6)
    assert t.rope_parameters["rope_theta"] == 1_000_000 and t.rope_parameters["mrope_section"] == [16, 24, 24]
    assert t.use_sliding_window is False and t.sliding_window is None
    assert set(t.layer_types) == {"full_attention"} and not cfg.tie_word_embeddings
    assert (v.depth, v.hidden_size, v.intermediate_size, v.num_heads, v.hidden_act) == (32, 1280, 3420, 16, "silu")
    assert (v.patch_size, v.temporal_patch_size, v.spatial_merge_size, v.out_hidden_size) == (14, 2, 2, 3584)
    assert (v.window_size, list(v.fullatt_block_indexes), v.tokens_per_second) == (112, [7, 15, 23, 31], 2)
    assert (cfg.image_token_id, cfg.video_token_id) == (151655, 151656)


@pytest.mark.parametrize("name,dim", [("random-qwen3-vl-8b", 4096), ("random-qwen2.5-vl-7b", 3584)])
def test_release_ttt_and_audio(meta_models, name, dim):
    model = meta_models[name]
    cfg = model.ttt.cfg
    assert (cfg.dim, cfg.num_heads, cfg.hidden_mult, cfg.mini_batch, cfg.base_lr) == (dim, 8, 1, 1024, 0.1)
    assert (cfg.update, cfg.cg_iters, cfg.lag_distance, cfg.lag_weight, cfg.compat) == ("hf", 0, 1024, 0.1, "official")
    audio = model.audio.audio_config
    assert audio.whisper == WhisperTrunkConfig(num_mel_bins=128, num_layers=32, d_model=1280, num_heads=20,
                                               ffn_dim=5120, max_source_positions=1500)
    assert (audio.qformer.hidden_size, audio.qformer.num_layers, audio.qformer.num_heads,
            audio.qformer.intermediate_size, audio.qformer.query_length) == (3072, 2, 12, 12288, 1)
    assert (audio.window_frames, audio.stride_frames, audio.llm_dim) == (25, 25, dim)
    spec = model.spec
    assert spec.random_weights is True and spec.backbone_type == model.backbone.model.config.model_type
    assert spec.ttt == cfg.to_dict() and spec.audio == audio.to_dict() and model.source == name


def test_release_ttt_shapes_match_the_release_table(meta_models):
    shapes = {k: tuple(v.shape) for k, v in meta_models["random-qwen3-vl-8b"].ttt.state_dict().items()}
    assert shapes["ttt.learnable_ttt_lr_weight"] == (8, 1, 4096) and shapes["ttt.W1"] == (8, 512, 512)
    assert shapes["ttt.lag_linear_key.weight"] == (4096, 4096) and shapes["gating_alpha"] == (4096,)
    assert len(shapes) == 23  # the rows of the reference's §5.2 table


def test_release_tokenizer_uses_the_real_ids(meta_models):
    for name, model in meta_models.items():
        tokens, vocab = model.backbone.tokens, model.backbone.model.config.text_config.vocab_size
        assert (tokens.im_start, tokens.im_end, tokens.vision_start, tokens.vision_end) == \
            (151644, 151645, 151652, 151653)
        assert (tokens.video_pad, tokens.audio_pad) == (151656, 151669)
        assert set(tokens.eos) == {151643, 151645}
        tok = model.backbone.tokenizer
        assert all(tok.convert_tokens_to_ids(t) == i < vocab for t, i in RELEASE_TOKEN_IDS.items())
    tok = release_tokenizer()
    ids = tok("<|im_start|>user\nwhat colour is the square?<|im_end|>")["input_ids"]
    assert ids[0] == 151644 and ids[-1] == 151645 and max(ids[1:-1]) < 504
    assert tok.decode(ids) == "<|im_start|>user\nwhat colour is the square?<|im_end|>"
    assert tok.decode([151000, 151669]) == "<|audio_pad|>"  # ids without a token decode to nothing


def test_unknown_presets_list_every_preset():
    for bad in ("random-qwen3-vl-4b", "tiny-qwen9"):
        with pytest.raises(ValueError) as err:
            load_model(bad, device="meta")
        assert all(name in str(err.value) for name in PRESETS)
    assert {"random-qwen3-vl-8b", "random-qwen2.5-vl-7b", "tiny-qwen3-vl"} <= set(PRESETS)


def test_cg_iters_and_dtype_options_on_meta():
    model = load_model("random-qwen3-vl-8b", device="meta", dtype=torch.float16, cg_iters=3)
    assert model.ttt.cfg.cg_iters == 3 and model.spec.ttt["cg_iters"] == 3
    assert model.backbone.dtype == torch.float16 and model.ttt.dtype == torch.float16
    with pytest.raises(ValueError, match="floating-point"):
        load_model("random-qwen3-vl-8b", device="meta", dtype=torch.int8)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            load_model("random-qwen2.5-vl-7b", device="cuda")


# -- a reduced-size variant of the same builder, really built and run on CPU -------------------------------------

SMALL = dict(text_hidden_size=128, text_intermediate_size=256, text_num_hidden_layers=2, text_num_attention_heads=1,
             text_num_key_value_heads=1, vision_depth=2, vision_hidden_size=64, vision_intermediate_size=128,
             vision_num_heads=2, vision_out_hidden_size=128)
SMALL_AUDIO = AudioEncoderConfig(whisper=WhisperTrunkConfig(num_layers=1, d_model=32, num_heads=2, ffn_dim=64),
                                 qformer=QFormerConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
                                 llm_dim=128)


def _small(kind: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    extra = ({"vision_deepstack_visual_indexes": [0, 1]} if kind == "qwen3_vl"
             else {"vision_fullatt_block_indexes": [1]})
    return _build_release(kind, "cpu", dtype, seed, overrides={**SMALL, **extra}, audio_config=SMALL_AUDIO)


@pytest.mark.parametrize("kind", ["qwen3_vl", "qwen2_5_vl"])
def test_reduced_variant_builds_random_weights_and_runs(kind):
    model = _small(kind)
    hf = model.backbone.model
    cfg = hf.config.text_config
    assert cfg.vocab_size in (151936, 152064) and model.spec.random_weights  # real vocabulary and ids
    embed = hf.get_input_embeddings().weight
    assert abs(float(embed.detach().std()) - 0.02) < 1e-3 and abs(float(embed.detach().mean())) < 1e-3
    norms = [m.weight for m in hf.modules() if "Norm" in type(m).__name__]
    assert norms and all(bool((w == 1).all()) for w in norms)
    biases = [p for n, p in hf.named_parameters() if n.endswith(".bias")]
    assert biases and all(bool((b == 0).all()) for b in biases)
    weights = [p for n, p in list(hf.named_parameters()) + list(model.audio.named_parameters())
               if n.endswith("weight") and p.dim() >= 2]
    assert all(0.015 < float(w.detach().float().std()) < 0.025 for w in weights if w.numel() >= 4096)
    assert float(model.ttt.gating_alpha.detach()[0]) == pytest.approx(0.1)  # TTT keeps its own initialisation
    theta = cfg.rope_parameters["rope_theta"]
    inv = hf.model.language_model.rotary_emb.inv_freq
    assert torch.allclose(inv, theta ** (-torch.arange(0, 128, 2, dtype=torch.float32) / 128))

    rng = np.random.default_rng(0)
    feats = model.backbone.encode_frames(rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8))
    tokens = feats[0].tokens
    assert tokens.shape == (4, 128) and torch.isfinite(tokens).all()
    assert (feats[0].deepstack is not None) == (kind == "qwen3_vl")
    with torch.no_grad():  # compat="official": the padding rows take part, so positions cover the padded 1024
        out, _ = model.ttt(tokens[None], official_positions(feats[0].grid_hw, 0, 1024)[None])
    assert out.shape == (1, 4, 128) and torch.isfinite(out).all()
    audio = model.audio.encode(rng.standard_normal(16000).astype(np.float32) * 0.1)
    assert audio.shape == (2, 128) and torch.isfinite(audio).all()
    tok = model.backbone.tokenizer
    ids = torch.tensor(tok("<|im_start|>user\n<|vision_start|>")["input_ids"])
    tail = torch.tensor(tok("<|vision_end|>what?<|im_end|>\n<|im_start|>assistant\n")["input_ids"])
    embeds = torch.cat([model.backbone.embed(ids), tokens, audio, model.backbone.embed(tail)])
    positions = torch.arange(len(embeds)).expand(3, -1)
    answer = model.backbone.generate(embeds, positions, max_new_tokens=3)
    assert 0 < len(answer) <= 3 and all(0 <= i < cfg.vocab_size for i in answer)


def test_reduced_variant_is_seeded_and_takes_the_dtype():
    a, b, c = _small("qwen3_vl", 0), _small("qwen3_vl", 0), _small("qwen3_vl", 1)
    for pa, pb, pc in zip(a.backbone.model.parameters(), b.backbone.model.parameters(), c.backbone.model.parameters()):
        assert torch.equal(pa, pb)
    wa, wc = a.backbone.model.lm_head.weight, c.backbone.model.lm_head.weight
    assert not torch.equal(wa, wc)
    assert torch.equal(a.ttt.ttt.W1, b.ttt.ttt.W1) and not torch.equal(a.ttt.ttt.W1, c.ttt.ttt.W1)
    assert torch.equal(a.audio.q_tokens, b.audio.q_tokens)
    state = torch.random.get_rng_state()
    half = _small("qwen2_5_vl", dtype=torch.bfloat16)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left as it was
    assert torch.get_default_dtype() == torch.float32
    assert {p.dtype for p in half.backbone.model.parameters()} == {torch.bfloat16}
    assert {b.dtype for b in half.backbone.model.buffers()} == {torch.float32}  # RoPE tables stay float32
    assert half.ttt.dtype == torch.bfloat16 and half.audio.conv1.weight.dtype == torch.bfloat16


def test_random_init_and_config_overrides_validate():
    lin = torch.nn.Linear(256, 256)
    random_init_(lin, torch.Generator().manual_seed(0), std=0.5)
    assert abs(float(lin.weight.std()) - 0.5) < 0.02 and bool((lin.bias == 0).all())
    with pytest.raises(ValueError, match="unknown config override"):
        qwen3_vl_8b_config(text_num_layers=2)
