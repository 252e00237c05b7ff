"""Command line: ``avmem demo`` (no downloads) and ``avmem version``."""

from __future__ import annotations

import functools
import json
import math
import resource
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .runtime import resolve_device, resolve_dtype

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Long audio-visual streams under a fixed memory budget.")
console = Console()
_VERBOSE = False  # -v/--verbose: third-party warnings, logs and progress bars reach the terminal


@app.callback()
def _app_options(verbose: bool = typer.Option(False, "-v", "--verbose", help="Show third-party warnings, logs and "
                                              "progress bars (hidden by default).")) -> None:
    """Long audio-visual streams under a fixed memory budget."""
    _quiet_terminal(verbose)


def _quiet_terminal(verbose: bool) -> None:
    """The one place the CLI decides what third-party output reaches the terminal. Unless ``verbose``: Python
    warnings show only when avmem's own code raises them (UserWarning / RuntimeWarning and their subclasses, such
    as MediaWarning; not deprecations), transformers / huggingface_hub log errors only and draw no progress bars
    (their environment variables, read when they are imported; :func:`_quiet_transformers` once they are), and
    the tokenizers library does not print its notice about forked processes."""
    import os
    import warnings

    global _VERBOSE
    _VERBOSE = verbose
    if verbose:
        return
    for key, value in (("TRANSFORMERS_VERBOSITY", "error"), ("HF_HUB_VERBOSITY", "error"),
                       ("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"),
                       ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore")
    for category in (UserWarning, RuntimeWarning):
        warnings.filterwarnings("default", category=category, module=r"avmem(\.|$)")
    if "transformers" in sys.modules or "huggingface_hub" in sys.modules:
        _quiet_transformers()


MODEL_OPT = typer.Option(None, "--model", help="Model folder, hub id, or a random-weight preset: random-qwen3-vl-8b / "
                         "random-qwen2.5-vl-7b (release size), tiny-qwen3-vl / tiny-qwen2.5-vl (tests).")
FPS_OPT = typer.Option(1.0, help="Frames per second taken from the video.")
MAX_PIXELS_OPT = typer.Option(176400, help="Pixel budget per frame (the released 420^2).")
VIDEO_TOKENS_OPT = typer.Option(16384, "--video-tokens", "--memory-tokens", help="Video token memory size.")
AUDIO_TOKENS_OPT = typer.Option(4096, help="Audio token memory size.")
NO_AUDIO_OPT = typer.Option(False, "--no-audio", help="Ignore the audio track.")
NO_TTT_OPT = typer.Option(False, "--no-ttt", help="Bypass the TTT memory layer.")
CG_ITERS_OPT = typer.Option(None, help="CG iterations of the TTT update (release default 0; paper: 3).")
VIDEO_POLICY_OPT = typer.Option("discard", help="Video memory: discard (paper), discard-prev (released), merge.")
AUDIO_POLICY_OPT = typer.Option("merge", help="Audio memory: merge (released), discard, discard-prev.")
READER_OPT = typer.Option("full", "--reader", "--policy", help="Reading / KV policy, a registered reader "
                          "(avmem.memory.kv.readers): full, pd, snapkv, omnimem, recent, similarity, similarity-merge, "
                          "infinipot, rekv.")
READ_TOKENS_OPT = typer.Option(16384, help="pd: audio/visual KV entries kept per layer on average.")
READ_CHUNK_OPT = typer.Option(16384, help="pd: memory tokens prefilled per chunk.")
READ_PER_LAYER_OPT = typer.Option(False, "--read-per-layer", help="pd: rank per layer (released) instead of jointly.")
BUDGET_FILE_OPT = typer.Option(None, "--budget-file", help="KV policies: per-layer budgets, released format.")
OMNI_LAMBDA_OPT = typer.Option(0.02, "--omni-lambda", help="omnimem: attention exponent lambda.")
DEVICE_OPT = typer.Option("auto", help="torch device: auto ($AVMEM_DEVICE, else cuda when present, else cpu), cpu, "
                          "cuda, cuda:N.")
DTYPE_OPT = typer.Option("auto", help="Weights dtype: auto (the model's own: a checkpoint's stored dtype, bfloat16 "
                         "for random-* presets, float32 for tiny-*), float32, bfloat16, float16.")
INCREMENTAL_OPT = typer.Option(False, "--incremental", help="full reader: keep the memory's KV between questions.")
MAX_WRAPPERS_OPT = typer.Option(1024, "--max-wrappers", help="Most timestamp wrappers in a question's input (past "
                                "that, consecutive temporal patches share one): bounds the input's length.")


def user_errors(fn):
    """Turn a ValueError (bad input) or a DeviceMemoryError (out of memory; it names the setting to lower) into a
    one-line message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as exc:
            print(f"avmem: error: {exc}", file=sys.stderr)
            raise typer.Exit(code=2) from None
        except RuntimeError as exc:
            from .session import DeviceMemoryError

            if not isinstance(exc, DeviceMemoryError):
                raise
            print(f"avmem: error: {exc}", file=sys.stderr)
            raise typer.Exit(code=2) from None

    return wrapper


@app.command()
@user_errors
def demo(
    seconds: int = typer.Option(600, help="Length of the generated clip (60 .. 3600 s)."),
    memory_tokens: int = typer.Option(128, help="Capacity of the video token memory (the demo model's: 128)."),
    questions: int = typer.Option(24, help="Questions asked during the stream."),
    seed: int = typer.Option(0, help="Seed of the generated clip and its questions."),
    plot: str = typer.Option("avmem_demo.png", help="Where to write the PNG plot ('' for none)."),
    model: str = typer.Option(None, help="Another model to run instead of the embedded demo model."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    device: str = DEVICE_OPT,
) -> None:
    """Generate a ~10-minute clip, stream it at 1 FPS through the embedded demo model, ask questions while it plays,
    print answers next to the truth with memory telemetry, and plot the memory over time."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .demo import DemoSettings, run_demo
    from .synth.benchmark import LIVE_TASKS

    settings = DemoSettings(seconds=seconds, video_tokens=memory_tokens, questions=questions, seed=seed,
                            model=model, plot=plot or None, device=device)
    settings.check()
    resolve_device(device)
    if model is not None:
        from .model_source import check_model_source

        check_model_source(model)
    _quiet_transformers()
    if json_out:
        print(json.dumps(run_demo(settings).to_dict()))
        return
    def on_answer(a) -> None:
        mark = "[green]yes[/green]" if a.correct else "[red]no[/red]"
        bar.console.print(f"  {_clock(a.asked_at)}  {a.question}  ->  {a.predicted}  (truth: {a.truth}) {mark}")

    labels = {"load": "[bold]loading[/bold] the demo model", "generate": f"[bold]generating[/bold] the {seconds} s clip",
              "stream": f"[bold]streaming[/bold] 0/{seconds} s of video"}
    stages: dict[str, int] = {}

    def on_stage(name: str) -> None:  # the previous stage is done (its row keeps its time), the next one starts
        for t in stages.values():
            bar.update(t, total=1, completed=1)
        stages[name] = bar.add_task(labels[name], total=seconds if name == "stream" else None)

    def on_progress(t: float, total: float) -> None:
        done = min(t, total)
        bar.update(stages["stream"], completed=done,
                   description=f"[bold]streaming[/bold] {done:.0f}/{total:.0f} s of video")

    console.print(f"avmem demo: generating a {seconds} s synthetic clip (shapes with digits on coloured scenes, "
                  f"beeps and chirps), then streaming it at 1 FPS through the demo model")
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console) as bar:
        report = run_demo(settings, on_progress=on_progress, on_answer=on_answer, on_stage=on_stage)
    right = sum(a.correct for a in report.answers)
    live = [a for a in report.answers if a.task in LIVE_TASKS]
    past = [a for a in report.answers if a.task not in LIVE_TASKS]
    console.print(f"accuracy {right}/{len(report.answers)} = {report.accuracy:.0%} (chance 25 %): "
                  f"about what just happened {_frac(live)}, about earlier events {_frac(past)}")
    telemetry = Table(title="memory telemetry")
    for col in ("t", "video tokens seen", "video tokens held", "audio tokens held", "memory KB (with TTT)", "TTT loss",
                "elapsed s"):
        telemetry.add_column(col, justify="right")
    step = max(1, len(report.points) // 10)
    for p in report.points[::step] + ([report.points[-1]] if (len(report.points) - 1) % step else []):
        telemetry.add_row(_clock(p.t), str(p.video_tokens_in), str(p.video_tokens_held), str(p.audio_tokens_held),
                          f"{p.memory_kb:.0f}", "-" if p.ttt_loss is None else f"{p.ttt_loss:.3f}", f"{p.elapsed_s:.1f}")
    console.print(telemetry)
    console.print(f"{report.frames} frames streamed in {report.stream_s:.0f} s (clip written in {report.generate_s:.0f} s); "
                  f"memory {report.memory_bytes / 1024:.0f} KB + TTT fast weights {report.ttt_state_bytes / 1024:.0f} KB "
                  f"whatever the length; peak RSS {report.peak_rss_mb:.0f} MB"
                  + (f"; plot: {report.plot}" if report.plot else ""))


def _clock(t: float) -> str:
    return f"{int(t) // 60}:{int(t) % 60:02d}"


def _frac(rows) -> str:
    return f"{sum(a.correct for a in rows)}/{len(rows)}" if rows else "-"


def _session_for(model_name: str | None, *, fps: float, max_pixels: int, video_tokens: int, audio_tokens: int,
                 no_audio: bool, no_ttt: bool, cg_iters: int, device: str, max_new_tokens: int, dtype: str = "auto",
                 video_policy: str = "discard", audio_policy: str = "merge", reader: str = "full",
                 read_tokens: int = 16384, read_chunk: int = 16384, read_per_layer: bool = False,
                 budget_file: str | None = None, omni_lambda: float = 0.02, incremental: bool = False,
                 bank_step: int | None = 4096, max_wrappers: int = 1024):
    """Load the model and open a session (every option is checked first: :func:`_check_options`); notes go to
    stderr."""
    dev = _check_options(model_name, fps=fps, max_pixels=max_pixels, video_tokens=video_tokens,
                         audio_tokens=audio_tokens, cg_iters=cg_iters, device=device, dtype=dtype,
                         max_new_tokens=max_new_tokens, video_policy=video_policy, audio_policy=audio_policy,
                         reader=reader, read_tokens=read_tokens, read_chunk=read_chunk, budget_file=budget_file,
                         omni_lambda=omni_lambda, incremental=incremental, bank_step=bank_step,
                         max_wrappers=max_wrappers)
    from .model import load_model
    from .session import StreamSession

    weights_dtype = resolve_dtype(dtype)
    _quiet_transformers()
    with console.status(f"loading {model_name}..."):
        model = load_model(model_name, device=dev, dtype=weights_dtype, cg_iters=cg_iters)
    if model.spec.random_weights:
        print(f"avmem: note: {model_name} has random weights; its answers are meaningless", file=sys.stderr)
    use_audio = not no_audio and model.audio is not None
    use_ttt = not no_ttt and model.ttt is not None
    if not no_audio and model.audio is None:
        print("avmem: note: this model has no audio encoder; answering from video only", file=sys.stderr)
    if not no_ttt and model.ttt is None:
        print("avmem: note: this model has no trained TTT memory; the memory is the token bank alone",
              file=sys.stderr)
    session = StreamSession(model, fps=fps, max_pixels=max_pixels, video_tokens=video_tokens,
                            audio_tokens=audio_tokens, use_audio=use_audio, use_ttt=use_ttt,
                            max_new_tokens=max_new_tokens, video_policy=video_policy, audio_policy=audio_policy,
                            reader=reader, read_tokens=read_tokens, read_chunk=read_chunk,
                            read_joint=not read_per_layer, budget_file=budget_file, omni_lambda=omni_lambda,
                            incremental=incremental, bank_step=bank_step, max_wrappers=max_wrappers)
    return model, session


POLICY_NAMES = ("discard", "discard-prev", "merge")
"""The token-memory policies (:data:`avmem.session.POLICIES`), named here so options are checked without importing
the model code."""
MAX_PIXELS_LIMIT = 4096 * 4096
MIN_PIXELS = 784


def _check_options(model_name: str | None, *, fps: float | None = None, max_pixels: int | None = None,
                   video_tokens: int | None = None, audio_tokens: int | None = None, cg_iters: int | None = None,
                   device: str = "auto", dtype: str = "auto", max_new_tokens: int | None = None,
                   video_policy: str = "discard", audio_policy: str = "merge", reader: str = "full",
                   read_tokens: int | None = None, read_chunk: int | None = None, budget_file: str | None = None,
                   omni_lambda: float = 0.02, incremental: bool = False, bank_step: int | None = None,
                   max_wrappers: int | None = None, **_):
    """Check the model name and every session option before anything heavy is imported or loaded: the cheap
    checks first (ranges, names, files, the reader's name and traits from :mod:`avmem.reader_catalog`), then the
    model name (preset, folder, or hub id in the local cache or one bounded request), then the device (imports
    torch). Returns the torch device.

    Raises:
        ValueError: one line naming the option.
    """
    if not model_name:
        raise ValueError("choose a model with --model: the official release folder, an avmem folder, a Qwen2.5-VL / "
                         "Qwen3-VL folder or hub id, or a preset with random weights: random-qwen3-vl-8b / "
                         "random-qwen2.5-vl-7b (release size, for speed) or tiny-qwen3-vl / tiny-qwen2.5-vl (tests)")
    from .model_source import check_model_source

    if fps is not None and not (0 < fps <= 30):
        raise ValueError(f"--fps must be in (0, 30], got {fps}")
    if max_pixels is not None and not MIN_PIXELS <= max_pixels <= MAX_PIXELS_LIMIT:
        raise ValueError(f"--max-pixels must be in {MIN_PIXELS}..{MAX_PIXELS_LIMIT} (4096^2), got {max_pixels}")
    for name, value in (("--video-tokens", video_tokens), ("--audio-tokens", audio_tokens),
                        ("--read-tokens", read_tokens), ("--read-chunk", read_chunk),
                        ("--max-new-tokens", max_new_tokens), ("--bank-step", bank_step),
                        ("--max-wrappers", max_wrappers)):
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    if cg_iters is not None and cg_iters < 0:
        raise ValueError(f"--cg-iters must be >= 0, got {cg_iters}")
    for name, value in (("--video-policy", video_policy), ("--audio-policy", audio_policy)):
        if value not in POLICY_NAMES:
            raise ValueError(f"{name} must be one of {', '.join(POLICY_NAMES)}, got {value!r}")
    if not math.isfinite(omni_lambda):
        raise ValueError(f"--omni-lambda must be a finite number, got {omni_lambda}")
    if budget_file is not None and not Path(budget_file).is_file():
        raise ValueError(f"--budget-file {budget_file}: no such file")
    from .reader_catalog import READERS, reader_traits

    chosen = reader_traits(reader)  # ValueError listing the reader names (a light table: no torch import)
    if incremental and not chosen.supports_incremental:
        names = [n for n, t in READERS.items() if t.supports_incremental]
        raise ValueError(f"--incremental applies to readers {', '.join(names)} only, not {reader!r}")
    if budget_file is not None and not chosen.uses_budgets:
        names = [n for n, t in READERS.items() if t.uses_budgets]
        raise ValueError(f"--budget-file applies to readers {', '.join(names)} only, not {reader!r}")
    check_model_source(model_name)
    dev = resolve_device(device)
    resolve_dtype(dtype)
    return dev


def _quiet_transformers() -> None:
    """Unless -v: transformers and huggingface_hub (imported by now) log errors only and draw no progress bars."""
    if _VERBOSE:
        return
    import transformers
    from huggingface_hub.utils import disable_progress_bars
    from huggingface_hub.utils import logging as hub_logging

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    hub_logging.set_verbosity_error()
    disable_progress_bars()


def _media_report(stats, fps: float) -> dict:
    """What the decoder delivered against what the input declares: seconds decoded / expected, holes (damaged
    spans skipped, s), and whether the input is complete."""
    holes = [[round(a, 3), round(b, 3)] for a, b in stats.holes]
    missing = stats.shortfall(1.0 + 1.0 / fps)
    return {"seconds_decoded": round(stats.seconds, 3),
            "seconds_expected": None if stats.expected_seconds is None else round(stats.expected_seconds, 3),
            "holes": holes, "complete": not holes and not missing}


def _damage_line(source: str, media: dict) -> str:
    """One line saying how an incomplete input was used."""
    parts = []
    if media["seconds_expected"] is not None and media["seconds_decoded"] < media["seconds_expected"]:
        parts.append(f"decoded {media['seconds_decoded']:.1f} s of the {media['seconds_expected']:.1f} s it declares")
    if media["holes"]:
        shown = ", ".join(f"{a:.1f}-{b:.1f} s" for a, b in media["holes"][:5])
        more = f" and {len(media['holes']) - 5} more" if len(media["holes"]) > 5 else ""
        parts.append(f"damaged data skipped at {shown}{more}")
    return f"{source}: incomplete input: {'; '.join(parts)}"


class _MediaWarningLines:
    """While active, media warnings print as one line ``avmem: warning: ...`` on stderr (not Python's two-line
    format); other warnings are shown as before."""

    def __enter__(self) -> "_MediaWarningLines":
        import warnings

        from .media import MediaWarning

        self._saved = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, MediaWarning):
                print(f"avmem: warning: {message}", file=sys.stderr, flush=True)
            else:
                self._saved(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        return self

    def __exit__(self, *exc) -> None:
        import warnings

        warnings.showwarning = self._saved


def _telemetry(session, elapsed: float) -> dict:
    st = session.stats()
    return {
        "frames": st.frames, "seconds": round(st.seconds, 3),
        "tokens": {"video_in": st.video_tokens_in, "video_held": st.video_tokens_held,
                   "audio_in": st.audio_tokens_in, "audio_held": st.audio_tokens_held},
        "memory_bytes": st.memory_bytes, "drops": st.drops, "read_per_layer": st.read_per_layer,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "elapsed_s": round(elapsed, 3), "x_realtime": round(st.seconds / elapsed, 2) if elapsed > 0 else None,
    }


@app.command()
@user_errors
def ask(
    source: str = typer.Argument(..., help="Video file or URL of a recording."),
    question: list[str] = typer.Option(..., "-q", "--question", help="A question (repeat for several)."),
    model: str = MODEL_OPT,
    fps: float = FPS_OPT,
    max_pixels: int = MAX_PIXELS_OPT,
    video_tokens: int = VIDEO_TOKENS_OPT,
    audio_tokens: int = AUDIO_TOKENS_OPT,
    no_audio: bool = NO_AUDIO_OPT,
    no_ttt: bool = NO_TTT_OPT,
    cg_iters: int = CG_ITERS_OPT,
    video_policy: str = VIDEO_POLICY_OPT,
    audio_policy: str = AUDIO_POLICY_OPT,
    reader: str = READER_OPT,
    read_tokens: int = READ_TOKENS_OPT,
    read_chunk: int = READ_CHUNK_OPT,
    read_per_layer: bool = READ_PER_LAYER_OPT,
    budget_file: str = BUDGET_FILE_OPT,
    omni_lambda: float = OMNI_LAMBDA_OPT,
    incremental: bool = INCREMENTAL_OPT,
    max_wrappers: int = MAX_WRAPPERS_OPT,
    max_new_tokens: int = typer.Option(64, help="Answer length limit."),
    device: str = DEVICE_OPT,
    dtype: str = DTYPE_OPT,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    strict: bool = typer.Option(False, "--strict", help="Fail (exit 2) when the input is damaged or ends before the "
                                "length it declares, instead of answering from what decodes."),
) -> None:
    """Watch a video with bounded memory, then answer the questions."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .media import probe

    start = time.perf_counter()
    empty = [i + 1 for i, q in enumerate(question) if not q.strip()]
    if empty:
        raise ValueError(f"question {empty[0]} is empty")
    info = probe(source, fps=fps, max_pixels=max_pixels)
    if info.video is None and (no_audio or info.audio is None):
        raise ValueError(f"{source}: no video stream" + ("" if info.audio is None else " (and --no-audio was given)"))
    _, session = _session_for(model, fps=fps, max_pixels=max_pixels, video_tokens=video_tokens,
                              audio_tokens=audio_tokens, no_audio=no_audio, no_ttt=no_ttt, cg_iters=cg_iters,
                              device=device, dtype=dtype, max_new_tokens=max_new_tokens, video_policy=video_policy,
                              audio_policy=audio_policy, reader=reader, read_tokens=read_tokens,
                              read_chunk=read_chunk, read_per_layer=read_per_layer, budget_file=budget_file,
                              omni_lambda=omni_lambda, incremental=incremental, max_wrappers=max_wrappers)
    columns = [TextColumn("watching"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    with _MediaWarningLines(), Progress(*columns, console=console, disable=json_out, transient=True) as bar:
        task = bar.add_task("watch", total=info.duration or None)

        def progress(item) -> None:
            bar.update(task, completed=item.t)

        media = _media_report(session.feed_file(source, progress=progress), fps)
    if strict and not media["complete"]:
        raise ValueError(_damage_line(source, media) + " (--strict)")
    session.flush()
    answers = [{"question": q, "answer": session.ask(q)} for q in question]
    report = {"answers": answers, **_telemetry(session, time.perf_counter() - start), "media": media}
    if json_out:
        print(json.dumps(report))
        return
    if not media["complete"]:
        print(f"avmem: warning: {_damage_line(source, media)}; answered from what decoded", file=sys.stderr)
    for a in answers:
        console.print(f"[bold]Q:[/bold] {a['question']}\n[bold]A:[/bold] {a['answer']}")
    t = report["tokens"]
    console.print(f"{report['frames']} frames / {report['seconds']:.0f} s watched; memory {t['video_held']} video + "
                  f"{t['audio_held']} audio tokens ({report['memory_bytes'] / 2**20:.1f} MiB) of {t['video_in']} + "
                  f"{t['audio_in']} seen; {report['elapsed_s']:.1f} s ({report['x_realtime']}x real time), "
                  f"peak RSS {report['peak_rss_mb']:.0f} MB")


@app.command()
@user_errors
def info(
    media: str = typer.Argument(..., help="File, URL or device."),
    fps: float = typer.Option(1.0, help="Sampling rate to estimate for."),
    max_pixels: int = typer.Option(176400, help="Pixel budget per frame."),
    factor: int = typer.Option(32, help="Frame sides are multiples of this (Qwen3-VL 32, Qwen2.5-VL 28)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Describe what will be decoded from MEDIA."""
    from dataclasses import asdict

    from .media import probe

    report = asdict(probe(media, fps=fps, max_pixels=max_pixels, factor=factor))
    if report["video"] is not None:
        report["video"]["sample_aspect_ratio"] = str(report["video"]["sample_aspect_ratio"])
    if json_out:
        print(json.dumps(report))
        return
    table = Table(title=media, show_header=False)
    for key in ("format", "duration", "start_time", "frame_size", "fps", "sampled_frames"):
        label = "frame_size (height, width)" if key == "frame_size" else key
        table.add_row(label, str(report[key]))
    for kind in ("video", "audio"):
        part = report[kind]
        table.add_row(kind, "none" if part is None else ", ".join(f"{k}={v}" for k, v in part.items()))
    console.print(table)


@app.command()
@user_errors
def stream(
    url: str = typer.Argument(..., help="Live URL (http/HLS/RTSP/...) or capture device such as /dev/video0."),
    model: str = MODEL_OPT,
    fps: float = FPS_OPT,
    max_pixels: int = MAX_PIXELS_OPT,
    video_tokens: int = VIDEO_TOKENS_OPT,
    audio_tokens: int = AUDIO_TOKENS_OPT,
    no_audio: bool = NO_AUDIO_OPT,
    no_ttt: bool = NO_TTT_OPT,
    cg_iters: int = CG_ITERS_OPT,
    video_policy: str = VIDEO_POLICY_OPT,
    audio_policy: str = AUDIO_POLICY_OPT,
    reader: str = READER_OPT,
    read_tokens: int = READ_TOKENS_OPT,
    read_chunk: int = READ_CHUNK_OPT,
    read_per_layer: bool = READ_PER_LAYER_OPT,
    budget_file: str = BUDGET_FILE_OPT,
    omni_lambda: float = OMNI_LAMBDA_OPT,
    incremental: bool = INCREMENTAL_OPT,
    max_wrappers: int = MAX_WRAPPERS_OPT,
    timeout: float = typer.Option(10.0, help="Seconds without data after which the source counts as stalled: the "
                                  "command then ends with an error (exit 2)."),
    device: str = DEVICE_OPT,
    dtype: str = DTYPE_OPT,
    server: str = typer.Option(None, "--server", help="An avmem server URL (avmem serve): the session runs "
                               "there (a local file is uploaded); API key from $AVMEM_API_KEY."),
) -> None:
    """Watch a live source; each line typed on stdin is a question answered from the memory so far."""
    if server:
        from .serve.cli import stream_via_server

        return stream_via_server(url, server)
    import threading

    from .media import LiveSource

    _, session = _session_for(model, fps=fps, max_pixels=max_pixels, video_tokens=video_tokens,
                              audio_tokens=audio_tokens, no_audio=no_audio, no_ttt=no_ttt, cg_iters=cg_iters,
                              device=device, dtype=dtype, max_new_tokens=64, video_policy=video_policy,
                              audio_policy=audio_policy, reader=reader, read_tokens=read_tokens,
                              read_chunk=read_chunk, read_per_layer=read_per_layer, budget_file=budget_file,
                              omni_lambda=omni_lambda, incremental=incremental, max_wrappers=max_wrappers)
    source = LiveSource(url, fps=fps, audio=session.settings.use_audio, max_pixels=max_pixels,
                        factor=session.model.backbone.vision.factor, timeout=timeout)
    lock = threading.Lock()
    failure: list[BaseException] = []

    stop = threading.Event()

    def watch() -> None:
        try:
            for item in source:
                if stop.is_set():
                    break
                with lock:
                    session.feed_item(item)
                    session.state.drops = source.stats.dropped
        except Exception as exc:  # reported on the main thread
            failure.append(exc)

    import queue

    questions: queue.Queue[str | None] = queue.Queue()

    def read_questions() -> None:
        for line in sys.stdin:
            questions.put(line)
        questions.put(None)

    media_lines = _MediaWarningLines().__enter__()  # decoder warnings from the watch thread: one line each
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    threading.Thread(target=read_questions, daemon=True).start()
    print("watching; type a question and press Enter (Ctrl-D to stop)", file=sys.stderr)
    while not failure:
        try:
            line = questions.get(timeout=0.2)
        except queue.Empty:
            continue
        if line is None:
            break
        if not line.strip():
            continue
        with lock:
            try:
                answer = session.ask(line.strip())
            except ValueError as exc:
                answer = f"(cannot answer yet: {exc})"
            st = session.stats()
        print(f"A: {answer}   [{st.seconds:.0f} s watched, {st.video_tokens_held} video + {st.audio_tokens_held} "
              f"audio tokens, {st.drops} dropped]", flush=True)
    stop.set()
    source.close()
    watcher.join(timeout=60)  # leave no thread inside native decoding/inference code at interpreter exit
    media_lines.__exit__()
    if failure:
        if isinstance(failure[0], ValueError):
            raise ValueError(str(failure[0]).splitlines()[0])
        raise failure[0]


budgets_app = typer.Typer(no_args_is_help=True, help="OmniMem per-layer KV budgets.")
app.add_typer(budgets_app, name="budgets")


@budgets_app.command("compute")
@user_errors
def budgets_compute(
    videos: list[str] = typer.Argument(..., help="Videos (with audio) to measure on."),
    out: str = typer.Option(..., "--out", help="Budget file to write (released JSON format)."),
    model: str = MODEL_OPT,
    fps: float = FPS_OPT,
    max_pixels: int = MAX_PIXELS_OPT,
    video_tokens: int = VIDEO_TOKENS_OPT,
    audio_tokens: int = AUDIO_TOKENS_OPT,
    per_layer_mean: int = typer.Option(8192, help="Mean audio+visual budget per layer."),
    temperature: float = typer.Option(0.2, help="Softmax temperature over layers."),
    av_ratio: float = typer.Option(2.0, help="Visual up-weighting rho of the audio/visual split."),
    no_clip: bool = typer.Option(False, "--no-clip", help="Do not clip budgets to 0.5-1.5x the mean."),
    chunk: int = typer.Option(4096, help="Tokens per measured prefill chunk."),
    device: str = DEVICE_OPT,
    dtype: str = DTYPE_OPT,
) -> None:
    """Measure per-layer attention entropy and adjacent-token similarity per modality, write budgets."""
    from .memory.kv.budgets import compute_budgets
    from .memory.kv.signals import measure_signals

    if chunk <= 0:
        raise ValueError(f"--chunk must be > 0, got {chunk}")
    if not Path(out).resolve().parent.is_dir():
        raise ValueError(f"--out {out}: folder {Path(out).resolve().parent} does not exist")
    _check_options(model, fps=fps, max_pixels=max_pixels, video_tokens=video_tokens, audio_tokens=audio_tokens,
                   device=device, dtype=dtype)
    m, _ = _session_for(model, fps=fps, max_pixels=max_pixels, video_tokens=video_tokens, audio_tokens=audio_tokens,
                        no_audio=False, no_ttt=False, cg_iters=None, device=device, dtype=dtype, max_new_tokens=1)
    if m.audio is None:
        raise ValueError("budgets need a model with audio (audio and visual budgets are measured separately)")
    from .session import StreamSession

    totals = None
    for video in videos:
        session = StreamSession(m, fps=fps, max_pixels=max_pixels, video_tokens=video_tokens,
                                audio_tokens=audio_tokens, use_ttt=m.ttt is not None)
        with console.status(f"watching {video}..."):
            session.feed_file(video)
        embeds, positions, modality, visual, deepstack = session.memory_inputs()
        with console.status(f"measuring {video}..."):
            totals = measure_signals(m.backbone, embeds, positions, modality, chunk, totals,
                                     visual if deepstack is not None else None, deepstack)
    schedule = compute_budgets(totals.signals(), per_layer_mean, temperature, av_ratio, None if no_clip else (0.5, 1.5))
    schedule.save(out)
    console.print(f"wrote {out}: {len(schedule)} layers, {schedule.total_tokens() / len(schedule):.0f} audio+visual "
                  f"tokens per layer on average")


@budgets_app.command("show")
@user_errors
def budgets_show(
    file: str = typer.Argument(..., help="Budget file (released JSON format)."),
    png: str = typer.Option(None, "--png", help="Also plot the budgets per layer to this PNG."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Print (and plot) a budget file."""
    from .memory.kv.budgets import BudgetSchedule

    if png and (Path(png).is_dir() or not Path(png).parent.is_dir()):
        raise ValueError(f"--png {png}: " + ("is a folder" if Path(png).is_dir() else
                                             f"folder {Path(png).parent} does not exist"))
    schedule = BudgetSchedule.load(file)
    rows = [(i, b.audio, b.visual, b.total if b.total is not None else b.audio + b.visual)
            for i, b in enumerate(schedule.layers)]
    if png:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise ValueError("--png needs matplotlib (pip install matplotlib)") from None
        fig, ax = plt.subplots(figsize=(8, 3.5))
        layers = [r[0] for r in rows]
        if any(r[1] is not None for r in rows):
            ax.bar(layers, [r[2] or 0 for r in rows], label="visual")
            ax.bar(layers, [r[1] or 0 for r in rows], bottom=[r[2] or 0 for r in rows], label="audio")
        ax.plot(layers, [r[3] for r in rows], "k.-", label="total")
        ax.set_xlabel("layer")
        ax.set_ylabel("tokens")
        ax.set_title(file)
        ax.legend()
        fig.tight_layout()
        try:
            fig.savefig(png, dpi=120)
        except (OSError, ValueError) as exc:  # not writable, or a file type matplotlib cannot write
            raise ValueError(f"--png {png}: {str(exc).strip().splitlines()[0]}") from None
        finally:
            plt.close(fig)
    if json_out:
        print(json.dumps({"layers": [{"layer": i, "audio": a, "visual": v, "total": t} for i, a, v, t in rows],
                          "mean_per_layer": schedule.total_tokens() / len(schedule)}))
        return
    table = Table(title=f"{file}: {len(schedule)} layers, mean {schedule.total_tokens() / len(schedule):.0f}")
    for col in ("layer", "audio", "visual", "total"):
        table.add_column(col, justify="right")
    for i, a, v, t in rows:
        table.add_row(str(i), "-" if a is None else str(a), "-" if v is None else str(v), str(t))
    console.print(table)


@app.command("eval")
@user_errors
def eval_mcq(
    annotations: str = typer.Argument(..., help="Annotations: a file or the benchmark's folder as published (without "
                                      "--benchmark: the synthetic benchmark's OUT/test.json)."),
    benchmark: str = typer.Option(None, "--benchmark", help="A registered benchmark: videomme, mlvu, lvbench, "
                                  "longvideobench, videoevalpro, ovobench, streamingbench, synth, ..."),
    video_root: str = typer.Option(None, "--video-root", help="Folder of the benchmark's videos, under its naming "
                                   "rule (default: the annotations' folder)."),
    out: str = typer.Option(None, "--out", help="Run folder (results.jsonl, summary.json, ...); an existing run "
                            "there is resumed."),
    shard: str = typer.Option(None, "--shard", help="I/N: this process answers shard I of N (by video); default: "
                              "RANK/WORLD_SIZE under torchrun / accelerate launch, else 0/1."),
    context_seconds: float = typer.Option(None, "--context-seconds", help="--benchmark: each question reads only "
                                          "the memory of the last N seconds before it (StreamingBench's context "
                                          "window; a benchmark's own window applies as well)."),
    memory_cache: str = typer.Option(None, "--memory-cache", help="--benchmark: folder of saved memory states "
                                     "(per video, model, write-side settings, ask time); runs that differ only in "
                                     "reader / read budget / method answer from it without decoding the videos."),
    model: str = MODEL_OPT,
    method: str = typer.Option(None, help="--benchmark: generate (default; the benchmark's prompt and answer "
                               "extraction) or likelihood (rate the option letters). Without: likelihood (default), "
                               "text / open (rate the option texts) or generate."),
    fps: float = FPS_OPT,
    max_pixels: int = MAX_PIXELS_OPT,
    video_tokens: int = VIDEO_TOKENS_OPT,
    audio_tokens: int = AUDIO_TOKENS_OPT,
    no_audio: bool = NO_AUDIO_OPT,
    no_ttt: bool = NO_TTT_OPT,
    cg_iters: int = CG_ITERS_OPT,
    video_policy: str = VIDEO_POLICY_OPT,
    audio_policy: str = AUDIO_POLICY_OPT,
    reader: str = READER_OPT,
    read_tokens: int = READ_TOKENS_OPT,
    read_chunk: int = READ_CHUNK_OPT,
    read_per_layer: bool = READ_PER_LAYER_OPT,
    budget_file: str = BUDGET_FILE_OPT,
    omni_lambda: float = OMNI_LAMBDA_OPT,
    incremental: bool = INCREMENTAL_OPT,
    max_wrappers: int = MAX_WRAPPERS_OPT,
    bank_step: int = typer.Option(4096, help="Tokens absorbed per memory compression (the demo model's: 32)."),
    max_new_tokens: int = typer.Option(None, help="Answer length limit (default: 8 without --benchmark, else 64)."),
    max_videos: int = typer.Option(None, help="Only the first N videos (of this shard)."),
    device: str = DEVICE_OPT,
    dtype: str = DTYPE_OPT,
    json_out: str = typer.Option(None, "--json", help="Without --benchmark: also write every answer and the summary "
                                 "to this file."),
) -> None:
    """Accuracy on a registered benchmark (--benchmark, resumable run folder) or on the synthetic benchmark's JSON
    (with 95 % bootstrap intervals, per task and inside / outside memory)."""
    session_options = dict(fps=fps, max_pixels=max_pixels, video_tokens=video_tokens, audio_tokens=audio_tokens,
                           no_audio=no_audio, no_ttt=no_ttt, cg_iters=cg_iters, device=device, dtype=dtype,
                           video_policy=video_policy, audio_policy=audio_policy, reader=reader,
                           read_tokens=read_tokens, read_chunk=read_chunk, read_per_layer=read_per_layer,
                           budget_file=budget_file, omni_lambda=omni_lambda, incremental=incremental,
                           bank_step=bank_step, max_wrappers=max_wrappers)
    _check_options(model, max_new_tokens=max_new_tokens, **session_options)
    if json_out and not Path(json_out).resolve().parent.is_dir():
        raise ValueError(f"--json {json_out}: folder {Path(json_out).resolve().parent} does not exist")
    if benchmark is not None:
        _eval_benchmark(benchmark, annotations, video_root, out, shard, model, method or "generate", max_new_tokens,
                        max_videos, session_options, memory_cache, context_seconds)
        return
    for name, value in (("--video-root", video_root), ("--out", out), ("--shard", None if shard == "0/1" else shard),
                        ("--memory-cache", memory_cache), ("--context-seconds", context_seconds)):
        if value is not None:
            raise ValueError(f"{name} needs --benchmark (e.g. --benchmark synth)")
    from .eval.mcq import evaluate_mcq, results_to_json, summarize

    method = method or "likelihood"
    _, session = _session_for(model, max_new_tokens=max_new_tokens or 8, **session_options)
    from rich.progress import Progress

    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("evaluating", total=None)
        results = evaluate_mcq(session.model, annotations, session.settings, method, max_videos,
                               progress=lambda done, total: bar.update(task, completed=done, total=total))
    summary = summarize(results)
    table = Table(title=f"{len(results)} questions, {method}")
    for col in ("group", "n", "accuracy", "95% CI"):
        table.add_column(col)
    for name, row in summary.items():
        if not row["n"]:  # e.g. no question outside the memory: no accuracy to show
            table.add_row(name, "0", "-", "-")
            continue
        table.add_row(name, str(row["n"]), f"{row['accuracy']:.3f}", f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]")
    console.print(table)
    if json_out:
        with open(json_out, "w") as fh:
            json.dump({"summary": summary, "results": results_to_json(results)}, fh, indent=1)


def _eval_benchmark(name: str, annotations: str, video_root: str | None, out: str | None, shard_text: str | None,
                    model: str | None, method: str, max_new_tokens: int | None, max_videos: int | None,
                    session_options: dict, memory_cache: str | None = None,
                    context_seconds: float | None = None) -> None:
    """``avmem eval --benchmark NAME``: load and check everything before the model loads, then run."""
    import os
    from pathlib import Path

    from .eval.benchmarks import AnnotationDefect, get_benchmark
    from .eval.run import RUN_METHODS, launcher_shard, parse_shard, run_benchmark, shard_videos, shards_done

    bench = get_benchmark(name)  # ValueError listing the registered names
    if method not in RUN_METHODS:
        raise ValueError(f"--method with --benchmark must be one of {', '.join(RUN_METHODS)}, got {method!r}")
    if shard_text is not None:
        shard = parse_shard(shard_text)
    else:
        import torch

        launched = launcher_shard(os.environ, torch.cuda.device_count() if torch.cuda.is_available() else 0)
        shard = (0, 1) if launched is None else launched[0]
        if launched is not None and launched[1] is not None and session_options.get("device") in (None, "auto"):
            session_options = {**session_options, "device": launched[1]}
        if launched is not None:
            print(f"avmem: note: started by a launcher: shard {shard[0]}/{shard[1]} on "
                  f"{session_options.get('device')}", file=sys.stderr)
    if context_seconds is not None and not context_seconds > 0:
        raise ValueError(f"--context-seconds must be > 0, got {context_seconds}")
    if memory_cache is not None and Path(memory_cache).exists() and not Path(memory_cache).is_dir():
        raise ValueError(f"--memory-cache {memory_cache}: not a folder")
    if not out:
        raise ValueError("--benchmark needs --out RUN_DIR (where results.jsonl and summary.json go)")
    if max_videos is not None and max_videos < 1:
        raise ValueError(f"--max-videos must be >= 1, got {max_videos}")
    path = Path(annotations)
    if not path.exists():
        raise ValueError(f"{annotations}: no such file or folder")
    root = Path(video_root) if video_root else (path if path.is_dir() else path.parent)
    if not root.is_dir():
        raise ValueError(f"--video-root {root}: not a folder")
    try:
        loaded = bench.load(path)
    except AnnotationDefect as exc:
        raise ValueError(str(exc)) from None
    if not loaded.videos:
        raise ValueError(f"{annotations}: no questions for benchmark {name}")
    missing = bench.resolve(loaded, root)
    for ref, reason in list(getattr(bench, "skipped", {}).items()):
        print(f"avmem: note: skipped {ref}: {reason}", file=sys.stderr)
    if loaded.defects:
        print(f"avmem: note: {len(loaded.defects)} items left out for known defects of the published file: "
              + "; ".join(f"{k} ({v})" for k, v in list(loaded.defects.items())[:5]), file=sys.stderr)
    if len(missing) == len(loaded.videos):
        first = next(v for v in loaded.videos)
        raise ValueError(f"none of the {len(loaded.videos)} videos found under {root} (e.g. {first.path})")
    mine = {v.ref for v in shard_videos(loaded.videos, shard)[:max_videos]}
    if missing:
        shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        print(f"avmem: note: {len(missing)} of {len(loaded.videos)} videos missing under {root}: {shown}; "
              f"{len(mine & set(missing))} of this run's are recorded in its failures file", file=sys.stderr)
    model_obj, session = _session_for(model, max_new_tokens=max_new_tokens or 64, **session_options)
    summary = run_benchmark(bench, loaded, model_obj, session.settings, out, method=method, shard=shard,
                            max_videos=max_videos, annotations=path, model_source=model, memory_cache=memory_cache,
                            context_seconds=context_seconds)
    _print_summary(summary, out)
    if shard[1] > 1:
        finished = shards_done(out, shard[1])
        if len(finished) == shard[1]:
            print(f"avmem: note: all {shard[1]} shards are done; {out}/summary.json covers the whole run",
                  file=sys.stderr)
        else:
            print(f"avmem: note: {len(finished)} of {shard[1]} shards done; {out}/summary.json is complete when the "
                  f"last one finishes (shards in other folders: avmem eval-merge DIRS)", file=sys.stderr)


def _print_summary(summary: dict, out: str) -> None:
    """The benchmark's top-level aggregates (their own names) and, apart, the runner's counts (``counts.*``)."""
    table = Table(title=f"{summary.get('benchmark')}: {summary.get('extraction')} extraction, {summary.get('method')}")
    table.add_column("summary.json key")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        if isinstance(value, float):
            table.add_row(key, f"{value:.4f}")
    table.add_section()
    for key, value in (summary.get("counts") or {}).items():
        if value is not None and not isinstance(value, dict):
            table.add_row(f"counts.{key}", str(value))
    console.print(table)
    after = (summary.get("counts") or {}).get("asked_after_end")
    if after:
        print(f"avmem: note: {after} questions have an ask time after the end of their decoded video; they were "
              f"asked at the end (asked_at_end, stream_time in results)", file=sys.stderr)
    console.print(f"results and summary.json in {out}")


@app.command("eval-merge")
@user_errors
def eval_merge(
    runs: list[str] = typer.Argument(..., help="Run folders (or results*.jsonl files) of one run's shards."),
    out: str = typer.Option(None, "--out", help="Where summary.json goes (default: the first run folder)."),
) -> None:
    """Merge the shards of a run (de-duplicated by question id) and recompute summary.json."""
    from .eval.run import merge_runs

    summary = merge_runs(runs, out=out)
    _print_summary(summary, out or runs[0])


@app.command()
@user_errors
def synth(
    out: str = typer.Argument(..., help="Output folder (videos/ and the annotation JSON files)."),
    split: str = typer.Option("test", help="Split name (train / val / test): part of every video's seed."),
    videos: int = typer.Option(10, help="Number of videos."),
    min_seconds: int = typer.Option(60, help="Shortest video (>= 30 s)."),
    max_seconds: int = typer.Option(600, help="Longest video (<= 3 h)."),
    size: int = typer.Option(160, help="Frame side in pixels (square frames)."),
    fps: int = typer.Option(2, help="Frame rate of the written files."),
    questions: int = typer.Option(6, help="Questions per video."),
    seed: int = typer.Option(0, help="Benchmark seed."),
    speech: bool = typer.Option(False, "--speech", help="Spoken words (espeak-ng) instead of beeps and chirps."),
    times: int = typer.Option(1, help="Ask times per video: 1 = at the end, more = also at quiet moments."),
    tasks: str = typer.Option("all", help="Comma-separated task types and groups (all, long, live)."),
    style: str = typer.Option("letter", help="Training prompts: letter (Video-MME), text (options listed, answer = "
                              "the option) or open (question alone, answer = the option)."),
    group: bool = typer.Option(False, "--group", help="Training JSON: one item per ask time, its questions as turns."),
) -> None:
    """Write a synthetic long-video benchmark with known answers (Video-MME-like JSON + training JSON)."""
    from rich.progress import Progress

    from .synth.benchmark import LIVE_TASKS, LONG_TASKS, TASKS, generate

    groups = {"all": TASKS, "long": LONG_TASKS, "live": LIVE_TASKS}
    chosen = tuple(dict.fromkeys(t for name in tasks.split(",") if name.strip()
                                 for t in groups.get(name.strip(), (name.strip(),))))
    bad = [t for t in chosen if t not in TASKS]
    if bad or not chosen:
        raise ValueError(f"--tasks: unknown task {', '.join(bad) or tasks!r} (choose from {', '.join(TASKS)}, "
                         "or the groups all, long, live)")
    if size % 2:
        raise ValueError(f"--size must be even, got {size}")
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"writing {split}", total=videos)
        made = generate(out, split, videos, (min_seconds, max_seconds), (size, size), fps, seed, questions, speech,
                        progress=lambda done, total: bar.update(task, completed=done), times=times, tasks=chosen,
                        style=style, group=group)
    n_q = sum(len(v.questions) for v in made)
    hours = sum(v.timeline.seconds for v in made) / 3600
    console.print(f"{len(made)} videos ({hours:.2f} h), {n_q} questions -> {out}/{split}.json, "
                  f"{out}/{split}_train.json, {out}/{split}_events.json")


@app.command()
@user_errors
def train(
    config: str = typer.Argument(..., help="Training config (YAML); examples in avmem/train/configs/."),
    resume: str = typer.Option(None, "--resume", help="Continue from 'latest' or a checkpoint-N folder."),
    max_steps: int = typer.Option(None, "--max-steps", help="Override the config's max_steps."),
    check: bool = typer.Option(False, "--check", help="Validate the config and data, then stop."),
    check_urls: bool = typer.Option(False, "--check-urls", help="With --check: also fetch the URLs the data names "
                                    "(by default they are not contacted)."),
) -> None:
    """Fine-tune LoRA + the TTT memory on video QA data (official JSON/JSONL format).

    Multi-GPU / multi-node: ``accelerate launch --config_file avmem/train/configs/ddp.yaml -m avmem.train CONFIG``
    (or fsdp.yaml, deepspeed_zero2.yaml, deepspeed_zero3.yaml), or ``torchrun --nproc_per_node N -m avmem.train``.
    """
    import importlib.util

    missing = [m for m in ("peft", "accelerate", "yaml") if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"training needs {', '.join(missing)}: pip install 'avmem[train]'")
    from .train.config import load_config

    cfg = load_config(config)
    if resume is not None:
        cfg.resume = resume
    if max_steps is not None:
        cfg.max_steps = max_steps
    cfg.check()
    _quiet_transformers()
    if check:
        from .train.data import check_media, load_records

        records = load_records(cfg.data)
        unchecked = check_media(records, cfg.validate_samples, fetch_urls=check_urls)
        skipped = f" ({unchecked} URL(s) not fetched; --check-urls to probe them)" if unchecked else ""
        print(f"avmem train: config ok; {len(records)} samples, first {min(len(records), cfg.validate_samples)} "
              f"probed{skipped}", file=sys.stderr)
        return
    from .train.engine import train as run

    result = run(cfg)
    if result.is_main and result.losses:
        console.print(f"trained {result.steps} steps ({result.samples} samples, {result.skipped} skipped) in "
                      f"{result.seconds:.0f} s; loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}; "
                      f"model: {result.output_dir}")


@app.command()
def version() -> None:
    """Print the avmem version."""
    print(__version__)


from .serve.cli import serve_command  # noqa: E402 - the serve command's code lives in avmem/serve

app.command("serve")(user_errors(serve_command))


def main() -> None:
    from .runtime import pin_malloc_mmap_threshold

    pin_malloc_mmap_threshold()
    app()


if __name__ == "__main__":
    main()
