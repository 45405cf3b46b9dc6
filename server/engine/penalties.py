"""OpenAI's presence and frequency penalties and ``logit_bias``, applied to one row's logits.

They act on the row alone (its own logits and its own generated tokens), so a penalty on one
request changes nothing for the others in the batch. The definition is OpenAI's:
``logit[t] + bias[t] - frequency_penalty * count[t] - presence_penalty * (count[t] > 0)``, where
``count`` counts the tokens this answer generated so far (not the prompt's), as vLLM does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from .request import SamplingParams

__all__ = ["adjust_logits"]


def adjust_logits(logits: torch.Tensor, params: SamplingParams, generated: Sequence[int]) -> torch.Tensor:
    """The row's logits (``[vocab]``) in float32 with its biases and penalties applied; a token id
    outside the vocabulary raises ``IndexError`` (the row fails, not the batch)."""
    x = logits.float().clone()
    vocab = x.shape[-1]
    if params.logit_bias:
        ids = torch.tensor([t for t, _ in params.logit_bias], device=x.device)
        if int(ids.max()) >= vocab:
            raise IndexError(f"logit_bias names token {int(ids.max())}, outside the vocabulary of {vocab}")
        x.index_add_(0, ids, torch.tensor([b for _, b in params.logit_bias], device=x.device))
    if generated and (params.presence_penalty or params.frequency_penalty):
        counts = torch.bincount(torch.tensor(list(generated), device=x.device), minlength=vocab)[:vocab].float()
        x -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0).float()
    return x
