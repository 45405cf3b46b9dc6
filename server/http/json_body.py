"""The one reader of JSON request bodies: whatever a client sends, a dict or a 400.

Flask's ``get_json(silent=True)`` turns malformed JSON into ``None`` but lets ``RecursionError``
through (``[[[[...]]]]`` fifty thousand deep), and JSON may spell a lone surrogate (``"\\ud800"``)
that no tokenizer, file or index can hold. Both are refused here, once, for every route, and so
are ``NaN`` and ``Infinity``, which Python's parser takes but JSON has no spelling for.

``StandardJSON`` is the app's JSON provider: what the app reads and writes is standard JSON, so no
answer can carry ``NaN`` whatever reached a record (the registry refuses it first; this is the
backstop).
"""

from __future__ import annotations

import json
from typing import Any

from flask import request
from flask.json.provider import DefaultJSONProvider

from .errors import ApiError

__all__ = ["StandardJSON", "json_object", "loads_standard"]


class _NonStandardNumber(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NonStandardNumber(f"{name} is not a JSON number")


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


def json_object() -> dict[str, Any]:
    """The request's JSON body as a dict of valid Unicode; ``ApiError`` 400 ``invalid_json`` otherwise."""
    try:
        body = loads_standard(request.get_data(cache=True))
    except RecursionError:
        raise ApiError(400, "the JSON body nests too deeply", code="invalid_json") from None
    except _NonStandardNumber as e:
        raise ApiError(400, f"the JSON body is not standard JSON: {e} (numbers are finite)",
                       code="invalid_json") from None
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, "the JSON body holds a string that is not valid Unicode (a lone surrogate)",
                       code="invalid_json") from None
    return body
