"""Instruction data: JSONL rows checked line by line, rendered with a prompt template, tokenized with
the loss on the response only.

Two row shapes are accepted (one per line, mixed freely):

- Alpaca: ``{"instruction": str, "input": str (optional), "output": str}``; the user turn is the
  instruction, then a blank line and the input when the input is not empty.
- Chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}`` ending with an
  assistant message; that last message is the response, everything before it is the prompt.

The prompt is the base's chat template with ``add_generation_prompt=True`` when the tokenizer has
one, else the Alpaca template (``ALPACA_TEMPLATE``). The training sequence is the prompt's tokens,
then the response's tokens and the end-of-sequence token; labels are ``-100`` on the prompt, so the
loss (and perplexity) measure only what the adapter should answer. Sequences longer than
``max_length`` are cut at the end and counted; a row left with no response token is dropped (and
counted as dropped) since it would teach nothing.

Every row is validated before any training starts; a bad row raises ``TrainingDataError`` naming
the file and the 1-based line.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import TrainingDataError

__all__ = [
    "ALPACA_TEMPLATE",
    "IGNORE_INDEX",
    "Example",
    "EncodedRow",
    "EncodedData",
    "load_examples",
    "render_prompt",
    "encode_examples",
    "data_digest",
]

IGNORE_INDEX = -100
_ROLES = ("system", "user", "assistant")

# Used when the tokenizer has no chat template (plain pre-trained bases).
ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{prompt}\n\n### Response:\n"
)


@dataclass(frozen=True)
class Example:
    """One training example: the conversation up to the response, and the response to learn."""

    messages: tuple[dict[str, str], ...]
    response: str
    source: str  # "file:line", for messages about this row


@dataclass(frozen=True)
class EncodedRow:
    input_ids: list[int]
    labels: list[int]

    @property
    def response_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


@dataclass(frozen=True)
class EncodedData:
    """Tokenized rows plus what truncation did to them."""

    rows: list[EncodedRow]
    truncated: int  # rows cut to max_length (still used)
    dropped: int  # rows with no response token left after the cut (not used)

    @property
    def tokens(self) -> int:
        return sum(len(r.input_ids) for r in self.rows)


def _fail(source: str, message: str) -> TrainingDataError:
    return TrainingDataError(f"{source}: {message}")


def _text_field(row: dict, key: str, source: str, required: bool = True) -> str:
    if key not in row:
        if required:
            raise _fail(source, f'missing field "{key}"')
        return ""
    value = row[key]
    if not isinstance(value, str):
        raise _fail(source, f'field "{key}" must be a string, not {type(value).__name__}')
    return value


def _from_alpaca(row: dict, source: str) -> Example:
    instruction = _text_field(row, "instruction", source)
    extra = _text_field(row, "input", source, required=False)
    output = _text_field(row, "output", source)
    if not instruction.strip():
        raise _fail(source, 'field "instruction" is empty')
    if not output.strip():
        raise _fail(source, 'field "output" is empty')
    prompt = instruction + ("\n\n" + extra if extra.strip() else "")
    return Example(({"role": "user", "content": prompt},), output, source)


def _from_chat(row: dict, source: str) -> Example:
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise _fail(source, 'field "messages" must be a non-empty list')
    checked = []
    for i, m in enumerate(messages):
        where = f"{source}: messages[{i}]"
        if not isinstance(m, dict):
            raise TrainingDataError(f'{where} must be an object with "role" and "content"')
        role = _text_field(m, "role", f"{where}")
        if role not in _ROLES:
            raise TrainingDataError(f"{where}: role {role!r} is not one of {', '.join(_ROLES)}")
        checked.append({"role": role, "content": _text_field(m, "content", where)})
    if checked[-1]["role"] != "assistant":
        raise _fail(source, "the last message must be the assistant's response")
    if not checked[-1]["content"].strip():
        raise _fail(source, "the assistant's response is empty")
    if len(checked) < 2:
        raise _fail(source, "messages need a prompt before the assistant's response")
    return Example(tuple(checked[:-1]), checked[-1]["content"], source)


def _parse_row(line: str, source: str) -> Example:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise _fail(source, f"not valid JSON ({e.msg} at column {e.colno})") from e
    if not isinstance(row, dict):
        raise _fail(source, f"a row must be a JSON object, not {type(row).__name__}")
    if "messages" in row:
        return _from_chat(row, source)
    if "instruction" in row or "output" in row:
        return _from_alpaca(row, source)
    raise _fail(source, 'expected "instruction"/"output" (Alpaca) or "messages" (chat) fields')


def load_examples(path: str | Path) -> list[Example]:
    """Read and check every row of a JSONL file (blank lines are skipped)."""
    path = Path(path)
    if not path.is_file():
        raise TrainingDataError(f"{path}: no such data file")
    examples = []
    try:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    examples.append(_parse_row(line, f"{path}:{lineno}"))
    except UnicodeDecodeError as e:
        raise TrainingDataError(f"{path}: not UTF-8 text ({e.reason})") from e
    if not examples:
        raise TrainingDataError(f"{path}: no rows (the file is empty)")
    return examples


def render_prompt(tokenizer: Any, messages: Sequence[dict[str, str]]) -> str:
    """The prompt text the model sees before its response (chat template, else Alpaca)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    prompt = "\n\n".join(m["content"] for m in messages)
    return ALPACA_TEMPLATE.format(prompt=prompt)


def _ids(tokenizer: Any, text: str) -> list[int]:
    # A chat template writes its own special tokens (bos, headers) into the text.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_prompt(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of the prompt (what generation starts from)."""
    ids = _ids(tokenizer, render_prompt(tokenizer, messages))
    bos = getattr(tokenizer, "bos_token_id", None)
    if not getattr(tokenizer, "chat_template", None) and bos is not None:
        ids = [bos] + ids
    return ids


def encode_examples(examples: Sequence[Example], tokenizer: Any, max_length: int) -> EncodedData:
    """Tokenize for causal-LM training with labels only on the response and its end token."""
    if tokenizer.eos_token_id is None:
        raise TrainingDataError("the base's tokenizer has no end-of-sequence token to end responses with")
    rows, truncated, dropped = [], 0, 0
    for ex in examples:
        prompt = encode_prompt(tokenizer, ex.messages)
        response = _ids(tokenizer, ex.response) + [tokenizer.eos_token_id]
        ids = prompt + response
        labels = [IGNORE_INDEX] * len(prompt) + response
        if len(ids) > max_length:
            truncated += 1
            ids, labels = ids[:max_length], labels[:max_length]
        row = EncodedRow(ids, labels)
        if row.response_tokens == 0:
            dropped += 1
            continue
        rows.append(row)
    return EncodedData(rows, truncated, dropped)


def data_digest(path: str | Path) -> str:
    """``sha256:<hex>`` of the data file's bytes: which data a registered adapter was trained on."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()
