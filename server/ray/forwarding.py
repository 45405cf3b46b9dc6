"""One HTTP request carried from the Ray ingress to a replica and answered by the replica's Flask app.

The ingress and the replicas are separate processes; what crosses between them is a plain,
picklable ``ForwardedRequest`` and, back, a ``ResponseHead`` followed by the body's chunks (one per
server-sent event when the answer streams). The replica runs the very WSGI app ``adapterhub serve``
runs, so validation, errors, streaming and metrics are the same code, not a port of it. A client
that goes away is reported to the app the way waitress reports it
(``environ["waitress.client_disconnected"]``), so its queued or running answers are cancelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from werkzeug.test import EnvironBuilder

__all__ = ["ForwardedRequest", "ResponseHead", "call_app", "HOP_BY_HOP"]

# Headers that describe one connection, not the request (RFC 9110 section 7.6.1), plus the body
# framing the replica's environ recomputes from the body it is given.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "host", "content-length"})


@dataclass(frozen=True)
class ForwardedRequest:
    """What the ingress received: enough to rebuild the WSGI environ in another process."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @classmethod
    def of(cls, method: str, path: str, query: str, headers: Iterable[tuple[str, str]], body: bytes
           ) -> ForwardedRequest:
        return cls(method, path, query, tuple((k, v) for k, v in headers if k.lower() not in HOP_BY_HOP), body)


@dataclass(frozen=True)
class ResponseHead:
    """The status line and headers, sent before the body's chunks."""

    status: int
    headers: tuple[tuple[str, str], ...]


def call_app(app: Callable, forwarded: ForwardedRequest, gone: Callable[[], bool]
             ) -> tuple[ResponseHead, Iterator[bytes]]:
    """Run ``forwarded`` through the WSGI ``app``; returns the head at once and the body lazily.

    ``gone()`` turns true when the client has left; the body iterator must be closed (it is a
    generator: ``close()``), which ends a streamed answer's generation as a dropped connection does.
    """
    environ = EnvironBuilder(path=forwarded.path, method=forwarded.method, headers=list(forwarded.headers),
                             data=forwarded.body, query_string=forwarded.query).get_environ()
    environ["waitress.client_disconnected"] = gone
    head: list[ResponseHead] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> Callable:
        head[:] = [ResponseHead(int(status.split(" ", 1)[0]), tuple(headers))]
        return _no_write

    result = app(environ, start_response)
    chunks = iter(result)
    first = b"" if head else next(chunks, b"")  # a WSGI app may defer start_response to its first chunk
    return head[0], _chain(first, chunks, result)


def _no_write(data: bytes) -> None:
    raise RuntimeError("the legacy WSGI write() callable is not supported")


def _chain(first: bytes, chunks: Iterator[bytes], result: Iterable[bytes]) -> Iterator[bytes]:
    try:
        if first:
            yield first
        for chunk in chunks:
            if chunk:
                yield chunk
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
