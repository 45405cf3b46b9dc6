"""The one reader of JSON request bodies: whatever a client sends, a dict or a 400 naming the field.

Flask's ``get_json(silent=True)`` turns malformed JSON into ``None`` but lets ``RecursionError``
through (``[[[[...]]]]`` fifty thousand deep), and JSON may spell a lone surrogate (``"\\ud800"``)
that no tokenizer, file or index can hold. Python's ``json`` also reads what JSON does not allow
or no field can use: ``NaN`` and ``Infinity`` literals, numbers like ``1e999`` that overflow to
infinity, and integers of thousands of digits (past 4,300 ``int`` refuses them, and the whole body
was reported as "not a JSON object"). All of these are refused here, once, for every route; the
numeric ones name the field that holds them (``'max_tokens'``, ``'prompt'[3]``).

``StandardJSON`` is the app's JSON provider: what the app reads and writes is standard JSON, so no
answer can carry ``NaN`` whatever reached a record (the registry refuses it first; this is the
backstop).
"""

from __future__ import annotations

import json
import math
from typing import Any

from flask import request
from flask.json.provider import DefaultJSONProvider

from adapterhub import error_codes as codes
from adapterhub.echo import echo

from .errors import ApiError

__all__ = ["StandardJSON", "json_object", "loads_standard", "parse_json_object", "MAX_INTEGER_DIGITS"]

# Seeds (below 2**128) are the largest integers any route reads: 39 digits.
MAX_INTEGER_DIGITS = 100


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads_standard(data: str | bytes) -> Any:
    """``json.loads`` of standard JSON only: ``NaN``, ``Infinity`` and ``-Infinity`` raise ``ValueError``."""
    return json.loads(data, parse_constant=_refuse_constant)


class StandardJSON(DefaultJSONProvider):
    """Flask's provider, reading and writing standard JSON only."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("allow_nan", False)
        return super().dumps(obj, **kwargs)

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return loads_standard(s)


class _Refused:
    """Stands in the parsed document where a number no field may hold was written."""

    def __init__(self, why: str) -> None:
        self.why = why


def _where(doc: Any, path: str = "") -> tuple[str, str] | None:
    """The path and reason of the first refused number in ``doc``."""
    if isinstance(doc, _Refused):
        return path or "the body", doc.why
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        found = _where(value, f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else key)
        if found:
            return found
    return None


def parse_json_object(data: bytes | str, what: str = "the request body") -> dict[str, Any]:
    """``data`` as a dict of valid Unicode and finite, bounded numbers; ``ApiError`` 400 ``invalid_json``
    (``invalid_value`` for a number, naming its field) otherwise."""
    refused: list[_Refused] = []

    def refuse(why: str) -> _Refused:
        refused.append(_Refused(why))
        return refused[-1]

    def integer(text: str) -> int | _Refused:
        digits = len(text.lstrip("-"))
        if digits > MAX_INTEGER_DIGITS:
            return refuse(f"an integer of {digits} digits (at most {MAX_INTEGER_DIGITS})")
        return int(text)

    def real(text: str) -> float | _Refused:
        value = float(text)
        return value if math.isfinite(value) else refuse(f"{echo(text, 40)}, which is not a finite number")

    try:
        body = json.loads(data, parse_int=integer, parse_float=real,
                          parse_constant=lambda name: refuse(f"{name}, which JSON does not allow"))
    except RecursionError:
        raise ApiError(codes.INVALID_JSON, f"{what} nests too deeply") from None
    except ValueError:  # malformed JSON or bytes that are not UTF-8, -16 or -32
        body = None
    if not isinstance(body, dict):
        raise ApiError(codes.INVALID_JSON, f"{what} must be a JSON object")
    if refused:
        try:
            path, why = _where(body) or ("the body", refused[0].why)
        except RecursionError:
            path, why = "the body", refused[0].why
        raise ApiError(codes.INVALID_VALUE, f"{echo(path)} is {why}")
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(codes.INVALID_JSON,
                       f"{what} holds a string that is not valid Unicode (a lone surrogate)") from None
    return body


def json_object() -> dict[str, Any]:
    """The request's JSON body, read by ``parse_json_object``."""
    return parse_json_object(request.get_data(cache=True))
