"""The egress proxy: every HTTP(S) connection FFmpeg makes for a client's URL passes through it and is checked.

FFmpeg's http protocol is given ``http_proxy=http://TAG@127.0.0.1:PORT`` for every http / https / HLS source the
server opens. Plain http arrives as an absolute-URI ``GET`` / ``HEAD``; https as a ``CONNECT host:port`` tunnel
(TLS runs end to end through it). For each request the proxy resolves the destination host **once**
(:func:`avmem.serve.policy.check_host`: every address must pass the server's address policy, ``--allow-hosts``
honoured) and connects to one of the addresses it checked, so a name cannot resolve to another address between
the check and the connection (DNS rebinding). Redirects and HLS segment requests are new requests through the
proxy and are checked the same way. A refused request gets ``403``; the reason is kept per tag (one tag per
session, sent by FFmpeg as proxy credentials after a ``407`` challenge) so the session's error can name it.

Bounds: at most ``max_connections`` client connections at once (more: ``503``), ``connect_timeout`` for the
upstream connection, ``idle_timeout`` for a connection without traffic in either direction, a request head of
at most 16 KiB, and data relayed in 64 KiB pieces (nothing else is buffered).
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
import select
import socket
import threading
import time
from collections import OrderedDict
from urllib.parse import urlsplit

from .config import ServeConfig
from .policy import PolicyError, check_host

log = logging.getLogger("avmem.serve")
HEAD_LIMIT = 16 * 1024
PIECE = 64 * 1024
_HOP_HEADERS = {"proxy-authorization", "proxy-connection", "connection", "keep-alive", "te", "trailer", "upgrade",
                "transfer-encoding", "proxy-authenticate"}


class _Refuse(Exception):
    """An HTTP error answer to the proxy's client."""

    def __init__(self, code: int, reason: str, message: str, headers: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.headers = code, reason, message, headers


class EgressProxy:
    """An HTTP proxy on 127.0.0.1 (ephemeral port) that lets FFmpeg reach only what the source policy allows.

    Args:
        config: the server's settings (``allow_hosts`` is read on every request).
        max_connections: client connections served at once.
        connect_timeout: seconds to connect to the destination.
        idle_timeout: seconds a connection may pass without data in either direction.
    """

    def __init__(self, config: ServeConfig, *, max_connections: int = 64, connect_timeout: float = 10.0,
                 idle_timeout: float = 60.0) -> None:
        if max_connections < 1 or connect_timeout <= 0 or idle_timeout <= 0:
            raise ValueError("max_connections must be >= 1 and the timeouts > 0")
        self.config = config
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._tags: OrderedDict[str, str | None] = OrderedDict()  # tag -> last refusal (None: none yet)
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.allowed = 0
        self.refused = 0
        self.busy = 0

    # lifecycle ------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("the egress proxy is not running")
        return self._listener.getsockname()[1]

    @property
    def running(self) -> bool:
        return self._listener is not None

    def start(self) -> None:
        """Listen on 127.0.0.1 (an ephemeral port) and serve in background threads."""
        with self._lock:
            if self._listener is not None:
                return
            if os.environ.get("no_proxy"):
                # FFmpeg skips the proxy for hosts named in $no_proxy: every source must go through the checks
                log.warning("avmem serve: ignoring no_proxy=%s for media sources (they go through the egress proxy)",
                            os.environ["no_proxy"])
                os.environ.pop("no_proxy")
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind(("127.0.0.1", 0))
            listener.listen(128)
            self._listener = listener
            self._thread = threading.Thread(target=self._accept, args=(listener,), name="avmem-egress", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop listening and close every open connection."""
        with self._lock:
            listener, self._listener = self._listener, None
            sockets = list(self._open)
        if listener is None:
            return
        try:
            listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        listener.close()
        for s in sockets:
            _close(s)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # tags -----------------------------------------------------------------------------------------------

    def options(self, tag: str) -> dict[str, str]:
        """FFmpeg options that send an http / https / HLS input through the proxy under ``tag`` (a session id)."""
        if not tag or not all(c.isalnum() or c in "-_" for c in tag):
            raise ValueError("a proxy tag is letters, digits, '-' and '_'")
        with self._lock:
            self._tags[tag] = None
            self._tags.move_to_end(tag)
            while len(self._tags) > 4096:  # forgotten tags of long-gone sessions
                self._tags.popitem(last=False)
        return {"http_proxy": f"http://{tag}:x@127.0.0.1:{self.port}"}  # Basic needs user:password

    def counters(self) -> dict[str, int]:
        """Requests let through (``allowed``), refused by the policy (``refused``), turned away at the connection
        limit (``busy``), since the proxy was made (read together under the lock)."""
        with self._lock:
            return {"allowed": self.allowed, "refused": self.refused, "busy": self.busy}

    def refusal(self, tag: str) -> str | None:
        """The last request of ``tag`` the proxy refused, in one line (None: none)."""
        with self._lock:
            return self._tags.get(tag)

    def forget(self, tag: str) -> None:
        """Stop accepting requests under ``tag`` (its session is gone)."""
        with self._lock:
            self._tags.pop(tag, None)

    # serving --------------------------------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by stop()
            if not self._slots.acquire(blocking=False):
                with self._lock:
                    self.busy += 1
                client.settimeout(1.0)
                _answer(client, _Refuse(503, "Service Unavailable", "the egress proxy is at its connection limit"))
                _close(client)
                continue
            with self._lock:
                self._open.add(client)
            threading.Thread(target=self._serve, args=(client,), name="avmem-egress-conn", daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        try:
            client.settimeout(self.idle_timeout)
            head, rest = _read_head(client)
            method, target, headers = _parse(head)
            tag = self._tag(headers)
            if method == "CONNECT":
                host, port = _authority(target)
                path = None
            elif method in ("GET", "HEAD"):
                parts = urlsplit(target)
                try:
                    port = parts.port or 80
                except ValueError:
                    raise _Refuse(400, "Bad Request", f"bad port in {target[:200]}") from None
                if parts.scheme.lower() != "http" or not parts.hostname:
                    raise _Refuse(400, "Bad Request", "a proxy request names an absolute http:// URL")
                host = parts.hostname
                path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                if any(k.lower() == "content-length" and v.strip() not in ("", "0") for k, v in headers):
                    raise _Refuse(400, "Bad Request", "request bodies are not relayed")
            else:
                raise _Refuse(405, "Method Not Allowed", f"method {method} is not relayed (GET, HEAD, CONNECT only)")
            try:
                addresses = check_host(host, port, self.config)
            except PolicyError as exc:
                reason = f"{host}:{port}: {exc}"
                with self._lock:
                    if tag in self._tags:
                        self._tags[tag] = reason
                    self.refused += 1
                log.warning("avmem serve: egress refused %s", reason)
                raise _Refuse(403, "Forbidden", reason) from None
            upstream = self._connect(host, addresses, port)
            with self._lock:
                if self._listener is None:
                    return  # stopped meanwhile
                self._open.add(upstream)
                self.allowed += 1
            if method == "CONNECT":
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                kept = "".join(f"{k}: {v}\r\n" for k, v in headers if k.lower() not in _HOP_HEADERS)
                upstream.sendall(f"{method} {path} HTTP/1.1\r\n{kept}Connection: close\r\n\r\n".encode("latin-1"))
            if rest:
                upstream.sendall(rest)
            self._relay(client, upstream)
        except _Refuse as exc:
            _answer(client, exc)
        except (OSError, ValueError):
            pass  # a client or destination that went away mid-request: nothing to answer
        finally:
            with self._lock:
                self._open.discard(client)
                if upstream is not None:
                    self._open.discard(upstream)
            _close(client)
            if upstream is not None:
                _close(upstream)
            self._slots.release()

    def _tag(self, headers: list[tuple[str, str]]) -> str:
        """The session tag of the request's proxy credentials (``407`` asks FFmpeg for them)."""
        for key, value in headers:
            if key.lower() == "proxy-authorization":
                scheme, _, token = value.strip().partition(" ")
                if scheme.lower() == "basic":
                    try:
                        user = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")[0]
                    except (binascii.Error, UnicodeDecodeError):
                        break
                    with self._lock:
                        if user in self._tags:
                            return user
                break
        raise _Refuse(407, "Proxy Authentication Required", "proxy credentials of a session are required",
                      ('Proxy-Authenticate: Basic realm="avmem-egress"',))

    def _connect(self, host: str, addresses: list, port: int) -> socket.socket:
        """A connection to the first reachable of the checked ``addresses`` (never the name again)."""
        deadline = time.monotonic() + self.connect_timeout
        last: OSError | None = None
        for address in addresses:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                sock = socket.create_connection((str(address), port), timeout=left)
            except OSError as exc:
                last = exc
                continue
            sock.settimeout(self.idle_timeout)
            return sock
        raise _Refuse(502, "Bad Gateway", f"{host}:{port}: cannot connect ({last or 'timed out'})")

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        """Copy bytes both ways, one piece at a time, until both sides have closed (a side's end is passed on to
        the other as a half-close) or nothing moves for ``idle_timeout`` seconds."""
        peers = {client: upstream, upstream: client}
        reading = [client, upstream]
        while reading and self._listener is not None:
            readable, _, _ = select.select(reading, [], [], self.idle_timeout)
            if not readable:
                return
            for sock in readable:
                data = sock.recv(PIECE)
                if data:
                    peers[sock].sendall(data)
                    continue
                reading.remove(sock)
                try:
                    peers[sock].shutdown(socket.SHUT_WR)
                except OSError:
                    return


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """(request head, bytes after it) read from ``sock``; at most :data:`HEAD_LIMIT` bytes of head."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > HEAD_LIMIT:
            raise _Refuse(431, "Request Header Fields Too Large", "the request head is over 16 KiB")
        piece = sock.recv(4096)
        if not piece:
            raise ValueError("the client closed the connection")
        data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    if len(head) > HEAD_LIMIT:
        raise _Refuse(431, "Request Header Fields Too Large", "the request head is over 16 KiB")
    return head, rest


def _parse(head: bytes) -> tuple[str, str, list[tuple[str, str]]]:
    """(method, target, headers) of a request head."""
    lines = head.decode("latin-1").split("\r\n")
    words = lines[0].split(" ")
    if len(words) != 3 or not words[2].startswith("HTTP/1."):
        raise _Refuse(400, "Bad Request", "malformed request line")
    headers = []
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if not sep or not key or key != key.strip():
            raise _Refuse(400, "Bad Request", "malformed header line")
        headers.append((key, value.strip()))
    return words[0].upper(), words[1], headers


def _authority(target: str) -> tuple[str, int]:
    """(host, port) of a CONNECT target ``host:port`` or ``[v6]:port``."""
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise _Refuse(400, "Bad Request", "CONNECT needs host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _answer(sock: socket.socket, refusal: _Refuse) -> None:
    body = (refusal.message + "\n").encode("utf-8", "replace")
    extra = "".join(f"{h}\r\n" for h in refusal.headers)
    try:
        sock.sendall(f"HTTP/1.1 {refusal.code} {refusal.reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                     f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n".encode("latin-1") + body)
    except OSError:
        pass


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def new_tag() -> str:
    """A random proxy tag."""
    return secrets.token_urlsafe(12)
