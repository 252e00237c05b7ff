"""GPU speed at full model size, one command, one table (issue 12).

    python benchmarks/gpu.py                         # H200: release-size TTT, ingest and asking at 8B size
    python benchmarks/gpu.py --device cpu --model tiny-qwen3-vl --quick     # smoke run on a CPU (seconds)

Sections (each a module beside this file with ``measure``):

* ``ttt`` (:mod:`gpu_ttt`): the TTT layer at release size (d=4096, 8 heads, bf16), eager vs fast path vs the
  official block when ``.official_code/`` (a copy of the released TTT harness) or ``$OFFICIAL_TTT_DIR`` is there;
* ``ingest`` (:mod:`gpu_ingest`): a generated 30-minute 360p H.264 + AAC file through ``StreamSession.feed_file``
  at 1 FPS, decode included, and peak memory at 30 vs 3 minutes;
* ``ask`` (:mod:`gpu_ask`): first-token latency at 16k video + 4k audio, incremental follow-ups, every reader at a
  128k memory.

The model for ``ingest`` and ``ask`` is loaded once (``--model``, default the full-size random preset
``random-qwen3-vl-8b`` in bfloat16: its answers are meaningless, its costs are the release's). A section that
fails prints its error as a row and the others still run (the exit code is then 1; targets missed are rows,
not failures); rows are appended to ``--out``/gpu.md and gpu.json as
each section ends.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SECTIONS = ("ttt", "ingest", "ask")


def table(rows: list[dict]) -> str:
    """Markdown table of ``rows`` ({section, what, value, target, ok})."""
    lines = ["| section | what | measured | target | met |", "|---|---|---|---|---|"]
    for r in rows:
        ok = {True: "yes", False: "**no**", None: ""}[r.get("ok")]
        lines.append(f"| {r['section']} | {r['what']} | {r['value']} | {r.get('target', '')} | {ok} |")
    return "\n".join(lines)


def normalise(r: dict) -> dict:
    """A row with text cells: numeric values are seconds (``None``: skipped for the section's time budget),
    numeric targets upper bounds in seconds, and ``ok`` None where there is no target."""
    value, target, ok = r.get("value"), r.get("target"), r.get("ok")
    if value is None:
        value, ok = "skipped (time budget)", False
    elif isinstance(value, (int, float)):
        value = f"{value:.3f} s"
        if target is None:
            ok = None
    if isinstance(target, (int, float)):
        target = f"<= {target} s"
    return {"what": r["what"], "value": value, "target": target or "", "ok": ok}


def write(out: Path | None, rows: list[dict], header: str) -> None:
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    (out / "gpu.md").write_text(header + "\n\n" + table(rows) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="random-qwen3-vl-8b", help="model for ingest / ask (any load_model source)")
    p.add_argument("--dtype", default="auto", help="auto: the model's own (bfloat16 for random-* presets)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats (smoke test)")
    p.add_argument("--out", type=Path, default=None, help="folder for gpu.md / gpu.json (written as rows arrive)")
    args = p.parse_args(argv)
    sections = [s for s in args.only.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        p.error(f"unknown section(s) {unknown} (choose from {SECTIONS})")

    from avmem.runtime import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    header = (f"device {name}, torch {torch.__version__}, model {args.model}, "
              f"{'quick' if args.quick else 'full'} run, {time.strftime('%Y-%m-%d %H:%M')}")
    print(header, flush=True)
    rows: list[dict] = []
    model = None

    def section(key: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            got = fn()
        except Exception as exc:  # a broken section is reported, the others still run
            traceback.print_exc()
            got = [{"what": "section failed", "value": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
                    "target": "", "ok": False}]
        got = [dict(normalise(r), section=key) for r in got]
        rows.extend(got)
        print(table([r for r in rows if r["section"] == key]), f"\n({key}: {time.perf_counter() - t0:.0f} s)\n",
              flush=True)
        write(args.out, rows, header)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    if "ttt" in sections:
        import gpu_ttt

        section("ttt", lambda: gpu_ttt.measure(str(device), quick=args.quick))
    if {"ingest", "ask"} & set(sections):
        from avmem import load_model

        t0 = time.perf_counter()
        model = load_model(args.model, device=device, dtype=resolve_dtype(args.dtype))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        n = sum(p.numel() for p in model.backbone.model.parameters())
        rows.append({"section": "model", "what": f"build {args.model}", "value": f"{time.perf_counter() - t0:.1f} s "
                     f"({n / 1e9:.2f} B backbone parameters)", "target": "seconds", "ok": None})
    if "ingest" in sections:
        import gpu_ingest

        section("ingest", lambda: gpu_ingest.measure(model, quick=args.quick))
    if "ask" in sections:
        import gpu_ask

        section("ask", lambda: gpu_ask.measure(model, quick=args.quick))
    print(header)
    print(table(rows))
    write(args.out, rows, header)
    return 1 if any(r["what"] == "section failed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
