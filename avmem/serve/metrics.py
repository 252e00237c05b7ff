"""``/metrics`` in the Prometheus text exposition format (written by hand)."""

from __future__ import annotations

import resource

from .manager import LATENCY_BUCKETS, SessionManager


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(manager: SessionManager) -> str:
    """Sessions, per-session frames/s, frames, drops, queue depth and memory bytes, the ask latency histogram, the
    egress proxy's allowed / refused / busy counters."""
    entries = manager.list(None)
    lines = [
        "# HELP avmem_sessions Sessions held.", "# TYPE avmem_sessions gauge", f"avmem_sessions {len(entries)}",
        "# HELP avmem_queue_depth Jobs waiting for the worker plus media items queued for ingest.",
        "# TYPE avmem_queue_depth gauge", f"avmem_queue_depth {manager.queue_depth()}",
        "# HELP avmem_process_max_rss_bytes Peak resident memory of the server process.",
        "# TYPE avmem_process_max_rss_bytes gauge",
        f"avmem_process_max_rss_bytes {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}",
    ]
    per = [
        ("avmem_session_frames_per_second", "gauge", "Frames absorbed per second (last 10 s).",
         lambda e, d: d["frames_per_second"]),
        ("avmem_session_frames_total", "counter", "Frames taken into the session.", lambda e, d: d["frames"]),
        ("avmem_session_dropped_frames_total", "counter", "Frames dropped because the session was slower than "
         "real time.", lambda e, d: d["drops"]),
        ("avmem_session_queue_depth", "gauge", "Media items waiting for the model.", lambda e, d: d["queue_depth"]),
        ("avmem_session_memory_bytes", "gauge", "Token memories, memory layer state and pending frames.",
         lambda e, d: d["memory_bytes"]),
        ("avmem_session_stream_seconds", "gauge", "Seconds of stream received.", lambda e, d: d["stream_seconds"]),
    ]
    described = [(e, manager.describe(e)) for e in entries]
    for name, kind, help_text, value in per:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        lines += [f'{name}{{session="{_label(e.id)}"}} {float(value(e, d)):g}' for e, d in described]
    name = "avmem_ask_latency_seconds"
    lines += [f"# HELP {name} Time from a question's arrival to its whole answer.", f"# TYPE {name} histogram"]
    total = 0
    for edge, count in zip(LATENCY_BUCKETS, manager.latency_counts):
        total += count
        lines.append(f'{name}_bucket{{le="{edge:g}"}} {total}')
    total += manager.latency_counts[-1]
    lines += [f'{name}_bucket{{le="+Inf"}} {total}', f"{name}_sum {manager.latency_sum:.6f}", f"{name}_count {total}",
              "# HELP avmem_ask_errors_total Questions that failed.", "# TYPE avmem_ask_errors_total counter",
              f"avmem_ask_errors_total {manager.ask_errors}"]
    egress = manager.egress.counters()
    for key, help_text in (("allowed", "Connections the egress proxy let through to a source (checked, pinned)."),
                           ("refused", "Connections the egress proxy refused by the URL / address policy."),
                           ("busy", "Connections the egress proxy turned away at its connection limit.")):
        name = f"avmem_egress_{key}_total"
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter", f"{name} {egress[key]}"]
    return "\n".join(lines) + "\n"
