"""How much one request may ask of the server, checked before the work it would cost.

Three bounds, each a flag of ``adapterhub serve``: the request body (``max_body_bytes``: refused from
``Content-Length`` before it is read), the tokens of one prompt (``max_prompt_tokens``, default the
model's context) and the answers one request queues (``max_generations_per_request``: ``n`` times
the prompts). The fourth, how many answers wait for the engine, is the engine's own
(``max_queued_requests``: ``QueueFull``, answered 429).

Order matters more than the numbers: the count of answers is checked before any prompt is
tokenized, and a text prompt's length in characters before it is tokenized. Tokenizing is what made
a 10 MB prompt cost a minute and a gigabyte: no tokenizer turns ``c`` characters into fewer than
``c / L`` tokens, ``L`` being the longest string in its vocabulary (a token never covers more text
than its own string: byte-level BPE strings spell one character per byte, SentencePiece and
WordPiece strings carry their marker on top of the text). So a text longer than
``max_prompt_tokens × L`` characters cannot fit, and is refused without tokenizing it. (A tokenizer
whose normalizer deletes characters, collapsing runs of spaces say, could fit such a text; none of
the causal models we serve does.)
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from adapterhub import error_codes as codes
from adapterhub.serving_config import RequestLimits

from .errors import ApiError

__all__ = ["AdmissionLimits", "PromptBounds"]


@dataclass(frozen=True)
class AdmissionLimits(RequestLimits):
    """The per-request bounds (``RequestLimits``: fields, defaults and their checks), applied to requests."""

    @classmethod
    def of(cls, limits: RequestLimits) -> AdmissionLimits:
        return cls(**{f.name: getattr(limits, f.name) for f in fields(RequestLimits)})

    def check_body(self, content_length: int | None) -> None:
        if content_length is not None and content_length > self.max_body_bytes:
            raise ApiError(codes.BODY_TOO_LARGE,
                           f"the request body is {content_length} bytes; this server takes at most "
                           f"{self.max_body_bytes}")

    def check_generations(self, prompts: int, n: int) -> None:
        if prompts * n > self.max_generations_per_request:
            raise ApiError(codes.TOO_MANY_GENERATIONS,
                           f"{prompts} prompt(s) x n={n} asks for {prompts * n} answers; this server "
                           f"answers at most {self.max_generations_per_request} per request")


def _longest_token_chars(tokenizer: Any) -> int:
    vocab = tokenizer.get_vocab()
    added = getattr(tokenizer, "get_added_vocab", dict)()
    return max(1, max((len(t) for t in vocab), default=1), max((len(t) for t in added), default=1))


class PromptBounds:
    """``AdmissionLimits.max_prompt_tokens`` applied to one model's tokenizer: built once per app."""

    def __init__(self, limits: AdmissionLimits, tokenizer: Any, context_length: int) -> None:
        self.max_tokens = min(limits.max_prompt_tokens or context_length, context_length)
        self.max_chars = self.max_tokens * _longest_token_chars(tokenizer)

    def check_chars(self, chars: int, what: str) -> None:
        """Refuse a text that cannot fit, before it is tokenized."""
        if chars > self.max_chars:
            raise ApiError(codes.PROMPT_TOO_LONG,
                           f"{what} is {chars} characters, more than {self.max_tokens} tokens can hold; "
                           f"prompts take at most {self.max_tokens} tokens")

    def check_tokens(self, tokens: int, what: str) -> None:
        if tokens > self.max_tokens:
            raise ApiError(codes.PROMPT_TOO_LONG, f"{what} is {tokens} tokens; prompts take at most {self.max_tokens}")
