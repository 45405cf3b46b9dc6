"""The one reader of JSON request bodies: whatever a client sends, a dict or a 400.

Flask's ``get_json(silent=True)`` turns malformed JSON into ``None`` but lets ``RecursionError``
through (``[[[[...]]]]`` fifty thousand deep), and JSON may spell a lone surrogate (``"\\ud800"``)
that no tokenizer, file or index can hold. Both are refused here, once, for every route.
"""

from __future__ import annotations

import json
from typing import Any

from flask import request

from .errors import ApiError

__all__ = ["json_object"]


def json_object() -> dict[str, Any]:
    """The request's JSON body as a dict of valid Unicode; ``ApiError`` 400 ``invalid_json`` otherwise."""
    try:
        body = request.get_json(force=True, silent=True)
    except RecursionError:
        raise ApiError(400, "the JSON body nests too deeply", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, "the JSON body holds a string that is not valid Unicode (a lone surrogate)",
                       code="invalid_json") from None
    return body
