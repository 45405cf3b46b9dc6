"""A client that half-closes after a complete request still gets its answer; one that has gone does not.

Waitress keeps reading a connection while its request runs (``channel_request_lookahead``, so the
app can notice a client that left, ``disconnect``) and treats end-of-file as the client gone: it
closes the socket, and the answer is lost. But end-of-file only says the client will send nothing
more: ``printf 'GET ...' | nc -N``, or any client that calls ``shutdown(SHUT_WR)`` once its request
is out, still reads the answer (plain waitress, which reads nothing during a request, answers it).

TCP cannot tell the two apart at end-of-file: a client that closed its socket and one that shut
only its sending side both sent a FIN. The difference shows when the server sends something: a
closed socket answers it with a reset. So end-of-file after a complete request only stops reading;
the requests already received are answered, then the connection closes. Whether the client is
still there is decided when the app asks (``environ["waitress.client_disconnected"]``, which the
disconnect watcher polls): a reset seen on the socket (``SO_ERROR``) means gone. If nothing of the
answer has been written yet, the first such question sends an interim ``100 Continue`` (HTTP/1.1
only: RFC 9110 section 15.2 has every 1.1 client accept unexpected 1xx answers and forbids them to
1.0 clients), so a departed client's reset arrives while its answer waits. An HTTP/1.0 client that
leaves before its answer starts is noticed at the answer's first write.
"""

from __future__ import annotations

import socket
import time

from waitress.channel import HTTPChannel

__all__ = ["HalfCloseChannel", "PROBE"]

PROBE = b"HTTP/1.1 100 Continue\r\n\r\n"


class HalfCloseChannel(HTTPChannel):
    """A waitress connection where end-of-file after a complete request is a half-close."""

    peer_done = False  # end-of-file arrived while requests were being answered
    answer_started = False  # some of an answer has been handed to the socket
    _probed = False
    _reset = False

    def readable(self) -> bool:
        return not self.peer_done and super().readable()

    def handle_read(self) -> None:
        try:
            data = self.socket.recv(self.adj.recv_bytes)
        except OSError:
            self.handle_close()
            return
        if data:
            self.last_activity = time.time()
            self.received(data)
            return
        with self.requests_lock:  # an answer may have been written just now, its request done
            self.peer_done = bool(self.requests) or self.total_outbufs_len > 0
            if self.peer_done and not self.requests:
                self.close_when_flushed = True
        if not self.peer_done:  # nothing complete to answer: the client has gone
            self.handle_close()

    def write_soon(self, data: bytes) -> int:
        if data:
            self.answer_started = True  # before the lock: a probe checks it holding the lock
        return super().write_soon(data)

    def service(self) -> None:
        super().service()
        if self.peer_done:
            with self.requests_lock:
                if not self.requests:
                    self.close_when_flushed = True
            self.server.pull_trigger()

    def check_client_disconnected(self) -> bool:
        """The client is gone: the connection is closed, or (after a half-close) the socket saw a reset."""
        if not self.connected:
            return True
        if not self.peer_done or self._reset:
            return self._reset
        self._probe()
        sock = self.socket  # the event loop sets it to None when it closes the channel
        try:
            self._reset = sock is None or sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0
        except OSError:  # closed meanwhile by the event loop
            self._reset = True
        return self._reset

    def _probe(self) -> None:
        """Send ``PROBE`` once, if no answer has started and the client speaks HTTP/1.1."""
        with self.outbuf_lock:
            first = next(iter(self.requests), None)
            if self._probed or self.answer_started or first is None or first.version != "1.1":
                return
            self._probed = True
            self.outbufs[-1].append(PROBE)
            self.current_outbuf_count += len(PROBE)
            self.total_outbufs_len += len(PROBE)
            try:
                self._flush_some(do_close=False)
            except OSError:
                self._reset = True
