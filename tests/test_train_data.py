"""Instruction data: row checks with file:line errors, the prompt template, response-only labels."""

from __future__ import annotations

import hashlib
import json

import pytest

from adapterhub.datasets.demo import DEMO_TASKS, REFUSAL, make_rows, write_demo_datasets
from adapterhub.errors import TrainingDataError
from adapterhub.train.data import IGNORE_INDEX, data_digest, encode_examples, encode_prompt, load_examples, render_prompt


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.fixture(scope="module")
def tokenizer(tiny_base):
    from adapterhub.train.trainer import load_tokenizer

    return load_tokenizer(str(tiny_base))


def test_alpaca_and_chat_rows_become_prompt_and_response(tmp_path):
    f = _write(tmp_path / "d.jsonl", [
        json.dumps({"instruction": "Shout.", "input": "hi", "output": "HI"}),
        "",
        json.dumps({"instruction": "Say yes.", "output": "yes"}),
        json.dumps({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                                 {"role": "assistant", "content": "4"}]}),
    ])
    rows = load_examples(f)
    assert [r.response for r in rows] == ["HI", "yes", "4"]
    assert rows[0].messages == ({"role": "user", "content": "Shout.\n\nhi"},)
    assert rows[1].messages == ({"role": "user", "content": "Say yes."},)
    assert [m["role"] for m in rows[2].messages] == ["system", "user"]
    assert rows[2].source == f"{f}:4"


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
    assert text.endswith("### Instruction:\nDo it.\n\n### Response:\n")


def test_labels_cover_only_the_response_and_its_end_token(tmp_path, tokenizer):
    f = _write(tmp_path / "d.jsonl", [json.dumps({"instruction": "Shout.", "input": "hi", "output": "HI"})])
    ex = load_examples(f)
    data = encode_examples(ex, tokenizer, max_length=512)
    row = data.rows[0]
    prompt = encode_prompt(tokenizer, ex[0].messages)
    assert row.input_ids[: len(prompt)] == prompt
    assert row.labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    response = row.labels[len(prompt):]
    assert response == row.input_ids[len(prompt):]
    assert tokenizer.decode(response[:-1]) == "HI" and response[-1] == tokenizer.eos_token_id
    assert (data.truncated, data.dropped) == (0, 0)


def test_truncation_is_counted_and_rows_without_response_are_dropped(tmp_path, tokenizer):
    short = json.dumps({"instruction": "a", "output": "b"})
    long_answer = json.dumps({"instruction": "a", "output": "x" * 100})
    long_prompt = json.dumps({"instruction": "a" * 200, "output": "b"})
    ex = load_examples(_write(tmp_path / "d.jsonl", [short, long_answer, long_prompt]))
    prompt_len = len(encode_prompt(tokenizer, ex[0].messages))
    data = encode_examples(ex, tokenizer, max_length=prompt_len + 10)
    assert (data.truncated, data.dropped) == (2, 1)
    assert len(data.rows) == 2
    assert all(len(r.input_ids) <= prompt_len + 10 for r in data.rows)


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
