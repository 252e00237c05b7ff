"""Parity with the official video-SALMONN S code and checkpoint layout (reference §2-§5)."""

from __future__ import annotations

import pytest
import torch

from avmem.memory.ttt import TTTConfig, TTTMemory, official_positions, parameter_count
from avmem.memory.ttt.official import infer_config_fields
from avmem.memory.ttt.rope import rope_cis

from .conftest import shared_path

OFFICIAL_NAMES = [
    "learnable_ttt_lr_weight", "learnable_ttt_lr_bias", "ttt_norm_weight", "ttt_norm_bias",
    "W1", "b1", "W2", "b2",
    "wq.weight", "wq.bias", "wk.weight", "wk.bias", "wv.weight", "wv.bias", "wo.weight", "wo.bias",
    "lag_linear.weight", "lag_linear.bias", "lag_linear_key.weight", "lag_linear_key.bias",
    "post_norm.weight", "post_norm.bias",
]


@pytest.fixture(scope="module")
def vectors():
    return torch.load(shared_path("reference", "vectors", "official_ttt_small.pt"), weights_only=True)


def vectors_config(vectors, cg_iters: int) -> TTTConfig:
    c = vectors["config"]
    assert c["slot_type"] == "forward_usekey_carryover"
    return TTTConfig(dim=c["dim"], num_heads=c["num_heads"], hidden_mult=c["hidden_mult"],
                     mini_batch=c["mini_batch"], base_lr=c["base_lr"], update="hf", cg_iters=cg_iters,
                     lag_distance=int(c["lag_distances"]), lag_weight=c["ema_factor"], compat="official")


def test_official_positions_and_rope_table_match_the_vectors(vectors):
    t, h, w = vectors["grid_thw"]
    pos = official_positions((int(h) // 2, int(w) // 2), 0, vectors["positions"].shape[0])
    assert torch.equal(pos, vectors["positions"])
    cfg = vectors_config(vectors, 0)
    assert torch.equal(rope_cis(pos, cfg.head_dim, cfg.rope_theta), vectors["freqs_cis"])


@pytest.mark.parametrize("fast", ["off", "fused"])
@pytest.mark.parametrize("key", ["cg0", "cg3"])
def test_reproduces_official_outputs_over_three_chunks(vectors, key, fast):
    """Eager reference and fused fast path (the compiled maths) both match the official float32 outputs."""
    cfg = vectors_config(vectors, vectors["cg_max_iter"][key])
    layer = TTTMemory.from_official_state_dict(vectors["state_dict"], cfg).set_fast(fast)
    _, h, w = (int(v) for v in vectors["grid_thw"])
    state, start = None, 0
    with torch.no_grad():
        for chunk, ref in zip(vectors["chunks"], vectors["outputs"][key]):
            n = chunk.shape[1]
            padded = -(-n // cfg.mini_batch) * cfg.mini_batch
            y, state = layer(chunk, official_positions((h // 2, w // 2), start, padded), state)
            start += n
            assert ((y - ref).norm() / ref.norm()).item() <= 1e-5
            # the TTT contribution itself (y - x), not only the residual-dominated output
            assert ((y - ref).norm() / (ref - chunk).norm()).item() <= 1e-5
    final = vectors["final_state"][key]
    init = [vectors["state_dict"][f"ttt_layers.ttt.{n}"] for n in ("W1", "b1", "W2", "b2")]
    for got, name, w0 in zip(state.fast.tensors(), ("W1", "b1", "W2", "b2"), init):
        ref = final[f"{name}_states"]
        assert ((got - ref).norm() / (ref - w0).norm()).item() <= 1e-5, name


def test_readme_configuration_has_official_keys_shapes_and_count():
    cfg = TTTConfig(dim=4096, num_heads=8, hidden_mult=1)
    with torch.device("meta"):
        layer = TTTMemory(cfg)
    sd = layer.state_dict()
    expected = {f"ttt.{n}" for n in OFFICIAL_NAMES} | {"gating_alpha"}
    assert set(sd) == expected and len(sd) == 23
    shapes = {k: list(v.shape) for k, v in sd.items()}
    assert shapes["ttt.learnable_ttt_lr_weight"] == [8, 1, 4096]
    assert shapes["ttt.learnable_ttt_lr_bias"] == [8, 1]
    assert shapes["ttt.ttt_norm_weight"] == shapes["ttt.ttt_norm_bias"] == [8, 512]
    assert shapes["ttt.W1"] == shapes["ttt.W2"] == [8, 512, 512]
    assert shapes["ttt.b1"] == shapes["ttt.b2"] == [8, 1, 512]
    for lin in ("wq", "wk", "wv", "wo", "lag_linear", "lag_linear_key"):
        assert shapes[f"ttt.{lin}.weight"] == [4096, 4096] and shapes[f"ttt.{lin}.bias"] == [4096]
    assert shapes["ttt.post_norm.weight"] == shapes["gating_alpha"] == [4096]
    total = sum(p.numel() for p in layer.parameters())
    assert total == 104_943_624 == parameter_count(cfg)


def test_parameter_count_formula_for_other_shapes():
    for cfg in [TTTConfig(dim=64, num_heads=4, hidden_mult=2, lag_distance=0),
                TTTConfig(dim=96, num_heads=2, update="muon"),
                TTTConfig(dim=3584, num_heads=8, hidden_mult=4)]:
        with torch.device("meta"):
            layer = TTTMemory(cfg)
        assert sum(p.numel() for p in layer.parameters()) == parameter_count(cfg)


def small_official_sd(cfg: TTTConfig) -> dict[str, torch.Tensor]:
    layer = TTTMemory(cfg)
    sd = {f"ttt_layers.{k}": v for k, v in layer.state_dict().items() if k.startswith("ttt.")}
    sd["ttt_gating.gating_alpha"] = layer.gating_alpha.detach().clone()
    return sd


@pytest.mark.parametrize("prefix_fn", [
    lambda k: k,
    lambda k: "model." + k,
    lambda k: "base_model.model.model." + k,
    lambda k: "base_model.model.model." + k.replace("ttt_layers.", "ttt_layers.modules_to_save.default.")
    .replace("ttt_gating.", "ttt_gating.modules_to_save.default."),
])
def test_loads_every_official_key_form(prefix_fn):
    cfg = TTTConfig(dim=32, num_heads=2, mini_batch=8, lag_distance=8)
    sd = {prefix_fn(k): v for k, v in small_official_sd(cfg).items()}
    sd["base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"] = torch.zeros(4, 32)
    sd["base_model.model.model.ttt_layers.original_module.ttt.W1"] = torch.zeros(2, 16, 16)
    layer = TTTMemory.from_official_state_dict(sd, cfg)
    for k, v in sd.items():
        if k.endswith("ttt.W1") and "original_module" not in k:
            assert torch.equal(layer.ttt.W1, v)


def test_missing_misshaped_and_foreign_tensors_are_named():
    cfg = TTTConfig(dim=32, num_heads=2, mini_batch=8, lag_distance=8)
    sd = small_official_sd(cfg)
    missing = dict(sd)
    del missing["ttt_layers.ttt.lag_linear_key.bias"]
    with pytest.raises(ValueError, match="ttt_layers.ttt.lag_linear_key.bias"):
        TTTMemory.from_official_state_dict(missing, cfg)
    no_gate = {k: v for k, v in sd.items() if "gating" not in k}
    with pytest.raises(ValueError, match="ttt_gating.gating_alpha"):
        TTTMemory.from_official_state_dict(no_gate, cfg)
    bad = dict(sd)
    bad["ttt_layers.ttt.W2"] = torch.zeros(2, 16, 8)
    with pytest.raises(ValueError, match=r"ttt.W2.*\[2, 16, 8\]"):
        TTTMemory.from_official_state_dict(bad, cfg)
    nan = dict(sd)
    nan["ttt_layers.ttt.b1"] = torch.full((2, 1, 16), float("nan"))
    with pytest.raises(ValueError, match="ttt.b1.*NaN"):
        TTTMemory.from_official_state_dict(nan, cfg)
    extra = dict(sd)
    extra["ttt_layers.ttt.lag_linear_dual.weight"] = torch.zeros(32, 32)
    with pytest.raises(ValueError, match="lag_linear_dual"):
        TTTMemory.from_official_state_dict(extra, cfg)
    twice = dict(sd)
    twice["model.ttt_layers.ttt.W1"] = sd["ttt_layers.ttt.W1"]
    with pytest.raises(ValueError, match="twice"):
        TTTMemory.from_official_state_dict(twice, cfg)
    with pytest.raises(ValueError, match="lag_linear"):
        TTTMemory.from_official_state_dict(sd, TTTConfig(dim=32, num_heads=2, mini_batch=8, lag_distance=0))
    with pytest.raises(ValueError, match="muon"):
        TTTMemory.from_official_state_dict(sd, TTTConfig(dim=32, num_heads=2, mini_batch=8, update="muon"))


def test_infer_config_fields_from_a_checkpoint():
    cfg = TTTConfig(dim=64, num_heads=4, hidden_mult=2, mini_batch=8, lag_distance=8)
    sd = {"base_model.model.model." + k: v for k, v in small_official_sd(cfg).items()}
    assert infer_config_fields(sd) == {"dim": 64, "num_heads": 4, "hidden_mult": 2}
    no_lag = {k: v for k, v in sd.items() if "lag_linear" not in k}
    assert infer_config_fields(no_lag)["lag_distance"] == 0
    with pytest.raises(ValueError, match="ttt_layers.ttt.W1"):
        infer_config_fields({k: v for k, v in sd.items() if not k.endswith("ttt.W1")})


def test_bfloat16_official_run_stays_close_to_the_float32_vectors(vectors):
    """The released model runs in bf16; our bf16 path tracks the float32 reference to bf16 accuracy."""
    cfg = vectors_config(vectors, 3)
    layer = TTTMemory.from_official_state_dict(vectors["state_dict"], cfg).to(torch.bfloat16)
    state, start = None, 0
    with torch.no_grad():
        for chunk, ref in zip(vectors["chunks"], vectors["outputs"]["cg3"]):
            n = chunk.shape[1]
            padded = -(-n // cfg.mini_batch) * cfg.mini_batch
            y, state = layer(chunk.to(torch.bfloat16), official_positions((3, 4), start, padded), state)
            start += n
            assert ((y.float() - ref).norm() / ref.norm()).item() < 2e-2
