"""Training: config validation, loss targets, loss decrease per TTT rule, checkpoints (release layout, reload,
resume), two-stage schedule, budget-aware mode, skipped samples, and a 2-process DDP run (gloo, CPU)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from avmem.cli import app
from avmem.synth import write_colour_qa_set
from avmem.train.config import config_from_dict, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "avmem" / "train" / "configs"
runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_colour_qa_set(tmp_path_factory.mktemp("qa"), 4, seconds=2, size=(48, 48))


def tiny_config(data: Path, out: Path, **overrides) -> dict:
    cfg = yaml.safe_load((CONFIGS / "tiny.yaml").read_text())
    cfg.update(data=[str(data)], output_dir=str(out), max_steps=8, logging_steps=2, save_steps=4)
    cfg.update(overrides)
    return cfg


def run(cfg: dict):
    from avmem.train.engine import train

    return train(config_from_dict(cfg))


def test_shipped_configs_validate():
    paper = load_config(CONFIGS / "paper_qwen3vl_8b.yaml")
    assert (paper.lora.r, paper.lora.alpha, paper.lora.dropout) == (128, 256.0, 0.05)
    assert paper.lora.targets == ["q_proj", "k_proj", "v_proj"] and paper.lr == 2e-5
    assert (paper.fps, paper.max_frames, paper.epochs, paper.cg_iters, paper.ttt_update) == (4.0, 1024, 1, 3, "hf")
    assert load_config(CONFIGS / "omnimem_budget_aware.yaml").reader == "omnimem"
    for name in ("ddp.yaml", "fsdp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml"):
        launcher = yaml.safe_load((CONFIGS / name).read_text())
        assert launcher["distributed_type"] in ("MULTI_GPU", "FSDP", "DEEPSPEED")
        ds = launcher.get("deepspeed_config", {}).get("deepspeed_config_file")
        if ds:
            assert json.loads((CONFIGS / Path(ds).name).read_text())["zero_optimization"]["stage"] in (2, 3)


@pytest.mark.parametrize("bad, message", [
    ({"bogus": 1}, "unknown key 'bogus'"),
    ({"lora": {"rank": 4}}, "unknown key 'lora.rank'"),
    ({"lr": "fast"}, "'lr' must be a number"),
    ({"max_steps": 0}, "'max_steps' must be > 0"),
    ({"ttt_update": "adam"}, "'ttt_update' must be one of"),
    ({"reader": "pd"}, "'reader' must be one of"),
    ({"lora": {"r": 0}}, "lora needs r > 0"),
    ({"budget_file": "b.json"}, "only applies with reader: omnimem"),
    ({"use_audio": "yes"}, "'use_audio' must be true or false"),
    ({"train_llm": True}, "set use_lora: false"),
    ({"train_vision": True}, "cannot hold LoRA layers"),
    ({"use_lora": False, "use_ttt": False}, "nothing to train"),
])
def test_bad_configs_are_named(tmp_path, bad, message):
    cfg = tiny_config(tmp_path / "d.json", tmp_path / "out", **bad)
    with pytest.raises(ValueError, match=re.escape(message)):
        config_from_dict(cfg)


def test_cli_rejects_bad_input_before_training(tmp_path, data):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(data, tmp_path / "out", warmup="x")))
    bad = runner.invoke(app, ["train", str(path)])
    assert bad.exit_code == 2 and "unknown key 'warmup'" in bad.stderr
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"video": "a.mp4", "conversations": [{"from": "human", "value": "<video>\\nQ"}]}\n')
    path.write_text(yaml.safe_dump(tiny_config(broken, tmp_path / "out")))
    bad = runner.invoke(app, ["train", str(path)])
    assert bad.exit_code == 2 and "broken.jsonl:1" in bad.stderr
    assert not (tmp_path / "out").exists()  # nothing started
    path.write_text(yaml.safe_dump(tiny_config(data, tmp_path / "out")))
    ok = runner.invoke(app, ["train", str(path), "--check"])
    assert ok.exit_code == 0, ok.output


def test_conversation_targets_cover_answers_only():
    from avmem.model import load_model
    from avmem.session import StreamSession
    from avmem.train.forward import IGNORE, conversation_tail

    session = StreamSession(load_model("tiny-qwen3-vl"))
    tok = session.model.backbone.tokens
    ids, targets = conversation_tail(session, (("What colour?", "Red."), ("And later?", "Blue.")))
    assert len(ids) == len(targets)
    rows = [i for i, t in enumerate(targets) if t != IGNORE]
    assert all(targets[i] == ids[i + 1] for i in rows)  # row i predicts the next token
    predicted = [t for t in targets if t != IGNORE]
    want = session._text_ids("Red.") + [tok.im_end] + session._text_ids("Blue.") + [tok.im_end]
    assert predicted == want
    decoded = session.model.backbone.tokenizer.decode(ids)
    assert decoded.count("assistant") == 2 and "And later?" in decoded


@pytest.mark.parametrize("update", ["hf", "sgd", "muon"])
def test_loss_decreases_for_each_ttt_rule(tmp_path, data, update):
    result = run(tiny_config(data, tmp_path / "out", ttt_update=update, max_steps=24, logging_steps=4,
                             save_steps=100, lr=5e-3))
    assert result.steps == 24 and result.skipped == 0
    first, last = result.losses[0], result.losses[-1]
    assert last < first - 0.1, result.losses


def test_checkpoint_is_the_release_layout_and_reloads_with_the_same_loss(tmp_path, data):
    from avmem.model import load_model
    from avmem.train.data import VideoQADataset, load_records
    from avmem.train.forward import TrainableAVMem

    out = tmp_path / "out"
    result = run(tiny_config(data, out, ttt_update="muon"))
    tensors = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    lora = [k for k in tensors if ".lora_" in k]
    assert lora and all(re.fullmatch(r"base_model\.model\.model\.language_model\.layers\.\d+\.self_attn\."
                                     r"[qkv]_proj\.lora_[AB]\.weight", k) for k in lora)
    ttt = sorted(set(tensors) - set(lora))
    assert "base_model.model.model.ttt_gating.gating_alpha" in ttt
    assert "base_model.model.model.ttt_layers.update.log_step" in ttt  # Muon's learned step
    assert all(k.startswith("base_model.model.model.ttt_layers.ttt.") for k in ttt
               if "gating" not in k and "update" not in k)
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["target_modules"] == ["q_proj", "k_proj", "v_proj"]
    assert config["modules_to_save"] == ["ttt_layers", "ttt_gating"]

    trained = result.model
    sample = VideoQADataset(load_records([str(data)]), fps=2.0, max_frames=16, max_pixels=4096,
                            factor=trained.backbone.vision.factor)[0]
    settings = replace(TrainableAVMem(trained, _settings()).settings)
    with torch.no_grad():
        want, n = TrainableAVMem(trained, settings).loss_terms(sample)
        for folder in (out, out / "checkpoint-8"):
            loaded = load_model(folder)
            assert loaded.spec.ttt["update"] == "muon" and loaded.extras["lora_pairs"] == len(lora) // 2
            got, m = TrainableAVMem(loaded, settings).loss_terms(sample)
            assert m == n
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _settings():
    from avmem.session import SessionSettings

    return SessionSettings(video_tokens=256, audio_tokens=64, max_pixels=4096, fps=2.0)


@pytest.mark.parametrize("accum, at", [(1, 4), (3, 1)])
def test_resume_continues_from_the_saved_step(tmp_path, data, accum, at):
    """Resumed at an epoch boundary (accum 1, step 4 of 4-sample epochs) and mid-epoch (accum 3, step 1): the
    run ends with the same weights as an uninterrupted one."""
    steps = 8 if accum == 1 else 4
    whole = run(tiny_config(data, tmp_path / "whole", grad_accum=accum, max_steps=steps, save_steps=at))
    resumed = run(tiny_config(data, tmp_path / "resumed", grad_accum=accum, max_steps=steps, save_steps=at,
                              resume=str(tmp_path / "whole" / f"checkpoint-{at}")))
    assert resumed.steps == steps and resumed.samples == whole.samples
    state = json.loads((tmp_path / "resumed" / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    assert state["step"] == steps
    a = load_file(str(tmp_path / "whole" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "adapter" / "adapter_model.safetensors"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)
    assert whole.losses[-1] == pytest.approx(resumed.losses[-1], rel=1e-4)


def test_resume_and_output_dir_mistakes_are_named(tmp_path, data):
    run(tiny_config(data, tmp_path / "a", max_steps=2, save_steps=1))
    with pytest.raises(ValueError, match="already holds a training run"):
        run(tiny_config(data, tmp_path / "a", max_steps=2))
    with pytest.raises(ValueError, match="resume: .* was trained with"):
        run(tiny_config(data, tmp_path / "b", lora={"r": 4, "alpha": 8, "dropout": 0.0},
                        resume=str(tmp_path / "a" / "checkpoint-1")))
    with pytest.raises(ValueError, match="resume: no checkpoint"):
        run(tiny_config(data, tmp_path / "empty", resume="latest"))
    with pytest.raises(ValueError, match="'gate_proj' is not an attention projection"):
        run(tiny_config(data, tmp_path / "c", lora={"r": 4, "alpha": 8, "targets": ["q_proj", "gate_proj"]}))
    with pytest.raises(ValueError, match="LoRA would never train"):
        run(tiny_config(data, tmp_path / "d", max_steps=2, ttt_only_steps=2))


def test_lora_only_run_saves_and_reloads_without_ttt(tmp_path, data):
    from avmem.model import load_model

    out = tmp_path / "out"
    result = run(tiny_config(data, out, use_ttt=False, use_audio=False, max_steps=4))
    assert result.steps == 4
    assert json.loads((out / "adapter" / "avmem_ttt.json").read_text()) is None
    assert all(".lora_" in k for k in load_file(str(out / "adapter" / "adapter_model.safetensors")))
    loaded = load_model(out)
    assert loaded.ttt is None and loaded.extras["lora_pairs"] > 0


def test_two_stage_schedule_holds_lora_first(tmp_path, data):
    out = tmp_path / "out"
    run(tiny_config(data, out, max_steps=6, ttt_only_steps=3, save_steps=3, report_to="tensorboard",
                    logging_steps=1))
    assert list((out / "logs").rglob("events.out.tfevents.*"))  # loss / lr / skipped curves
    stage1 = load_file(str(out / "checkpoint-3" / "adapter" / "adapter_model.safetensors"))
    final = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    lora_b = [k for k in final if ".lora_B." in k]
    assert all(float(stage1[k].abs().max()) == 0 for k in lora_b)  # B starts at 0 and was held
    assert all(float(final[k].abs().max()) > 0 for k in lora_b)  # then trained
    from avmem.model import load_model

    fresh = load_model("tiny-qwen3-vl").ttt.state_dict()
    assert not torch.equal(stage1["base_model.model.model.ttt_layers.ttt.W1"], fresh["ttt.W1"])


def test_budget_aware_omnimem_training_runs_through_the_compressed_forward(tmp_path, data):
    result = run(tiny_config(data, tmp_path / "out", reader="omnimem", read_tokens=4, read_chunk=16, max_steps=12,
                             logging_steps=4, lr=5e-3))
    assert result.steps == 12 and all(torch.isfinite(torch.tensor(result.losses)))
    assert result.losses[-1] < result.losses[0]
    full = run(tiny_config(data, tmp_path / "full", max_steps=4, logging_steps=4, lr=5e-3))
    assert abs(full.losses[0] - result.losses[0]) > 1e-4  # the budget binds: a different forward


def test_unreadable_sample_is_skipped_and_counted(tmp_path, data):
    items = json.loads(data.read_text())
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"\x00" * 2048)
    items.append({**items[0], "video": str(bad)})
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps([{**it, "video": str(data.parent / it["video"]) if it["video"] != str(bad)
                                  else str(bad)} for it in items]))
    result = run(tiny_config(mixed, tmp_path / "out", max_steps=10, validate_samples=1))
    assert result.skipped >= 1 and result.steps == 10


def test_two_process_ddp_on_cpu(tmp_path, data):
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(data, tmp_path / "out", max_steps=2)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29517", "-m", "avmem.train", str(cfg)],
                          capture_output=True, text=True, timeout=300, env={**env, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = json.loads((tmp_path / "out" / "ranks.json").read_text())
    assert len(ranks) == 2 and ranks[0]["digest"] == ranks[1]["digest"]
    seen = [set(r["samples"]) for r in ranks]
    assert len(seen[0]) == len(seen[1]) == 2 and not seen[0] & seen[1]  # 4 samples split between the ranks
    assert "2 process(es)" in proc.stderr
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()


def test_changing_cg_iters_keeps_learned_update_state():
    from avmem.model import _with_cg_iters, load_model
    from avmem.train.engine import retarget_ttt

    model = load_model("tiny-qwen3-vl")
    model = retarget_ttt(model, "muon", 0, "cpu")
    with torch.no_grad():
        model.ttt.update.log_step.fill_(-1.25)
    model = _with_cg_iters(model, 5)
    assert model.ttt.cfg.cg_iters == 5 and torch.all(model.ttt.update.log_step == -1.25)


def test_whole_model_training_saves_an_avmem_folder(tmp_path, data):
    from avmem.model import load_model
    from avmem.train.data import VideoQADataset, load_records
    from avmem.train.forward import TrainableAVMem

    out = tmp_path / "out"
    result = run(tiny_config(data, out, use_lora=False, train_llm=True, train_vision=True, train_audio=True,
                             max_steps=12, logging_steps=4, save_steps=6, lr=2e-3))
    assert result.losses[-1] < result.losses[0] - 0.1, result.losses
    assert not (out / "adapter").exists() and (out / "model" / "avmem.json").is_file()
    loaded = load_model(out / "model")
    assert not loaded.spec.random_weights
    fresh = load_model("tiny-qwen3-vl")
    for part in ("model.visual.blocks.0.attn.qkv.weight", "model.language_model.layers.0.mlp.up_proj.weight"):
        assert not torch.equal(loaded.backbone.model.state_dict()[part], fresh.backbone.model.state_dict()[part])
    assert not torch.equal(loaded.audio.state_dict()["layers.0.fc1.weight"], fresh.audio.state_dict()["layers.0.fc1.weight"])
    sample = VideoQADataset(load_records([str(data)]), fps=2.0, max_frames=16, max_pixels=4096,
                            factor=loaded.backbone.vision.factor)[1]
    with torch.no_grad():
        want, _ = TrainableAVMem(result.model, _settings()).loss_terms(sample)
        got, _ = TrainableAVMem(loaded, _settings()).loss_terms(sample)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    resumed = run(tiny_config(data, tmp_path / "resumed", use_lora=False, train_llm=True, train_vision=True,
                              train_audio=True, max_steps=12, logging_steps=4, save_steps=6, lr=2e-3,
                              resume=str(out / "checkpoint-6")))
    assert resumed.losses[-1] == pytest.approx(result.losses[-1], rel=1e-4)


def test_mamba2_memory_layer_trains_saves_and_streams(tmp_path, data):
    from avmem.memory.ssm import Mamba2Memory
    from avmem.model import load_model
    from avmem.session import StreamSession

    out = tmp_path / "out"
    result = run(tiny_config(data, out, new_ttt=True, memory_layer="mamba2", ttt_heads=4, use_lora=False,
                             train_llm=True, max_steps=8, logging_steps=4, lr=2e-3))
    assert result.losses[-1] < result.losses[0]
    loaded = load_model(out / "model")
    assert isinstance(loaded.ttt, Mamba2Memory) and loaded.spec.memory_layer == "mamba2"
    session = StreamSession(loaded, video_tokens=64, max_pixels=4096)
    session.feed_file(data.parent / "clip000.mp4")
    session.flush()
    assert isinstance(session.ask("What colour?", max_new_tokens=2), str)
    restored = StreamSession.load(session.save(tmp_path / "s.avmem"), loaded)
    torch.testing.assert_close(restored.state.ttt.ssm, session.state.ttt.ssm)
    with pytest.raises(ValueError, match="memory_layer: mamba2 needs"):
        config_from_dict(tiny_config(data, tmp_path / "x", memory_layer="mamba2"))
