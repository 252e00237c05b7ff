"""Command line: ``avmem demo`` (no downloads) and ``avmem version``."""

from __future__ import annotations

import functools
import json
import sys
from enum import Enum

import typer
from rich.console import Console
from rich.table import Table

from . import __version__

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Long audio-visual streams under a fixed memory budget.")
console = Console()


class Update(str, Enum):
    hf = "hf"
    sgd = "sgd"
    muon = "muon"


def user_errors(fn):
    """Turn a ValueError (bad input) into a one-line message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as exc:
            print(f"avmem: error: {exc}", file=sys.stderr)
            raise typer.Exit(code=2) from None

    return wrapper


@app.command()
@user_errors
def demo(
    seconds: int = typer.Option(60, help="Length of the generated clip (4 .. 3600 s)."),
    update: Update = typer.Option(Update.hf, help="TTT fast-weight update rule."),
    memory_tokens: int = typer.Option(512, help="Capacity of the token memory (>= 64)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Generate a test clip, stream it at 1 FPS through the TTT memory and the token bank, print telemetry."""
    from .demo import DemoSettings, run_demo

    settings = DemoSettings(seconds=seconds, update=update.value, memory_tokens=memory_tokens)
    table = Table(title=f"avmem demo: {seconds}s clip, TTT {update.value}, memory {memory_tokens} tokens")
    for col in ("t (s)", "frames", "tokens in", "mem tokens", "oldest kept (s)", "mem KB", "TTT KB", "TTT loss",
                "ms/frame"):
        table.add_column(col, justify="right")

    def on_row(row) -> None:
        table.add_row(f"{row.video_s:.0f}", str(row.frames), str(row.tokens_in), str(row.memory_tokens),
                      f"{row.oldest_kept_s:.0f}", f"{row.memory_kb:.0f}", f"{row.ttt_state_kb:.0f}",
                      f"{row.ttt_loss:.2f}", f"{row.ms_per_frame:.1f}")

    if json_out:
        report = run_demo(settings)
        print(json.dumps(report.to_dict()))
        return
    with console.status("streaming the generated clip..."):
        report = run_demo(settings, on_row=on_row)
    console.print(table)
    console.print(
        f"{report.frames} frames ({report.seconds:.0f} s, {report.tokens_in} visual tokens) absorbed; memory holds "
        f"{report.memory_tokens} tokens ({report.memory_bytes / 1024:.0f} KB) + TTT fast weights "
        f"({report.ttt_state_bytes / 1024:.0f} KB), whatever the length. "
        f"{report.elapsed_s:.1f} s, peak RSS {report.peak_rss_mb:.0f} MB."
    )


@app.command()
def version() -> None:
    """Print the avmem version."""
    print(__version__)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
