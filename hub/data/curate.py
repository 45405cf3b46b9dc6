"""LIMA-style curation: a small, clean, deduplicated set rather than a large noisy one.

The steps run in this order, and every dropped row is counted under its reason:

1. exact duplicates: the same conversation after normalising case and whitespace;
2. near duplicates: a prompt whose ROUGE-L to an already kept prompt exceeds ``near_duplicate``
   (rows are compared in file order, the first one stays);
3. length bounds: the response's words outside ``min_words``..``max_words``;
4. per-source quotas: at most ``per_source`` rows from one source (the row's ``source`` field, or
   the file it came from), the first ones in file order;
5. a fixed-size sample: ``sample`` rows drawn with ``seed`` (same seed, same rows), kept in file order.

Rows may be in any shape ``adapterhub train`` reads; they are written back unchanged.
"""

from __future__ import annotations

import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..rouge import rouge_l
from ..train.formats import row_to_messages, to_trl_row

__all__ = ["CurateConfig", "CurateReport", "CuratedRow", "curate_rows"]


@dataclass(frozen=True)
class CuratedRow:
    row: dict[str, Any]  # as read
    source: str  # quota group
    where: str  # file:line


@dataclass(frozen=True)
class CurateConfig:
    near_duplicate: float = 0.9
    min_words: int = 1
    max_words: int = 0  # 0: no upper bound
    per_source: int = 0  # 0: no quota
    sample: int = 0  # 0: keep all
    seed: int = 0


@dataclass
class CurateReport:
    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # reason -> first dropped row's file:line


def _prompt_and_response(row: dict[str, Any], where: str) -> tuple[str, str]:
    messages = row_to_messages(to_trl_row(row, where))
    return "\n".join(m["content"] for m in messages[:-1]), messages[-1]["content"]


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def curate_rows(rows: list[CuratedRow], config: CurateConfig) -> tuple[list[CuratedRow], CurateReport]:
    """The rows that survive every step, in file order, and what was dropped and why."""
    report = CurateReport(read=len(rows))

    def drop(reason: str, r: CuratedRow) -> None:
        report.dropped[reason] += 1
        report.examples.setdefault(reason, r.where)

    seen: set[str] = set()
    kept_prompts: list[str] = []
    per_source: defaultdict[str, int] = defaultdict(int)
    survivors = []
    for r in rows:
        prompt, response = _prompt_and_response(r.row, r.where)
        key = _normal(prompt) + "\x00" + _normal(response)
        if key in seen:
            drop("exact duplicate", r)
            continue
        seen.add(key)
        if any(rouge_l(prompt, other) > config.near_duplicate for other in kept_prompts):
            drop(f"near duplicate (prompt ROUGE-L > {config.near_duplicate})", r)
            continue
        words = len(response.split())
        if words < config.min_words or (config.max_words and words > config.max_words):
            drop("response length out of bounds", r)
            continue
        if config.per_source and per_source[r.source] >= config.per_source:
            drop(f"over the quota of {config.per_source} for source {r.source}", r)
            continue
        kept_prompts.append(prompt)
        per_source[r.source] += 1
        survivors.append(r)
    if config.sample and len(survivors) > config.sample:
        chosen = set(random.Random(config.seed).sample(range(len(survivors)), config.sample))
        for i, r in enumerate(survivors):
            if i not in chosen:
                drop(f"not in the sample of {config.sample}", r)
        survivors = [r for i, r in enumerate(survivors) if i in chosen]
    report.kept = len(survivors)
    return survivors, report


def source_of(row: dict[str, Any], path: str | os.PathLike) -> str:
    """The quota group: the row's ``source`` field when it is a string, else the file's name."""
    value = row.get("source")
    return value if isinstance(value, str) and value else Path(path).name
