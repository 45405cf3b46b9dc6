"""Request framing as RFC 9112 requires it, where waitress 3.0.2 is lenient: the parser both
servers' connections use (``header_gate.parser_for`` builds on it).

A request whose length two parties could read differently is how requests are smuggled past a
proxy: the proxy frames by one header, the server by another, and the bytes left over become a
second request the proxy never saw. Waitress answers a request carrying both ``Content-Length`` and
``Transfer-Encoding`` (framing it by the latter) and keeps the connection open; it joins folded
header lines (obs-fold) into one value; and on HTTP/1.0 it ignores ``Transfer-Encoding`` and frames
by ``Content-Length``. Each is refused here with a 400 (``Connection: close``, as every waitress
refusal): RFC 9112 sections 6.1 (1.0 with ``Transfer-Encoding``), 6.3 (both headers; rejecting is
the choice that leaves no doubt about where the next request starts), 7 (``chunked`` at most once,
last) and 5.2 (obs-fold). What waitress already refuses stays refused by it: a ``Content-Length``
that is not digits (also two differing ones, which it joins as ``"5, 6"``) with 400, a transfer
coding other than ``chunked`` with 501.
"""

from __future__ import annotations

import re

from waitress.parser import HTTPRequestParser, ParsingError

__all__ = ["StrictFramingParser"]

_FOLD = re.compile(rb"\r\n[ \t]")
_FIELD_NAME = re.compile(rb"^([^:\r\n]*):", re.MULTILINE)


class StrictFramingParser(HTTPRequestParser):
    """Waitress's request parser, refusing the framings a proxy in front could read otherwise."""

    def parse_header(self, header_plus: bytes) -> None:
        if _FOLD.search(header_plus):
            raise ParsingError("a header line is folded onto the next (obs-fold), which requests may not use")
        names = [m.group(1).strip().lower() for m in _FIELD_NAME.finditer(header_plus.partition(b"\r\n")[2])]
        codings = self._transfer_codings(header_plus) if b"transfer-encoding" in names else None
        super().parse_header(header_plus)
        if codings is None:
            return
        if b"content-length" in names:
            raise ParsingError("a request may not carry both Content-Length and Transfer-Encoding")
        if self.version != "1.1":
            raise ParsingError(f"HTTP/{self.version} has no Transfer-Encoding; send a Content-Length")
        if codings.count("chunked") > 1 or (codings and codings[-1] != "chunked"):
            raise ParsingError("Transfer-Encoding must end with chunked, applied once")

    @staticmethod
    def _transfer_codings(header_plus: bytes) -> list[str]:
        values = re.findall(rb"(?im)^transfer-encoding:([^\r\n]*)", header_plus)
        return [c.strip(" \t").lower() for v in values for c in v.decode("latin-1").split(",") if c.strip(" \t")]
