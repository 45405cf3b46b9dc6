"""Log-probabilities as the OpenAI API reports them, for the rows that ask.

They are the raw model's: log-softmax of the logits in float32, before penalties, biases,
temperature or top_p change them (vLLM's default ``logprobs_mode``, ``raw_logprobs``), so a score
does not depend on how the answer was drawn. Only the rows that ask pay for them.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .request import TokenLogprob

__all__ = ["chosen_logprobs", "prompt_logprobs"]

_CHUNK = 256  # prompt positions scored at once


def chosen_logprobs(logits: torch.Tensor, asks: Sequence[tuple[int | None, int | None]]) -> list[TokenLogprob | None]:
    """Per row of ``logits`` (``[rows, vocab]``) and its ``(top_k, chosen token)``: the chosen
    token's log-probability with ``top_k`` alternatives, or ``None`` where the row did not ask
    (``top_k`` None) or has no token (it failed)."""
    rows = [i for i, (k, token) in enumerate(asks) if k is not None and token is not None]
    out: list[TokenLogprob | None] = [None] * len(asks)
    if not rows:
        return out
    index = torch.tensor(rows, device=logits.device)
    tokens = torch.tensor([asks[i][1] for i in rows], device=logits.device)
    logprobs = torch.log_softmax(logits.index_select(0, index).float(), -1)
    picked = logprobs.gather(1, tokens[:, None])[:, 0].tolist()
    k_max = max(asks[i][0] for i in rows)
    top_values, top_ids = logprobs.topk(k_max, -1) if k_max else (logprobs[:, :0], tokens[:, None][:, :0])
    top_values, top_ids = top_values.tolist(), top_ids.tolist()
    for j, i in enumerate(rows):
        k = asks[i][0]
        out[i] = TokenLogprob(asks[i][1], picked[j], tuple(zip(top_ids[j][:k], top_values[j][:k])))
    return out


def prompt_logprobs(logits: torch.Tensor, prompt_ids: Sequence[int], top_k: int) -> tuple[TokenLogprob | None, ...]:
    """Each prompt token's log-probability given the tokens before it, from ``logits``
    (``[len(prompt_ids) - 1, vocab]``: the positions that predict prompt tokens 1, 2, ...); the
    first token has none (``None``), as in vLLM's answers."""
    targets = list(prompt_ids[1:])
    out: list[TokenLogprob | None] = [None]
    for start in range(0, len(targets), _CHUNK):  # a float32 copy of a chunk, not of the whole prompt
        out += chosen_logprobs(logits[start:start + _CHUNK], [(top_k, t) for t in targets[start:start + _CHUNK]])
    return tuple(out)
