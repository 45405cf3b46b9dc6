"""Notice a client that has gone while its answer is still waiting or being generated.

A non-streamed answer writes nothing until every token is made, and a streamed one nothing while it
waits in the queue: without this, 3,200 queued answers went on decoding for a client that had left. Waitress reports a closed connection through
``environ["waitress.client_disconnected"]`` (it keeps reading the socket while the request runs,
``channel_request_lookahead`` in ``wsgi``); one thread per app polls it for every waiting request,
rather than a thread per request or a busy wait in the request's own thread, which is blocked on its
answer's events.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

__all__ = ["DisconnectWatcher", "POLL_INTERVAL_S"]

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.1


class DisconnectWatcher:
    """Calls ``on_gone`` (once) for each watched request whose ``gone()`` turns true."""

    def __init__(self, interval_s: float = POLL_INTERVAL_S) -> None:
        self._interval_s = interval_s
        self._watched: dict[int, tuple[Callable[[], bool], Callable[[], None]]] = {}
        self._next = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    @contextmanager
    def watch(self, gone: Callable[[], bool] | None, on_gone: Callable[[], None]) -> Iterator[None]:
        """Watch for the block's duration; ``gone=None`` (no waitress, e.g. Flask's test client) watches nothing."""
        if gone is None:
            yield
            return
        with self._cond:
            key = self._next
            self._next += 1
            self._watched[key] = (gone, on_gone)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="disconnect-watcher", daemon=True)
                self._thread.start()
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._watched.pop(key, None)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._watched:
                    self._cond.wait()
                watched = list(self._watched.items())
            for key, (gone, on_gone) in watched:
                try:
                    left = gone()
                except Exception:  # one connection's check must never stop the watch over the others
                    log.exception("disconnect check failed; treating the client as gone")
                    left = True
                if left:
                    with self._cond:
                        self._watched.pop(key, None)
                    try:
                        on_gone()
                    except Exception:
                        log.exception("cancelling a gone client's work failed")
            with self._cond:
                self._cond.wait(self._interval_s)
