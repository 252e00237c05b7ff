"""Time the README's main job: ``avmem demo`` end to end (process start to exit, clip generation, model
loading, streaming, questions, plot), each run in a fresh process.

    python benchmarks/demo.py [--runs 3] [--threads 2] [--seconds 600]

Prints one row per run and the median (the target: under 3 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(seconds: int, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as tmp:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "avmem.cli", "demo", "--seconds", str(seconds), "--json",
                              "--plot", str(Path(tmp) / "demo.png")], capture_output=True, text=True, env=env,
                             check=False)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"avmem demo failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    report = json.loads(out.stdout)
    return {"wall_s": wall, "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
            "generate_s": report["generate_s"], "stream_s": report["stream_s"],
            "peak_rss_mb": report["peak_rss_mb"], "accuracy": report["accuracy"],
            "answers": len(report["answers"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=int, default=600)
    args = p.parse_args()
    rows = [run_once(args.seconds, args.threads) for _ in range(args.runs)]
    print(f"avmem demo, {args.seconds} s clip, {args.threads} threads, {args.runs} runs (fresh process each)\n")
    print("| run | wall s | cpu s | clip written s | stream + questions s | peak RSS MB | accuracy |")
    print("|---|---|---|---|---|---|---|")
    for k, r in enumerate(rows, 1):
        print(f"| {k} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['generate_s']:.1f} | {r['stream_s']:.1f} | "
              f"{r['peak_rss_mb']:.0f} | {r['accuracy']:.2f} ({r['answers']} questions) |")
    median = sorted(r["wall_s"] for r in rows)[len(rows) // 2]
    print(f"\nmedian wall time {median:.1f} s (target: < 180 s)")


if __name__ == "__main__":
    main()
