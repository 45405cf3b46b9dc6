"""The text form of a tool call, Hermes/Qwen style: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.

One format for every use, so they cannot drift apart: the fallback prompt tells a model whose
chat template ignores ``tools`` to answer in it (``chat_prompt``), a past call in the history is
written back in it (``format_call``), the grammar that enforces ``tool_choice: "required"`` or a named function
generates exactly it (``enforcing_tag``, an xgrammar structural tag whose ``arguments`` follow the
function's ``parameters`` schema), and the answer is read back from it (``calls_in``).

The blocks carry no newlines: a JSON answer's rows are filtered of tokens holding control bytes
(``grammar_cache``), so the enforced text is one line per call, back to back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable

__all__ = ["BEGIN", "END", "MAX_PARALLEL_CALLS", "ParsedCall", "format_call", "calls_in", "enforcing_tag"]

BEGIN = "<tool_call>"
END = "</tool_call>"
# A bound on the calls of one enforced answer: past it only the end may come, so a model that
# would repeat calls (random weights do) ends its answer rather than run to max_tokens.
MAX_PARALLEL_CALLS = 16
# At most one blank between JSON tokens in an enforced call: unbounded whitespace lets a model
# pad an answer until max_tokens.
_MAX_WHITESPACE = 1


@dataclass(frozen=True)
class ParsedCall:
    """One call read from an answer: the function's name and its arguments (a JSON object)."""

    name: str
    arguments: dict[str, Any]


def format_call(name: str, arguments: dict[str, Any]) -> str:
    """One call as the model writes it (past calls in a conversation are shown to it this way)."""
    return f"{BEGIN}{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}{END}"


def calls_in(text: str, names: Iterable[str]) -> tuple[str, list[ParsedCall]] | None:
    """(the text before the first call, the calls) when ``text`` ends in one or more well-formed
    calls of functions among ``names``, separated by whitespace only; ``None`` otherwise (the
    answer is then plain content: a half-written or malformed call is not a call)."""
    start = text.find(BEGIN)
    if start < 0:
        return None
    known, calls, rest = set(names), [], text[start:]
    while rest:
        if not rest.startswith(BEGIN):
            return None
        end = rest.find(END)
        if end < 0:
            return None
        call = _call(rest[len(BEGIN):end], known)
        if call is None:
            return None
        calls.append(call)
        rest = rest[end + len(END):].lstrip()
    return text[:start], calls


def _call(body: str, known: set[str]) -> ParsedCall | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if not isinstance(value, dict) or set(value) != {"name", "arguments"}:
        return None
    name, arguments = value["name"], value["arguments"]
    if name not in known or not isinstance(arguments, dict):
        return None
    return ParsedCall(name, arguments)


def enforcing_tag(functions: dict[str, dict[str, Any]], *, parallel: bool) -> dict[str, Any]:
    """The structural tag whose text is one call (or, with ``parallel``, one to
    ``MAX_PARALLEL_CALLS``) of the functions named in ``functions`` (name → ``parameters``
    schema), each in the format above with its arguments held to the function's schema (each
    schema compiled on its own, so its ``$ref`` paths stay its own)."""
    tags = [{"type": "tag", "begin": f'{BEGIN}{{"name": {json.dumps(name)}, "arguments": ',
             "content": {"type": "json_schema", "json_schema": schema, "max_whitespace_cnt": _MAX_WHITESPACE},
             "end": f"}}{END}"} for name, schema in functions.items()]
    calls = {"type": "repeat", "min": 1, "max": MAX_PARALLEL_CALLS if parallel else 1,
             "content": {"type": "or", "elements": tags}}
    return {"type": "structural_tag", "format": calls}
