"""The demo command (embedded trained model, questions while the clip plays, telemetry, plot) and its input
validation (exit code 2, one-line messages)."""

from __future__ import annotations

import json
import math

from typer.testing import CliRunner

from avmem.cli import app
from avmem.demo import DEMO_MODEL

runner = CliRunner()


def test_embedded_demo_model_is_small_and_loads():
    from avmem.model import load_model

    size = sum(f.stat().st_size for f in DEMO_MODEL.rglob("*.safetensors"))
    assert 0 < size <= 25 * 2 ** 20
    model = load_model(str(DEMO_MODEL))
    assert model.ttt is not None and model.audio is not None
    assert model.backbone.model.config.text_config.num_hidden_layers == 4


def test_demo_json_answers_and_bounded_memory(tmp_path):
    png = tmp_path / "demo.png"
    result = runner.invoke(app, ["demo", "--seconds", "90", "--questions", "6", "--memory-tokens", "64", "--json",
                                 "--plot", str(png)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["frames"] == 90 and len(report["answers"]) >= 4
    for a in report["answers"]:
        assert a["predicted"] in a["options"] and a["truth"] in a["options"]
        assert a["correct"] == (a["predicted"] == a["truth"]) and 0 < a["asked_at"] <= 90
    assert report["accuracy"] == sum(a["correct"] for a in report["answers"]) / len(report["answers"])
    points = report["points"]
    assert points[-1]["video_tokens_in"] > 64 and all(p["video_tokens_held"] <= 64 for p in points)
    losses = [p["ttt_loss"] for p in points if p["ttt_loss"] is not None]
    assert points[-1]["ttt_loss"] is not None and all(math.isfinite(x) for x in losses)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and report["plot"] == str(png)


def test_demo_tables(tmp_path):
    result = runner.invoke(app, ["demo", "--seconds", "60", "--questions", "3", "--plot", ""])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.stdout and "memory telemetry" in result.stdout and "truth" in result.stdout


def test_bad_input_exits_2_with_one_line(tmp_path):
    for args, needle in ((["demo", "--seconds", "2"], "--seconds"),
                         (["demo", "--memory-tokens", "10"], "--memory-tokens"),
                         (["demo", "--questions", "0"], "--questions"),
                         (["demo", "--seconds", "60", "--model", str(tmp_path / "none")], "none"),
                         (["demo", "--seconds", "60", "--plot", str(tmp_path / "no" / "p.png")], "--plot")):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.output
    assert runner.invoke(app, ["demo", "--seconds", "abc"]).exit_code == 2
