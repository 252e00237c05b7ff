"""Where a model name points, checked in seconds without loading anything heavy (no torch, no transformers):
a preset, a folder, or a Hugging Face hub id (local cache first, then one bounded request)."""

from __future__ import annotations

import os
import re
from pathlib import Path

TINY_PRESETS = {"tiny-qwen3-vl": ("qwen3_vl", "tiny"), "tiny-qwen2.5-vl": ("qwen2_5_vl", "tiny"),
                "small-qwen3-vl": ("qwen3_vl", "small")}
RELEASE_PRESETS = {"random-qwen3-vl-8b": "qwen3_vl", "random-qwen2.5-vl-7b": "qwen2_5_vl"}
"""Full-size presets with random weights: name -> backbone kind."""
PRESETS = tuple(sorted({**TINY_PRESETS, **RELEASE_PRESETS}))
HUB_PROBE_SECONDS = 5.0
"""How long :func:`check_model_source` waits for the Hugging Face Hub (one request, no retries)."""
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?$")


def _path_like(name: str) -> bool:
    """Whether ``name`` reads as a filesystem path rather than a hub id (``./x``, ``/x``, ``~/x``, ``x/``, ``a/b/c``,
    anything with ``..`` or a backslash on Windows)."""
    if name.startswith((".", "/", "~")) or name.endswith(("/", os.sep)) or ".." in name:
        return True
    return (os.sep in name or "/" in name) and not _HUB_ID.match(name)


def check_model_source(name: str, timeout: float = HUB_PROBE_SECONDS) -> str:
    """Where ``name`` would load from, checked in a few seconds at most: ``"preset"``, ``"folder"`` or ``"hub"``.

    A name that is not a preset is a folder when it exists; a path-like name that does not exist is refused
    ("no such folder"); anything else is a hub id, found in the local Hugging Face cache or, unless offline
    (``HF_HUB_OFFLINE``), by one request to the Hub that waits ``timeout`` seconds and is not retried.

    Raises:
        ValueError: one line: an unknown preset, no such folder, a file instead of a folder, not a valid hub id,
            no such model on the Hub, or the Hub unreachable with the model not in the local cache.
    """
    if name in PRESETS:
        return "preset"
    if name.startswith(("tiny-", "small-", "random-")):
        raise ValueError(f"unknown preset '{name}' (choose from {', '.join(PRESETS)})")
    path = Path(name).expanduser()
    if path.is_dir():
        return "folder"
    if path.exists():
        raise ValueError(f"{name}: not a model folder (a file)")
    if _path_like(name):
        raise ValueError(f"{name}: no such folder")
    if not _HUB_ID.match(name):
        raise ValueError(f"{name}: not a preset ({', '.join(PRESETS)}), a folder or a Hugging Face model id")
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return "hub"
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    where = f"not a preset ({', '.join(PRESETS)}), not a folder, and not in the local Hugging Face cache"
    if offline:
        raise ValueError(f"{name}: {where} (HF_HUB_OFFLINE is set)")
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    try:
        get_hf_file_metadata(hf_hub_url(name, "config.json", endpoint=endpoint), timeout=timeout,
                             retry_on_errors=False)
    except (RepositoryNotFoundError, EntryNotFoundError):
        raise ValueError(f"{name}: {where}, and the Hugging Face Hub has no such model") from None
    except HfHubHTTPError as exc:
        raise ValueError(f"{name}: {where}, and the Hugging Face Hub answered "
                         f"{getattr(exc.response, 'status_code', '?')}") from None
    except Exception as exc:  # noqa: BLE001 (the transport differs between hub versions: httpx, httpx2, requests)
        raise ValueError(f"{name}: {where}, and the Hugging Face Hub is out of reach ({type(exc).__name__}, "
                         f"waited at most {timeout:.0f} s)") from None
    return "hub"
