"""Settings of ``avmem serve`` (:class:`ServeConfig`) and API keys."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

SESSION_SETTING_KEYS = ("fps", "max_pixels", "video_tokens", "audio_tokens", "use_audio", "use_ttt", "video_policy",
                        "audio_policy", "chunk_frames", "vision_patches", "max_new_tokens", "reader", "read_tokens",
                        "read_chunk", "incremental")
"""StreamSession settings a client may choose when it creates a session (validated by ``SessionSettings.check``)."""


@dataclass
class ServeConfig:
    """What the server loads, whom it serves and what it allows.

    Attributes:
        model: model folder, hub id or preset (``avmem.model.load_model``).
        device / dtype: where and how the model runs ("auto" as in the CLI).
        host / port: where uvicorn listens (``avmem serve``).
        api_keys: accepted keys (empty: no keys; then only a loopback host may be bound).
        max_sessions: sessions held at once, all keys together.
        max_sessions_per_key: sessions one key may hold at once.
        max_upload_bytes: largest upload (multipart, raw body or ``data:`` URL) and the largest pushed message.
        max_uploads_per_key: uploads one key may send at once (more: HTTP 429).
        max_upload_bytes_per_key: upload bytes one key may hold on the server at once: uploads being received and
            uploaded files its sessions are still decoding (more: HTTP 429; one upload over it alone: 413).
        max_push_rate: WebSocket messages per second one push connection may send (a burst of one second's worth
            is allowed; more closes the connection with code 1008).
        max_frame_pixels: largest pushed frame (width * height) before it is decoded or allocated.
        snapshot_dir / snapshot_every: where sessions are saved, and every how many seconds (0: only on shutdown
            and on request).
        allow_local_files: let clients name local paths as sources (off: URLs and uploads only).
        allow_hosts: host names, addresses or networks (CIDR) a URL source may reach although they are loopback,
            private, link-local or otherwise not public.
        session_defaults: StreamSession settings for new sessions (clients override ``SESSION_SETTING_KEYS``).
        ingest_queue: media items buffered per session between its decoder and the model; a live session slower
            than real time drops the oldest (counted).
        max_new_tokens: the most answer tokens a client may ask for.
        source_timeout: seconds a URL source may stay silent.
    """

    model: str = "tiny-qwen3-vl"
    device: str = "auto"
    dtype: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: list[str] = field(default_factory=list)
    max_sessions: int = 64
    max_sessions_per_key: int = 16
    max_upload_bytes: int = 1 << 30
    max_uploads_per_key: int = 2
    max_upload_bytes_per_key: int = 4 << 30
    max_push_rate: float = 240.0
    max_frame_pixels: int = 3840 * 2160
    snapshot_dir: str | None = None
    snapshot_every: float = 300.0
    allow_local_files: bool = False
    allow_hosts: list[str] = field(default_factory=list)
    session_defaults: dict = field(default_factory=lambda: {"chunk_frames": 16})
    ingest_queue: int = 64
    max_new_tokens: int = 512
    source_timeout: float = 10.0

    def check(self) -> None:
        """Raise ValueError naming the first bad setting."""
        for name in ("max_sessions", "max_sessions_per_key", "max_upload_bytes", "max_uploads_per_key",
                     "max_upload_bytes_per_key", "max_frame_pixels", "ingest_queue",
                     "max_new_tokens"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.max_push_rate < float("inf"):
            raise ValueError(f"max_push_rate must be a finite number > 0, got {self.max_push_rate}")
        if not (isinstance(self.port, int) and 0 <= self.port <= 65535):
            raise ValueError(f"port must be in 0 .. 65535, got {self.port}")
        if self.snapshot_every < 0:
            raise ValueError(f"snapshot_every must be >= 0 seconds, got {self.snapshot_every}")
        if not 0 < self.source_timeout <= 600:
            raise ValueError(f"source_timeout must be in (0, 600] seconds, got {self.source_timeout}")
        unknown = sorted(set(self.session_defaults) - set(SESSION_SETTING_KEYS))
        if unknown:
            raise ValueError(f"session_defaults: unknown settings {unknown}")
        for host in self.allow_hosts:
            if not host or any(c in host for c in "/:") and not _is_network(host):
                raise ValueError(f"allow_hosts: {host!r} is not a host name, address or network")
        if not self.api_keys and not is_loopback_host(self.host):
            raise ValueError(f"refusing to listen on {self.host} without API keys: give --api-key-file, or listen on "
                             f"a loopback address (127.0.0.1, ::1)")


    @property
    def max_push_bytes(self) -> int:
        """Largest pushed WebSocket message: an rgb24 frame of ``max_frame_pixels`` and its header (or
        ``max_upload_bytes`` when smaller); the HTTP server refuses bigger messages before buffering them."""
        return min(self.max_upload_bytes, 3 * self.max_frame_pixels + 65536)


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
        return True
    except ValueError:
        return False


def is_loopback_host(host: str) -> bool:
    """True for "localhost" and loopback addresses (what may be bound without API keys)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_api_keys(path: str | Path) -> list[str]:
    """Keys of an API key file: one per line; blank lines and lines starting with '#' are skipped.

    Raises:
        ValueError: unreadable file, no key, a key shorter than 16 characters or with spaces.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the API key file ({type(exc).__name__})") from None
    keys = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not keys:
        raise ValueError(f"{path}: no API key in the file")
    for i, key in enumerate(keys, 1):
        if len(key) < 16 or any(c.isspace() for c in key):
            raise ValueError(f"{path}: key {i} must be at least 16 characters without spaces")
    return keys


class KeyRing:
    """API key check in constant time; a key is known to the server by a short digest (never logged)."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [k.encode() for k in keys]
        self._digests = [(k, hashlib.sha256(k).digest()) for k in self._keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def owner(self, presented: str | None) -> str | None:
        """The owner id of ``presented`` ("local" when no keys are configured), None when it is not a key.

        Every configured key is compared (hmac.compare_digest of SHA-256 digests: equal lengths, so neither which
        key matches nor the length of the presented key changes the time taken).
        """
        if not self._keys:
            return "local"
        if not presented:
            return None
        given = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        match = None
        for key, digest in self._digests:
            if hmac.compare_digest(digest, given):
                match = key
        return None if match is None else "key-" + hashlib.sha256(match).hexdigest()[:12]
