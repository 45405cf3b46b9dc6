"""The one reader of integers written as text: ASCII digits in canonical form, bounded in length.

``str.isdigit`` and ``int`` accept more than a protocol means: ``"١"`` (an Arabic-Indic digit) is
``int``'s 1, ``"²"`` passes ``isdigit`` and then makes ``int`` raise, ``"01"`` and ``"1"`` are two
keys for one number (two ``logit_bias`` entries silently merged), and a 5,000-digit string costs
quadratic time before Python's digit limit refuses it with its own message. Version numbers in
references, page counts and cursors in query strings, and token ids in JSON keys all go through
``parse_decimal``, so they accept exactly one spelling of each number.
"""

from __future__ import annotations

__all__ = ["parse_decimal", "MAX_DECIMAL_DIGITS"]

MAX_DECIMAL_DIGITS = 9  # below 2**31: every count, version number and token id we read


def parse_decimal(text: object, *, max_digits: int = MAX_DECIMAL_DIGITS) -> int | None:
    """The non-negative integer ``text`` spells (ASCII digits, no sign, no leading zero except
    ``"0"`` itself, at most ``max_digits`` of them), or ``None`` for anything else."""
    if not isinstance(text, str) or not 0 < len(text) <= max_digits or not text.isascii() or not text.isdigit():
        return None
    if len(text) > 1 and text[0] == "0":
        return None
    return int(text)
