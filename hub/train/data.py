"""Instruction data files: JSONL rows checked line by line and put in TRL's shape, before any model loads.

The row shapes (Alpaca, ``messages``, ShareGPT, ``prompt``/``completion``) are in ``formats``;
tokenizing, masking and truncating are TRL's (``sft.py``). A file trains as one of TRL's dataset
kinds, so chat rows (Alpaca, ``messages``, ShareGPT, freely mixed) and ``prompt``/``completion``
rows do not mix in one file: the first row that breaks the file's kind is named, and
``adapterhub data convert --to messages`` turns one into the other.

Every row is validated before training starts; a bad row raises ``TrainingDataError`` naming the
file and the 1-based line.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import TrainingDataError
from .formats import row_kind, to_trl_row
from .templates import encode_prompt, render_prompt

__all__ = ["IGNORE_INDEX", "Example", "read_jsonl", "load_examples", "data_kind", "data_digest", "encode_prompt",
           "render_prompt"]

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    """One row in TRL's shape, and where it came from (``file:line``, for messages about it)."""

    row: dict[str, Any]
    source: str

    @property
    def kind(self) -> str:
        return row_kind(self.row)

    @property
    def prompt(self) -> tuple[dict[str, str], ...] | str:
        """What generation starts from: the conversation before the last assistant turn, or the text prompt."""
        if "messages" in self.row:
            return tuple(self.row["messages"][:-1])
        return self.row["prompt"] if isinstance(self.row["prompt"], str) else tuple(self.row["prompt"])

    @property
    def response(self) -> str:
        """The reference answer: the last assistant turn, or the completion."""
        if "messages" in self.row:
            return self.row["messages"][-1]["content"]
        completion = self.row["completion"]
        return completion if isinstance(completion, str) else completion[-1]["content"]


def read_jsonl(path: str | Path) -> Iterator[tuple[Any, str]]:
    """``(parsed row, "file:line")`` for every non-blank line; a missing file, bad UTF-8 or bad JSON is one line."""
    path = Path(path)
    if not path.is_file():
        raise TrainingDataError(f"{path}: no such data file")
    try:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                source = f"{path}:{lineno}"
                try:
                    yield json.loads(line), source
                except json.JSONDecodeError as e:
                    raise TrainingDataError(f"{source}: not valid JSON ({e.msg} at column {e.colno})") from e
    except UnicodeDecodeError as e:
        raise TrainingDataError(f"{path}: not UTF-8 text ({e.reason})") from e


def data_kind(examples: list[Example]) -> str:
    """The file's TRL kind; the first row of another kind is refused (TRL prepares a dataset as one kind)."""
    kind, first = examples[0].kind, examples[0].source
    for ex in examples[1:]:
        if ex.kind != kind:
            raise TrainingDataError(
                f"{ex.source}: a {ex.kind} row cannot follow {kind} rows (first at {first}); TRL trains one kind "
                "per file (convert with `adapterhub data convert --to messages`)"
            )
    return kind


def load_examples(path: str | Path) -> list[Example]:
    """Read and check every row of a JSONL file (blank lines are skipped) and its kind."""
    examples = [Example(to_trl_row(row, source), source) for row, source in read_jsonl(path)]
    if not examples:
        raise TrainingDataError(f"{path}: no rows (the file is empty)")
    data_kind(examples)
    return examples


def data_digest(path: str | Path) -> str:
    """``sha256:<hex>`` of the data file's bytes: which data a registered adapter was trained on."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()
