"""Greedy answers for many (adapter, prompt) pairs through the serving engine's public API.

Requests are submitted interleaved (row 1 for every adapter, then row 2...) with a bounded number in
flight, so the engine's continuous batching decodes different adapters (LoRA, soft prompt, prompt
template, the bare base) in the same batch, as ``adapterhub serve`` does for its clients. A prompt
template rewrites the row's prompt first, through the one path the server encodes prompts with
(``prompt_encoding.encode_templated``), and its row is decoded by the base.

The engine is any object with the calls ``AnswerEngine`` lists (``adapterhub.server``'s ``Engine``
is one): the library drives an engine it is handed and never imports the server.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol, Sequence

from ..prompt_encoding import encode_templated
from ..prompt_template import PromptTemplate
from ..registry import AdapterVersion
from ..sampling import SamplingParams

__all__ = ["AnswerEngine", "ResolvedAdapter", "engine_answers"]


class ResolvedAdapter(Protocol):
    """What the engine's ``resolve`` returns: a version checked against its base (``None``: the base)."""

    version: AdapterVersion | None

    def template(self) -> PromptTemplate | None:
        """The prompt template it applies to the prompt text, or None for every other kind."""


class AnswerEngine(Protocol):
    """What evaluation asks of a serving engine (a started ``adapterhub.server`` ``Engine``)."""

    tokenizer: Any  # the base's tokenizer

    def resolve(self, ref: str | None) -> ResolvedAdapter:
        """The adapter ``ref`` names (``None``: the base), checked against the engine's base."""

    def submit(self, ids: list[int], params: SamplingParams, adapter: ResolvedAdapter) -> Any:
        """A request in flight: ``.stream.text()`` waits for its answer, ``.stream.cancel()`` drops it."""

    def stop(self) -> None:
        """End the engine's thread and let its model go."""


def engine_answers(engine: AnswerEngine, adapters: Sequence[ResolvedAdapter], prompts: Sequence[Any],
                   max_tokens: int, in_flight: int = 64) -> list[list[str]]:
    """``answers[i][j]``: greedy answer of ``adapters[i]`` (from ``engine.resolve``) to ``prompts[j]``."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    templates = [a.template() for a in adapters]
    plain = [encode_templated(engine.tokenizer, p).ids for p in prompts]
    answers = [[""] * len(prompts) for _ in adapters]
    window: deque[tuple[int, int, Any]] = deque()
    try:
        for j, prompt in enumerate(prompts):
            for i, (adapter, template) in enumerate(zip(adapters, templates)):
                if len(window) >= in_flight:
                    a, b, request = window.popleft()
                    answers[a][b] = request.stream.text()
                ids = plain[j] if template is None else encode_templated(engine.tokenizer, prompt, template).ids
                window.append((i, j, engine.submit(ids, params, adapter)))
        while window:
            a, b, request = window.popleft()
            answers[a][b] = request.stream.text()
    finally:
        for _, _, request in window:
            request.stream.cancel()
    return answers
