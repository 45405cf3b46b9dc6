"""The request fields that ask for structured outputs, read into one ``GrammarSpec`` and compiled.

OpenAI's ``response_format`` (``text``, ``json_object``, ``json_schema`` with its ``schema``) and
vLLM's extensions: ``structured_outputs`` (``json``, ``regex``, ``choice``, ``grammar``,
``json_object``) and the older ``guided_json``, ``guided_regex``, ``guided_choice``,
``guided_grammar``. A request names at most one constraint (``response_format: text`` names none);
two are a 400, as is a value of the wrong shape, a constraint over the size bound
(``grammar_too_large``) or one that does not compile (``invalid_grammar``), each one line naming
the field. The grammar is compiled before the request is queued, off the engine thread.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable

from adapterhub import error_codes as codes
from adapterhub.server.engine.structured.spec import GrammarInvalid, GrammarSpec, GrammarTooLarge

from .errors import ApiError

if TYPE_CHECKING:
    from adapterhub.server.engine.engine import Engine
    from adapterhub.server.engine.structured.grammar_cache import CompiledConstraint

__all__ = ["STRUCTURED_FIELDS", "requested_grammar"]

_RESPONSE_FORMATS = ("text", "json_object", "json_schema")
# vLLM's structured_outputs keys this server implements (whitespace and backend knobs are not).
_STRUCTURED_KEYS = ("json", "regex", "choice", "grammar", "json_object")
_GUIDED = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice", "guided_grammar": "grammar"}
STRUCTURED_FIELDS = frozenset({"response_format", "structured_outputs", *_GUIDED})


def requested_grammar(engine: Engine, body: dict[str, Any],
                      enforced: tuple[str, GrammarSpec] | None = None) -> CompiledConstraint | None:
    """The compiled grammar the request's fields ask for, or ``None`` when they ask for none;
    ``enforced`` is one another field asks for (``tool_choice``: the tool calls), named by it."""
    found = [(name, spec) for name, spec in _specs(body) if spec is not None] + ([enforced] if enforced else [])
    if len(found) > 1:
        raise ApiError(codes.INVALID_VALUE,
                       f"one structured output constraint per request: got {found[0][0]} and {found[1][0]}")
    if not found:
        return None
    name, spec = found[0]
    try:
        return engine.compile_grammar(spec)
    except GrammarInvalid as e:
        raise ApiError(codes.INVALID_GRAMMAR, f"'{name}': {e}") from None


def _specs(body: dict[str, Any]) -> list[tuple[str, GrammarSpec | None]]:
    """(field name as the client wrote it, the constraint it asks for) for each field present."""
    out = []
    if body.get("response_format") is not None:
        out.append(("response_format", _spec("response_format", _response_format, body["response_format"])))
    options = body.get("structured_outputs")
    if options is not None:
        if not isinstance(options, dict):
            raise ApiError(codes.INVALID_TYPE, "'structured_outputs' must be an object")
        for key, value in options.items():
            if key not in _STRUCTURED_KEYS:
                if value is not None:
                    raise ApiError(codes.UNSUPPORTED_FIELD,
                                   f"'structured_outputs.{key}' is not supported by this server")
                continue
            name = f"structured_outputs.{key}"
            out.append((name, _spec(name, _option, name, key, value)))
    for name, key in _GUIDED.items():
        if body.get(name) is not None:
            out.append((name, _spec(name, _option, name, key, body[name])))
    return out


def _spec(name: str, build: Callable[..., GrammarSpec | None], *args: Any) -> GrammarSpec | None:
    """``build(*args)``, its size and shape failures as 400s naming field ``name``."""
    try:
        return build(*args)
    except GrammarTooLarge as e:
        raise ApiError(codes.GRAMMAR_TOO_LARGE, f"'{name}': {e}") from None
    except GrammarInvalid as e:
        raise ApiError(codes.INVALID_VALUE, f"'{name}': {e}") from None


def _response_format(value: Any) -> GrammarSpec | None:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in _RESPONSE_FORMATS:
        raise ApiError(codes.INVALID_VALUE,
                       f"'response_format' must be an object whose type is one of {', '.join(_RESPONSE_FORMATS)}")
    if kind == "text":
        return None
    if kind == "json_object":
        return GrammarSpec.json_object()
    described = value.get("json_schema")
    schema = described.get("schema") if isinstance(described, dict) else None
    if not isinstance(schema, (dict, bool)):
        raise ApiError(codes.INVALID_VALUE, "'response_format.json_schema.schema' must be a JSON schema (an object)")
    return GrammarSpec.json_schema(schema)


def _option(name: str, key: str, value: Any) -> GrammarSpec | None:
    """One vLLM constraint field (``structured_outputs.KEY`` or ``guided_KEY``) as a spec."""
    if key == "json_object":
        if not isinstance(value, bool):
            raise ApiError(codes.INVALID_TYPE, f"'{name}' must be a boolean")
        return GrammarSpec.json_object() if value else None
    if key == "json":
        return GrammarSpec.json_schema(_schema(name, value))
    if key == "choice":
        if not isinstance(value, list) or not all(isinstance(c, str) and c for c in value):
            raise ApiError(codes.INVALID_TYPE, f"'{name}' must be a list of non-empty strings")
        return GrammarSpec.choice(value)
    if not isinstance(value, str) or not value:
        raise ApiError(codes.INVALID_TYPE, f"'{name}' must be a non-empty string")
    return GrammarSpec.regex(value) if key == "regex" else GrammarSpec.grammar(value)


def _schema(name: str, value: Any) -> dict[str, Any] | bool:
    """A JSON schema sent as an object, or as JSON text (vLLM takes both)."""
    if isinstance(value, str):  # bounded by the body's limit; its compact form by the spec's
        try:
            value = json.loads(value)
        except ValueError:
            raise ApiError(codes.INVALID_VALUE, f"'{name}' is not valid JSON") from None
    if not isinstance(value, (dict, bool)):
        raise ApiError(codes.INVALID_TYPE, f"'{name}' must be a JSON schema (an object)")
    return value
