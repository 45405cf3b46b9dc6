"""Greedy answers for many (adapter, prompt) pairs through the serving engine's public API.

Requests are submitted interleaved (row 1 for every adapter, then row 2...) with a bounded number in
flight, so the engine's continuous batching decodes different adapters (LoRA, soft prompt, prompt
template, the bare base) in the same batch, as ``adapterhub serve`` does for its clients. A prompt
template rewrites the row's prompt first (``PromptTemplate.apply``, as the server does), and its row
is decoded by the base.

The engine is any object with the calls ``AnswerEngine`` lists (``adapterhub.server``'s ``Engine``
is one): the library drives an engine it is handed and never imports the server.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol, Sequence

from ..registry import AdapterVersion
from ..sampling import SamplingParams
from ..train.templates import encode_prompt

__all__ = ["AnswerEngine", "engine_answers"]


class AnswerEngine(Protocol):
    """What evaluation asks of a serving engine (a started ``adapterhub.server`` ``Engine``)."""

    tokenizer: Any  # the base's tokenizer
    adapters: Any  # ``adapters.prompt_template(version)``: the version's template, or None

    def resolve(self, ref: str) -> AdapterVersion:
        """The version ``ref`` names, checked against the engine's base."""

    def submit(self, ids: list[int], params: SamplingParams, version: AdapterVersion | None) -> Any:
        """A request in flight: ``.stream.text()`` waits for its answer, ``.stream.cancel()`` drops it."""

    def stop(self) -> None:
        """End the engine's thread and let its model go."""


def engine_answers(engine: AnswerEngine, versions: Sequence[Any], prompts: Sequence[Any], max_tokens: int,
                   in_flight: int = 64) -> list[list[str]]:
    """``answers[i][j]``: greedy answer of ``versions[i]`` (None: the base) to ``prompts[j]``."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    plain = [encode_prompt(engine.tokenizer, p) for p in prompts]
    templates = [engine.adapters.prompt_template(v) for v in versions]
    answers = [[""] * len(prompts) for _ in versions]
    window: deque[tuple[int, int, Any]] = deque()
    try:
        for j, prompt in enumerate(prompts):
            for i, (version, template) in enumerate(zip(versions, templates)):
                if len(window) >= in_flight:
                    a, b, request = window.popleft()
                    answers[a][b] = request.stream.text()
                ids = plain[j] if template is None else encode_prompt(engine.tokenizer, template.apply(prompt))
                window.append((i, j, engine.submit(ids, params, version)))
        while window:
            a, b, request = window.popleft()
            answers[a][b] = request.stream.text()
    finally:
        for _, _, request in window:
            request.stream.cancel()
    return answers
