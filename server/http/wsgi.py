"""Serve any WSGI app with waitress: blocking for the CLI, in a background thread for tests and benches.

Waitress is a production server in pure Python (threads, no fork), so it runs the same on every
development machine and keeps one process holding the one model. Its design already suits hostile
clients better than a thread-per-connection server: connections live in one event loop and a worker
thread is taken only once a whole request (headers and body) has arrived, so idle and slow clients
cost a file descriptor, never a thread. What starves real clients under its defaults is the
connection limit (100) and ``select``'s 1024-descriptor ceiling, so this module raises the limit to
what the process may open, polls with ``poll``, closes idle connections sooner, and adds what
waitress lacks: a deadline for receiving a request (headers within ``REQUEST_HEADER_TIMEOUT_S``,
the body at no less than ``MIN_BODY_BYTES_PER_S`` after that), so a client trickling bytes cannot
hold a connection for ever. Connections parse requests with the app's header gate
(``header_gate``), so a route can refuse a body from its headers before a byte of it is read. Its
own errors (a body over ``max_request_body_size``, a malformed
request) leave as the JSON error shape every other answer uses, and bodies over the limit are
refused from their ``Content-Length`` before they are read.

Memory: glibc's allocator keeps what a large request freed. Its mmap threshold rises to the size
of the last large block freed, so the next ones come from heaps it rarely returns (each refused
10 MB prompt left 10 MB behind), and every worker thread may get an arena of its own, whose heaps
held 20 MB more per refused request as requests moved between threads. So the server caps the
arenas its threads may create (``M_ARENA_MAX``, as ``MALLOC_ARENA_MAX`` would) and, after a request
whose body was large, asks the allocator to give free memory back (``malloc_trim``: a few
milliseconds, only then). Elsewhere than glibc both are no-ops.

``channel_request_lookahead=1`` keeps reading a connection while its request runs, so the app can
see a client that has gone (``environ["waitress.client_disconnected"]``) and stop generating for it;
end-of-file after a complete request is a half-close, not a departure (``half_close``); a client
that stops reading its answer is dropped after ``send_timeout_s`` (``send_timeout``). Requests are
framed strictly (``framing``), and the worker threads are waitress's own with ``/health`` beside
them and a bound on the requests waiting for one (``dispatcher``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import resource
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from waitress.adjustments import Adjustments
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask

from adapterhub import error_codes as codes
from adapterhub.serving_config import HTTP_DEFAULTS

from .dispatcher import DEFAULT_MAX_WAITING, WorkerDispatcher
from .half_close import HalfCloseChannel
from .header_gate import parser_for
from .lingering_close import LingeringCloseChannel
from .send_timeout import DEFAULT_SEND_TIMEOUT_S, SendTimeoutChannel

__all__ = ["run", "start_in_thread", "ServerHandle", "DEFAULT_THREADS", "CONNECTION_LIMIT", "CHANNEL_TIMEOUT_S",
           "REQUEST_HEADER_TIMEOUT_S", "MIN_BODY_BYTES_PER_S"]

log = logging.getLogger(__name__)

DEFAULT_THREADS = 8
_GIB = 1 << 30
# Waitress moves 8 KB per recv and 18 KB per send by default: fine for JSON, a syscall storm
# for 100 MB uploads and downloads through its event loop. 256 KB keeps per-call overhead low.
_SOCKET_CHUNK = 256 << 10
CONNECTION_LIMIT = 4096  # capped by the process's descriptor limit (see _connection_limit)
CHANNEL_TIMEOUT_S = 30  # an idle keep-alive connection is closed after this long
CLEANUP_INTERVAL_S = 2  # how often idle and overdue connections are looked for
REQUEST_HEADER_TIMEOUT_S = 30  # from a request's first byte to its last header line
MIN_BODY_BYTES_PER_S = 64 << 10  # after the headers, the body gets this rate (plus the header timeout)
_SPARE_DESCRIPTORS = 256  # kept for files, the model, the registry and waitress's own trigger
TRIM_AFTER_BODY_BYTES = 1 << 20  # a request body this large is followed by malloc_trim
MALLOC_ARENAS = 2  # arenas the HTTP threads share (glibc's default allows 8 per core)
_M_ARENA_MAX = -8  # mallopt parameter number, from glibc's malloc.h


def _connection_limit(wanted: int) -> int:
    """``wanted``, raising the soft descriptor limit toward the hard one if needed, never above it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + _SPARE_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return wanted if soft == resource.RLIM_INFINITY else max(1, min(wanted, soft - _SPARE_DESCRIPTORS))


def _glibc_function(name: str, argtypes: list[Any]) -> Callable[..., int] | None:
    """A function of glibc's allocator, or ``None`` where the C library has none (macOS, musl)."""
    try:
        fn = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = argtypes, ctypes.c_int
    return fn


def _malloc_trim() -> Callable[[], None]:
    trim = _glibc_function("malloc_trim", [ctypes.c_size_t])
    return (lambda: None) if trim is None else (lambda: trim(0))


def _cap_malloc_arenas() -> None:
    """Before the worker threads start: they share ``MALLOC_ARENAS`` arenas (unless the
    environment already chose, with ``MALLOC_ARENA_MAX``)."""
    mallopt = _glibc_function("mallopt", [ctypes.c_int, ctypes.c_int])
    if mallopt is not None and "MALLOC_ARENA_MAX" not in os.environ:
        mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


class _TrimAfterLargeBodies:
    """WSGI wrapper: once the app has answered a request with a large body (and dropped it), hand
    the memory it freed back to the system."""

    def __init__(self, app: Callable) -> None:
        self.app = app
        self._trim = _malloc_trim()

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Any:
        try:
            return self.app(environ, start_response)
        finally:
            try:
                large = int(environ.get("CONTENT_LENGTH") or 0) >= TRIM_AFTER_BODY_BYTES
            except ValueError:
                large = False
            if large:
                self._trim()


class _JsonErrorTask(ErrorTask):
    """Waitress's own refusals (413 body too large, 400 malformed, 431 headers too large, 429 server
    busy) in the ``{"error": {...}}`` shape the app answers with, instead of a plain-text page: the
    row of the error table its reason names, or the one its class names (``dispatcher.ServerBusy``),
    with the headers the class adds."""

    def execute(self) -> None:
        e = self.request.error
        row = getattr(e, "row", None) or codes.http_error_row(e.reason.lower().replace(" ", "_"), e.code)
        body = json.dumps({"error": {"message": f"{e.reason}: {e.body}", "type": row.type, "code": row.code}}).encode()
        self.status = f"{row.http_status} {e.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.response_headers.extend(getattr(e, "headers", ()))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _Channel(LingeringCloseChannel, SendTimeoutChannel, HalfCloseChannel):
    """One connection; remembers when its request in progress began, for the receive deadline, gives
    up on a client that stops reading (``send_timeout``), and closes so that its client can read the
    answer (``lingering_close``)."""

    error_task_class = _JsonErrorTask
    request_started = 0.0

    def received(self, data: bytes) -> bool:
        if self.request is None and data:
            self.request_started = time.time()
        return super().received(data)

    def overdue(self, now: float) -> bool:
        """Still receiving a request it should have finished sending (never while one is answered)."""
        partial = self.request
        if partial is None or self.requests:
            return False
        allowed = REQUEST_HEADER_TIMEOUT_S
        if partial.headers_finished:
            # A chunked body has no declared size: the route's own limit bounds it where the header
            # gate set one (1 MiB for a JSON write), not the server-wide limit (hours at the floor rate).
            limit = getattr(partial, "body_limit", None) or self.adj.max_request_body_size
            size = limit if partial.chunked else partial.content_length
            allowed += size / MIN_BODY_BYTES_PER_S
        return now - self.request_started > allowed


class _Server(TcpWSGIServer):
    channel_class = _Channel

    def maintenance(self, now: float) -> None:
        super().maintenance(now)
        for channel in list(self.active_channels.values()):
            if isinstance(channel, _Channel) and channel.linger_over(now):
                channel.close_now()
            elif isinstance(channel, _Channel) and channel.stalled:
                channel.handle_close()  # its client reads nothing: the unsent answer is dropped
            elif isinstance(channel, _Channel) and channel.overdue(now):
                channel.will_close = True


def _create(app: Callable, host: str, port: int, threads: int, max_request_body_size: int, stream_tokens: bool,
            max_waiting_requests: int, send_timeout_s: float, **adjustments: Any) -> _Server:
    if send_timeout_s <= 0:
        raise ValueError("send_timeout_s must be positive")
    settings = {
        "recv_bytes": _SOCKET_CHUNK,
        # Token streaming hands every server-sent event to the socket at once: waitress's own default
        # (``send_bytes`` 1, an adjustment it deprecates, so left unset); the hub gathers 256 KB.
        **({} if stream_tokens else {"send_bytes": _SOCKET_CHUNK}),
        "connection_limit": _connection_limit(CONNECTION_LIMIT),
        "channel_timeout": CHANNEL_TIMEOUT_S,
        "cleanup_interval": CLEANUP_INTERVAL_S,
        "asyncore_use_poll": True,
        "channel_request_lookahead": 1,
    } | adjustments
    adj = Adjustments(host=host, port=port, threads=threads, ident="adapterhub",
                      # waitress refuses a body of exactly its limit: allow the limit itself
                      max_request_body_size=max_request_body_size + 1, **settings)
    _cap_malloc_arenas()
    dispatcher = WorkerDispatcher(max_waiting_requests)
    dispatcher.set_thread_count(threads)
    server = _Server(_TrimAfterLargeBodies(app), map={}, adj=adj, dispatcher=dispatcher)
    # Connections parse with the app's header gate, if it has one (one class per server).
    server.channel_class = type("Channel", (_Channel,), {"parser_class": parser_for(app),
                                                         "send_timeout_s": send_timeout_s})
    return server


def run(
    app: Callable,
    host: str,
    port: int,
    threads: int = DEFAULT_THREADS,
    *,
    max_request_body_size: int = 4 * _GIB,
    stream_tokens: bool = False,
    max_waiting_requests: int = DEFAULT_MAX_WAITING,
    send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S,
    ready: Callable[[str], None] | None = None,
    **adjustments: Any,
) -> None:
    """Serve ``app`` until interrupted; ``ready(url)`` is called once the socket listens.

    ``stream_tokens`` sends each write of a response at once (server-sent events, token by token)
    instead of gathering 256 KB; ``max_waiting_requests`` bounds the requests waiting for a worker
    thread (``dispatcher``); ``send_timeout_s`` is how long a write waits for a client that reads
    nothing before its connection is dropped (``send_timeout``); other waitress ``adjustments``
    override the defaults above.
    """
    server = _create(app, host, port, threads, max_request_body_size, stream_tokens, max_waiting_requests,
                     send_timeout_s, **adjustments)
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
    host: str = HTTP_DEFAULTS.host,
    port: int = 0,
    threads: int = DEFAULT_THREADS,
    *,
    max_request_body_size: int = 4 * _GIB,
    stream_tokens: bool = False,
    max_waiting_requests: int = DEFAULT_MAX_WAITING,
    send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S,
    **adjustments: Any,
) -> ServerHandle:
    """Start ``app`` on ``host:port`` (0 = a free port) in a daemon thread and return at once."""
    server = _create(app, host, port, threads, max_request_body_size, stream_tokens, max_waiting_requests,
                     send_timeout_s, **adjustments)
    stop = threading.Event()
    thread = threading.Thread(target=_serve_until, args=(server, stop), name="waitress", daemon=True)
    thread.start()
    port = server.effective_port
    return ServerHandle(f"http://{_url_host(host)}:{port}", port, stop, thread)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
