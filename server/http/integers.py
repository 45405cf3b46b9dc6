"""Integers a client writes as text, for the HTTP routes: ``parse_decimal``'s one spelling, or a 400
naming the parameter. (Integers written as JSON numbers are bounded by ``json_body``.)"""

from __future__ import annotations

from adapterhub import error_codes as codes
from adapterhub.echo import echo
from adapterhub.integers import parse_decimal

from .errors import ApiError

__all__ = ["query_count", "token_id_key"]


def query_count(raw: str | None, key: str) -> int | None:
    """A count in the query string (``limit``, ``offset``, ``cursor``); ``None`` when absent."""
    if raw is None:
        return None
    value = parse_decimal(raw)
    if value is None:
        raise ApiError(codes.INVALID_FIELD, f"{key} must be a count: decimal digits without a leading zero, at most 9")
    return value


def token_id_key(key: str, field: str, vocab: int) -> int:
    """A token id written as a JSON object key (``logit_bias``), below ``vocab``."""
    value = parse_decimal(key)
    if value is None or value >= vocab:
        raise ApiError(codes.INVALID_VALUE,
                       f"'{field}' keys must be token ids in [0, {vocab}) written in decimal digits "
                       f"without a leading zero, got {echo(key)}")
    return value
