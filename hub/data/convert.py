"""``adapterhub data convert``: Natural Instructions tasks and other row shapes into training rows.

Natural Instructions (Super-NaturalInstructions) keeps one JSON file per task with ``Definition``
(a list of phrasings of the instruction), ``Positive Examples`` / ``Negative Examples``
(``input``, ``output``, ``explanation``) and ``Instances`` (``id``, ``input``, ``output``: a list of
acceptable answers). A task becomes one Alpaca row per instance: the definition is the
instruction, followed by ``k_shot`` positive examples as a few-shot block, the instance's input
is the input and its first output the output.

FLAN-style templating: with ``templates`` (strings with ``{definition}``, ``{examples}`` and
``{input}``) or a ``Definition`` with several phrasings, each instance is rendered with one
phrasing and one template drawn with ``seed``, so a task yields a mix of phrasings; the chosen
ones are recorded in the row (``template``, ``phrasing``).

Rows of any shape ``adapterhub train`` reads convert to ``messages``, ``sharegpt``
(``conversations``) or ``prompt-completion`` (conversational); fields other than the
conversation (``source``, ``id``...) are carried over.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import TrainingDataError
from ..train.data import read_jsonl
from ..train.formats import messages_to_sharegpt, row_to_messages, to_trl_row

__all__ = ["TARGETS", "NI_FIELDS", "is_ni_task", "ni_task_rows", "convert_row", "convert_file"]

TARGETS = ("alpaca", "messages", "sharegpt", "prompt-completion")
NI_FIELDS = ("Definition", "Instances")
_CONVERSATION_KEYS = ("instruction", "input", "output", "messages", "conversations", "prompt", "completion")


def is_ni_task(doc: Any) -> bool:
    return isinstance(doc, dict) and all(k in doc for k in NI_FIELDS)


def _strings(value: Any, what: str, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise TrainingDataError(f"{where}: {what} must be a string or a non-empty list of strings")
    return value


def _few_shot(examples: Sequence[dict[str, Any]], k: int) -> str:
    shots = [f"Example {i} input: {e['input']}\nExample {i} output: {e['output']}"
             for i, e in enumerate(examples[:k], 1)]
    return "\n\n".join(shots)


def ni_task_rows(path: str | os.PathLike, *, k_shot: int = 0, templates: Sequence[str] = (), seed: int = 0,
                 max_instances: int = 0) -> Iterator[dict[str, Any]]:
    """The Alpaca rows of one Natural Instructions task file (see the module's docstring)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TrainingDataError(f"{path}: not a readable JSON file ({e.__class__.__name__})") from e
    if not is_ni_task(doc):
        raise TrainingDataError(f"{path}: not a Natural Instructions task (needs {', '.join(NI_FIELDS)})")
    phrasings = _strings(doc["Definition"], '"Definition"', str(path))
    positives = doc.get("Positive Examples") or []
    if not isinstance(positives, list) or not all(isinstance(e, dict) and isinstance(e.get("input"), str)
                                                  and isinstance(e.get("output"), str) for e in positives):
        raise TrainingDataError(f'{path}: "Positive Examples" must be a list of {{"input", "output"}} objects')
    if k_shot > len(positives):
        raise TrainingDataError(f"{path}: --k-shot {k_shot} but the task has {len(positives)} positive examples")
    instances = doc["Instances"]
    if not isinstance(instances, list):
        raise TrainingDataError(f'{path}: "Instances" must be a list')
    examples = _few_shot(positives, k_shot)
    rng = random.Random(f"{path.stem}:{seed}")
    for i, inst in enumerate(instances[: max_instances or None]):
        where = f'{path}: Instances[{i}]'
        if not isinstance(inst, dict) or not isinstance(inst.get("input"), str):
            raise TrainingDataError(f'{where} needs an "input" string')
        output = _strings(inst.get("output"), '"output"', where)[0]
        p = rng.randrange(len(phrasings))
        row: dict[str, Any] = {"source": f"ni:{path.stem}", "id": str(inst.get("id", i))}
        if templates:
            t = rng.randrange(len(templates))
            prompt = templates[t].format(definition=phrasings[p], examples=examples, input=inst["input"])
            row.update(instruction=prompt.strip(), input="", output=output, template=t)
        else:
            instruction = phrasings[p] + (f"\n\n{examples}" if examples else "")
            row.update(instruction=instruction, input=inst["input"], output=output)
        if len(phrasings) > 1:
            row["phrasing"] = p
        yield row


def load_templates(path: str | os.PathLike) -> list[str]:
    """A JSON list of templates (or ``{"templates": [...]}``), each naming only known fields."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TrainingDataError(f"{path}: not a readable JSON file ({e.__class__.__name__})") from e
    templates = doc.get("templates") if isinstance(doc, dict) else doc
    templates = _strings(templates, "the templates", str(path))
    for t in templates:
        try:
            t.format(definition="", examples="", input="")
        except (KeyError, IndexError, ValueError) as e:
            raise TrainingDataError(f"{path}: template {t[:40]!r} uses an unknown field or a bad brace ({e})") from e
    return templates


def convert_row(row: dict[str, Any], to: str, where: str) -> dict[str, Any]:
    """``row`` (any shape ``train`` reads) in shape ``to``, keeping its other fields."""
    messages = row_to_messages(to_trl_row(row, where))
    extra = {k: v for k, v in row.items() if k not in _CONVERSATION_KEYS}
    if to == "messages":
        return {"messages": messages, **extra}
    if to == "sharegpt":
        return {**messages_to_sharegpt(messages), **extra}
    if to == "prompt-completion":
        return {"prompt": messages[:-1], "completion": messages[-1:], **extra}
    if to == "alpaca":
        if len(messages) != 2 or messages[0]["role"] != "user":
            raise TrainingDataError(f"{where}: only a single user turn and its answer fit the Alpaca shape")
        return {"instruction": messages[0]["content"], "input": "", "output": messages[1]["content"], **extra}
    raise TrainingDataError(f"unknown target shape {to!r} (one of {', '.join(TARGETS)})")


def convert_file(path: str | os.PathLike, to: str, *, k_shot: int = 0, templates: Sequence[str] = (), seed: int = 0,
                 max_instances: int = 0) -> Iterator[dict[str, Any]]:
    """Rows of one input: a Natural Instructions task (``.json``) or a JSONL file of rows."""
    if str(path).endswith(".json"):
        for i, row in enumerate(ni_task_rows(path, k_shot=k_shot, templates=templates, seed=seed,
                                             max_instances=max_instances)):
            yield row if to == "alpaca" else convert_row(row, to, f"{path}: Instances[{i}]")
        return
    for row, where in read_jsonl(path):
        yield convert_row(row, to, where)
