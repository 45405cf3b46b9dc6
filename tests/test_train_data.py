"""Instruction data: every row shape checked with file:line errors and put in TRL's shape; the prompt template."""

from __future__ import annotations

import hashlib
import json

import pytest

from adapterhub.datasets.demo import DEMO_TASKS, REFUSAL, make_rows, write_demo_datasets
from adapterhub.errors import TrainingDataError
from adapterhub.train.data import data_digest, encode_prompt, load_examples, render_prompt


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.fixture(scope="module")
def tokenizer(tiny_base):
    from adapterhub.train.trainer import load_tokenizer

    return load_tokenizer(str(tiny_base))


def test_every_row_shape_becomes_a_trl_row(tmp_path):
    f = _write(tmp_path / "d.jsonl", [
        json.dumps({"instruction": "Shout.", "input": "hi", "output": "HI"}),
        "",
        json.dumps({"instruction": "Say yes.", "output": "yes"}),
        json.dumps({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                                 {"role": "assistant", "content": "4"}]}),
        json.dumps({"conversations": [{"from": "human", "value": "a?"}, {"from": "gpt", "value": "b"},
                                      {"from": "user", "value": "c?"}, {"from": "assistant", "value": "d"}]}),
    ])
    rows = load_examples(f)
    assert [r.response for r in rows] == ["HI", "yes", "4", "d"]
    assert rows[0].row == {"messages": [{"role": "user", "content": "Shout.\n\nhi"},
                                        {"role": "assistant", "content": "HI"}]}
    assert rows[1].prompt == ({"role": "user", "content": "Say yes."},)
    assert [m["role"] for m in rows[2].prompt] == ["system", "user"]
    assert [m["role"] for m in rows[3].row["messages"]] == ["user", "assistant", "user", "assistant"]
    assert {r.kind for r in rows} == {"messages"}
    assert rows[2].source == f"{f}:4"


def test_prompt_completion_rows_keep_their_shape(tmp_path):
    text = load_examples(_write(tmp_path / "t.jsonl", [json.dumps({"prompt": "The sky is", "completion": " blue."})]))
    assert text[0].kind == "text" and text[0].prompt == "The sky is" and text[0].response == " blue."
    chat = {"prompt": [{"role": "user", "content": "Sky?"}], "completion": [{"role": "assistant", "content": "Blue"}]}
    rows = load_examples(_write(tmp_path / "c.jsonl", [json.dumps(chat)]))
    assert rows[0].kind == "prompt-completion" and rows[0].row == chat and rows[0].response == "Blue"


def test_a_file_is_one_trl_kind(tmp_path):
    f = _write(tmp_path / "mixed.jsonl", [json.dumps({"instruction": "a", "output": "b"}),
                                          json.dumps({"prompt": "x", "completion": "y"})])
    with pytest.raises(TrainingDataError, match=r"mixed.jsonl:2: a text row cannot follow messages rows"):
        load_examples(f)


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"instruction": "x"', "not valid JSON"),
        ('["instruction", "output"]', "must be a JSON object"),
        ('{"instruction": "x"}', 'missing field "output"'),
        ('{"output": "y"}', 'missing field "instruction"'),
        ('{"instruction": 3, "output": "y"}', 'field "instruction" must be a string, not int'),
        ('{"instruction": "x", "input": null, "output": "y"}', 'field "input" must be a string, not NoneType'),
        ('{"instruction": "x", "output": ""}', 'field "output" is empty'),
        ('{"text": "x"}', 'expected "instruction"/"output"'),
        ('{"conversations": [{"from": "bot", "value": "x"}]}', "role 'bot'"),
        ('{"conversations": [{"from": "human", "value": "x"}, {"from": "gpt"}]}', 'missing field "value"'),
        ('{"prompt": "x"}', 'missing field "completion"'),
        ('{"prompt": "x", "completion": [{"role": "assistant", "content": "y"}]}', "both be strings or both"),
        ('{"prompt": [{"role": "user", "content": "x"}], "completion": [{"role": "user", "content": "y"}]}',
         "one non-empty assistant message"),
        ('{"messages": []}', "non-empty list"),
        ('{"messages": [{"role": "user", "content": "x"}]}', "last message must be the assistant"),
        ('{"messages": [{"role": "assistant", "content": "x"}]}', "need a prompt"),
        ('{"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}', "role 'robot'"),
        ('{"messages": [{"role": "user", "content": 1}, {"role": "assistant", "content": "y"}]}', "must be a string"),
    ],
)
def test_a_bad_row_names_file_and_line(tmp_path, line, message):
    good = json.dumps({"instruction": "a", "output": "b"})
    f = _write(tmp_path / "bad.jsonl", [good, good, line])
    with pytest.raises(TrainingDataError) as e:
        load_examples(f)
    assert f"{f}:3: " in str(e.value)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_empty_and_missing_files_are_errors(tmp_path):
    with pytest.raises(TrainingDataError, match="empty"):
        load_examples(_write(tmp_path / "empty.jsonl", ["", "  "]))
    with pytest.raises(TrainingDataError, match="no such data file"):
        load_examples(tmp_path / "nope.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(TrainingDataError, match="not UTF-8"):
        load_examples(tmp_path / "bin.jsonl")


def test_prompt_uses_the_base_chat_template(tokenizer):
    messages = [{"role": "user", "content": "Shout.\n\nhi"}]
    assert render_prompt(tokenizer, messages) == "### user:\nShout.\n\nhi\n### assistant:\n"


def test_alpaca_template_when_the_tokenizer_has_none(tokenizer):
    import copy

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    text = render_prompt(plain, [{"role": "user", "content": "Do it."}])
    assert text == ("<|bos|>Below is an instruction that describes a task. Write a response that appropriately "
                    "completes the request.\n\n### Instruction:\nDo it.\n\n### Response:\n")
    assert encode_prompt(plain, [{"role": "user", "content": "Do it."}])[0] == tokenizer.bos_token_id


def test_data_digest_is_the_file_sha256(tmp_path):
    f = _write(tmp_path / "d.jsonl", ['{"instruction": "a", "output": "b"}'])
    assert data_digest(f) == "sha256:" + hashlib.sha256(f.read_bytes()).hexdigest()


def test_demo_datasets_are_deterministic_and_splits_do_not_overlap(tmp_path):
    a = write_demo_datasets(tmp_path / "a")
    b = write_demo_datasets(tmp_path / "b")
    for task in DEMO_TASKS:
        assert a[task].train.read_bytes() == b[task].train.read_bytes()
        train, held_out = make_rows(task)
        assert not {(r["instruction"], r["input"]) for r in train} & {(r["instruction"], r["input"]) for r in held_out}
        assert len(load_examples(a[task].train)) == len(train) and len(load_examples(a[task].eval)) == len(held_out)
    assert make_rows("uppercase", seed=1) != make_rows("uppercase", seed=0)
    assert {r["output"] for r in make_rows("refusal")[0]} == {REFUSAL}
    assert {r["output"] for r in make_rows("sentiment")[0]} == {"positive", "negative"}
