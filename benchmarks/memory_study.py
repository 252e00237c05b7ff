"""The memory-mechanism study (seed 001 Tables 2-3 in miniature): same model, same data, same token budget,
different memories.

Every variant starts from the same trained model (``--base``, by default the embedded demo model), gets the
same fine-tuning run (``--steps`` steps of ``avmem train`` on ``--train``, same seed, same data order, same
learning rate) with its memory in place, and is evaluated on the same test questions (``--test``, asked
while the videos play) with the same video token budget:

=============  ==========================================================================
ttt-hf         fresh TTT layer, Gauss-Newton CG update (3 steps), similarity discard
ttt-sgd        fresh TTT layer, gradient step, similarity discard
ttt-muon       fresh TTT layer, Muon step, similarity discard
mamba2         fresh Mamba-2 layer (pure-PyTorch SSD), similarity discard
discard        no memory layer, similarity discard (MovieChat-style)
merge          no memory layer, similarity merge (adjacent segments averaged)
=============  ==========================================================================

Accuracy is split by how far back the asked-about event lies: *inside* (a first-in-first-out memory of the
budget would still hold it) or *outside*. Intervals are 95 % percentile bootstraps over questions.

    python benchmarks/memory_study.py --train data/train_train.json --test study/test.json --out study_out
    python benchmarks/memory_study.py --smoke          # CI: tiny model, two short clips, two steps

Writes ``OUT/results.json``, ``OUT/table.md`` and ``OUT/memory_study.png`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {
    "ttt-hf": {"use_ttt": True, "new_ttt": True, "memory_layer": "ttt", "ttt_update": "hf", "video_policy": "discard"},
    "ttt-sgd": {"use_ttt": True, "new_ttt": True, "memory_layer": "ttt", "ttt_update": "sgd", "video_policy": "discard"},
    "ttt-muon": {"use_ttt": True, "new_ttt": True, "memory_layer": "ttt", "ttt_update": "muon", "video_policy": "discard"},
    "mamba2": {"use_ttt": True, "new_ttt": True, "memory_layer": "mamba2", "video_policy": "discard"},
    "discard": {"use_ttt": False, "video_policy": "discard"},
    "merge": {"use_ttt": False, "video_policy": "merge"},
}
GROUPS = ("all", "inside memory", "outside memory")


def run_variant(name: str, args, out: Path) -> dict:
    """Fine-tune ``name`` from the base and evaluate it; the summary with timings."""
    from avmem.eval.mcq import evaluate_mcq, results_to_json, summarize
    from avmem.model import load_model
    from avmem.session import SessionSettings
    from avmem.train.config import config_from_dict
    from avmem.train.engine import train

    spec = VARIANTS[name]
    folder = out / name
    cfg = dict(model=args.base, data=[str(args.train)], output_dir=str(folder / "run"), fps=1.0,
               max_frames=args.max_frames, max_pixels=args.max_pixels, video_tokens=args.video_tokens,
               audio_tokens=args.audio_tokens, bank_step=32, ttt_heads=4, ttt_mini_batch=64, ttt_lag=64,
               cg_iters=3, ttt_checkpoint_group=0, use_lora=False, train_llm=True, train_vision=True,
               train_audio=True, lr=args.lr, warmup_ratio=0.05, max_steps=args.steps, epochs=1000, seed=args.seed,
               num_workers=args.workers, logging_steps=max(1, args.steps // 5), save_steps=10 ** 9,
               report_to="none", validate_samples=1, **spec)
    t0 = time.perf_counter()
    result = train(config_from_dict(cfg))
    train_s = time.perf_counter() - t0
    model = load_model(str(folder / "run" / "model"))
    settings = SessionSettings(fps=1.0, max_pixels=args.max_pixels, video_tokens=args.video_tokens,
                               audio_tokens=args.audio_tokens, bank_step=32, chunk_frames=16,
                               use_ttt=spec["use_ttt"], video_policy=spec["video_policy"])
    t0 = time.perf_counter()
    results = evaluate_mcq(model, args.test, settings, method="open", max_videos=args.max_videos)
    eval_s = time.perf_counter() - t0
    summary = summarize(results)
    row = {"variant": name, "summary": summary, "train_s": train_s, "eval_s": eval_s, "steps": result.steps,
           "first_loss": result.losses[0] if result.losses else None,
           "last_loss": result.losses[-1] if result.losses else None}
    (folder / "results.json").write_text(json.dumps({**row, "results": results_to_json(results)}, indent=1))
    return row


def table(rows: list[dict]) -> str:
    """Markdown: accuracy [95 % CI] (n) per group and variant."""
    lines = ["| memory | " + " | ".join(GROUPS) + " | train loss (first -> last) |",
             "|---|" + "---|" * len(GROUPS) + "---|"]
    for row in rows:
        cells = []
        for g in GROUPS:
            s = row["summary"].get(g, {"n": 0})
            cells.append("-" if not s["n"] else
                         f"{s['accuracy']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}] (n={s['n']})")
        loss = "-" if row["first_loss"] is None else f"{row['first_loss']:.3f} -> {row['last_loss']:.3f}"
        lines.append(f"| {row['variant']} | " + " | ".join(cells) + f" | {loss} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Grouped bars (inside / outside the token memory) with the 95 % intervals; chance at 0.25."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(rows))
    for k, (group, colour) in enumerate((("inside memory", "C0"), ("outside memory", "C1"))):
        acc, lo, hi = [], [], []
        for row in rows:
            s = row["summary"].get(group, {"n": 0})
            a = s["accuracy"] if s["n"] else np.nan
            acc.append(a)
            lo.append(a - s["ci_low"] if s["n"] else 0)
            hi.append(s["ci_high"] - a if s["n"] else 0)
        ax.bar(x + (k - 0.5) * 0.38, acc, 0.38, yerr=[lo, hi], capsize=3, color=colour, label=group)
    ax.axhline(0.25, color="0.4", ls="--", lw=1, label="chance")
    ax.set_xticks(x, [r["variant"] for r in rows])
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def smoke_data(folder: Path) -> tuple[Path, Path]:
    """Two short training clips and one test clip (for CI)."""
    from avmem.synth.benchmark import generate

    generate(folder, "train", 2, seconds=(30, 40), size=(64, 64), fps=1, seed=0, questions=4, times=2, style="open")
    generate(folder, "test", 1, seconds=(40, 40), size=(64, 64), fps=1, seed=0, questions=6, times=2, style="open")
    return folder / "train_train.json", folder / "test.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default=None, help="Starting model (default: the embedded demo model).")
    p.add_argument("--train", type=Path, help="Training JSON (avmem synth ... --style open --group: SPLIT_train.json).")
    p.add_argument("--test", type=Path, help="Test annotations (avmem synth ... --style open: SPLIT.json).")
    p.add_argument("--out", type=Path, default=Path("memory_study_out"))
    p.add_argument("--variants", default=",".join(VARIANTS), help="Comma-separated subset of " + ", ".join(VARIANTS))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--video-tokens", type=int, default=128)
    p.add_argument("--audio-tokens", type=int, default=64)
    p.add_argument("--max-pixels", type=int, default=9216)
    p.add_argument("--max-frames", type=int, default=160)
    p.add_argument("--max-videos", type=int, default=None)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="Tiny model, generated clips, two steps (CI).")
    p.add_argument("--report", action="store_true",
                   help="Only rebuild the table and plot from OUT/<variant>/results.json (variants run in "
                        "separate processes, e.g. two at a time on two cores).")
    args = p.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        print(f"memory_study: unknown variant(s) {unknown or names} (choose from {', '.join(VARIANTS)})",
              file=sys.stderr)
        return 2
    tmp = None
    if args.smoke:
        tmp = tempfile.TemporaryDirectory()
        args.train, args.test = smoke_data(Path(tmp.name))
        args.base = args.base or "tiny-qwen3-vl"
        args.steps, args.video_tokens, args.audio_tokens, args.max_pixels, args.workers = 2, 32, 16, 4096, 0
    if args.base is None:
        from avmem.demo import DEMO_MODEL

        args.base = str(DEMO_MODEL)
    if not args.report:
        for name, path in (("--train", args.train), ("--test", args.test)):
            if path is None or not path.is_file():
                print(f"memory_study: {name} {path} is not a file (make the data with avmem synth ... --style open)",
                      file=sys.stderr)
                return 2
        args.out.mkdir(parents=True, exist_ok=True)
        for name in names:
            print(f"== {name}", flush=True)
            run_variant(name, args, args.out)
    rows = []
    for name in names:
        path = args.out / name / "results.json"
        if not path.is_file():
            print(f"memory_study: no results for {name} in {args.out}", file=sys.stderr)
            return 2
        row = json.loads(path.read_text())
        row.pop("results")
        rows.append(row)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    text = table(rows)
    (args.out / "table.md").write_text(text + "\n")
    steps = rows[0]["steps"]
    title = f"{steps} fine-tuning steps per memory from the same model; {args.video_tokens} video tokens"
    plot(rows, args.out / "memory_study.png", title)
    print(text)
    for row in rows:
        print(f"{row['variant']}: train {row['train_s']:.0f} s, eval {row['eval_s']:.0f} s")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
