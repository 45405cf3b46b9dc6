"""Evaluation that tells a user whether an adapter is any good: loss, perplexity, exact match.

- ``loss``: mean cross-entropy per response token (prompt tokens are masked exactly as in
  training), so it is comparable between the adapter and the bare base.
- ``perplexity``: ``exp(loss)``.
- ``exact_match``: share of rows whose greedy generation, decoded without special tokens and
  stripped of surrounding whitespace, equals the reference response stripped the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from .data import IGNORE_INDEX, EncodedRow, Example, encode_prompt

__all__ = ["EvalResult", "evaluate_model", "greedy_answers"]


@dataclass(frozen=True)
class EvalResult:
    loss: float
    perplexity: float
    exact_match: float
    rows: int

    def metrics(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}loss": self.loss, f"{prefix}perplexity": self.perplexity,
                f"{prefix}exact_match": self.exact_match}


def _batches(items: Sequence, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _response_loss(model: Any, rows: Sequence[EncodedRow], pad_id: int, batch_size: int) -> float:
    import torch

    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in _batches(rows, batch_size):
        width = max(len(r.input_ids) for r in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):
            ids[i, : len(r.input_ids)] = torch.tensor(r.input_ids)
            labels[i, : len(r.labels)] = torch.tensor(r.labels)
            mask[i, : len(r.input_ids)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logits = logits[:, logits.size(1) - width :]  # a soft prompt adds its virtual positions in front
        shifted = labels[:, 1:].to(device)
        ce = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)), shifted.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        total += ce.item()
        count += int((shifted != IGNORE_INDEX).sum())
    return total / max(count, 1)


def _soft_prompt(model: Any) -> Any | None:
    """The active soft prompt's vectors ``(n_virtual, hidden)``, or None when no soft prompt is active."""
    config = getattr(model, "active_peft_config", None)
    if config is None or not config.is_prompt_learning:
        return None
    if getattr(model.forward, "__self__", model) is not model:  # inside PeftModel.disable_adapter()
        return None
    return model.get_prompt(batch_size=1)[0]


def _generate_with_soft_prompt(model: Any, soft: Any, encoded: list[list[int]], pad_id: int, **kw: Any) -> Any:
    """Greedy decoding of ``[pad..., soft prompt, prompt]`` through the base model.

    ``PeftModel.generate`` for prompt tuning (peft 0.21 with transformers 5) decodes garbage after
    the first token although the teacher-forced forward is right, so the soft prompt is put in
    front of the prompt's embeddings here and the base model decodes; the test suite checks the
    result against a step-by-step greedy loop over ``PeftModel``'s own forward.
    """
    import torch

    base = model.get_base_model()
    embed = base.get_input_embeddings()
    device = soft.device
    width = soft.size(0) + max(len(e) for e in encoded)
    rows, masks = [], []
    for e in encoded:
        pad = width - soft.size(0) - len(e)
        ids = torch.tensor([pad_id] * pad + e, device=device)
        vectors = embed(ids)
        rows.append(torch.cat([vectors[:pad], soft.to(vectors.dtype), vectors[pad:]]))
        masks.append(torch.tensor([0] * pad + [1] * (width - pad), device=device))
    return base.generate(inputs_embeds=torch.stack(rows), attention_mask=torch.stack(masks), **kw)


def greedy_answers(model: Any, tokenizer: Any, prompts: Sequence[Sequence[dict[str, str]]], max_new_tokens: int,
                   batch_size: int = 32) -> list[str]:
    """Greedy generations for chat prompts, batched with left padding (LoRA, soft prompt or bare base)."""
    import torch

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    options = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id,
                   eos_token_id=tokenizer.eos_token_id)
    soft = _soft_prompt(model)
    answers: list[str] = []
    for batch in _batches(list(prompts), batch_size):
        encoded = [encode_prompt(tokenizer, m) for m in batch]
        if soft is not None:
            new_tokens = _generate_with_soft_prompt(model, soft, encoded, pad_id, **options)
        else:
            width = max(len(e) for e in encoded)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, e in enumerate(encoded):
                ids[i, width - len(e) :] = torch.tensor(e)
                mask[i, width - len(e) :] = 1
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **options)
            new_tokens = out[:, width:]
        answers += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return answers


def evaluate_model(model: Any, tokenizer: Any, examples: Sequence[Example], rows: Sequence[EncodedRow],
                   batch_size: int = 32) -> EvalResult:
    """Loss and perplexity on ``rows``, exact match of greedy answers to ``examples``' prompts."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            loss = _response_loss(model, rows, pad_id, batch_size)
            longest = max(len(tokenizer(e.response, add_special_tokens=False)["input_ids"]) for e in examples)
            answers = greedy_answers(model, tokenizer, [e.messages for e in examples], longest + 8, batch_size)
    finally:
        model.train(was_training)
    hits = sum(a.strip() == e.response.strip() for a, e in zip(answers, examples))
    return EvalResult(loss=loss, perplexity=math.exp(min(loss, 50.0)), exact_match=hits / len(examples),
                      rows=len(examples))
