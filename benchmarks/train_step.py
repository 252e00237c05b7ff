"""Time and peak memory of one training step (forward through the streaming pipeline, backward, AdamW step).

Each variant runs in its own process on the same generated clip: TTT hf (3 CG steps), TTT sgd, and no TTT
(LoRA only). The first ``--warmup`` steps are not timed.

    python benchmarks/train_step.py                                    # tiny-qwen3-vl on CPU
    python benchmarks/train_step.py --model M --device cuda --seconds 256 --fps 4 --max-pixels 176400 \\
        --video-tokens 16384 --lora-r 128                              # real dimensions on a GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ["hf", "sgd", "no-ttt"]


def run_one(args: argparse.Namespace) -> None:
    import torch

    from avmem.model import load_model
    from avmem.runtime import pin_malloc_mmap_threshold
    from avmem.session import SessionSettings
    from avmem.synth import write_colour_qa_set
    from avmem.train.config import LoraSettings
    from avmem.train.data import VideoQADataset, load_records
    from avmem.train.engine import retarget_ttt
    from avmem.train.forward import TrainableAVMem
    from avmem.train.lora import add_lora

    pin_malloc_mmap_threshold()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cuda = args.device.startswith("cuda")
    model = load_model(args.model, device=args.device, dtype=torch.bfloat16 if cuda else torch.float32)
    use_ttt = args.variant != "no-ttt" and model.ttt is not None
    if use_ttt:
        model = retarget_ttt(model, args.variant, args.checkpoint_group, model.device)
        model.ttt.float()
    add_lora(model, LoraSettings(r=args.lora_r, alpha=2 * args.lora_r, dropout=0.0))
    if model.audio is not None:
        model.audio.requires_grad_(False)  # frozen, as in training
    for p in model.backbone.model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    if args.grad_ckpt:
        model.backbone.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    settings = SessionSettings(fps=args.fps, max_pixels=args.max_pixels, video_tokens=args.video_tokens,
                               audio_tokens=args.audio_tokens, use_ttt=use_ttt, use_audio=model.audio is not None)
    module = TrainableAVMem(model, settings).train()
    groups = module.trainable_parameters()
    optimizer = torch.optim.AdamW([p for g in groups.values() for p in g], lr=1e-5)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_colour_qa_set(tmp, 1, seconds=args.seconds, size=(args.size, args.size))
        sample = VideoQADataset(load_records([str(data)]), fps=args.fps, max_frames=100000,
                                max_pixels=args.max_pixels, factor=model.backbone.vision.factor)[0]
    times = []
    for i in range(args.warmup + args.steps):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = module(sample)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    gpu = torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")
    print(json.dumps({"variant": args.variant, "step_s": statistics.median(times), "frames": len(sample.times),
                      "trainable": sum(p.numel() for g in groups.values() for p in g), "peak_gpu_mb": gpu,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-qwen3-vl")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=int, default=32, help="clip length")
    parser.add_argument("--fps", type=float, default=4.0)
    parser.add_argument("--size", type=int, default=128, help="generated frame side (pixels)")
    parser.add_argument("--max-pixels", type=int, default=16384)
    parser.add_argument("--video-tokens", type=int, default=1024)
    parser.add_argument("--audio-tokens", type=int, default=256)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--checkpoint-group", type=int, default=0, help="TTT activation checkpointing group")
    parser.add_argument("--grad-ckpt", action="store_true", help="LLM gradient checkpointing")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--child", dest="variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        run_one(args)
        return
    rows = []
    for variant in args.variants.split(","):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant]
        for key in ("model", "device", "seconds", "fps", "size", "max_pixels", "video_tokens", "audio_tokens",
                    "lora_r", "checkpoint_group", "steps", "warmup", "threads"):
            cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
        if args.grad_ckpt:
            cmd.append("--grad-ckpt")
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{variant} failed:\n{done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{args.model} on {args.device}: {args.seconds} s clip at {args.fps} fps ({rows[0]['frames']} frames, "
          f"<= {args.max_pixels} px), video memory {args.video_tokens} tokens, LoRA r={args.lora_r}, "
          f"median of {args.steps} steps\n")
    print("| variant | step s | trainable params | peak RSS MB | peak GPU MB |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['step_s']:.3f} | {r['trainable']:,} | {r['peak_rss_mb']:.0f} | "
              f"{r['peak_gpu_mb']:.0f} |")


if __name__ == "__main__":
    main()
