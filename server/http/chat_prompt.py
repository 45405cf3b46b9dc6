"""A chat request's prompt text: the conversation (and the tools it offers) through the base's chat template.

A template that renders tools (Qwen's, Hermes', Llama 3.1's: ``tools`` is a variable transformers
passes it) gets the definitions and the conversation as they are, past calls and tool results
included, and writes them in the model's own format. Whether it does is read once per tokenizer:
a one-message conversation rendered with and without a probe tool comes out the same when the
template ignores ``tools``.

For a template that ignores them (the tiny base's, SmolLM2's) the fallback is text the template
cannot lose: a system message describing each tool (its JSON definition) and the exact answer
format, ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (``tool_call_format``),
joined after the conversation's own system message or placed first; past calls are written into
the assistant's content in that format, and tool results become user turns wrapped in
``<tool_response>`` (consecutive ones merged), as Qwen's template does.

A prompt-template adapter shapes the conversation before this (``adapterhub.prompt_encoding``, the
one path every prompt takes, calls ``render`` as its chat renderer: the template wraps the last user
turn, never a tool result); a chat template that raises on a conversation (some refuse roles
out of order) is that request's 400.
"""

from __future__ import annotations

import json
from functools import cached_property
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from adapterhub import error_codes as codes

from .errors import ApiError
from .tool_call_format import BEGIN, END, format_call

if TYPE_CHECKING:
    from .tool_fields import ToolRequest

__all__ = ["ChatPrompts", "fallback_instructions"]

_PROBE_MESSAGES = [{"role": "user", "content": "x"}]
_PROBE_TOOL = {"type": "function", "function": {"name": "probe_tool", "description": "A probe.",
                                                "parameters": {"type": "object", "properties": {}}}}
_SYSTEM_ROLES = ("system", "developer")
_MAX_TEMPLATE_ERROR_CHARS = 300


def fallback_instructions(tools: ToolRequest) -> str:
    """What a model whose template ignores ``tools`` is told about them, and how to call one
    (compact: on a small context every token of it is one the conversation cannot use)."""
    definitions = "\n".join(json.dumps(t["function"], ensure_ascii=False, separators=(",", ":")) for t in tools.tools)
    how_many = "one or more calls" if tools.parallel and tools.named is None else "one call"
    return (f"You may call these functions:\n<tools>\n{definitions}\n</tools>\n"
            f"To call, answer with {how_many}, each exactly:\n"
            f'{BEGIN}{{"name": <function name>, "arguments": <JSON object>}}{END}')


class ChatPrompts:
    """Renders conversations for one tokenizer (``render``)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    @cached_property
    def template_renders_tools(self) -> bool:
        """Whether the base's chat template writes ``tools`` into the prompt."""
        try:
            return self._apply(_PROBE_MESSAGES, [_PROBE_TOOL]) != self._apply(_PROBE_MESSAGES, None)
        except Exception:  # a template that cannot render the probe is not one tools are given to
            return False

    def render(self, turns: Sequence[Mapping[str, Any]], tools: ToolRequest | None) -> str:
        """The prompt text of ``turns`` (from ``chat_messages.conversation``, already shaped by a
        prompt-template adapter: ``adapterhub.prompt_encoding``) with ``tools`` when they are offered."""
        if getattr(self._tokenizer, "chat_template", None) is None:
            raise ApiError(codes.NO_CHAT_TEMPLATE, "the base model has no chat template; use /v1/completions")
        offered = tools is not None and tools.offered
        turns = [dict(t) for t in turns]
        if self.template_renders_tools:
            return self._rendered(turns, list(tools.tools) if offered else None)
        turns = _as_text(turns)
        if offered:
            turns = _with_instructions(turns, fallback_instructions(tools))
        return self._rendered(turns, None)

    def _rendered(self, turns: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        from jinja2 import TemplateError

        try:
            return self._apply(turns, tools)
        except TemplateError as e:
            text = " ".join(str(e).split())[:_MAX_TEMPLATE_ERROR_CHARS]
            raise ApiError(codes.INVALID_VALUE, f"the base model's chat template refused the conversation: {text}") \
                from None

    def _apply(self, turns: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        return self._tokenizer.apply_chat_template(turns, tools=tools, add_generation_prompt=True, tokenize=False)


def _as_text(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation with its calls and results written as text (the fallback's format)."""
    out: list[dict[str, Any]] = []
    after_result = False  # the previous turn was a tool result: the next one joins its user turn
    for turn in turns:
        if turn["role"] == "tool":
            response = f"<tool_response>\n{turn['content']}\n</tool_response>"
            if after_result:
                out[-1]["content"] += f"\n{response}"
            else:
                out.append({"role": "user", "content": response})
            after_result = True
            continue
        after_result = False
        calls = turn.get("tool_calls", ())
        content = turn["content"] + "".join(format_call(c["function"]["name"], c["function"]["arguments"])
                                            for c in calls)
        out.append({**{k: v for k, v in turn.items() if k != "tool_calls"}, "content": content})
    return out


def _with_instructions(turns: list[dict[str, Any]], instructions: str) -> list[dict[str, Any]]:
    if turns[0]["role"] in _SYSTEM_ROLES:
        return [{**turns[0], "content": f"{turns[0]['content']}\n\n{instructions}"}, *turns[1:]]
    return [{"role": "system", "content": instructions}, *turns]
