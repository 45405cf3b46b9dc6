"""Evaluation that tells a user whether an adapter is any good: loss, perplexity, exact match, ROUGE-L.

- ``loss``: mean cross-entropy per trained token, on the rows as TRL prepared them (the same
  label masks as training), so it is comparable between the adapter and the bare base.
- ``perplexity``: ``exp(loss)``.
- ``exact_match``: share of rows whose greedy generation, decoded without special tokens and
  stripped of surrounding whitespace, equals the reference response stripped the same way.
- ``rouge_l``: mean ROUGE-L F-measure of those generations against the references (partial credit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from ..rouge import rouge_l
from .data import IGNORE_INDEX, Example, encode_prompt

__all__ = ["EvalResult", "answer_scores", "evaluate_model", "greedy_answers", "response_loss"]

Prompt = Sequence[dict[str, str]] | str


@dataclass(frozen=True)
class EvalResult:
    loss: float
    perplexity: float
    exact_match: float
    rouge_l: float
    rows: int

    def metrics(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}loss": self.loss, f"{prefix}perplexity": self.perplexity,
                f"{prefix}exact_match": self.exact_match, f"{prefix}rouge_l": self.rouge_l}


def answer_scores(answers: Sequence[str], references: Sequence[str]) -> tuple[float, float]:
    """Exact match (stripped) and mean ROUGE-L of ``answers`` against ``references``."""
    hits = sum(a.strip() == r.strip() for a, r in zip(answers, references))
    rouge = sum(rouge_l(a, r) for a, r in zip(answers, references))
    return hits / len(references), rouge / len(references)


def _batches(items: Sequence, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def response_loss(model: Any, rows: Sequence[dict[str, list[int]]], pad_id: int, batch_size: int) -> float:
    """Mean cross-entropy per labelled token of TRL-prepared rows (``input_ids``, ``labels``), batched with
    TRL's collator."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    collate = DataCollatorForLanguageModeling(pad_token_id=pad_id)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in _batches(rows, batch_size):
        inputs = collate([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in batch])
        ids, labels = inputs["input_ids"], inputs["labels"]
        width = ids.size(1)
        logits = model(input_ids=ids.to(device), attention_mask=inputs["attention_mask"].to(device)).logits.float()
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


def greedy_answers(model: Any, tokenizer: Any, prompts: Sequence[Prompt], max_new_tokens: int,
                   batch_size: int = 32) -> list[str]:
    """Greedy generations for chat (or text) prompts, batched with left padding (LoRA, soft prompt or bare base)."""
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


def evaluate_model(model: Any, tokenizer: Any, examples: Sequence[Example], rows: Sequence[dict[str, list[int]]],
                   batch_size: int = 32) -> EvalResult:
    """Loss and perplexity on TRL-prepared ``rows``, exact match and ROUGE-L of greedy answers to ``examples``'
    prompts."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            loss = response_loss(model, rows, pad_id, batch_size) if rows else math.nan
            answers = greedy_answers(model, tokenizer, [e.prompt for e in examples],
                                     answer_budget(tokenizer, examples), batch_size)
    finally:
        model.train(was_training)
    exact, rouge = answer_scores(answers, [e.response for e in examples])
    return EvalResult(loss=loss, perplexity=math.exp(min(loss, 50.0)), exact_match=exact, rouge_l=rouge,
                      rows=len(examples))


def answer_budget(tokenizer: Any, examples: Sequence[Example]) -> int:
    """New tokens to generate: the longest reference and some slack, so a near miss is seen in full."""
    return max(len(tokenizer(e.response, add_special_tokens=False)["input_ids"]) for e in examples) + 8
