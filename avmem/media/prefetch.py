"""Run an iterator (a media source) on a background thread, a bounded number of items ahead of its consumer."""

from __future__ import annotations

import queue
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")

_POLL_SECONDS = 0.05
JOIN_SECONDS = 30.0  # a producer blocked longer (a stalled network read) is left behind as a daemon thread
_ITEM, _END, _ERROR = 0, 1, 2


class Prefetch(Generic[T]):
    """Iterate ``source`` on a daemon thread into a queue of at most ``size`` items; iterate this object to get them.

    Decoding (PyAV releases the GIL while it decodes and converts) then overlaps the consumer's work, and
    memory stays bounded by ``size`` items. An exception raised by the source is raised to the consumer,
    unchanged, after the items before it. :meth:`close` (also on leaving a ``with`` block, and when the
    items run out) stops the thread and joins it: the source is closed in its own thread (its ``finally``
    blocks run, e.g. containers are closed), so no thread is left behind on an early exit or an error.

    Attributes:
        waited: seconds the consumer spent blocked waiting for the next item (the decoder was behind).
    """

    def __init__(self, source: Iterable[T], size: int = 32, name: str = "avmem-decode") -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"Prefetch size must be an int >= 1, got {size!r}")
        self.waited = 0.0
        self._queue: queue.Queue[tuple[int, object]] = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._run, args=(source,), name=name, daemon=True)
        self._thread.start()

    def _run(self, source: Iterable[T]) -> None:
        """Producer thread: every item, then an end marker or the source's exception."""
        it: Iterator[T] | None = None
        try:
            it = iter(source)
            for item in it:
                if not self._put((_ITEM, item)):
                    return
            self._put((_END, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put((_ERROR, exc))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def _put(self, entry: tuple[int, object]) -> bool:
        """Queue ``entry``, waiting for room; False when asked to stop."""
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        start = time.perf_counter()
        while True:
            try:
                kind, value = self._queue.get(timeout=_POLL_SECONDS)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self.close()
                    raise RuntimeError("the decoding thread ended without a result") from None
        self.waited += time.perf_counter() - start
        if kind == _ITEM:
            return value  # type: ignore[return-value]
        self.close()
        if kind == _ERROR:
            raise value  # type: ignore[misc]
        raise StopIteration

    def close(self) -> None:
        """Stop the producer (after the item it is decoding) and join it, waiting at most :data:`JOIN_SECONDS`:
        a producer blocked in a read that long (a stalled network source) is left to end on its own (it is a
        daemon thread and stops at its next item) with a warning, so closing never hangs. Idempotent."""
        self._finished = True
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(JOIN_SECONDS)
            if self._thread.is_alive():
                warnings.warn(f"{self._thread.name}: the decoding thread is still blocked in a read after "
                              f"{JOIN_SECONDS:.0f} s; leaving it to end on its own", RuntimeWarning, stacklevel=2)
        while True:  # drop what is left (frames) now rather than with this object
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break

    def __enter__(self) -> Prefetch[T]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
