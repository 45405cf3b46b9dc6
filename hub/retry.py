"""When a client sends a request again: the one policy of the hub client (``remote``) and the data
tools' OpenAI client (``data.openai_client``), modelled on huggingface_hub's ``http_backoff``.

What is retried depends on whether the server may have acted on the request:

* A 429 or a 503 from our servers means it did not, so any method (POST included) is retried on
  them: they are the statuses of the error table's ``retryable`` rows (``error_codes``), and every
  row with one of them is retryable. The 429s: ``server_busy`` is answered by the worker
  dispatcher before the app sees the request (``server.http.dispatcher``), ``queue_full`` once the
  engine refused it, its answers already queued cancelled (``openai_api._submit``). The 503s: the hub's ``busy``
  (``ConcurrentModification``: the registry lock was not taken, or a tag moved, and nothing was
  written), ``no_model``, ``adapter_busy`` and ``shutting_down`` before a generation runs. The one
  503 that can come after work, a model stopping under a non-streamed generation (the engine's
  ``shutting_down``, Ray's ``replica_unavailable``), ended tokens nobody received: asking again has
  no lasting effect. Every other error status is final (a 500 may have written half of something).
* A connection error or a timeout leaves it unknown whether the server acted, so only idempotent
  requests are retried on those: GET, HEAD, PUT (the hub's only PUT uploads an object named by its
  digest, which the hub keeps once), DELETE (a repeated removal changes nothing more, though its
  answer can then be "not found"), and a request its caller declares idempotent (a POST that only
  reads).
* A body that cannot be sent again from its start (a stream that cannot seek back) is never retried.

The waits: ``Retry-After`` where the answer has one (seconds or an HTTP-date), else exponential
backoff with jitter, each capped by ``max_wait_s``; the whole is bounded by ``tries`` and by
``budget_s`` (no wait starts that would end past it).
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Generic, Protocol, TypeVar

import httpx2

from .error_codes import RETRYABLE_STATUSES

__all__ = ["RetryPolicy", "Answer", "Outcome", "DEFAULT_RETRY", "IDEMPOTENT_METHODS", "RETRY_STATUSES",
           "HTTP_TRANSIENT", "retry_after_s", "send_with_retries", "tries_note"]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
RETRY_STATUSES = RETRYABLE_STATUSES  # 429 and 503
# The connection errors and timeouts of httpx2, the one HTTP client library of the hub client and
# the data tools, after which a request may go again (as huggingface_hub's).
HTTP_TRANSIENT = (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a client insists: ``tries`` counts the first one (1: never retry)."""

    tries: int = 5
    budget_s: float = 30.0
    base_wait_s: float = 0.5
    max_wait_s: float = 8.0

    def __post_init__(self) -> None:
        if self.tries < 1:
            raise ValueError("tries must be at least 1")
        for name in ("budget_s", "base_wait_s", "max_wait_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more")

    def backoff_s(self, retry: int) -> float:
        """The wait before retry number ``retry`` (1, 2, ...) when the server named none: it doubles
        from ``base_wait_s`` up to ``max_wait_s``, half of it random so clients refused together
        come back apart."""
        ceiling = min(self.max_wait_s, self.base_wait_s * 2 ** (retry - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


DEFAULT_RETRY = RetryPolicy()


class _Headers(Protocol):
    def get(self, name: str, default: None = None) -> str | None: ...


class Answer(Protocol):
    """What the retry reads of a response (``httpx2.Response`` is one)."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> _Headers: ...

    def close(self) -> None: ...


A = TypeVar("A", bound=Answer)


@dataclass(frozen=True)
class Outcome(Generic[A]):
    """The last try: its answer (any status: the caller reads the error), or the connection error
    that ended it; ``tries`` for the message of a final failure (``tries_note``)."""

    tries: int
    answer: A | None = None
    error: Exception | None = None


def retry_after_s(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` value asks to wait (``120`` or an HTTP-date); ``None`` if unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP-date is GMT
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def tries_note(tries: int, *last: str) -> str:
    """What a final error's message ends with once it was retried: `` (429 busy, after 5 tries)``
    (``last`` says what the last try got); empty after one try, so that message stays as it was."""
    return f" ({', '.join([*filter(None, last), f'after {tries} tries'])})" if tries > 1 else ""


def send_with_retries(
    send: Callable[[], A],
    *,
    policy: RetryPolicy,
    idempotent: bool,
    transient: tuple[type[Exception], ...],
    resendable: bool = True,
) -> Outcome[A]:
    """Call ``send`` until its answer is not a 429/503, or until the policy gives up.

    ``transient`` are the connection errors and timeouts of the caller's transport: they end in the
    outcome (retried first when ``idempotent``); any other exception propagates. ``send`` must
    send the same request each time, its body from the start; ``resendable=False`` says it cannot,
    and nothing is retried. A refused answer that is retried is closed first.
    """
    started = time.monotonic()
    tries = 0
    while True:
        tries += 1
        wait: float | None
        try:
            answer = send()
        except transient as e:
            outcome: Outcome[A] = Outcome(tries, error=e)
            wait = policy.backoff_s(tries) if idempotent else None
        else:
            outcome = Outcome(tries, answer=answer)
            if answer.status_code not in RETRY_STATUSES:
                return outcome
            hinted = retry_after_s(answer.headers.get("Retry-After"))
            wait = min(hinted, policy.max_wait_s) if hinted is not None else policy.backoff_s(tries)
        if (wait is None or not resendable or tries >= policy.tries
                or time.monotonic() - started + wait > policy.budget_s):
            return outcome
        if outcome.answer is not None:
            outcome.answer.close()
        time.sleep(wait)
