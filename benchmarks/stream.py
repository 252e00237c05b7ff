"""Memory must not grow with stream length: stream a short and a long generated clip, compare.

Each clip is streamed in its own subprocess (so peak RSS is per run) through ``StreamSession`` with
the tiny model on CPU (or ``--model`` / ``--device``), and the script prints a markdown table of
peak RSS, tokens held, elapsed time and speed in x real time, plus the long/short RSS ratio
(target <= 1.1).

    python benchmarks/stream.py                          # 2 min vs 20 min, tiny-qwen3-vl, CPU
    python benchmarks/stream.py --short 60 --long 600 --model tiny-qwen2.5-vl
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_one(args: argparse.Namespace) -> None:
    """Child process: stream one clip and print a JSON line."""
    import torch

    from avmem.model import load_model
    from avmem.runtime import pin_malloc_mmap_threshold
    from avmem.session import StreamSession

    pin_malloc_mmap_threshold()  # as the avmem commands do
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device)
    session = StreamSession(model, video_tokens=args.video_tokens, audio_tokens=args.audio_tokens,
                            max_pixels=args.max_pixels)
    start = time.perf_counter()
    session.feed_file(args.clip)
    session.flush()
    answer = session.ask("What happened?", max_new_tokens=8)
    elapsed = time.perf_counter() - start
    st = session.stats()
    print(json.dumps({
        "seconds": st.seconds, "frames": st.frames, "video_held": st.video_tokens_held,
        "audio_held": st.audio_tokens_held, "video_in": st.video_tokens_in, "memory_bytes": st.memory_bytes,
        "elapsed_s": elapsed, "x_realtime": st.seconds / elapsed,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "answer_chars": len(answer),
        "end_rss_mb": _current_rss_mb(),
    }))


def _current_rss_mb() -> float:
    """Resident set size now (Linux /proc), MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", type=int, default=120, help="seconds of the short clip")
    parser.add_argument("--long", type=int, default=1200, help="seconds of the long clip")
    parser.add_argument("--model", default="tiny-qwen3-vl")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--video-tokens", type=int, default=4096)
    parser.add_argument("--audio-tokens", type=int, default=1024)
    parser.add_argument("--max-pixels", type=int, default=176400)
    parser.add_argument("--size", default="360x640", help="clip HxW")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child-clip", dest="clip", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clip:
        run_one(args)
        return

    from avmem.synth import write_test_pattern_clip

    height, width = (int(v) for v in args.size.split("x"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in (args.short, args.long):
            clip = write_test_pattern_clip(Path(tmp) / f"clip{seconds}.mp4", seconds, fps=5, size=(height, width))
            cmd = [sys.executable, __file__, "--child-clip", str(clip), "--model", args.model, "--device", args.device,
                   "--video-tokens", str(args.video_tokens), "--audio-tokens", str(args.audio_tokens),
                   "--max-pixels", str(args.max_pixels), "--threads", str(args.threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            rows.append(json.loads(out))
    print(f"model {args.model} on {args.device}, {height}x{width} clips at 1 FPS with audio, memory "
          f"{args.video_tokens} video + {args.audio_tokens} audio tokens, max_pixels {args.max_pixels}\n")
    print("| clip s | frames | video tokens seen | held (video+audio) | memory MiB | peak RSS MB | RSS at end MB "
          "| elapsed s | x real time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seconds']:.0f} | {r['frames']} | {r['video_in']} | {r['video_held']}+{r['audio_held']} | "
              f"{r['memory_bytes'] / 2**20:.1f} | {r['peak_rss_mb']:.0f} | {r['end_rss_mb']:.0f} | "
              f"{r['elapsed_s']:.1f} | {r['x_realtime']:.1f} |")
    print(f"\nlong/short ratio: peak RSS {rows[1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.3f} (target <= 1.1), "
          f"RSS at end {rows[1]['end_rss_mb'] / rows[0]['end_rss_mb']:.3f}")


if __name__ == "__main__":
    main()
