"""Time building the full-size random presets (``random-qwen3-vl-8b`` / ``random-qwen2.5-vl-7b``) with
:func:`avmem.load_model`, and count their parameters and the device memory they take.

    python benchmarks/preset_build.py [--device cuda] [--dtype bfloat16] [--presets random-qwen3-vl-8b ...]

One row per preset: build seconds, parameters (backbone / TTT / audio), allocated CUDA memory. The target: a few
seconds on a GPU. ``--device meta`` only counts. On a CPU the 8B preset needs about 20 GB of RAM in bfloat16.
"""

from __future__ import annotations

import argparse
import gc
import time

import torch

from avmem.model import RELEASE_PRESETS, load_model


def _count(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "meta")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--presets", nargs="+", default=sorted(RELEASE_PRESETS), choices=sorted(RELEASE_PRESETS))
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    cuda = torch.device(args.device).type == "cuda"
    print("| preset | device | dtype | build s | backbone | TTT | audio | total | CUDA GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.presets:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        model = load_model(name, device=args.device, dtype=dtype)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        parts = [_count(model.backbone.model), _count(model.ttt), _count(model.audio)]
        gib = f"{torch.cuda.memory_allocated() / 2**30:.1f}" if cuda else "-"
        print(f"| {name} | {args.device} | {args.dtype} | {seconds:.1f} | " + " | ".join(f"{n:,}" for n in parts)
              + f" | {sum(parts):,} | {gib} |")
        del model
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
