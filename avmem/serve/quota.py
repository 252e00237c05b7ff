"""Per-key upload limits: uploads received at once, and upload bytes held on the server (thread-safe).

An upload takes a :class:`UploadTicket` (:meth:`UploadQuota.begin`; refused when the key already sends
``max_concurrent`` uploads), grows it as bytes arrive (:meth:`UploadTicket.grow`; refused past the key's byte
limit), ends receiving (:meth:`UploadTicket.received`) and gives its bytes back once the uploaded file is deleted
(:meth:`UploadTicket.release`: the session decoded it, was closed, or the upload failed).
"""

from __future__ import annotations

import threading


class QuotaError(ValueError):
    """An upload limit is reached; ``status`` is 429 (wait for other uploads to finish) or 413 (this upload
    alone is over the key's limit)."""

    def __init__(self, message: str, status: int = 429) -> None:
        super().__init__(message)
        self.status = status


class UploadTicket:
    """One upload of one key against its :class:`UploadQuota` (returned by :meth:`UploadQuota.begin`)."""

    def __init__(self, quota: UploadQuota, owner: str) -> None:
        self._quota, self.owner = quota, owner
        self.size = 0
        self._receiving, self._released = True, False

    def grow(self, n: int) -> None:
        """Count ``n`` more bytes of this upload. Raises QuotaError (413 when this upload alone is over the
        key's limit, else 429)."""
        self._quota._grow(self, n)

    def received(self) -> None:
        """The upload is complete: it no longer counts as in progress (its bytes stay held)."""
        self._quota._end(self, release=False)

    def release(self) -> None:
        """Give the bytes back (the uploaded file is gone); idempotent."""
        self._quota._end(self, release=True)


class UploadQuota:
    """Upload limits per key.

    Args:
        max_concurrent: uploads one key may be sending at once.
        max_bytes: upload bytes one key may hold at once (in progress and not yet released).
    """

    def __init__(self, max_concurrent: int, max_bytes: int) -> None:
        self.max_concurrent, self.max_bytes = int(max_concurrent), int(max_bytes)
        self._lock = threading.Lock()
        self._active: dict[str, int] = {}
        self._bytes: dict[str, int] = {}

    def begin(self, owner: str, expected: int | None = None) -> UploadTicket:
        """A ticket for a new upload of ``owner`` (``expected``: its announced size, checked up front).

        Raises:
            QuotaError: the key is sending ``max_concurrent`` uploads (429), or ``expected`` bytes do not fit (413
                alone over the limit, else 429).
        """
        with self._lock:
            if self._active.get(owner, 0) >= self.max_concurrent:
                raise QuotaError(f"this key is sending its maximum of {self.max_concurrent} uploads at once; wait "
                                 f"for one to finish")
            if expected is not None:
                self._check(owner, expected)
            self._active[owner] = self._active.get(owner, 0) + 1
        return UploadTicket(self, owner)

    def _check(self, owner: str, more: int) -> None:
        held = self._bytes.get(owner, 0)
        if more > self.max_bytes:
            raise QuotaError(f"upload over this key's limit of {self.max_bytes} bytes", 413)
        if held + more > self.max_bytes:
            raise QuotaError(f"this key holds {held} bytes of uploads; {more} more would pass its limit of "
                             f"{self.max_bytes} bytes (close sessions or wait until their uploads are decoded)")

    def _grow(self, ticket: UploadTicket, n: int) -> None:
        with self._lock:
            if ticket._released:
                raise QuotaError("the upload was released")
            if ticket.size + n > self.max_bytes:
                raise QuotaError(f"upload over this key's limit of {self.max_bytes} bytes", 413)
            self._check(ticket.owner, n)
            ticket.size += n
            self._bytes[ticket.owner] = self._bytes.get(ticket.owner, 0) + n

    def _end(self, ticket: UploadTicket, release: bool) -> None:
        with self._lock:
            if ticket._receiving:
                ticket._receiving = False
                self._active[ticket.owner] -= 1
                if not self._active[ticket.owner]:
                    del self._active[ticket.owner]
            if release and not ticket._released:
                ticket._released = True
                left = self._bytes.get(ticket.owner, 0) - ticket.size
                if left > 0:
                    self._bytes[ticket.owner] = left
                else:
                    self._bytes.pop(ticket.owner, None)

    def usage(self, owner: str) -> tuple[int, int]:
        """(uploads in progress, bytes held) of ``owner``."""
        with self._lock:
            return self._active.get(owner, 0), self._bytes.get(owner, 0)
