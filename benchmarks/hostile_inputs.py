"""Peak memory and time of ``avmem ask`` on hostile inputs against a normal clip (issue 15).

Generates, in a temporary folder (or ``--work``):

* ``gap_1h.mp4`` / ``gap_10h.mp4``: 640x640 H.264, two frames 1 h / 10 h apart (a paused live stream, a
  surveillance recording): sampled at 1 fps, that is 3600 / 36000 frames showing the same picture;
* ``silence_10h.m4a``: 10 hours of silent mono AAC, no video;
* ``normal_10min.mp4``: a 10-minute test-pattern clip with audio (the reference);

runs each through ``python -m avmem.cli ask FILE -q ... --model tiny-qwen3-vl --json`` in a subprocess and prints
a table of peak RSS (the child's own, from ``wait4``), its ratio to the 10-minute clip's (target <= 1.1x), wall time,
and the seconds the command reports having watched.

    python benchmarks/hostile_inputs.py            # all four inputs
    python benchmarks/hostile_inputs.py --only gap_1h normal_10min
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 1.1


def make_inputs(work: Path, names: list[str]) -> dict[str, Path]:
    from avmem.synth import write_test_pattern_clip
    from avmem.synth.hostile import write_gap, write_silence

    makers = {
        "normal_10min": lambda p: write_test_pattern_clip(p, seconds=600, fps=5, size=(360, 640)),
        "gap_1h": lambda p: write_gap(p, 3600.0, size=640),
        "gap_10h": lambda p: write_gap(p, 36000.0, size=640),
        "silence_10h": lambda p: write_silence(p, 36000.0),
    }
    files = {}
    for name in names:
        path = work / (name + (".m4a" if name.startswith("silence") else ".mp4"))
        if not path.exists():
            start = time.perf_counter()
            makers[name](path)
            print(f"wrote {path.name} ({path.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - start:.0f} s",
                  file=sys.stderr)
        files[name] = path
    return files


def run_ask(path: Path, timeout: float) -> dict:
    """Run ``avmem ask`` on ``path``; returns peak RSS (MiB), wall seconds, exit code and the JSON report."""
    cmd = [sys.executable, "-m", "avmem.cli", "ask", str(path), "-q", "What happened?", "--model", "tiny-qwen3-vl",
           "--max-new-tokens", "4", "--json"]
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        text, errors = out.read(), err.read()
    report = None
    for line in text.splitlines():
        if line.startswith("{"):
            report = json.loads(line)
    return {"rss_mb": usage.ru_maxrss / 1024, "wall_s": wall, "rc": proc.returncode, "report": report,
            "stderr": errors.strip().splitlines()[-1:] if errors.strip() else []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="Folder for the generated inputs (kept).")
    parser.add_argument("--only", nargs="*", default=None, help="Subset of: normal_10min gap_1h gap_10h silence_10h.")
    parser.add_argument("--timeout", type=float, default=3600.0, help="Seconds allowed per run.")
    args = parser.parse_args()
    names = ["normal_10min", "gap_1h", "gap_10h", "silence_10h"]
    names = [n for n in names if args.only is None or n in args.only]
    work = args.work or Path(tempfile.mkdtemp(prefix="avmem-hostile-"))
    work.mkdir(parents=True, exist_ok=True)
    files = make_inputs(work, names)
    rows = []
    for name in names:
        result = run_ask(files[name], args.timeout)
        rows.append((name, result))
        print(f"{name}: rc={result['rc']} rss={result['rss_mb']:.0f} MiB wall={result['wall_s']:.0f} s "
              f"{result['stderr']}", file=sys.stderr, flush=True)
    base = dict(rows).get("normal_10min")
    print("\n| input | peak RSS (MiB) | vs 10-min clip | time (s) | seconds watched | frames | exit |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows:
        ratio = f"{r['rss_mb'] / base['rss_mb']:.2f}x" if base else "-"
        rep = r["report"] or {}
        print(f"| {name} | {r['rss_mb']:.0f} | {ratio} | {r['wall_s']:.0f} | {rep.get('seconds', '-')} | "
              f"{rep.get('frames', '-')} | {r['rc']} |")
    if base:
        worst = max(r["rss_mb"] / base["rss_mb"] for _, r in rows)
        print(f"\nworst ratio {worst:.2f}x (target <= {TARGET_RATIO}x): {'met' if worst <= TARGET_RATIO else 'MISSED'}")


if __name__ == "__main__":
    main()
