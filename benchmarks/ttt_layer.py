"""Per-chunk forward and forward+backward time of the TTT memory layer for sgd / hf / muon.

Prints a markdown table with the median time, the ratio to sgd and the achieved GFLOP/s (matmul
FLOPs counted analytically by :func:`avmem.memory.ttt.flop_count`). ``--fast`` picks the execution path
(``benchmarks/gpu_ttt.py`` is the release-size GPU table against the official block). Defaults: the video-SALMONN S 7B layer (d=3584, 8 heads,
1024-token chunk) on CUDA when available, a smaller layer (d=1024) on CPU.

    python benchmarks/ttt_layer.py                      # defaults for the device
    python benchmarks/ttt_layer.py --dim 3584 --tokens 1024 --device cpu --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from avmem.memory.ttt import TTTConfig, TTTMemory, flop_count, official_positions


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median wall time in ms over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure(update: str, args: argparse.Namespace, x: torch.Tensor, pos: torch.Tensor, device: torch.device,
            dtype: torch.dtype) -> tuple[str, float, float, float, float]:
    """(update, analytic GFLOP, fwd ms, fwd+bwd ms, peak MiB) for one update rule."""
    cfg = TTTConfig(dim=args.dim, num_heads=args.heads, hidden_mult=args.hidden_mult, mini_batch=args.mini_batch,
                    update=update, cg_iters=args.cg_iters, lag_distance=args.mini_batch, compat=args.compat,
                    fast=args.fast)
    layer = TTTMemory(cfg).to(device=device, dtype=dtype)

    def fwd() -> None:
        with torch.no_grad():
            layer(x, pos)

    def fwd_bwd() -> None:
        layer.zero_grad(set_to_none=True)
        y, state = layer(x, pos)
        (y.float().square().mean() + state.fast.W1.float().square().mean()).backward()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_f = timed(fwd, device, args.repeats)
    t_fb = float("nan") if args.no_backward else timed(fwd_bwd, device, args.repeats)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return update, flop_count(cfg, args.tokens) / 1e9, t_f, t_fb, peak


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--dtype", default="bfloat16" if cuda else "float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--dim", type=int, default=3584 if cuda else 1024)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--hidden-mult", type=int, default=1)
    parser.add_argument("--mini-batch", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=1024, help="tokens per chunk (one call)")
    parser.add_argument("--cg-iters", type=int, default=3)
    parser.add_argument("--compat", default="official", choices=["official", "clean"])
    parser.add_argument("--updates", default="sgd,hf,muon")
    parser.add_argument("--repeats", type=int, default=5 if cuda else 3)
    parser.add_argument("--no-backward", action="store_true")
    parser.add_argument("--fast", default="auto", choices=["auto", "off", "fused", "compile", "autotune", "graphs"],
                        help="TTTConfig.fast: execution path (auto = compiled on CUDA, eager reference on CPU)")
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    x = torch.randn(1, args.tokens, args.dim, device=device, dtype=dtype)
    padded = -(-args.tokens // args.mini_batch) * args.mini_batch
    pos = official_positions((18, 34), 0, padded).to(device)
    threads = torch.get_num_threads()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({threads} threads)"
    print(f"TTT layer, {name}, {args.dtype}: dim={args.dim}, heads={args.heads}, hidden_mult={args.hidden_mult}, "
          f"mini_batch={args.mini_batch}, tokens={args.tokens}, cg_iters={args.cg_iters}, compat={args.compat}, "
          f"fast={args.fast}, "
          f"torch {torch.__version__}\n")
    rows = [measure(update, args, x, pos, device, dtype) for update in args.updates.split(",")]

    base = {r[0]: r for r in rows}.get("sgd", rows[0])
    print("| update | GFLOP fwd | fwd ms | fwd GFLOP/s | fwd / sgd | fwd+bwd ms | fwd+bwd GFLOP/s (3x fwd) "
          "| fwd+bwd / sgd | peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for update, gflop, t_f, t_fb, peak in rows:
        print(f"| {update} | {gflop:.1f} | {t_f:.1f} | {gflop / t_f * 1000:.0f} | {t_f / base[2]:.2f} | "
              f"{t_fb:.1f} | {3 * gflop / t_fb * 1000:.0f} | {t_fb / base[3]:.2f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
