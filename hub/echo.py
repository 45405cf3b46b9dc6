"""Bounded echoes of client input in error messages: an error names what it refuses without
repeating a megabyte of it back (into a log, a terminal, a JSON answer)."""

from __future__ import annotations

__all__ = ["quoted"]


def quoted(text: str, limit: int = 100) -> str:
    """``text`` quoted as ``repr`` quotes it, cut to its first ``limit`` characters with
    "…(N chars)" giving the full length when it is longer."""
    text = str(text)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}…({len(text)} chars)"
