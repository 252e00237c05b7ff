"""The memory-mechanism study (seed 001 Tables 2-3 in miniature): same model, same data, same token budget,
different memories.

Every variant starts from the same model (``--base``: by default the embedded demo model, fine-tuned; or a preset
such as ``small-qwen3-vl``, trained from random weights with its memory in place from step 0), gets the same
training run (``--steps`` steps of ``avmem train`` on ``--train``, same seed, same data order, same learning
rate) with its memory in place, once per seed of ``--seeds``, and is evaluated on the same test questions
(``--test``, asked while the videos play) with the same video token budget:

=============  ==========================================================================
ttt-hf         fresh TTT layer, Gauss-Newton CG update (3 steps), similarity discard
ttt-sgd        fresh TTT layer, gradient step, similarity discard
ttt-muon       fresh TTT layer, Muon step, similarity discard
mamba2         fresh Mamba-2 layer (pure-PyTorch SSD), similarity discard
discard        no memory layer, similarity discard (MovieChat-style)
merge          no memory layer, similarity merge (adjacent segments averaged)
=============  ==========================================================================

Accuracy is split by how far back the asked-about event lies: *inside* (a first-in-first-out memory of the
budget would still hold it) or *outside*. Intervals are 95 % percentile bootstraps over questions (pooled over
the seeds' runs); the per-seed accuracies are listed beside them. Each (variant, seed) run is written to
``OUT/<variant>/seed<S>/results.json`` as soon as it ends, and a rerun skips the runs already there.

    python benchmarks/memory_study.py --train data/train_train.json --test study/test.json --out study_out
    python benchmarks/memory_study.py --base small-qwen3-vl --lr 1e-3 --seeds 0,1,2 ...   # trained from scratch
    python benchmarks/memory_study.py --smoke          # CI: tiny model, two short clips, two steps

Writes ``OUT/results.json``, ``OUT/table.md`` and ``OUT/memory_study.png`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import shutil
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


def run_variant(name: str, seed: int, args, out: Path) -> dict:
    """Train ``name`` from the base with ``seed`` and evaluate it; the summary with timings."""
    from avmem.eval.mcq import evaluate_mcq, results_to_json, summarize
    from avmem.model import load_model
    from avmem.session import SessionSettings
    from avmem.train.config import config_from_dict
    from avmem.train.engine import train

    spec = VARIANTS[name]
    folder = out / name / f"seed{seed}"
    cfg = dict(model=args.base, data=[str(args.train)], output_dir=str(folder / "run"), fps=1.0,
               max_frames=args.max_frames, max_pixels=args.max_pixels, video_tokens=args.video_tokens,
               audio_tokens=args.audio_tokens, bank_step=32, ttt_heads=4, ttt_mini_batch=64, ttt_lag=64,
               cg_iters=3, ttt_checkpoint_group=0, use_lora=False, train_llm=True, train_vision=True,
               train_audio=True, lr=args.lr, warmup_ratio=args.warmup, max_steps=args.steps, epochs=1000,
               seed=seed, num_workers=args.workers, logging_steps=max(1, args.steps // 5), save_steps=10 ** 9,
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
    losses = result.losses
    tail = max(1, len(losses) // 10)
    row = {"variant": name, "seed": seed, "summary": summary, "train_s": train_s, "eval_s": eval_s,
           "steps": result.steps, "base": args.base,
           "first_loss": sum(losses[:tail]) / tail if losses else None,
           "last_loss": sum(losses[-tail:]) / tail if losses else None}
    (folder / "results.json").write_text(json.dumps({**row, "results": results_to_json(results)}, indent=1))
    if not args.keep_models:
        shutil.rmtree(folder / "run", ignore_errors=True)
    return row


def pooled(runs: list[dict]) -> dict:
    """One row per variant from its seeds' runs: pooled accuracy [95 % bootstrap] per group, per-seed values,
    and the paired per-question answers (for the differences against a reference variant)."""
    import numpy as np

    from avmem.eval.mcq import bootstrap_ci

    row = {"variant": runs[0]["variant"], "seeds": [r["seed"] for r in runs], "steps": runs[0]["steps"],
           "base": runs[0].get("base"),
           "train_s": float(np.mean([r["train_s"] for r in runs])), "eval_s": float(np.mean([r["eval_s"] for r in runs])),
           "first_loss": _mean([r["first_loss"] for r in runs]), "last_loss": _mean([r["last_loss"] for r in runs]),
           "groups": {}, "answers": {}}
    for group in GROUPS:
        hits, per_seed = [], []
        for r in runs:
            h = [float(q["correct"]) for q in r["results"] if _in_group(q, group)]
            hits += h
            per_seed.append(float(np.mean(h)) if h else float("nan"))
        lo, hi = bootstrap_ci(np.array(hits))
        row["groups"][group] = {"n": len(hits), "accuracy": float(np.mean(hits)) if hits else float("nan"),
                                "ci_low": lo, "ci_high": hi, "per_seed": per_seed}
    for r in runs:
        for q in r["results"]:
            row["answers"][f"{r['seed']}/{q['question_id']}"] = (float(q["correct"]), bool(q["inside_memory"]))
    return row


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _in_group(q: dict, group: str) -> bool:
    return group == "all" or (group == "inside memory") == bool(q["inside_memory"])


def paired(row: dict, ref: dict, group: str, n: int = 2000) -> tuple[float, float, float, int, int]:
    """Accuracy difference row - ref on the questions (and seeds) both answered: mean, 95 % paired bootstrap,
    how many they answer differently, how many in all."""
    import numpy as np

    keys = sorted(k for k in row["answers"] if k in ref["answers"] and _in_group(
        {"inside_memory": row["answers"][k][1]}, group))
    if not keys:
        return float("nan"), float("nan"), float("nan"), 0, 0
    diff = np.array([row["answers"][k][0] - ref["answers"][k][0] for k in keys])
    rng = np.random.default_rng(0)
    means = rng.choice(diff, size=(n, len(diff)), replace=True).mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(diff.mean()), float(lo), float(hi), int((diff != 0).sum()), len(keys)


def table(rows: list[dict]) -> str:
    """Markdown: pooled accuracy [95 % CI] (n) per group and variant, the per-seed accuracies, the train loss."""
    lines = ["| memory | " + " | ".join(GROUPS) + " | per seed (all) | train loss (first -> last 10 %) |",
             "|---|" + "---|" * len(GROUPS) + "---|---|"]
    for row in rows:
        cells = []
        for g in GROUPS:
            s = row["groups"][g]
            cells.append("-" if not s["n"] else
                         f"{s['accuracy']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}] (n={s['n']})")
        seeds = " / ".join(f"{a:.3f}" for a in row["groups"]["all"]["per_seed"])
        loss = "-" if row["first_loss"] is None else f"{row['first_loss']:.3f} -> {row['last_loss']:.3f}"
        lines.append(f"| {row['variant']} | " + " | ".join(cells) + f" | {seeds} | {loss} |")
    ref = next((r for r in rows if r["variant"] == "discard"), None)
    if ref is not None and len(rows) > 1:
        lines += ["", ("Paired against discard (same questions, same seeds; difference [95 % paired bootstrap], "
                       "questions answered differently / all):"), "",
                  "| memory | all | inside memory | outside memory |", "|---|---|---|---|"]
        for row in rows:
            if row is ref:
                continue
            cells = []
            for g in GROUPS:
                d, lo, hi, differ, n = paired(row, ref, g)
                cells.append(f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}] ({differ}/{n})" if n else "-")
            lines.append(f"| {row['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Grouped bars (inside / outside the token memory) with the 95 % intervals and the per-seed accuracies as
    dots; chance at 0.25."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(rows))
    for k, (group, colour) in enumerate((("inside memory", "C0"), ("outside memory", "C1"))):
        acc, lo, hi = [], [], []
        for row in rows:
            s = row["groups"][group]
            a = s["accuracy"] if s["n"] else np.nan
            acc.append(a)
            lo.append(a - s["ci_low"] if s["n"] else 0)
            hi.append(s["ci_high"] - a if s["n"] else 0)
        pos = x + (k - 0.5) * 0.38
        ax.bar(pos, acc, 0.38, yerr=[lo, hi], capsize=3, color=colour, alpha=0.8, label=group)
        for i, row in enumerate(rows):
            seeds = row["groups"][group]["per_seed"]
            ax.plot([pos[i]] * len(seeds), seeds, "k.", ms=4, label="one seed" if i == 0 and k == 0 else None)
    ax.axhline(0.25, color="0.4", ls="--", lw=1, label="chance")
    ax.set_xticks(x, [r["variant"] for r in rows])
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def recent_distractors(runs_by_variant: dict[str, list[dict]], test: Path, video_tokens: int) -> str | None:
    """Where the wrong answers to questions outside the token memory go: the share of them that name a background
    colour a first-in-first-out memory of ``video_tokens`` would still show (a model answering from what it holds),
    against the share a uniform guess would pick. Needs the test split's events file (``SPLIT_events.json`` beside
    ``SPLIT.json``, written by ``avmem synth``); None without it. Markdown."""
    import numpy as np

    events_path = test.with_name(test.stem + "_events.json")
    if not events_path.is_file():
        return None
    from avmem.synth import load_annotations

    events = {e["video_id"]: e for e in json.loads(events_path.read_text())}
    questions = {q.question_id: (video.stem, q) for video, qs in load_annotations(test) for q in qs}
    lines = [f"Outside the token memory: answers naming a colour still on screen in the last {video_tokens} video "
             "tokens (not the answer), against a uniform guess over the same options:", "",
             "| memory | questions | accuracy | picked a recent colour | uniform guess would | ratio |",
             "|---|---|---|---|---|---|"]
    for name, runs in runs_by_variant.items():
        picked, expected, correct = [], [], []
        for run in runs:
            for r in run["results"]:
                if r["inside_memory"] or r["question_id"] not in questions or r.get("task_type") != "scene_shape":
                    continue
                vid, q = questions[r["question_id"]]
                rate = r["tokens_since_event"] / max(q.asked_at - q.event_time, 1e-6)  # video tokens per s
                start = q.asked_at - video_tokens / max(rate, 1e-6)
                recent = {sc["colour"] for sc in events[vid]["scenes"]
                          if sc["end"] > start and sc["start"] <= q.asked_at}
                options = dict(o.split(". ", 1) for o in q.options)
                answer = options[q.answer]
                wrong_recent = [k for k, c in options.items() if c in recent and c != answer]
                picked.append(float(r["predicted"] in wrong_recent))
                expected.append(len(wrong_recent) / len(options))
                correct.append(float(r["correct"]))
        if picked:
            lines.append(f"| {name} | {len(picked)} | {np.mean(correct):.3f} | {np.mean(picked):.3f} | "
                         f"{np.mean(expected):.3f} | {np.mean(picked) / max(np.mean(expected), 1e-9):.2f}x |")
    return "\n".join(lines)


def video_seconds(annotations: Path) -> list[float]:
    """Durations of the videos of an annotation or training file written by ``avmem synth`` (from its events
    file next to it), [] when unknown."""
    split = annotations.name.removesuffix(".json").removesuffix("_train")
    events = annotations.with_name(f"{split}_events.json")
    if not events.is_file():
        return []
    return [float(v["seconds"]) for v in json.loads(events.read_text())]


def smoke_data(folder: Path) -> tuple[Path, Path]:
    """Two short training clips and one test clip (for CI)."""
    from avmem.synth.benchmark import generate

    generate(folder, "train", 2, seconds=(30, 40), size=(64, 64), fps=1, seed=0, questions=4, times=2, style="open")
    generate(folder, "test", 1, seconds=(40, 40), size=(64, 64), fps=1, seed=0, questions=6, times=2, style="open")
    return folder / "train_train.json", folder / "test.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default=None, help="Starting model: the embedded demo model (default; fine-tuned) or a "
                   "preset such as small-qwen3-vl (random weights: every memory trained from step 0).")
    p.add_argument("--train", type=Path, help="Training JSON (avmem synth ... --style open --group: SPLIT_train.json).")
    p.add_argument("--test", type=Path, help="Test annotations (avmem synth ... --style open: SPLIT.json).")
    p.add_argument("--out", type=Path, default=Path("memory_study_out"))
    p.add_argument("--variants", default=",".join(VARIANTS), help="Comma-separated subset of " + ", ".join(VARIANTS))
    p.add_argument("--seeds", default="0", help="Comma-separated training seeds (one run per variant and seed).")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=float, default=0.05, help="Warm-up fraction of the steps.")
    p.add_argument("--video-tokens", type=int, default=128)
    p.add_argument("--audio-tokens", type=int, default=64)
    p.add_argument("--max-pixels", type=int, default=9216)
    p.add_argument("--max-frames", type=int, default=160)
    p.add_argument("--max-videos", type=int, default=None)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--keep-models", action="store_true", help="Keep each run's trained model (OUT/<variant>/"
                   "seed<S>/run); by default only its results are kept.")
    p.add_argument("--smoke", action="store_true", help="Tiny model, generated clips, two steps (CI).")
    p.add_argument("--report", action="store_true",
                   help="Only rebuild the table and plot from OUT/<variant>/seed<S>/results.json (runs made in "
                        "separate processes, e.g. two at a time on two cores).")
    args = p.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        print(f"memory_study: unknown variant(s) {unknown or names} (choose from {', '.join(VARIANTS)})",
              file=sys.stderr)
        return 2
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        print(f"memory_study: --seeds must be comma-separated integers, got {args.seeds!r}", file=sys.stderr)
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
        train_s, test_s = video_seconds(args.train), video_seconds(args.test)
        if train_s and test_s:
            (args.out / "videos.json").write_text(json.dumps({"train_seconds": [min(train_s), max(train_s)],
                                                              "test_seconds": [min(test_s), max(test_s)]}))
            print(f"training videos {min(train_s):.0f}-{max(train_s):.0f} s, test videos "
                  f"{min(test_s):.0f}-{max(test_s):.0f} s ({min(test_s) / max(train_s):.1f}-"
                  f"{max(test_s) / max(train_s):.1f}x the longest training video)", flush=True)
        for seed in seeds:
            for name in names:
                if (args.out / name / f"seed{seed}" / "results.json").is_file():
                    print(f"== {name} seed {seed}: done before, skipped", flush=True)
                    continue
                print(f"== {name} seed {seed}", flush=True)
                run_variant(name, seed, args, args.out)
    keep = None
    if args.max_videos is not None and args.test is not None and args.test.is_file():
        from avmem.eval.mcq import load_annotations

        keep = {video.stem for video, _ in load_annotations(args.test)[:args.max_videos]}
    rows = []
    runs_by_variant: dict[str, list[dict]] = {}
    for name in names:
        runs = []
        for seed in seeds:
            path = args.out / name / f"seed{seed}" / "results.json"
            if path.is_file():
                run = json.loads(path.read_text())
                if keep is not None:  # a run evaluated on more videos is reported on the same ones as the rest
                    run["results"] = [q for q in run["results"] if q["question_id"].rsplit("-", 1)[0] in keep]
                runs.append(run)
        if not runs:
            print(f"memory_study: no results for {name} in {args.out}", file=sys.stderr)
            return 2
        rows.append(pooled(runs))
        runs_by_variant[name] = runs
    (args.out / "results.json").write_text(json.dumps([{k: v for k, v in r.items() if k != "answers"} for r in rows],
                                                      indent=1))
    text = table(rows)
    bias = recent_distractors(runs_by_variant, args.test, args.video_tokens) if args.test is not None else None
    if bias:
        text += "\n\n" + bias
    (args.out / "table.md").write_text(text + "\n")
    base = rows[0]["base"] or args.base  # the runs' own base (a --report call does not repeat --base)
    start = "trained from scratch" if not Path(base).exists() else "fine-tuning steps from the same model"
    title = (f"{rows[0]['steps']} steps per memory ({start}), seeds {','.join(map(str, seeds))}; "
             f"{args.video_tokens} video tokens")
    plot(rows, args.out / "memory_study.png", title)
    print(text)
    for row in rows:
        print(f"{row['variant']}: {len(row['seeds'])} seed(s), train {row['train_s']:.0f} s, eval {row['eval_s']:.0f} s "
              "per run")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
