"""How many concurrent live streams one ``avmem serve`` keeps in real time.

Each stream is a push session fed like a camera: 1 frame per second at 640x360 (rgb24 over the WebSocket, on
loopback) plus 1 s of 16 kHz audio per frame when the model hears; each session is asked a question every 30 s
(staggered across sessions). The session count ramps (1, 2, 4, 8, ...) until a level falls behind real time. A
level keeps real time when no frame was dropped and, at its end, every session has less than 2 s of stream waiting
(queued or staged beyond one chunk). Ask latency is question-sent to whole-answer-received, p50 / p99.

    python benchmarks/serve.py                               # full-size random preset on a GPU, else the tiny model
    python benchmarks/serve.py --model tiny-qwen3-vl --seconds 45 --ask-every 15 --max-level 4   # a quick CPU run

Prints one row per level and the largest real-time level.
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np


def parse_size(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    if not (w.isdigit() and h.isdigit()) or int(w) < 16 or int(h) < 16:
        raise SystemExit(f"serve.py: --size must be WIDTHxHEIGHT (>= 16 each), got {text!r}")
    return int(w), int(h)


def run_level(url: str, n: int, args, audio: bool) -> dict:
    """``n`` sessions streaming for ``args.seconds`` s; returns the level's row."""
    import httpx
    from websockets.sync.client import connect

    from avmem.serve.push import encode_message

    w, h = parse_size(args.size)
    rng = np.random.default_rng(n)
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    latencies: list[float] = []
    errors: list[str] = []
    pushed = [0] * n
    lock = threading.Lock()
    with httpx.Client(base_url=url, timeout=600) as c:
        ids = [c.post("/v1/sessions", json={"push": True, "settings": {"fps": args.fps, "use_audio": audio}})
               .json()["id"] for _ in range(n)]
        start = time.monotonic() + 0.5
        stop = start + args.seconds

        def stream(k: int, sid: str) -> None:
            try:
                with connect(f"{url.replace('http', 'ws')}/v1/sessions/{sid}/push", max_size=None) as ws:
                    i = 0
                    while True:
                        at = start + i / args.fps + k / (n * args.fps)  # sessions' frames spread over a second
                        if at >= stop:
                            break
                        time.sleep(max(0.0, at - time.monotonic()))
                        img = np.roll(base, 7 * i + 13 * k, axis=1)
                        ws.send(encode_message({"type": "frame", "t": i / args.fps, "format": "rgb24", "width": w,
                                                "height": h}, img.tobytes()))
                        if audio:
                            pcm = (0.1 * rng.standard_normal(int(16000 / args.fps))).astype("<f4")
                            ws.send(encode_message({"type": "audio", "t": i / args.fps, "format": "f32le",
                                                    "rate": 16000, "channels": 1}, pcm.tobytes()))
                        pushed[k] += 1
                        i += 1
                    ws.send('{"type": "end"}')
            except Exception as exc:  # noqa: BLE001 - reported in the row
                errors.append(f"stream {k}: {type(exc).__name__}: {exc}")

        def asker(k: int, sid: str) -> None:
            with httpx.Client(base_url=url, timeout=600) as own:
                at = start + args.ask_every * (k + 1) / n  # staggered: one ask per session per period
                while at < stop:
                    time.sleep(max(0.0, at - time.monotonic()))
                    t = time.monotonic()
                    r = own.post(f"/v1/sessions/{sid}/ask", json={"question": "What happened so far?",
                                                                   "max_new_tokens": args.max_new_tokens})
                    if r.status_code != 200:
                        errors.append(f"ask {k}: HTTP {r.status_code}: {r.text[:200]}")
                    else:
                        with lock:
                            latencies.append(time.monotonic() - t)
                    at += args.ask_every

        threads = [threading.Thread(target=f, args=(k, sid), daemon=True)
                   for k, sid in enumerate(ids) for f in (stream, asker)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=args.seconds + 600)
        at_end = [c.get(f"/v1/sessions/{sid}").json() for sid in ids]  # the backlog when the streams end
        drain_until = time.monotonic() + 300
        while time.monotonic() < drain_until:  # then what each session took in, once the backlog is absorbed
            stats = [c.get(f"/v1/sessions/{sid}").json() for sid in ids]
            if all(s["status"] != "streaming" and s["frames"] + s["drops"] >= pushed[k] for k, s in enumerate(stats)):
                break
            time.sleep(0.2)
        for sid in ids:
            c.delete(f"/v1/sessions/{sid}")
    chunk = stats[0]["settings"]["chunk_frames"]
    drops = sum(s["drops"] for s in stats)
    waiting = max((s["queue_depth"] / (2 if audio else 1) + max(0, s["pending_frames"] - chunk)) / args.fps
                  for s in at_end)
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {"sessions": n, "pushed": sum(pushed), "taken": sum(s["frames"] for s in stats), "dropped": drops,
            "waiting_s": waiting, "asks": len(latencies), "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)), "errors": errors,
            "realtime": drops == 0 and waiting < 2.0 and not errors}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model (default: random-qwen3-vl-8b on a GPU, else tiny-qwen3-vl)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--fps", type=float, default=1.0)
    p.add_argument("--size", default="640x360", help="pushed frame size WIDTHxHEIGHT")
    p.add_argument("--seconds", type=float, default=120.0, help="stream seconds per level")
    p.add_argument("--ask-every", type=float, default=30.0, help="seconds between one session's questions")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--max-level", type=int, default=128, help="most sessions tried")
    p.add_argument("--keep-going", action="store_true", help="try the next level after one that falls behind")
    args = p.parse_args()
    if args.fps <= 0 or args.seconds <= 0 or args.ask_every <= 0:
        raise SystemExit("serve.py: --fps, --seconds and --ask-every must be > 0")

    import torch

    from avmem.model import load_model
    from avmem.runtime import resolve_device, resolve_dtype
    from avmem.serve import ServeConfig, create_app
    from avmem.serve.background import BackgroundServer

    model_name = args.model or ("random-qwen3-vl-8b" if torch.cuda.is_available() else "tiny-qwen3-vl")
    device = resolve_device(args.device)
    model = load_model(model_name, device=device, dtype=resolve_dtype(args.dtype))
    config = ServeConfig(model=model_name, max_sessions=args.max_level + 1, max_sessions_per_key=args.max_level + 1,
                         max_new_tokens=max(args.max_new_tokens, 16))
    audio = model.audio is not None
    print(f"model {model_name} on {device}; {args.size} at {args.fps:g} fps{' + 16 kHz audio' if audio else ''}; "
          f"{args.seconds:g} s per level; one question per session every {args.ask_every:g} s "
          f"({args.max_new_tokens} answer tokens)")
    header = (f"{'sessions':>8} {'pushed':>7} {'taken':>6} {'dropped':>7} {'waiting s':>9} {'asks':>5} "
              f"{'p50 ask s':>9} {'p99 ask s':>9}  real time")
    rows = []
    with BackgroundServer(create_app(config, model)) as url:
        n = 1
        print(header, flush=True)
        while n <= args.max_level:
            row = run_level(url, n, args, audio)
            rows.append(row)
            print(f"{row['sessions']:>8} {row['pushed']:>7} {row['taken']:>6} {row['dropped']:>7} "
                  f"{row['waiting_s']:>9.1f} {row['asks']:>5} {row['p50']:>9.2f} {row['p99']:>9.2f}  "
                  f"{'yes' if row['realtime'] else 'NO'}", flush=True)
            for e in row["errors"][:3]:
                print(f"         error: {e}")
            if not row["realtime"] and not args.keep_going:
                break
            n *= 2
    best = max((r["sessions"] for r in rows if r["realtime"]), default=0)
    print(f"largest level in real time: {best} session(s)")


if __name__ == "__main__":
    main()
