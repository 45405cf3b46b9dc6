"""The ``messages`` of a chat request, checked into the conversation transformers' chat templates read.

Each message keeps only the keys OpenAI allows for its role: ``name`` on system, developer, user
and assistant turns, ``tool_calls`` on an assistant's (its ``content`` may then be null), and
``tool_call_id`` on a ``tool`` result, which must answer a call made earlier in the conversation.
Any other key with a value is a 400 naming it: the template would drop it unseen.

The result is in transformers' format: ``content`` always a string (text parts joined, a null
assistant content ``""``), an assistant's ``tool_calls`` as ``{"id", "type": "function",
"function": {"name", "arguments": {...}}}`` with the arguments as an object (what tool-aware
templates such as Qwen's write with ``tojson``), sent by the client as JSON text or as an object.
"""

from __future__ import annotations

import json
from typing import Any

from adapterhub import error_codes as codes
from adapterhub.echo import echo

from .errors import ApiError

__all__ = ["ROLES", "conversation", "conversation_chars"]

ROLES = ("system", "user", "assistant", "tool", "developer")
_KEYS = {"system": ("name",), "developer": ("name",), "user": ("name",), "assistant": ("name", "tool_calls"),
         "tool": ("tool_call_id",)}


def conversation(messages: Any) -> list[dict[str, Any]]:
    """``messages`` checked, in transformers' format (see the module's docstring)."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(codes.INVALID_TYPE, "'messages' must be a non-empty list")
    out: list[dict[str, Any]] = []
    call_ids: set[str] = set()
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(codes.INVALID_VALUE, f"messages[{i}] needs a role among {', '.join(ROLES)}")
        role = m["role"]
        for key, value in m.items():  # e.g. audio, refusal: the template would drop them unseen
            if key not in ("role", "content", *_KEYS[role]) and value not in (None, "", [], {}):
                raise ApiError(codes.UNSUPPORTED_FIELD, f"messages[{i}].{echo(key)} is not supported by this server")
        calls = _tool_calls(i, m.get("tool_calls")) if role == "assistant" else []
        turn: dict[str, Any] = {"role": role, "content": _content(i, m.get("content"), may_be_null=bool(calls))}
        if m.get("name") is not None:
            if not isinstance(m["name"], str):
                raise ApiError(codes.INVALID_TYPE, f"messages[{i}].name must be a string")
            turn["name"] = m["name"]
        if calls:
            turn["tool_calls"] = calls
            call_ids.update(c["id"] for c in calls)
        if role == "tool":
            turn["tool_call_id"] = _answered_call(i, m.get("tool_call_id"), call_ids)
        out.append(turn)
    return out


def conversation_chars(turns: list[dict[str, Any]]) -> int:
    """The characters of a conversation's text: contents and call arguments (bounded before templating)."""
    return sum(len(t["content"]) + sum(len(json.dumps(c["function"]["arguments"])) for c in t.get("tool_calls", ()))
               for t in turns)


def _content(i: int, content: Any, *, may_be_null: bool) -> str:
    if content is None and may_be_null:
        return ""
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise ApiError(codes.INVALID_VALUE, f"messages[{i}].content parts must be text parts")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise ApiError(codes.INVALID_TYPE, f"messages[{i}].content must be a string")
    return content


def _tool_calls(i: int, calls: Any) -> list[dict[str, Any]]:
    """An assistant's past calls: each an id, a function name and its arguments (an object)."""
    if calls in (None, []):
        return []
    if not isinstance(calls, list):
        raise ApiError(codes.INVALID_TYPE, f"messages[{i}].tool_calls must be a list")
    out = []
    for j, call in enumerate(calls):
        where = f"messages[{i}].tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if (not isinstance(function, dict) or call.get("type", "function") != "function"
                or not isinstance(call.get("id"), str) or not isinstance(function.get("name"), str)):
            raise ApiError(codes.INVALID_VALUE, f"{where} must be {{\"id\": ..., \"type\": \"function\", "
                                                f"\"function\": {{\"name\": ..., \"arguments\": ...}}}}")
        out.append({"id": call["id"], "type": "function",
                    "function": {"name": function["name"], "arguments": _arguments(where, function.get("arguments"))}})
    return out


def _arguments(where: str, arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            arguments = None
    if not isinstance(arguments, dict):
        raise ApiError(codes.INVALID_VALUE, f"{where}.function.arguments must be a JSON object (or its JSON text)")
    return arguments


def _answered_call(i: int, call_id: Any, made: set[str]) -> str:
    if not isinstance(call_id, str):
        raise ApiError(codes.INVALID_VALUE, f"messages[{i}] is a tool result and needs a 'tool_call_id' (a string)")
    if call_id not in made:
        raise ApiError(codes.INVALID_VALUE,
                       f"messages[{i}].tool_call_id {echo(call_id)} answers no call made earlier in the conversation")
    return call_id
