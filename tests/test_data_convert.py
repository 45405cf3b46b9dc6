"""``adapterhub data convert``: Natural Instructions tasks, FLAN-style template mixes, ShareGPT/prompt-completion <-> messages."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from click.testing import CliRunner

from adapterhub.cli.main import cli
from adapterhub.train.data import load_examples

TASK = {
    "Contributors": ["Test Author"], "Source": ["tiny"], "URL": ["https://example.org"], "Categories": ["Sentiment"],
    "Reasoning": [], "Input_language": ["English"], "Output_language": ["English"],
    "Instruction_language": ["English"], "Domains": ["Reviews"], "Instance License": ["CC BY 4.0"],
    "Definition": ["Label the review positive or negative.", "Is the sentiment of this review positive or negative?"],
    "Positive Examples": [{"input": "Great film.", "output": "positive", "explanation": "praise"},
                          {"input": "Dull book.", "output": "negative", "explanation": "complaint"}],
    "Negative Examples": [{"input": "Great film.", "output": "negative", "explanation": "wrong label"}],
    "Instances": [{"id": f"task1-{i}", "input": f"Review number {i}.", "output": ["positive" if i % 2 else "negative"]}
                  for i in range(24)],
}


def _run(*args: str):
    return CliRunner().invoke(cli, ["data", "convert", *args])


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_natural_instructions_task_becomes_rows_with_few_shot(tmp_path):
    task = tmp_path / "task001_review_sentiment.json"
    task.write_text(json.dumps({**TASK, "Definition": TASK["Definition"][:1]}))
    result = _run(str(task), "--k-shot", "2", "--max-instances", "3", "--out", str(tmp_path / "rows.jsonl"))
    assert result.exit_code == 0, result.output
    rows = _rows(tmp_path / "rows.jsonl")
    assert [r["id"] for r in rows] == ["task1-0", "task1-1", "task1-2"]
    assert rows[0]["instruction"] == ("Label the review positive or negative.\n\nExample 1 input: Great film.\n"
                                      "Example 1 output: positive\n\nExample 2 input: Dull book.\nExample 2 output: negative")
    assert (rows[1]["input"], rows[1]["output"], rows[1]["source"]) == ("Review number 1.", "positive",
                                                                        "ni:task001_review_sentiment")
    assert len(load_examples(tmp_path / "rows.jsonl")) == 3


def test_several_phrasings_and_templates_yield_a_seeded_mix(tmp_path):
    task = tmp_path / "task001.json"
    task.write_text(json.dumps(TASK))
    templates = tmp_path / "templates.json"
    templates.write_text(json.dumps(["{definition}\n\n{input}", "Instructions: {definition}\nText: {input}",
                                     "{input}\n\nQuestion: {definition}"]))
    outs = []
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert _run(str(task), "--templates", str(templates), "--seed", seed,
                    "--out", str(tmp_path / f"{name}.jsonl")).exit_code == 0
        outs.append((tmp_path / f"{name}.jsonl").read_text())
    assert outs[0] == outs[1] and outs[0] != outs[2]
    rows = [json.loads(line) for line in outs[0].splitlines()]
    assert set(Counter(r["template"] for r in rows)) == {0, 1, 2}
    assert set(Counter(r["phrasing"] for r in rows)) == {0, 1}
    row = next(r for r in rows if r["template"] == 1)
    assert row["instruction"] == f"Instructions: {TASK['Definition'][row['phrasing']]}\nText: {row['id'].replace('task1-', 'Review number ')}."


def test_sharegpt_prompt_completion_and_messages_convert_both_ways(tmp_path):
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a?"},
                    {"role": "assistant", "content": "A"}]
    src = tmp_path / "chat.jsonl"
    src.write_text(json.dumps({"messages": conversation, "source": "mine"}) + "\n")
    assert _run(str(src), "--to", "sharegpt", "--out", str(tmp_path / "share.jsonl")).exit_code == 0
    share = _rows(tmp_path / "share.jsonl")
    assert share == [{"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "a?"},
                                        {"from": "gpt", "value": "A"}], "source": "mine"}]
    assert _run(str(tmp_path / "share.jsonl"), "--to", "prompt-completion",
                "--out", str(tmp_path / "pc.jsonl")).exit_code == 0
    pc = _rows(tmp_path / "pc.jsonl")
    assert pc == [{"prompt": conversation[:2], "completion": conversation[2:], "source": "mine"}]
    assert _run(str(tmp_path / "pc.jsonl"), "--to", "messages", "--out", str(tmp_path / "back.jsonl")).exit_code == 0
    assert _rows(tmp_path / "back.jsonl") == [{"messages": conversation, "source": "mine"}]


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    not_ni = tmp_path / "other.json"
    not_ni.write_text(json.dumps({"Definition": ["x"]}))
    result = _run(str(not_ni), "--out", str(tmp_path / "out.jsonl"))
    assert result.exit_code != 0 and "not a Natural Instructions task (needs Definition, Instances)" in result.output
    assert result.output.strip().count("\n") == 0 and not (tmp_path / "out.jsonl").exists()
    task = tmp_path / "task.json"
    task.write_text(json.dumps(TASK))
    result = _run(str(task), "--k-shot", "5")
    assert result.exit_code != 0 and "--k-shot 5 but the task has 2 positive examples" in result.output
