"""The row shapes instruction data comes in, each checked and turned into one of TRL's two shapes.

TRL's ``SFTTrainer`` trains on ``{"messages": [...]}`` (conversational language modelling; with
``assistant_only_loss`` every assistant turn is learned) or ``{"prompt": ..., "completion": ...}``
(the loss on the completion only; both strings, or both lists of messages). The shapes read here:

- Alpaca ``{"instruction", "input" (optional), "output"}`` -> ``messages`` (user: the instruction,
  then a blank line and the input when it is not empty; assistant: the output);
- ``messages`` (``system``/``user``/``assistant`` turns ending with the assistant's) -> itself;
- ShareGPT ``{"conversations": [{"from": "human"|"gpt"|"system"|..., "value": str}]}`` -> ``messages``
  (axolotl's and LLaMA-Factory's role names mapped to TRL's);
- ``prompt``/``completion`` -> itself (a completion given as messages must be one assistant message).

Every problem raises ``TrainingDataError`` naming the row (``file:line``), in one line.
"""

from __future__ import annotations

from typing import Any

from ..errors import TrainingDataError

__all__ = ["ROLES", "SHAREGPT_ROLES", "row_kind", "to_trl_row", "messages_to_sharegpt", "row_to_messages"]

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_SHAREGPT_NAMES = {"user": "human", "assistant": "gpt", "system": "system"}


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


def _alpaca(row: dict, source: str) -> dict[str, Any]:
    instruction = _text_field(row, "instruction", source)
    extra = _text_field(row, "input", source, required=False)
    output = _text_field(row, "output", source)
    if not instruction.strip():
        raise _fail(source, 'field "instruction" is empty')
    if not output.strip():
        raise _fail(source, 'field "output" is empty')
    prompt = instruction + ("\n\n" + extra if extra.strip() else "")
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]}


def _turns(value: Any, field: str, source: str, role_key: str, text_key: str, roles: dict[str, str]) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise _fail(source, f'field "{field}" must be a non-empty list')
    checked = []
    for i, m in enumerate(value):
        where = f"{source}: {field}[{i}]"
        if not isinstance(m, dict):
            raise TrainingDataError(f'{where} must be an object with "{role_key}" and "{text_key}"')
        role = _text_field(m, role_key, where)
        if role not in roles:
            raise TrainingDataError(f"{where}: role {role!r} is not one of {', '.join(roles)}")
        checked.append({"role": roles[role], "content": _text_field(m, text_key, where)})
    return checked


def _conversation(turns: list[dict], source: str) -> dict[str, Any]:
    if turns[-1]["role"] != "assistant":
        raise _fail(source, "the last message must be the assistant's response")
    if not turns[-1]["content"].strip():
        raise _fail(source, "the assistant's response is empty")
    if len(turns) < 2 or turns[0]["role"] == "assistant":
        raise _fail(source, "messages need a prompt before the assistant's response")
    return {"messages": turns}


def _prompt_completion(row: dict, source: str) -> dict[str, Any]:
    for key in ("prompt", "completion"):
        if key not in row:
            raise _fail(source, f'missing field "{key}"')
    prompt, completion = row["prompt"], row["completion"]
    if isinstance(prompt, str) and isinstance(completion, str):
        if not completion.strip():
            raise _fail(source, 'field "completion" is empty')
        return {"prompt": prompt, "completion": completion}
    if isinstance(prompt, list) and isinstance(completion, list):
        roles = {r: r for r in ROLES}
        prompt_turns = _turns(prompt, "prompt", source, "role", "content", roles)
        answer = _turns(completion, "completion", source, "role", "content", roles)
        if len(answer) != 1 or answer[0]["role"] != "assistant" or not answer[0]["content"].strip():
            raise _fail(source, 'field "completion" must be one non-empty assistant message')
        return {"prompt": prompt_turns, "completion": answer}
    raise _fail(source, '"prompt" and "completion" must both be strings or both be lists of messages, not '
                        f"{type(prompt).__name__} and {type(completion).__name__}")


def to_trl_row(row: Any, source: str) -> dict[str, Any]:
    """Check one parsed JSON row and return it in TRL's shape (``messages``, or ``prompt``/``completion``)."""
    if not isinstance(row, dict):
        raise _fail(source, f"a row must be a JSON object, not {type(row).__name__}")
    if "messages" in row:
        return _conversation(_turns(row["messages"], "messages", source, "role", "content",
                                    {r: r for r in ROLES}), source)
    if "conversations" in row:
        return _conversation(_turns(row["conversations"], "conversations", source, "from", "value",
                                    SHAREGPT_ROLES), source)
    if "prompt" in row or "completion" in row:
        return _prompt_completion(row, source)
    if "instruction" in row or "output" in row:
        return _alpaca(row, source)
    raise _fail(source, 'expected "instruction"/"output" (Alpaca), "messages" (chat), "conversations" (ShareGPT) '
                        'or "prompt"/"completion" fields')


def row_kind(trl_row: dict[str, Any]) -> str:
    """``messages``, ``prompt-completion`` (lists of messages) or ``text`` (string prompt and completion)."""
    if "messages" in trl_row:
        return "messages"
    return "text" if isinstance(trl_row["prompt"], str) else "prompt-completion"


def row_to_messages(trl_row: dict[str, Any]) -> list[dict[str, str]]:
    """The conversation of a row in TRL's shape; a text prompt/completion becomes one user and one assistant turn."""
    if "messages" in trl_row:
        return list(trl_row["messages"])
    if isinstance(trl_row["prompt"], str):
        return [{"role": "user", "content": trl_row["prompt"]}, {"role": "assistant", "content": trl_row["completion"]}]
    return list(trl_row["prompt"]) + list(trl_row["completion"])


def messages_to_sharegpt(messages: list[dict[str, str]]) -> dict[str, Any]:
    """``{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}]}`` (the names axolotl writes)."""
    return {"conversations": [{"from": _SHAREGPT_NAMES[m["role"]], "value": m["content"]} for m in messages]}
