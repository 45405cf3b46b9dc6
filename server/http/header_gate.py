"""Decide from a request's headers alone how much of its body the server may read, before reading it.

Waitress reads a whole request body (spooling it to disk past a threshold) before the app sees the
request, so a check in a view comes too late: a 300 MB upload without a token was received and
spooled before its 401. A *header gate* runs in the server as soon as the headers are in and
answers with the number of body bytes the request may send (``None``: no opinion). When the answer
is smaller than the declared ``Content-Length``, or 0, the server reads none of the body: the
request reaches the app with an empty body and ``Connection: close``, and the app's own checks (the
same token and size rules, from the same headers) answer it, so one set of rules decides and
every refusal keeps the app's JSON shape. A chunked body is counted while it streams and refused
with 413 the moment it passes the limit.

Gates are attached to the WSGI app (``add_gate``); ``parser_for(app)`` gives the waitress parser
class a server's connections use. Gates run on the server's event-loop thread, so they must be
quick and must not block: header comparisons and cached lookups only.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Mapping

from waitress.parser import HTTPRequestParser
from waitress.utilities import RequestEntityTooLarge

from .framing import StrictFramingParser

__all__ = ["HeaderGate", "add_gate", "gate_of", "parser_for"]

log = logging.getLogger(__name__)

# (method, path, headers with lower-case names) -> body bytes the request may send, or None.
HeaderGate = Callable[[str, str, Mapping[str, str]], "int | None"]
_ATTR = "header_gate"


def gate_of(app: Any) -> HeaderGate | None:
    """The gate attached to a WSGI app (a wrapping middleware passes it on by the same attribute)."""
    return getattr(app, _ATTR, None)


def add_gate(app: Any, gate: HeaderGate) -> None:
    """Attach ``gate`` to ``app``; with several, the smallest limit any of them gives applies."""
    before = gate_of(app)
    if before is None:
        setattr(app, _ATTR, gate)
        return

    def both(method: str, path: str, headers: Mapping[str, str]) -> int | None:
        limits = [x for x in (before(method, path, headers), gate(method, path, headers)) if x is not None]
        return min(limits) if limits else None

    setattr(app, _ATTR, both)


class _GatedParser(StrictFramingParser):
    """The strict request parser, asking the gate once the headers are in."""

    gate: HeaderGate | None = None
    body_limit: int | None = None

    def received(self, data: bytes) -> int:
        had_headers = self.headers_finished
        consumed = super().received(data)
        if not had_headers and self.headers_finished and not self.empty and (
            self.error is None or isinstance(self.error, RequestEntityTooLarge)
        ):
            self._admit()
        elif self.body_limit is not None and self.body_bytes_received > self.body_limit and self.error is None:
            self.error = RequestEntityTooLarge(f"the body is over this route's limit of {self.body_limit} bytes")
            self.completed = True
        return consumed

    def _admit(self) -> None:
        if self.body_rcv is None or self.gate is None:
            return  # no body to hold back
        headers = {k.replace("_", "-").lower(): v for k, v in self.headers.items()}
        try:
            limit = self.gate(self.command, self.path, headers)
        except Exception:  # a gate's bug must not take the event loop down; the app still checks
            log.exception("header gate failed; reading the body as usual")
            return
        if limit is None:
            return
        if limit > 0 and (self.chunked or self.content_length <= limit):
            if self.error is None:  # else the server's own, larger limit refused it already
                self.body_limit = limit
            return
        # Refused from the headers: read none of the body; the app answers from the same headers
        # (so a request without a token gets its 401 even when it is also over the server's limit).
        self.error = None
        self.body_rcv = None
        self.completed = True
        self.expect_continue = False
        self.headers["CONNECTION"] = "close"


def parser_for(app: Any) -> type[HTTPRequestParser]:
    """The parser class for connections serving ``app``: strict framing (``framing``), gated if a
    gate is attached."""
    gate = gate_of(app)
    return StrictFramingParser if gate is None else _gated(gate)


@functools.lru_cache(maxsize=16)
def _gated(gate: HeaderGate) -> type[HTTPRequestParser]:
    return type("GatedParser", (_GatedParser,), {"gate": staticmethod(gate)})
