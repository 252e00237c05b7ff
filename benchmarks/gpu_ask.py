"""Ask latency on a GPU: time to the first answer token for the session's readers.

``measure(model)`` returns rows ``{"what", "value", "target", "ok"}`` (seconds; ``target`` None and ``ok`` True for
rows that are measured without a target; a reader skipped for the time budget has value None and ok False):

* first token with a full 16k video + 4k audio memory, cold (the first question in the process) and warm;
* a follow-up question with ``incremental=True`` (same memory, another question);
* every reader over a 128k memory (pd, snapkv, rekv, omnimem, recent, similarity, similarity-merge, infinipot,
  full); ``rekv`` is timed on its second question (its full memory KV is built while streaming; the first
  question, which builds it here, is reported too).

The memory is constructed directly, not fed (feeding 128k tokens through the vision tower and TTT would take
minutes): two real frames go through the session (vision tower, TTT, DeepStack) to get one temporal patch of
video tokens and the grid; the video bank holds ``video_tokens`` ids drawn evenly from a stream of
``seconds`` of 1 fps video (so every temporal patch keeps a share, with its timestamp wrapper, as the discard
policies leave it), each token the patch's token at the same spatial location plus noise; the audio bank holds
``audio_tokens`` tokens spread over the same time span (rows of the embedding table plus noise). The layout
(timestamps, wrappers, positions) is the session's own.

    python benchmarks/gpu_ask.py --model tiny-qwen3-vl --device cpu --quick     # CI smoke (< 60 s on CPU)
    python benchmarks/gpu_ask.py --model random-qwen3-vl-8b --device cuda         # the lead's H200 run
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch

READERS_128K = ["pd", "snapkv", "rekv", "omnimem", "recent", "infinipot", "similarity", "full", "similarity-merge"]
QUESTION = "What did the speaker say right after the red car appeared, and who was standing next to it?"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_session(model, video_tokens: int, audio_tokens: int, seconds: int, seed: int = 0, **settings):
    """A StreamSession whose memory holds ``video_tokens`` + ``audio_tokens`` tokens over ``seconds`` of stream
    (constructed directly; see the module docstring)."""
    from avmem.memory.bank import BankState
    from avmem.session import AudioLog, PatchLog, SessionState, StreamSession

    device = model.device
    use_audio = model.audio is not None
    probe = StreamSession(model, use_audio=False, use_ttt=model.ttt is not None, video_tokens=1 << 20)
    rng = np.random.default_rng(seed)
    size = (416, 416)
    probe.feed(frames=[rng.integers(0, 255, (*size, 3), dtype=np.uint8) for _ in range(2)], t=[0.0, 1.0])
    probe.flush()
    template = probe.state.video.tokens  # [hm * wm, 1 + k, D]
    hm, wm = (int(v) for v in probe.state.patches.grid[0])
    per_patch = hm * wm
    n_patches = seconds // 2
    produced = n_patches * per_patch
    if video_tokens > produced:
        raise ValueError(f"{video_tokens} video tokens need more than {seconds} s of stream")
    session = StreamSession(model, use_audio=use_audio, use_ttt=model.ttt is not None, video_tokens=video_tokens,
                            audio_tokens=audio_tokens, **settings)
    g = torch.Generator(device="cpu").manual_seed(seed)
    v_ids = torch.linspace(0, produced - 1, video_tokens, device="cpu").round().long().unique()
    video_tokens = len(v_ids)
    noise = torch.randn(video_tokens, *template.shape[1:], generator=g, device="cpu").to(device, template.dtype)
    video = template[(v_ids % per_patch).to(device)] + 0.05 * template.std() * noise
    a_produced = 2 * seconds
    a_ids = torch.linspace(0, a_produced - 1, min(audio_tokens, a_produced), device="cpu").round().long().unique()
    table = model.backbone.model.get_input_embeddings().weight
    rows = torch.randint(0, table.shape[0], (len(a_ids),), generator=g, device="cpu").to(device)
    audio = table[rows].detach().to(template.dtype)
    audio = audio + 0.05 * audio.std() * torch.randn(audio.shape, generator=g, device="cpu").to(device, audio.dtype)
    times = 2.0 * np.arange(n_patches) + 0.5
    n_ts = [len(session._cached_ids(f"<{t:.1f} seconds>")) for t in times]
    patches = PatchLog().appended(list(times), (hm, wm), 0, n_ts)
    session.state = SessionState(
        ttt=probe.state.ttt, video=BankState(tokens=video, ids=v_ids.to(device)),
        audio=BankState(tokens=audio, ids=a_ids.to(device)), patches=patches,
        audio_log=AudioLog(np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.float64)),
        video_ids=produced, audio_ids=a_produced, audio_samples=seconds * 16000, frames=2 * n_patches,
        last_time=float(seconds - 1))
    return session


@torch.no_grad()
def first_token(session, question: str = QUESTION) -> tuple[float, int]:
    """Seconds from the question to its first answer token (synchronised), and the memory's input rows."""
    device = session.model.device
    _sync(device)
    start = time.perf_counter()
    _, logits, _ = session._answer_start(question)
    int(torch.argmax(logits))  # the first token on the host
    _sync(device)
    seconds = time.perf_counter() - start
    return seconds, int(session.state.video.ids.shape[0] + session.state.audio.ids.shape[0])


def measure(model, quick: bool = False, budget_s: float = 140.0, echo: bool = False) -> list[dict]:
    """Time the asking path on ``model`` (already loaded, on its device); see the module docstring.

    ``quick``: scaled-down sizes (CPU smoke test). ``budget_s``: readers at 128k still waiting when the run
    has used this much time are skipped (reported with value None, ok False). ``echo``: print each row as it
    is measured.
    """
    began = time.perf_counter()
    if quick:
        small, big = dict(video_tokens=512, audio_tokens=128, seconds=64), dict(video_tokens=1536, audio_tokens=256,
                                                                              seconds=128)
        read = dict(read_tokens=256, read_chunk=512, block_tokens=32)
    else:
        small = dict(video_tokens=16384, audio_tokens=4096, seconds=2048)
        big = dict(video_tokens=122880, audio_tokens=8192, seconds=4096)
        read = dict(read_tokens=16384, read_chunk=16384, block_tokens=64)
    label_small = f"{small['video_tokens'] // 1024}k video + {small['audio_tokens'] // 1024}k audio" if not quick \
        else f"{small['video_tokens']} video + {small['audio_tokens']} audio"
    rows: list[dict] = []

    def row(what: str, value: float | None, target: float | None) -> None:
        target = None if quick else target  # the targets are for the full sizes on an H200
        ok = value is not None and (target is None or value <= target)
        rows.append({"what": what, "value": value, "target": target, "ok": ok})
        if echo:
            print(f"  {what}: {'-' if value is None else f'{value:.3f} s'}", flush=True)

    s = synthetic_session(model, **small)
    cold, n = first_token(s)
    row(f"first token, {label_small} memory ({n} tokens), cold", cold, None)
    warm = min(first_token(s)[0] for _ in range(2))
    row(f"first token, {label_small} memory, warm", warm, 0.4)
    inc = replace_settings(s, incremental=True)
    first_token(inc, "What happened first?")
    follow = min(first_token(inc, f"And what happened after that? ({i})")[0] for i in range(2))
    row(f"follow-up question, incremental, {label_small} memory (reuse: {inc.stats().kv_reuse})", follow, 0.1)
    del s, inc
    base = synthetic_session(model, **big)
    total = int(base.state.video.ids.shape[0] + base.state.audio.ids.shape[0])
    label = f"{total // 1024}k" if not quick else str(total)
    for name in READERS_128K:
        if time.perf_counter() - began > budget_s:
            row(f"reader {name}, {label} memory: skipped (time budget {budget_s:.0f} s)", None, None)
            continue
        session = replace_settings(base, reader=name, **read)
        seconds, _ = first_token(session)
        if name == "rekv":
            row(f"reader rekv, {label} memory, first question (builds the full memory KV)", seconds, None)
            seconds, _ = first_token(session, "And who was there?")
            name = "rekv (question on the kept KV)"
        row(f"reader {name}, {label} memory", seconds, 3.0 if name == "pd" else None)
        del session
        if model.device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def replace_settings(session, **changes):
    """A session over the same memory (state shared, read-only while asking) with other settings."""
    from avmem.session import StreamSession

    other = StreamSession(session.model, replace(session.settings, **changes))
    other.state = session.state
    return other


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random-qwen3-vl-8b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="scaled-down sizes (CPU smoke test)")
    parser.add_argument("--budget", type=float, default=140.0, help="seconds after which 128k readers are skipped")
    args = parser.parse_args()
    from avmem.model import load_model

    dtype = torch.bfloat16 if args.device.startswith("cuda") else None
    model = load_model(args.model, device=args.device, dtype=dtype)
    start = time.perf_counter()
    rows = measure(model, quick=args.quick, budget_s=args.budget, echo=True)
    print(f"{args.model} on {args.device}{' (quick sizes)' if args.quick else ''}: {time.perf_counter() - start:.1f} s\n")
    print("| what | seconds | target | ok |")
    print("|---|---|---|---|")
    for r in rows:
        value = "-" if r["value"] is None else f"{r['value']:.3f}"
        target = "-" if r["target"] is None else f"<= {r['target']}"
        print(f"| {r['what']} | {value} | {target} | {'yes' if r['ok'] else 'NO'} |")


if __name__ == "__main__":
    main()
