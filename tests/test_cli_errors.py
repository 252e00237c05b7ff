"""Bad output paths and rejected checkpoints end in one line (``avmem: error: ...``, exit 2), never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from avmem.cli import app
from avmem.memory.kv.budgets import BudgetSchedule

runner = CliRunner()
CONFIGS = Path(__file__).resolve().parents[1] / "avmem" / "train" / "configs"


def one_line_error(args: list[str], match: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("avmem: error: ") and match in lines[0], result.output


@pytest.mark.parametrize("png, match", [
    ("no_such_folder/b.png", "does not exist"),
    (".", "is a folder"),
    ("b.unknown-type", "--png"),
])
def test_budgets_show_bad_png_path(tmp_path, monkeypatch, png, match):
    monkeypatch.chdir(tmp_path)
    BudgetSchedule.uniform(4, 64).save(tmp_path / "b.json")
    one_line_error(["budgets", "show", "b.json", "--png", png], match)
    good = runner.invoke(app, ["budgets", "show", "b.json", "--png", "ok.png"])
    assert good.exit_code == 0 and (tmp_path / "ok.png").stat().st_size > 0, good.output


def test_resume_state_and_tensor_files_are_checked(tmp_path):
    from avmem.train.engine import _load_tensors, _read_state, _restore

    (tmp_path / "trainer_state.json").write_text("{not json")
    with pytest.raises(ValueError, match="trainer_state.json is unreadable"):
        _read_state(tmp_path, 1)
    (tmp_path / "trainer_state.json").write_text(json.dumps({"samples": [3], "skipped": [0]}))
    with pytest.raises(ValueError, match="lacks a valid step"):
        _read_state(tmp_path, 1)
    (tmp_path / "trainer_state.json").write_text(json.dumps({"step": 2, "samples": [3, 3], "skipped": [0, 0]}))
    with pytest.raises(ValueError, match="saved by 2 process"):
        _read_state(tmp_path, 1)
    assert _read_state(tmp_path, 2)["step"] == 2
    with pytest.raises(ValueError, match="optimizer.pt is missing"):
        _load_tensors(tmp_path / "optimizer.pt")
    (tmp_path / "garbage.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="damaged or holds more than tensors"):
        _load_tensors(tmp_path / "garbage.pt")
    torch.save({"state": {}, "path": Path("/")}, tmp_path / "objects.pt")  # an object the weights-only loader refuses
    with pytest.raises(ValueError, match="damaged or holds more than tensors"):
        _load_tensors(tmp_path / "objects.pt")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    with pytest.raises(ValueError, match="does not fit this run"):
        _restore(optimizer, {"state": {}, "param_groups": [{"params": [0, 1]}]}, tmp_path / "optimizer.pt")


def test_train_resume_from_a_damaged_checkpoint_is_one_line(tmp_path):
    pytest.importorskip("peft")
    pytest.importorskip("accelerate")
    from avmem.synth import write_colour_qa_set

    data = write_colour_qa_set(tmp_path / "qa", 2, seconds=2, size=(48, 48))
    cfg = yaml.safe_load((CONFIGS / "tiny.yaml").read_text())
    cfg.update(data=[str(data)], output_dir=str(tmp_path / "a"), max_steps=1, logging_steps=1, save_steps=1)
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(cfg))
    first = runner.invoke(app, ["train", str(tmp_path / "a.yaml")])
    assert first.exit_code == 0, first.output
    damaged = tmp_path / "damaged"
    shutil.copytree(tmp_path / "a" / "checkpoint-1", damaged)
    (damaged / "optimizer.pt").write_bytes(b"\x80\x04garbage")
    cfg.update(output_dir=str(tmp_path / "b"), max_steps=2)
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(cfg))
    one_line_error(["train", str(tmp_path / "b.yaml"), "--resume", str(damaged)], "optimizer.pt is damaged")
