"""The fields that offer tools (``tools``, ``tool_choice``, ``parallel_tool_calls``), checked into a ``ToolRequest``.

OpenAI's function tools (``{"type": "function", "function": {"name", "description",
"parameters"}}``). Each refusal is a 400 of one line naming the field: a name outside OpenAI's
``^[a-zA-Z0-9_-]{1,64}$`` or given twice, ``parameters`` that is not a JSON schema of an object
or does not compile (each is compiled as the grammar engine reads it, so a schema the enforcement
could not follow is refused whatever ``tool_choice`` asks), definitions over the structured-output
size bound, a named ``tool_choice`` that names no defined tool. ``strict: true`` (arguments
enforced even under ``auto``) is not implemented and refused; ``required`` and a named function
are always enforced.

``tool_choice`` defaults to ``auto`` when tools are given; ``none`` keeps the definitions checked
but out of the prompt, so the request runs as if it had no tools.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adapterhub import error_codes as codes
from adapterhub.echo import echo
from adapterhub.server.engine.structured.spec import MAX_GRAMMAR_CHARS, GrammarInvalid, GrammarSpec, GrammarTooLarge

from .errors import ApiError
from .tool_call_format import enforcing_tag

if TYPE_CHECKING:
    from adapterhub.server.engine.engine import Engine

__all__ = ["TOOL_FIELDS", "MAX_TOOLS", "ToolRequest", "requested_tools"]

TOOL_FIELDS = frozenset({"tools", "tool_choice", "parallel_tool_calls"})
MAX_TOOLS = 128  # OpenAI's limit
_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_FUNCTION_KEYS = frozenset({"name", "description", "parameters", "strict"})
_NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
_MODES = ("none", "auto", "required")


@dataclass(frozen=True)
class ToolRequest:
    """The checked tools of one request.

    Args:
        tools: the definitions as the chat template reads them (``{"type": "function", "function":
            {"name", "description"?, "parameters"}}``), ``parameters`` filled in when absent.
        choice: ``none``, ``auto``, ``required`` or ``function`` (one named function).
        named: the function a named choice forces, else ``None``.
        parallel: more than one call allowed in an answer.
    """

    tools: tuple[dict[str, Any], ...]
    choice: str
    named: str | None
    parallel: bool

    @property
    def offered(self) -> bool:
        """Whether the model is shown the tools and its answer read for calls."""
        return bool(self.tools) and self.choice != "none"

    @property
    def names(self) -> list[str]:
        return [t["function"]["name"] for t in self.tools]

    def enforced(self) -> GrammarSpec | None:
        """The grammar ``required`` or a named function generates under; ``None`` for ``auto``/``none``."""
        if self.choice not in ("required", "function"):
            return None
        functions = {t["function"]["name"]: t["function"]["parameters"] for t in self.tools
                     if self.named in (None, t["function"]["name"])}
        try:
            return GrammarSpec.structural_tag(enforcing_tag(functions, parallel=self.parallel and self.named is None))
        except GrammarTooLarge as e:
            raise ApiError(codes.GRAMMAR_TOO_LARGE, f"'tools': {e}") from None


def requested_tools(engine: Engine, body: dict[str, Any]) -> ToolRequest | None:
    """The request's tools, checked (each ``parameters`` compiled for ``engine``); ``None`` when it
    offers none and asks for none."""
    raw, choice, parallel = body.get("tools"), body.get("tool_choice"), body.get("parallel_tool_calls")
    if raw is None and choice is None and parallel is None:
        return None
    tools = _tools(engine, [] if raw is None else raw)
    if parallel is not None and not isinstance(parallel, bool):
        raise ApiError(codes.INVALID_TYPE, "'parallel_tool_calls' must be a boolean")
    mode, named = _choice(choice, [t["function"]["name"] for t in tools])
    return ToolRequest(tuple(tools), mode, named, True if parallel is None else parallel)


def _tools(engine: Engine, raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise ApiError(codes.INVALID_TYPE, "'tools' must be a list of function tools")
    if len(raw) > MAX_TOOLS:
        raise ApiError(codes.INVALID_VALUE, f"'tools' holds {len(raw)} tools, over this server's limit of {MAX_TOOLS}")
    size = len(json.dumps(raw, separators=(",", ":"), ensure_ascii=False))
    if size > MAX_GRAMMAR_CHARS:
        raise ApiError(codes.GRAMMAR_TOO_LARGE, f"'tools': the definitions are {size} characters, "
                                                f"over this server's limit of {MAX_GRAMMAR_CHARS}")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, tool in enumerate(raw):
        function = _function(engine, f"tools[{i}]", tool)
        if function["name"] in seen:
            raise ApiError(codes.INVALID_VALUE,
                           f"'tools[{i}].function.name': {echo(function['name'])} is defined twice")
        seen.add(function["name"])
        out.append({"type": "function", "function": function})
    return out


def _function(engine: Engine, where: str, tool: Any) -> dict[str, Any]:
    """One tool's ``function``, checked: its name, description and compiled ``parameters``."""
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
        raise ApiError(codes.INVALID_VALUE, f"'{where}' must be {{\"type\": \"function\", \"function\": {{...}}}}")
    for key in tool:
        if key not in ("type", "function"):
            raise ApiError(codes.UNSUPPORTED_FIELD, f"'{where}.{key}' is not supported by this server")
    function = tool["function"]
    for key, value in function.items():
        if key not in _FUNCTION_KEYS or (key == "strict" and value not in (None, False)):
            raise ApiError(codes.UNSUPPORTED_FIELD, f"'{where}.function.{key}' is not supported by this server")
    name = function.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ApiError(codes.INVALID_VALUE,
                       f"'{where}.function.name' must match ^[a-zA-Z0-9_-]{{1,64}}$, got {echo(name)}")
    out: dict[str, Any] = {"name": name}
    description = function.get("description")
    if description is not None:
        if not isinstance(description, str):
            raise ApiError(codes.INVALID_TYPE, f"'{where}.function.description' must be a string")
        out["description"] = description
    out["parameters"] = _parameters(engine, f"{where}.function.parameters", function.get("parameters"))
    return out


def _parameters(engine: Engine, where: str, schema: Any) -> dict[str, Any]:
    """A function's ``parameters``: a JSON schema of an object (arguments are always one), which
    the grammar engine compiles (cached: the same schema sent again costs a lookup)."""
    if schema is None:
        return _NO_PARAMETERS
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise ApiError(codes.INVALID_VALUE, f"'{where}' must be a JSON schema whose type is object")
    try:
        engine.compile_grammar(GrammarSpec.json_schema(schema))
    except GrammarTooLarge as e:
        raise ApiError(codes.GRAMMAR_TOO_LARGE, f"'{where}': {e}") from None
    except GrammarInvalid as e:
        raise ApiError(codes.INVALID_GRAMMAR, f"'{where}': {e}") from None
    return schema


def _choice(choice: Any, names: list[str]) -> tuple[str, str | None]:
    """(mode, the named function or ``None``) of ``tool_choice``."""
    if choice is None:
        return ("auto" if names else "none"), None
    if isinstance(choice, str):
        if choice not in _MODES:
            raise ApiError(codes.INVALID_VALUE, f"'tool_choice' must be one of {', '.join(_MODES)} or "
                                                f"{{\"type\": \"function\", \"function\": {{\"name\": ...}}}}")
        if choice == "required" and not names:
            raise ApiError(codes.INVALID_VALUE, "'tool_choice' is required, and 'tools' defines no tool")
        return choice, None
    function = choice.get("function") if isinstance(choice, dict) and choice.get("type") == "function" else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise ApiError(codes.INVALID_VALUE,
                       "'tool_choice' must name a function as {\"type\": \"function\", \"function\": {\"name\": ...}}")
    if name not in names:
        raise ApiError(codes.INVALID_VALUE, f"'tool_choice' names {echo(name)}, which 'tools' does not define")
    return "function", name
