"""What travels between the HTTP threads and the engine thread.

An HTTP thread validates its input, builds a ``GenerationRequest`` and hands it to the engine; the
engine thread answers through the request's ``RequestStream``, one ``TokenEvent`` per generated
token and a last event carrying the finish reason (the text of each event comes from
``detokenizer.StopText``). ``SamplingParams`` is the library's (``adapterhub.sampling``), named here too.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Iterator

from adapterhub import error_codes as codes
from adapterhub.error_codes import ERROR_CODES, WireCode
from adapterhub.sampling import (
    MAX_LOGIT_BIAS,
    MAX_LOGIT_BIAS_TOKENS,
    MAX_LOGPROBS,
    MAX_PENALTY,
    MAX_STOP_CHARS,
    MAX_STOP_STRINGS,
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    SamplingParams,
)

if TYPE_CHECKING:
    from adapterhub.registry import AdapterVersion

    from .adapters.lora_cache import LoraSlot
    from .adapters.soft_prompt_cache import SoftPrompt
    from .structured.grammar_cache import CompiledConstraint

__all__ = ["SamplingParams", "TokenEvent", "TokenLogprob", "RequestStream", "GenerationRequest", "FINISH_REASONS",
           "ErrorCode", "RowFailure", "MIN_TEMPERATURE", "MAX_TEMPERATURE", "MAX_STOP_STRINGS", "MAX_STOP_CHARS",
           "MAX_LOGPROBS", "MAX_PENALTY", "MAX_LOGIT_BIAS", "MAX_LOGIT_BIAS_TOKENS"]

FINISH_REASONS = ("stop", "length", "cancelled", "error")


class ErrorCode(StrEnum):
    """Why a request ended with finish reason ``error``: machine-readable, each the code of a row of
    ``adapterhub.error_codes`` (``row``), whose status and type the HTTP layer answers with."""

    NON_FINITE_LOGITS = codes.NON_FINITE_LOGITS.code  # the model (with the row's adapter) produced NaN or inf
    SAMPLING_FAILED = codes.SAMPLING_FAILED.code  # drawing the row's next token raised
    DETOKENIZE_FAILED = codes.DETOKENIZE_FAILED.code  # turning the row's tokens into text (or stop strings) raised
    INTERNAL_ERROR = codes.INTERNAL_ERROR.code  # the shared forward pass failed: a bug, not the request
    SHUTTING_DOWN = codes.SHUTTING_DOWN.code  # the engine stopped before the request finished

    @property
    def row(self) -> WireCode:
        """The code's row of the one error table."""
        return ERROR_CODES[self.value]

_ids = itertools.count(1)


@dataclass(frozen=True)
class TokenLogprob:
    """One token's log-probability under the raw model, with the row's ``top`` alternatives
    (``(token id, log-probability)``, most likely first)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class TokenEvent:
    """One step of a request's answer.

    ``text`` is the text released by this step (possibly empty while a stop string is pending);
    ``finish_reason`` is set on the last event only, together with the token counts. A request that
    failed ends with finish reason ``error``, a one-line ``error`` for people and an ``error_code``
    (an ``ErrorCode``) for the HTTP layer to map to a status. ``logprob`` is set when the request
    asked for ``logprobs``; the first event with a token carries ``prompt_logprobs`` when it asked
    for them (one per prompt token, the first ``None``: nothing precedes it).
    """

    token_id: int | None
    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    error_code: ErrorCode | None = None
    logprob: TokenLogprob | None = None
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None


@dataclass(frozen=True)
class RowFailure:
    """Why one row of the batch cannot go on: it ends alone, with this code and message."""

    code: ErrorCode
    message: str


class RequestStream:
    """The engine writes events, one HTTP thread reads them; either side may give up.

    ``cancel()`` (the client went away) tells the engine to drop the request at its next step.
    """

    def __init__(self) -> None:
        self._events: queue.Queue[TokenEvent] = queue.Queue()
        self._cancelled = threading.Event()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None

    def put(self, event: TokenEvent) -> None:
        now = time.monotonic()
        if self.first_token_at is None and event.token_id is not None:
            self.first_token_at = now
        if event.finish_reason is not None:
            self.finished_at = now
        self._events.put(event)

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def __iter__(self) -> Iterator[TokenEvent]:
        """Events until (and including) the one with a finish reason."""
        while True:
            event = self._events.get()
            yield event
            if event.finish_reason is not None:
                return

    def text(self) -> str:
        """The whole answer's text, for in-process callers that need no events; ``RuntimeError``
        when the generation failed. A caller interrupted meanwhile cancels the request, so its row
        is freed at the next step."""
        parts = []
        try:
            for event in self:
                if event.error is not None:
                    raise RuntimeError(f"generation failed: {event.error}")
                parts.append(event.text)
        except BaseException:
            self.cancel()
            raise
        return "".join(parts)


@dataclass
class GenerationRequest:
    """A tokenized prompt, how to decode it, and which adapter to run it with.

    ``adapter`` is the registry version (``hub.registry.AdapterVersion``) the HTTP thread resolved
    and checked against the base, or ``None`` for the bare base model. While the request runs, the
    engine pins the loaded adapter in ``soft_prompt`` or ``lora`` (``adapters.picker`` does both).

    ``group`` names the requests that share in the batch as one: the answers of one HTTP request
    (its prompts times ``n``). The scheduler admits waiting requests round-robin across groups, so
    one group with many answers never takes the batch from the others; ``None`` is a group of one.

    ``grammar``, when set, is what the answer must match (``structured``), compiled before the
    request was submitted: every token the row chooses is one its grammar allows.
    """

    prompt_ids: list[int]
    params: SamplingParams
    adapter: AdapterVersion | None = None
    id: str = field(default_factory=lambda: f"req-{next(_ids)}")
    stream: RequestStream = field(default_factory=RequestStream)
    submitted_at: float = field(default_factory=time.monotonic)
    soft_prompt: SoftPrompt | None = None
    lora: LoraSlot | None = None
    group: str | None = None
    grammar: CompiledConstraint | None = None

    @property
    def share_key(self) -> str:
        """What fair admission counts rows by: the group, or the request alone."""
        return self.group or self.id

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("the prompt is empty")
