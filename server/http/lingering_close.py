"""Close a connection so its client can read the answer: stop sending, drain what it still sends.

A request refused from its headers (a body over the route's limit, a write without a token) is
answered before its body is read, with ``Connection: close``. Closing the socket then, with the
client's body still arriving, makes the kernel answer with a reset; a reset discards what the
client had not read yet, so the client sees "connection reset" or "broken pipe" instead of its 413
(a 1 MB metrics upload did, in the soak). RFC 9112 section 9.6 names the remedy: close in stages.
Once the answer is out, the server shuts its sending side (the client reads the answer, then end of
file), keeps reading and discarding what the client sends, and closes when the client does, after
``LINGER_BYTES`` discarded, or ``LINGER_S`` after the answer (the server's maintenance pass),
whichever comes first: nginx's lingering close, with bounds that keep a hostile client from holding
the connection or the CPU.
"""

from __future__ import annotations

import socket
import time

from waitress.channel import HTTPChannel

__all__ = ["LingeringCloseChannel", "LINGER_BYTES", "LINGER_S"]

LINGER_S = 5.0  # nginx's lingering_timeout
LINGER_BYTES = 64 * 1024 * 1024  # discarded at most, about 30 ms of one core on loopback


class LingeringCloseChannel(HTTPChannel):
    """A waitress connection whose server-side close, once the answer is sent, is a lingering one."""

    lingering_since: float | None = None
    _discarded = 0
    _closing = False  # close at once: a linger is over, or never to start

    def handle_close(self) -> None:
        if not self._closing and self.lingering_since is None and self.connected and not self.total_outbufs_len:
            try:
                self.socket.shutdown(socket.SHUT_WR)
            except OSError:  # the client has gone already
                pass
            else:
                self.lingering_since = time.time()
                self.will_close = self.close_when_flushed = False
                return
        self._closing = True
        super().handle_close()

    def linger_over(self, now: float) -> bool:
        """Lingering for longer than ``LINGER_S``: the server's maintenance pass closes it."""
        return self._lingering and now - self.lingering_since > LINGER_S

    def close_now(self) -> None:
        """Close at once, lingering or not."""
        self._closing = True
        self.handle_close()

    def readable(self) -> bool:
        return self._lingering or super().readable()

    def writable(self) -> bool:
        return not self._lingering and super().writable()

    @property
    def _lingering(self) -> bool:
        return self.lingering_since is not None and not self._closing

    def handle_read(self) -> None:
        if not self._lingering:
            super().handle_read()
            return
        try:
            data = self.socket.recv(self.adj.recv_bytes)
        except OSError:
            data = b""
        self._discarded += len(data)
        if not data or self._discarded >= LINGER_BYTES:
            self.close_now()
