"""Client input quoted in an error message, bounded: ``echo(value)``.

An error that repeats what a client sent grows with it: a 15 MB ``model`` string came back three
times in one 404 (the picker, the reference parser and the name check each quoted it), a 47 MB
answer built in memory for a request that could never succeed. Every message that quotes a
client's string (a model name, an adapter reference, a tag, a field name, a metric key, a repo
id, a path) quotes it through this helper, so an answer's size no longer depends on the request.
"""

from __future__ import annotations

__all__ = ["echo", "ECHO_CHARS"]

ECHO_CHARS = 200  # a valid name (at most 128 characters) or org/name shows whole; any input stays small


def echo(value: object, limit: int = ECHO_CHARS) -> str:
    """``value`` quoted as ``repr`` quotes a string; past ``limit`` characters, its first ``limit``
    followed by ``…(N chars)``. A value that is not a string is shown by its ``repr``, bounded alike."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return repr(text) if isinstance(value, str) else text
    return f"{text[:limit]!r}…({len(text)} chars)"
