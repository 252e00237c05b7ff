"""The official release loader on a tiny fixture with the official key layout."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from avmem.model import load_model
from avmem.session import StreamSession

from .official_fixture import HIDDEN, RANK, write_tiny_release


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_tiny_release(tmp_path_factory.mktemp("release"))


def test_loads_merges_lora_and_takes_every_ttt_and_audio_tensor(release):
    root, tensors = release
    model = load_model(root, cg_iters=3)
    assert model.extras["lora_pairs"] == 3 * 2 and not model.spec.random_weights
    base = load_model(root / "base")  # the plain base: same backbone without the adapter
    key = "model.language_model.layers.1.self_attn.k_proj.weight"
    a = tensors["base_model.model.model.language_model.layers.1.self_attn.k_proj.lora_A.weight"]
    b = tensors["base_model.model.model.language_model.layers.1.self_attn.k_proj.lora_B.weight"]
    expected = base.backbone.model.state_dict()[key].cpu() + (2 * RANK / RANK) * (b @ a)
    torch.testing.assert_close(model.backbone.model.state_dict()[key].cpu(), expected)
    assert torch.equal(model.ttt.ttt.W1.cpu(), tensors["base_model.model.model.ttt_layers.ttt.W1"])
    assert torch.equal(model.ttt.gating_alpha.cpu(), tensors["base_model.model.model.ttt_gating.gating_alpha"])
    assert model.ttt.cfg.compat == "official" and model.ttt.cfg.cg_iters == 3 and model.ttt.cfg.num_heads == 4
    base_audio = load_file(str(root / "base" / "model.safetensors"))
    ours = model.audio.official_state_dict()
    assert all(torch.equal(ours[k].cpu(), base_audio[k]) for k in ours)
    s = StreamSession(model, video_tokens=16, audio_tokens=8, chunk_frames=4)
    rng = torch.Generator().manual_seed(0)
    for i in range(4):
        s.feed(frames=torch.randint(0, 255, (64, 64, 3), generator=rng, dtype=torch.uint8).numpy(), t=float(i))
    s.feed(audio=torch.zeros(16000 * 4).numpy(), audio_t=0.0)
    assert isinstance(s.ask("What is shown?"), str)
    assert model.hidden_size == HIDDEN


def copy_release(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("drop", ["base_model.model.model.ttt_layers.ttt.lag_linear_key.weight",
                                  "base_model.model.model.ttt_gating.gating_alpha"])
def test_refuses_when_a_ttt_tensor_is_missing(release, tmp_path, drop):
    root = copy_release(release[0], tmp_path / "r")
    file = root / "video_salmonn_s_ttt_lora" / "adapter_model.safetensors"
    tensors = load_file(str(file))
    del tensors[drop]
    save_file(tensors, str(file))
    official = drop.replace("base_model.model.model.", "")
    with pytest.raises(ValueError, match=official.replace(".", r"\.")):
        load_model(root)


def test_refuses_missing_audio_unpaired_lora_and_bad_config(release, tmp_path):
    root = copy_release(release[0], tmp_path / "a")
    weights = load_file(str(root / "base" / "model.safetensors"))
    name = next(k for k in weights if k.startswith("model.audio.layers.0.fc1"))
    del weights[name]
    save_file(weights, str(root / "base" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="fc1"):
        load_model(root)

    root = copy_release(release[0], tmp_path / "b")
    file = root / "video_salmonn_s_ttt_lora" / "adapter_model.safetensors"
    tensors = load_file(str(file))
    del tensors["base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_B.weight"]
    save_file(tensors, str(file))
    with pytest.raises(ValueError, match="no lora_B for 'model.language_model.layers.0.self_attn.q_proj'"):
        load_model(root)

    root = copy_release(release[0], tmp_path / "c")
    cfg = root / "video_salmonn_s_ttt_lora" / "adapter_config.json"
    cfg.write_text(json.dumps({"r": 0, "lora_alpha": 8}))
    with pytest.raises(ValueError, match="'r'"):
        load_model(root)


def test_refuses_missing_lag_tensors_foreign_tensors_and_partial_lora(release, tmp_path):
    root = copy_release(release[0], tmp_path / "d")
    file = root / "video_salmonn_s_ttt_lora" / "adapter_model.safetensors"
    tensors = load_file(str(file))
    lagless = {k: v for k, v in tensors.items() if "lag_linear" not in k}
    save_file(lagless, str(file))
    with pytest.raises(ValueError, match="ttt_layers.ttt.lag_linear"):
        load_model(root)

    foreign = dict(tensors)
    foreign["base_model.model.model.visual.merger.extra"] = torch.zeros(2)
    save_file(foreign, str(file))
    with pytest.raises(ValueError, match="neither LoRA nor the TTT"):
        load_model(root)

    partial = {k: v for k, v in tensors.items() if "layers.1.self_attn.v_proj.lora" not in k}
    save_file(partial, str(file))
    with pytest.raises(ValueError, match="no LoRA pair for 'model.language_model.layers.1.self_attn.v_proj'"):
        load_model(root)

    save_file(tensors, str(file))
    cfg = root / "video_salmonn_s_ttt_lora" / "adapter_config.json"
    data = json.loads(cfg.read_text())
    cfg.write_text(json.dumps({**data, "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora"):
        load_model(root)
