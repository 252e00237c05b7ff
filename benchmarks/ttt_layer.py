"""Per-chunk forward and forward+backward time of the TTT memory layer for sgd / hf / muon.

Prints a markdown table with the median time, the ratio to sgd and the achieved GFLOP/s (matmul
FLOPs counted analytically, see ``flops``). Defaults: the video-SALMONN S 7B layer (d=3584, 8 heads,
1024-token chunk) on CUDA when available, a smaller layer (d=1024) on CPU.

    python benchmarks/ttt_layer.py                      # defaults for the device
    python benchmarks/ttt_layer.py --dim 3584 --tokens 1024 --device cpu --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from avmem.memory.ttt import TTTConfig, TTTMemory, official_positions


def flops(cfg: TTTConfig, tokens: int, update: str) -> float:
    """Matmul FLOPs of one forward over ``tokens`` tokens (elementwise work is under 1 %).

    F = 4 N d_h h per head and mini-batch (one MLP forward); sgd = 3.5F (forward on keys 1F,
    gradient 1.5F, read-out 1F), hf = 3.5F + 3F per CG iteration, muon = sgd + Newton-Schulz on W1, W2.
    Projections: 2 T D^2 per Linear (q, k, v, o, and lag, lag_key with the lag objective) plus the
    learning-rate gate 2 T D H.
    """
    padded = -(-tokens // cfg.mini_batch) * cfg.mini_batch
    d, h, heads = cfg.head_dim, cfg.hidden_dim, cfg.num_heads
    n_mb = padded // cfg.mini_batch
    unit = 4 * cfg.mini_batch * d * h * heads * n_mb
    inner = 3.5 * unit
    if update == "hf":
        inner += 3 * unit * cfg.cg_iters
    elif update == "muon":
        a, b = min(d, h), max(d, h)
        inner += 2 * heads * n_mb * cfg.ns_steps * (4 * a * a * b + 2 * a ** 3)
    linears = 4 + (2 if cfg.lag_distance else 0)
    proj = linears * 2 * padded * cfg.dim ** 2 + 2 * padded * cfg.dim * heads
    return inner + proj


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
                    update=update, cg_iters=args.cg_iters, lag_distance=args.mini_batch, compat=args.compat)
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
    return update, flops(cfg, args.tokens, update) / 1e9, t_f, t_fb, peak


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
