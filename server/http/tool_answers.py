"""A generated answer read for tool calls: ``message.tool_calls`` and OpenAI's streamed ``delta.tool_calls``.

An answer that ends in well-formed calls of the offered functions (``tool_call_format.calls_in``)
becomes ``tool_calls`` (``{"id": "call_…", "type": "function", "function": {"name", "arguments":
"<JSON text>"}}``) with finish reason ``tool_calls``; the text before the first call is the
content (``null`` when there is none). Anything else (no call, a malformed or half-written one,
an unknown function) stays plain content with the engine's finish reason. With
``parallel_tool_calls: false`` only the first call is returned.

Streamed, content goes out as it is generated except the text from ``<tool_call>`` on (and a
tail that may be the start of one), which is held until the answer ends: then it is either the
calls, sent in one delta, or content after all. The deltas therefore reassemble to exactly the
non-streamed message.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

from .tool_call_format import BEGIN, ParsedCall, calls_in

if TYPE_CHECKING:
    from .tool_fields import ToolRequest

__all__ = ["answer_message", "ToolCallStream"]


def _calls(text: str, tools: ToolRequest) -> tuple[str, list[ParsedCall]] | None:
    found = calls_in(text, tools.names)
    if found is None:
        return None
    before, calls = found
    return before, calls if tools.parallel else calls[:1]


def _wire(calls: list[ParsedCall], *, indexed: bool) -> list[dict[str, Any]]:
    """The calls as OpenAI sends them (with ``index`` in a streamed delta)."""
    return [{**({"index": k} if indexed else {}), "id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}}
            for k, c in enumerate(calls)]


def answer_message(text: str, finish_reason: str | None,
                   tools: ToolRequest | None) -> tuple[dict[str, Any], str | None]:
    """(the assistant ``message``, the finish reason) of a finished answer."""
    found = _calls(text, tools) if tools is not None and tools.offered else None
    if found is None:
        return {"role": "assistant", "content": text}, finish_reason
    before, calls = found
    return {"role": "assistant", "content": before or None, "tool_calls": _wire(calls, indexed=False)}, "tool_calls"


class ToolCallStream:
    """One streamed answer's deltas: ``step`` with each piece of text as it comes."""

    def __init__(self, tools: ToolRequest) -> None:
        self._tools = tools
        self._text = ""
        self._sent = 0  # characters of ``_text`` already sent as content
        self._call_start: int | None = None  # where a call began: nothing past it is sent until the end

    def step(self, piece: str, last: bool) -> tuple[dict[str, Any], bool]:
        """The delta to send now that ``piece`` joined the answer (``last``: the answer ended with
        it), and whether it holds the calls."""
        self._text += piece
        content = self._send(self._sendable())
        found = _calls(self._text, self._tools) if last else None
        if last and found is None:
            content += self._send(len(self._text))
        delta: dict[str, Any] = {"content": content} if content else {}
        if found is None:
            return delta, False
        return {**delta, "tool_calls": _wire(found[1], indexed=True)}, True

    def _sendable(self) -> int:
        """Where the content that may go out now ends: before a call, or before what may begin one."""
        if self._call_start is None:
            start = self._text.find(BEGIN, self._sent)
            if start < 0:
                return len(self._text) - _partial_marker(self._text)
            self._call_start = start
        return self._call_start

    def _send(self, upto: int) -> str:
        out, self._sent = self._text[self._sent:upto], max(self._sent, upto)
        return out


def _partial_marker(text: str) -> int:
    """How many characters at the end of ``text`` could begin ``<tool_call>``."""
    for k in range(min(len(BEGIN) - 1, len(text)), 0, -1):
        if text.endswith(BEGIN[:k]):
            return k
    return 0
