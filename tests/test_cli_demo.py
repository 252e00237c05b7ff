"""The demo command and its input validation (exit code 2, one-line messages)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from avmem.cli import app

runner = CliRunner()


def test_demo_json_reports_bounded_memory():
    result = runner.invoke(app, ["demo", "--seconds", "12", "--memory-tokens", "200", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["frames"] == 12 and report["tokens_in"] == 12 * 64
    assert report["memory_tokens"] == 200
    assert all(row["memory_tokens"] <= 200 for row in report["rows"])
    assert report["ttt_state_bytes"] > 0 and report["elapsed_s"] > 0


def test_demo_table_for_each_update_rule():
    for update in ("sgd", "muon"):
        result = runner.invoke(app, ["demo", "--seconds", "6", "--update", update])
        assert result.exit_code == 0, result.output
        assert "frames" in result.stdout and "absorbed" in result.stdout


def test_bad_input_exits_2_with_one_line():
    for args, needle in ((["demo", "--seconds", "2"], "--seconds"),
                         (["demo", "--memory-tokens", "10"], "--memory-tokens")):
        result = runner.invoke(app, args)
        assert result.exit_code == 2
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.output
    assert runner.invoke(app, ["demo", "--update", "adam"]).exit_code == 2
    assert runner.invoke(app, ["demo", "--seconds", "abc"]).exit_code == 2
