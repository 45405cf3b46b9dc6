"""A client that stops reading its answer loses its connection after ``send_timeout_s``, as nginx's
``send_timeout`` does.

Nothing bounded how far a response could run ahead of its client: waitress buffers up to 16 MB per
connection before a writer waits (and then waits for ever), and on loopback the kernel's send
buffer grows to 4 MB on its own. So a token stream whose client never reads ran to its last token,
its rows held in the engine's batch all along (``never_read`` in bench/soak_hostile.py: four
400-token streams on a 4 KB receive buffer). Here a write waits while more than
``max_pending_bytes`` of the answer are undelivered (waitress's buffers plus the kernel's unsent
queue, ``TIOCOUTQ``); when the client takes none of it for ``send_timeout_s`` the write raises waitress's
``ClientDisconnected``: the app's iterator is closed, so a stream cancels its answers and the engine
frees their rows at its next step, and the event loop's maintenance closes the connection
(``stalled``), the unsent bytes dropped. A client that reads slowly only slows its own answer.
"""

from __future__ import annotations

import array
import sys
import time

from waitress.channel import ClientDisconnected, HTTPChannel

from adapterhub.serving_config import HTTP_DEFAULTS

__all__ = ["SendTimeoutChannel", "DEFAULT_SEND_TIMEOUT_S", "MAX_PENDING_BYTES"]

DEFAULT_SEND_TIMEOUT_S = HTTP_DEFAULTS.send_timeout_s
# How far an answer may run ahead of its client: a hundred and more token events, so a reader that
# is merely slow rarely waits, and little memory per connection.
MAX_PENDING_BYTES = 64 << 10
_POLL_S = 0.05  # how often a waiting writer looks again (a lagging client only)


def _kernel_unsent(sock: object) -> int:
    """Bytes in the socket's send queue not yet acknowledged by the peer; 0 where it cannot be asked."""
    if sys.platform != "linux":
        return 0
    import fcntl
    import termios

    out = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, out)  # type: ignore[attr-defined]
    except (OSError, ValueError):  # closed meanwhile by the event loop
        return 0
    return out[0]


class SendTimeoutChannel(HTTPChannel):
    """A waitress connection whose writers wait at most ``send_timeout_s`` for the client to read."""

    send_timeout_s = DEFAULT_SEND_TIMEOUT_S
    max_pending_bytes = MAX_PENDING_BYTES
    stalled = False  # a writer gave up on this client: the event loop closes the connection

    def pending_bytes(self) -> int:
        """What was written and has not reached the client: waitress's buffers and the kernel's."""
        return self.total_outbufs_len + _kernel_unsent(self.socket)

    def write_soon(self, data: bytes) -> int:
        if data:
            self._wait_for_reader()
        return super().write_soon(data)

    def _wait_for_reader(self) -> None:
        """Wait while too much is undelivered; the deadline moves whenever the client takes some
        (nginx's rule: the time between two reads, not the whole answer's)."""
        give_up, last = time.monotonic() + self.send_timeout_s, None
        while self.connected and (pending := self.pending_bytes()) > self.max_pending_bytes:
            now = time.monotonic()
            if last is not None and pending < last:
                give_up = now + self.send_timeout_s
            last = pending
            if now >= give_up:
                self.stalled = True
                self.server.pull_trigger()
                raise ClientDisconnected(f"the client read nothing for {self.send_timeout_s:g} s")
            time.sleep(_POLL_S)
