"""Time to the first answer token and peak memory of each memory reader at equal budget.

Each reader runs in its own subprocess (peak RSS per run) on the same synthetic memory: ``--memory``
tokens (audio every 8th selectable token, a text wrapper every 160 tokens) at their layout positions,
followed by a question; the selective readers keep ``--read`` audio/visual entries per layer. ``rekv``
times only the question (its full memory KV is built while streaming; on CUDA it lives on the host).

    python benchmarks/reader.py                               # tiny-qwen3-vl on CPU
    python benchmarks/reader.py --memory 16384 --read 2048 --chunk 4096
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

READERS = ["full", "pd", "pd-per-layer", "snapkv", "omnimem", "recent", "similarity", "similarity-merge", "infinipot",
           "rekv"]


def run_one(args: argparse.Namespace) -> None:
    import torch
    from transformers import DynamicCache

    from avmem.memory.kv.budgets import BudgetSchedule
    from avmem.memory.kv import omnimem
    from avmem.memory.kv.reader import BlockRetrievalReader, PromptDependentReader
    from avmem.memory.kv.selection import AUDIO, TEXT, VISUAL
    from avmem.model import load_model
    from avmem.runtime import pin_malloc_mmap_threshold

    pin_malloc_mmap_threshold()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_model(args.model, device=args.device)
    bb = model.backbone
    n, d = args.memory, model.hidden_size
    memory = torch.randn(n, d, device=bb.device, dtype=bb.dtype) * 0.5
    positions = torch.arange(n).view(1, -1).expand(3, -1).clone()
    modality = torch.full((n,), VISUAL)
    modality[::8] = AUDIO
    modality[::160] = TEXT
    prompt = bb.embed(torch.tensor(bb.tokenizer("What happened after the red square appeared?").input_ids))
    prompt_pos = (n + torch.arange(prompt.shape[0])).view(1, -1).expand(3, -1).clone()
    layers = bb.model.config.text_config.num_hidden_layers
    budgets = BudgetSchedule.uniform(layers, args.read)
    start = time.perf_counter()
    if args.reader == "full":
        bb.forward_embeds(torch.cat([memory, prompt]), torch.cat([positions, prompt_pos], 1),
                          DynamicCache(config=bb.model.config.text_config), None, None)
    elif args.reader in ("pd", "pd-per-layer", "snapkv"):
        pool = 7 if args.reader == "snapkv" else 1
        reader = PromptDependentReader(args.chunk, args.read, joint=args.reader == "pd", pool=pool)
        reader.read(bb, memory, positions, modality != TEXT, prompt, prompt_pos)
    elif args.reader == "rekv":
        cache = DynamicCache(config=bb.model.config.text_config)
        for lo in range(0, n, args.chunk):
            bb.forward_embeds(memory[lo:lo + args.chunk], positions[:, lo:lo + args.chunk], cache, None, None)
        offload = bb.device.type == "cuda"
        if offload:
            for layer in cache.layers:
                layer.keys, layer.values = layer.keys.cpu(), layer.values.cpu()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()  # the memory's KV is built while streaming; a question only retrieves
        BlockRetrievalReader(64, args.read, offload=offload).read(
            bb, cache, modality != TEXT, prompt, prompt_pos, n + prompt.shape[0])
    else:
        cls = {"omnimem": omnimem.OmniMemPolicy, "recent": omnimem.RecentWindowPolicy,
               "similarity": omnimem.SimilarityDiscardPolicy, "similarity-merge": omnimem.SimilarityMergePolicy,
               "infinipot": omnimem.InfiniPotVPolicy}[args.reader]
        cls(budgets, args.chunk).read(bb, memory, positions, modality, prompt, prompt_pos)
    if bb.device.type == "cuda":
        torch.cuda.synchronize()
    ttft = time.perf_counter() - start
    gpu = torch.cuda.max_memory_allocated() / 2**20 if bb.device.type == "cuda" else float("nan")
    print(json.dumps({"reader": args.reader, "ttft_s": ttft, "peak_gpu_mb": gpu,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-qwen3-vl")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory", type=int, default=8192, help="memory tokens")
    parser.add_argument("--read", type=int, default=1024, help="audio/visual entries kept per layer")
    parser.add_argument("--chunk", type=int, default=2048, help="prefill chunk (read_chunk)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--readers", default=",".join(READERS))
    parser.add_argument("--child", dest="reader", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reader:
        run_one(args)
        return
    rows = []
    for reader in args.readers.split(","):
        cmd = [sys.executable, __file__, "--child", reader, "--model", args.model, "--device", args.device,
               "--memory", str(args.memory), "--read", str(args.read), "--chunk", str(args.chunk),
               "--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
    print(f"{args.model} on {args.device}: memory {args.memory} tokens, keep {args.read} audio/visual entries per "
          f"layer, chunks of {args.chunk}\n")
    print("| reader | time to first token s | peak RSS MB | peak GPU MB |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['reader']} | {r['ttft_s']:.3f} | {r['peak_rss_mb']:.0f} | {r['peak_gpu_mb']:.0f} |")


if __name__ == "__main__":
    main()
