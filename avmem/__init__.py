"""avmem: long and live audio-visual understanding under a fixed memory budget.

``from avmem import load_model, StreamSession`` (imported lazily: ``import avmem`` stays light).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["AVMemModel", "SessionSettings", "StreamSession", "load_model"]

_LAZY = {"load_model": "model", "AVMemModel": "model", "StreamSession": "session", "SessionSettings": "session"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'avmem' has no attribute {name!r}")
