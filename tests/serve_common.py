"""Helpers shared by the avmem serve tests."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")

def wait_for(predicate: Callable[[], T], timeout: float = 60.0, every: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` seconds pass (fails)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting")
