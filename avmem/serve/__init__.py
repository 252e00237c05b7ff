"""``avmem serve``: live sessions over HTTP (see docs/serving.md).

``create_app(config, model=None)`` builds the FastAPI app; :class:`SessionManager` holds the sessions of one model
and can be driven without HTTP; :class:`ServeConfig` is what the server allows. Names are imported on first use
(the CLI imports this package without loading torch or FastAPI).
"""

from __future__ import annotations

import importlib

_NAMES = {"ServeConfig": ".config", "SessionManager": ".manager", "ServedSession": ".manager",
          "SourceSpec": ".manager", "create_app": ".app"}

__all__ = ["ServeConfig", "ServedSession", "SessionManager", "SourceSpec", "create_app"]


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_NAMES[name], __name__), name)
