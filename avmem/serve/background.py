"""Run the avmem server in a background thread of this process (notebooks, tests, benchmarks).

``with BackgroundServer(app) as url: ...`` serves ``app`` with uvicorn on a free loopback port and stops it (the
app's lifespan included: sessions are snapshotted when a folder is set) on exit.
"""

from __future__ import annotations

import socket
import threading
import time


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class BackgroundServer:
    """uvicorn serving ``app`` on ``host:port`` in a daemon thread.

    Args:
        app: an ASGI app (``create_app(...)``).
        host: a loopback address by default.
        port: 0 picks a free port.
        log_level: uvicorn's log level.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        import uvicorn

        self.host, self.port = host, port or free_port(host)
        config = getattr(getattr(app, "state", None), "config", None)  # an avmem app: its push message limit
        ws_max_size = config.max_push_bytes if config is not None else 64 << 20
        self.server = uvicorn.Server(uvicorn.Config(app, host=self.host, port=self.port, log_level=log_level,
                                                    ws_max_size=ws_max_size, timeout_graceful_shutdown=10))
        self.thread = threading.Thread(target=self.server.run, name="avmem-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> str:
        """Start and wait until the server accepts connections; returns its URL."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.05)
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
