"""What travels between the HTTP threads and the engine thread.

An HTTP thread validates its input, builds a ``GenerationRequest`` and hands it to the engine; the
engine thread answers through the request's ``RequestStream``, one ``TokenEvent`` per generated
token and a last event carrying the finish reason (the text of each event comes from
``detokenizer.StopText``).
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from adapterhub.registry import AdapterVersion

    from .adapters.lora_cache import LoraSlot
    from .adapters.soft_prompt_cache import SoftPrompt

__all__ = ["SamplingParams", "TokenEvent", "RequestStream", "GenerationRequest", "FINISH_REASONS"]

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


def _finite(x: object) -> bool:
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
    engine pins the loaded adapter in ``soft_prompt`` or ``lora`` (``adapters.picker`` does both).
    """

    prompt_ids: list[int]
    params: SamplingParams
    adapter: AdapterVersion | None = None
    id: str = field(default_factory=lambda: f"req-{next(_ids)}")
    stream: RequestStream = field(default_factory=RequestStream)
    submitted_at: float = field(default_factory=time.monotonic)
    soft_prompt: SoftPrompt | None = None
    lora: LoraSlot | None = None

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("the prompt is empty")
