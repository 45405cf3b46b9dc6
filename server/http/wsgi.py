"""Serve any WSGI app with waitress: blocking for the CLI, in a background thread for tests and benches.

Waitress is a production server in pure Python (threads, no fork), so it runs the same on every
development machine and keeps one process holding the one model. It buffers each request body
(spilling to a temporary file past ``inbuf_overflow``) before the app sees it, and refuses bodies
over ``max_request_body_size`` with 413 on its own.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from waitress.server import create_server

__all__ = ["run", "start_in_thread", "ServerHandle", "DEFAULT_THREADS"]

log = logging.getLogger(__name__)

DEFAULT_THREADS = 8
_GIB = 1 << 30
# Waitress moves 8 KB per recv and 18 KB per send by default: fine for JSON, a syscall storm
# for 100 MB uploads and downloads through its event loop. 256 KB keeps per-call overhead low.
_SOCKET_CHUNK = 256 << 10


def _create(app: Callable, host: str, port: int, threads: int, max_request_body_size: int, **adjustments: Any):
    return create_server(
        app,
        host=host,
        port=port,
        threads=threads,
        max_request_body_size=max_request_body_size,
        ident="adapterhub",
        **({"recv_bytes": _SOCKET_CHUNK, "send_bytes": _SOCKET_CHUNK} | adjustments),
    )


def run(
    app: Callable,
    host: str = "127.0.0.1",
    port: int = 8000,
    threads: int = DEFAULT_THREADS,
    *,
    max_request_body_size: int = 4 * _GIB,
    ready: Callable[[str], None] | None = None,
    **adjustments: Any,
) -> None:
    """Serve ``app`` until interrupted; ``ready(url)`` is called once the socket listens."""
    server = _create(app, host, port, threads, max_request_body_size, **adjustments)
    url = f"http://{_url_host(host)}:{server.effective_port}"
    if ready is not None:
        ready(url)
    log.info("serving on %s with %d threads", url, threads)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


@dataclass
class ServerHandle:
    """A server running in a daemon thread; ``close()`` stops it and waits for the thread."""

    url: str
    port: int
    _stop: threading.Event = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve_until(server: Any, stop: threading.Event) -> None:
    """Waitress's loop in short slices, so the serving thread itself closes the sockets when told."""
    try:
        while not stop.is_set():
            server.asyncore.loop(timeout=0.05, map=server._map, use_poll=server.adj.asyncore_use_poll, count=1)
    finally:
        server.task_dispatcher.shutdown()  # workers first: they poke the loop's trigger until they end
        server.close()


def start_in_thread(
    app: Callable,
    host: str = "127.0.0.1",
    port: int = 0,
    threads: int = DEFAULT_THREADS,
    *,
    max_request_body_size: int = 4 * _GIB,
    **adjustments: Any,
) -> ServerHandle:
    """Start ``app`` on ``host:port`` (0 = a free port) in a daemon thread and return at once."""
    server = _create(app, host, port, threads, max_request_body_size, **adjustments)
    stop = threading.Event()
    thread = threading.Thread(target=_serve_until, args=(server, stop), name="waitress", daemon=True)
    thread.start()
    port = server.effective_port
    return ServerHandle(f"http://{_url_host(host)}:{port}", port, stop, thread)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
