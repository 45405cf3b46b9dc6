"""Waitress's worker threads, with health answered beside them and a bound on the requests waiting.

Each open stream holds one of waitress's worker threads (``--threads``) for as long as it streams,
and a request that finds them all busy waits in waitress's task queue, which has no bound: with 8
threads and 8 live streams, ``/health`` took 13.5 s, and a flood of requests waits there without
limit (the engine's ``--max-queued-requests`` only counts requests that reached it). So:

* ``/health``, ``/metrics`` and the server's own refusals (a malformed request, a body too large,
  and the one below) run on ``CONTROL_THREADS`` threads of their own, which never run the app's
  other routes, so they are answered while every worker streams;
* at most ``max_waiting`` requests wait for a worker; the next is answered at once with 429
  ``server_busy`` and ``Retry-After`` (on a control thread), instead of waiting behind the others.

The dispatcher picks per request, from the first request a connection has ready (waitress hands
it a connection, whose next request it serves).
"""

from __future__ import annotations

from typing import Any

from waitress.task import ThreadedTaskDispatcher
from waitress.utilities import Error

from adapterhub import error_codes as codes
from adapterhub.serving_config import HTTP_DEFAULTS

__all__ = ["WorkerDispatcher", "ServerBusy", "CONTROL_PATHS", "CONTROL_THREADS", "DEFAULT_MAX_WAITING"]

CONTROL_PATHS = frozenset({"/health", "/metrics"})
CONTROL_THREADS = 2
# requests waiting for a worker thread beyond those it runs
DEFAULT_MAX_WAITING = HTTP_DEFAULTS.max_waiting_http_requests
RETRY_AFTER_S = 1


class ServerBusy(Error):
    """Waitress's error shape for the refusal: ``_JsonErrorTask`` (``wsgi``) answers with its ``row``
    of the error table and its headers."""

    row = codes.SERVER_BUSY
    code = row.http_status
    reason = "Too Many Requests"
    headers = (("Retry-After", str(RETRY_AFTER_S)),)


class WorkerDispatcher(ThreadedTaskDispatcher):
    """Waitress's thread pool for the app, a small pool for control requests, and the waiting bound."""

    def __init__(self, max_waiting: int = DEFAULT_MAX_WAITING) -> None:
        if max_waiting < 0:
            raise ValueError("max_waiting must be 0 or more")
        super().__init__()
        self.max_waiting = max_waiting
        self.control = ThreadedTaskDispatcher()

    def set_thread_count(self, count: int) -> None:
        self.control.set_thread_count(CONTROL_THREADS if count else 0)
        super().set_thread_count(count)

    def add_task(self, task: Any) -> None:
        """``task`` is a channel whose first request is to be served (its requests lock is held)."""
        request = next(iter(getattr(task, "requests", ())), None)
        if request is None:
            super().add_task(task)
            return
        if request.error is None and request.path not in CONTROL_PATHS:
            with self.lock:
                idle = len(self.threads) - self.stop_count - self.active_count
                if len(self.queue) - idle < self.max_waiting:
                    self.queue.append(task)
                    self.queue_cv.notify()
                    return
            request.error = ServerBusy(f"more than {self.max_waiting} requests are waiting for this server's "
                                       f"{len(self.threads)} worker threads; retry shortly")
        self.control.add_task(task)

    def waiting(self) -> int:
        """Requests queued for a worker thread that none has taken yet."""
        with self.lock:
            return max(0, len(self.queue) - (len(self.threads) - self.stop_count - self.active_count))

    def shutdown(self, cancel_pending: bool = True, timeout: float = 5) -> bool:
        self.control.shutdown(cancel_pending, timeout)
        return super().shutdown(cancel_pending, timeout)
