"""Several adapters and the bare base, measured on the same rows, the results stored with the data's digest.

Per reference: exact match and ROUGE-L of greedy answers (the serving engine, mixed batches),
loss and perplexity (PEFT). ``base`` names the bare base model. The three kinds of adapter compare
on the same rows: a LoRA, a soft prompt, and a prompt template (the base reading the rows as the
template rewrites them). Each registry version gets
``eval.<sha256 hex of the data>.<metric>`` in its metrics (and, when the base was measured in
the same run, ``eval.<hex>.base_<metric>``), so results on different data never overwrite
each other and a page can rank adapters per task by the rows they were measured on.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

from ..errors import IncompatibleBase, TrainingConfigError
from ..train.data import data_digest, load_examples
from ..train.evaluate import answer_budget, answer_scores
from .generate import AnswerEngine, engine_answers

__all__ = ["BASE_REF", "EVAL_QUANTIZE", "EvalScore", "EvalReport", "evaluate_refs", "metric_key"]

BASE_REF = "base"
# The engine answers from the weights as stored, as PEFT computes the loss (``adapterhub eval --quantize``).
EVAL_QUANTIZE = "none"
METRICS = ("exact_match", "rouge_l", "loss", "perplexity")


@dataclass(frozen=True)
class EvalScore:
    ref: str
    adapter_type: str  # lora | prompt_tuning | prompt_template | base
    exact_match: float
    rouge_l: float
    loss: float
    perplexity: float
    answers: list[str]  # the greedy answer to each row, in order


@dataclass(frozen=True)
class EvalReport:
    data: str
    data_sha256: str
    rows: int
    base: str
    scores: list[EvalScore]

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data, "data_sha256": self.data_sha256, "rows": self.rows, "base": self.base,
                "scores": [asdict(s) for s in self.scores]}


def metric_key(digest: str, metric: str) -> str:
    """``eval.<64 hex>.<metric>``: where a version's result on one data file is stored."""
    return f"eval.{digest.removeprefix('sha256:')}.{metric}"


def _base_of(versions: Sequence[Any], base: str | None) -> str:
    names = {v.base.get("name") for v in versions if v is not None}
    if base is not None:
        return base
    if len(names) == 1 and None not in names:
        return names.pop()
    if not names:
        raise TrainingConfigError("evaluating only the bare base: say which with --base")
    raise IncompatibleBase(f"the adapters belong to different bases ({', '.join(sorted(map(str, names)))}); "
                           "evaluate each base's adapters separately")


def evaluate_refs(refs: Sequence[str], data_file: str | os.PathLike, *, registry: Any,
                  engine_for: Callable[[str], AnswerEngine], base: str | None = None, max_length: int = 512,
                  batch_size: int = 16, store: bool = True) -> EvalReport:
    """Measure every reference (``base``: the bare base) on ``data_file``; store the results unless ``store`` is off.

    ``engine_for(base)`` starts the engine that generates the answers (``adapterhub eval`` passes
    one over ``adapterhub.server.start_engine``): it is called once the references have said which
    base they share, and the engine is stopped once the answers are in, before PEFT loads the
    base again for the loss, so two copies of the model never share the memory.
    """
    from .loss import adapter_losses

    examples = load_examples(data_file)
    digest = data_digest(data_file)
    versions = [None if ref == BASE_REF else registry.resolve(ref) for ref in refs]
    base = _base_of(versions, base)
    engine = engine_for(base)
    try:
        adapters = [engine.resolve(None if v is None else v.ref) for v in versions]
        answers = engine_answers(engine, adapters, [e.prompt for e in examples],
                                 answer_budget(engine.tokenizer, examples))
        checked = [a.version for a in adapters]
    finally:
        engine.stop()
    del engine
    losses = adapter_losses(base, registry, checked, examples, max_length=max_length, batch_size=batch_size)
    references = [e.response for e in examples]
    scores = []
    for ref, version, said, loss in zip(refs, checked, answers, losses):
        exact, rouge = answer_scores(said, references)
        scores.append(EvalScore(ref=BASE_REF if version is None else version.ref,
                                adapter_type="base" if version is None else version.adapter_type,
                                exact_match=exact, rouge_l=rouge, loss=loss,
                                perplexity=math.exp(min(loss, 50.0)), answers=said))
    if store:
        _store(registry, checked, scores, digest, len(examples))
    return EvalReport(data=str(data_file), data_sha256=digest, rows=len(examples), base=base, scores=scores)


def _store(registry: Any, versions: Sequence[Any], scores: Sequence[EvalScore], digest: str, rows: int) -> None:
    bare = next((s for v, s in zip(versions, scores) if v is None), None)
    for version, score in zip(versions, scores):
        if version is None:
            continue
        metrics = {metric_key(digest, m): getattr(score, m) for m in METRICS if math.isfinite(getattr(score, m))}
        metrics[metric_key(digest, "rows")] = rows
        if bare is not None:
            metrics.update({metric_key(digest, f"base_{m}"): getattr(bare, m) for m in METRICS
                            if math.isfinite(getattr(bare, m))})
        registry.set_metrics(version.ref, metrics)
