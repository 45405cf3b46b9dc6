"""What travels between the HTTP threads and the engine thread.

An HTTP thread validates its input, builds a ``GenerationRequest`` and hands it to the engine; the
engine thread answers through the request's ``RequestStream``, one ``TokenEvent`` per generated
token and a last event carrying the finish reason. Text is released by ``StopText``, which holds
back whatever could still turn into a stop string or an incomplete UTF-8 character, so a streaming
client never sees text that a later token takes back.
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

__all__ = ["SamplingParams", "TokenEvent", "RequestStream", "GenerationRequest", "StopText", "FINISH_REASONS"]

FINISH_REASONS = ("stop", "length", "cancelled", "error")

_ids = itertools.count(1)


@dataclass(frozen=True)
class SamplingParams:
    """How one request decodes.

    Args:
        max_tokens: most tokens to generate (at least 1).
        temperature: 0 decodes greedily (argmax); above 0 samples from softmax(logits / temperature).
        top_p: nucleus sampling: sample only from the smallest set of tokens whose probability
            reaches ``top_p`` (1 keeps every token).
        seed: seeds the request's own random generator, so a sampled answer is reproducible
            whatever else shares the batch.
        stop: strings that end the answer; the matched string is not returned.
    """

    max_tokens: int = field(default=16, metadata={"help": "most tokens to generate"})
    temperature: float = field(default=1.0, metadata={"help": "0 = greedy"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus mass, (0, 1]"})
    seed: int | None = field(default=None, metadata={"help": "per-request random seed"})
    stop: tuple[str, ...] = field(default=(), metadata={"help": "stop strings"})

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not _finite(self.temperature) or not 0 <= self.temperature <= 2:
            raise ValueError(f"temperature must be a number between 0 and 2, got {self.temperature!r}")
        if not _finite(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be a number in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not -(1 << 63) <= self.seed < 1 << 64):
            raise ValueError(f"seed must be an integer in [-2**63, 2**64), got {self.seed!r}")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError("stop must be non-empty strings")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class TokenEvent:
    """One step of a request's answer.

    ``text`` is the text released by this step (possibly empty while a stop string is pending);
    ``finish_reason`` is set on the last event only, together with the token counts.
    """

    token_id: int | None
    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


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


@dataclass
class GenerationRequest:
    """A tokenized prompt, how to decode it, and which adapter to run it with.

    ``adapter`` is the registry version (``hub.registry.AdapterVersion``) the HTTP thread resolved
    and checked against the base, or ``None`` for the bare base model. While the request runs, the
    engine pins the loaded adapter in ``soft_prompt`` (a ``SoftPrompt``) or ``lora`` (a slot handle).
    """

    prompt_ids: list[int]
    params: SamplingParams
    adapter: Any = None
    id: str = field(default_factory=lambda: f"req-{next(_ids)}")
    stream: RequestStream = field(default_factory=RequestStream)
    submitted_at: float = field(default_factory=time.monotonic)
    soft_prompt: Any = None
    lora: Any = None

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("the prompt is empty")


class StopText:
    """Incremental detokenization with stop strings.

    Decoding the whole answer at every step (answers are at most the context length) keeps
    multi-byte characters and tokenizer clean-ups right; only the released prefix is ever sent.
    """

    def __init__(self, tokenizer: Any, stop: tuple[str, ...] = ()) -> None:
        self._tokenizer = tokenizer
        self._stop = stop
        self._ids: list[int] = []
        self._released = 0
        self.text = ""

    def add(self, token_id: int) -> tuple[str, bool]:
        """Append a token; return (newly released text, whether a stop string was hit)."""
        self._ids.append(token_id)
        full = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        hit = self._find_stop(full)
        if hit is not None:
            return self._release(full[:hit], len(full[:hit])), True
        if full.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next byte
            return "", False
        return self._release(full, len(full) - self._pending_stop_prefix(full)), False

    def finish(self) -> str:
        """Release what was held back when the answer ends without a stop string."""
        full = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        return self._release(full, len(full))

    def _release(self, full: str, upto: int) -> str:
        upto = max(upto, self._released)
        out = full[self._released:upto]
        self._released = upto
        self.text = full[:upto]
        return out

    def _find_stop(self, full: str) -> int | None:
        start = max(0, self._released - max((len(s) for s in self._stop), default=0))
        hits = [i for i in (full.find(s, start) for s in self._stop) if i >= 0]
        return min(hits) if hits else None

    def _pending_stop_prefix(self, full: str) -> int:
        """Length of the longest suffix of ``full`` that begins some stop string."""
        best = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(full)), best, -1):
                if full.endswith(s[:k]):
                    best = k
                    break
        return best
