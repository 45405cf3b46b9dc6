"""Token scores in the two shapes the OpenAI API returns them.

``/v1/completions`` uses the legacy shape (``tokens``, ``token_logprobs``, ``top_logprobs`` as
token text → log-probability, ``text_offset``), where each step's ``top_logprobs`` holds the
chosen token and its alternatives, as vLLM returns them (so a harness can tell whether the chosen
token was the most likely one). ``/v1/chat/completions`` uses ``{"content": [{token, logprob,
bytes, top_logprobs}]}``. A token's text is its own decoding (``tokenizer.decode([id])``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from adapterhub.server.engine.request import TokenLogprob

__all__ = ["completion_logprobs", "chat_logprobs"]

Decode = Callable[[int], str]


def completion_logprobs(decode: Decode, steps: Sequence[tuple[int, TokenLogprob | None]],
                        text_offset: int = 0) -> dict[str, list[Any]]:
    """The legacy ``logprobs`` object for ``steps`` (token id, its score or ``None`` where it has
    none: the first prompt token); offsets count from ``text_offset``."""
    out: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for token_id, score in steps:
        text = decode(token_id)
        out["tokens"].append(text)
        out["text_offset"].append(text_offset)
        text_offset += len(text)
        if score is None:
            out["token_logprobs"].append(None)
            out["top_logprobs"].append(None)
            continue
        out["token_logprobs"].append(score.logprob)
        top = {text: score.logprob}
        for alternative, logprob in score.top:
            top.setdefault(decode(alternative), logprob)
        out["top_logprobs"].append(top)
    return out


def chat_logprobs(decode: Decode, scores: Sequence[TokenLogprob]) -> dict[str, list[dict[str, Any]]]:
    """The chat ``logprobs`` object: each generated token with its ``top_logprobs`` alternatives."""
    return {"content": [{**_entry(decode(s.token_id), s.logprob),
                         "top_logprobs": [_entry(decode(t), lp) for t, lp in s.top]} for s in scores]}


def _entry(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}
