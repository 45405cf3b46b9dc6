"""Label masks per data format equal what TRL's SFTTrainer produces for the same rows in TRL's own format.

Ours: the file read by ``load_examples`` and handed to TRL by ``hub.train.sft.build_trainer`` (what
``adapterhub train`` runs). TRL's: ``trl.SFTTrainer`` built directly on the rows written the way
TRL's documentation writes them. Both on the tiny base; each also checked against the tokens that
must be learned, decoded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapterhub.train.config import TrainConfig
from adapterhub.train.data import load_examples
from adapterhub.train.sft import build_trainer

NI_TASK = {
    "Contributors": ["Test Author"],
    "Source": ["tiny"],
    "URL": ["https://example.org"],
    "Categories": ["Text Transformation"],
    "Reasoning": [],
    "Definition": ["Write the given word in capital letters."],
    "Input_language": ["English"],
    "Output_language": ["English"],
    "Instruction_language": ["English"],
    "Domains": ["Words"],
    "Positive Examples": [{"input": "cat", "output": "CAT", "explanation": "Every letter is a capital."}],
    "Negative Examples": [{"input": "dog", "output": "Dog", "explanation": "Only the first letter is a capital."}],
    "Instances": [{"id": "task999-1", "input": "bird", "output": ["BIRD"]},
                  {"id": "task999-2", "input": "fish", "output": ["FISH", "FISH."]}],
    "Instance License": ["Apache 2.0"],
}


@pytest.fixture(scope="module")
def tokenizer(tiny_base):
    from adapterhub.train.trainer import load_tokenizer

    return load_tokenizer(str(tiny_base))


@pytest.fixture(scope="module")
def model(tiny_base):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_base)


def _ours(model, tokenizer, path: Path, out: Path) -> list[tuple[list[int], list[int]]]:
    trainer = build_trainer(model, tokenizer, load_examples(path), out, TrainConfig(max_length=512))
    return [(r["input_ids"], r["labels"]) for r in trainer.train_dataset]


def _trl(model, tokenizer, rows: list[dict], out: Path, **config) -> list[tuple[list[int], list[int]]]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(out), max_length=512, report_to=[], use_cpu=True, bf16=False,
                     activation_checkpointing=False, **config)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    return [(r["input_ids"], r["labels"]) for r in trainer.train_dataset]


def _learned(tokenizer, encoded) -> list[str]:
    return [tokenizer.decode([t for t in labels if t != -100]) for _, labels in encoded]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_alpaca_labels_equal_trl_on_the_same_conversation(model, tokenizer, tmp_path):
    rows = [{"instruction": "Shout.", "input": "hi", "output": "HI"}, {"instruction": "Say yes.", "output": "yes"}]
    ours = _ours(model, tokenizer, _jsonl(tmp_path / "a.jsonl", rows), tmp_path / "o")
    native = [{"messages": [{"role": "user", "content": "Shout.\n\nhi"}, {"role": "assistant", "content": "HI"}]},
              {"messages": [{"role": "user", "content": "Say yes."}, {"role": "assistant", "content": "yes"}]}]
    assert ours == _trl(model, tokenizer, native, tmp_path / "t", assistant_only_loss=True)
    assert _learned(tokenizer, ours) == ["HI<|eos|>", "yes<|eos|>"]


def test_multi_turn_messages_learn_every_assistant_turn_as_trl_does(model, tokenizer, tmp_path):
    conversation = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a?"},
                                 {"role": "assistant", "content": "A"}, {"role": "user", "content": "b?"},
                                 {"role": "assistant", "content": "BB"}]}
    ours = _ours(model, tokenizer, _jsonl(tmp_path / "m.jsonl", [conversation]), tmp_path / "o")
    assert ours == _trl(model, tokenizer, [conversation], tmp_path / "t", assistant_only_loss=True)
    assert _learned(tokenizer, ours) == ["A<|eos|>BB<|eos|>"]


def test_prompt_completion_labels_equal_trl(model, tokenizer, tmp_path):
    text = [{"prompt": "The sky is", "completion": " blue."}, {"prompt": "Grass is", "completion": " green."}]
    ours = _ours(model, tokenizer, _jsonl(tmp_path / "p.jsonl", text), tmp_path / "o1")
    assert ours == _trl(model, tokenizer, text, tmp_path / "t1")
    assert _learned(tokenizer, ours) == [" blue.<|eos|>", " green.<|eos|>"]

    chat = [{"prompt": [{"role": "user", "content": "Sky?"}], "completion": [{"role": "assistant", "content": "Blue"}]}]
    ours = _ours(model, tokenizer, _jsonl(tmp_path / "c.jsonl", chat), tmp_path / "o2")
    assert ours == _trl(model, tokenizer, chat, tmp_path / "t2")
    assert _learned(tokenizer, ours)[0].startswith("Blue<|eos|>")


def test_sharegpt_labels_equal_trl_reading_conversations_itself(model, tokenizer, tmp_path):
    # TRL reads ShareGPT's from/value (maybe_convert_to_chatml) when the role names are its own.
    native = [{"conversations": [{"from": "user", "value": "a?"}, {"from": "assistant", "value": "A"},
                                 {"from": "user", "value": "b?"}, {"from": "assistant", "value": "B"}]}]
    axolotl = [{"conversations": [{"from": "human", "value": "a?"}, {"from": "gpt", "value": "A"},
                                  {"from": "human", "value": "b?"}, {"from": "gpt", "value": "B"}]}]
    from trl import maybe_convert_to_chatml

    ours = _ours(model, tokenizer, _jsonl(tmp_path / "s.jsonl", axolotl), tmp_path / "o")
    # TRL's assistant_only_loss checks the raw rows before converting them, so convert with TRL's own function.
    chatml = [maybe_convert_to_chatml(json.loads(json.dumps(r))) for r in native]
    assert ours == _trl(model, tokenizer, chatml, tmp_path / "t", assistant_only_loss=True)
    assert _learned(tokenizer, ours) == ["A<|eos|>B<|eos|>"]


def test_a_natural_instructions_task_file_trains_with_trl_labels(model, tokenizer, tmp_path):
    from adapterhub.data.convert import convert_file

    task = tmp_path / "task999_uppercase.json"
    task.write_text(json.dumps(NI_TASK))
    rows = list(convert_file(task, "alpaca", k_shot=1))
    converted = _jsonl(tmp_path / "ni.jsonl", rows)
    ours = _ours(model, tokenizer, converted, tmp_path / "o")
    instruction = ("Write the given word in capital letters.\n\nExample 1 input: cat\nExample 1 output: CAT")
    native = [{"messages": [{"role": "user", "content": f"{instruction}\n\n{i['input']}"},
                            {"role": "assistant", "content": i["output"][0]}]} for i in NI_TASK["Instances"]]
    assert ours == _trl(model, tokenizer, native, tmp_path / "t", assistant_only_loss=True)
    assert _learned(tokenizer, ours) == ["BIRD<|eos|>", "FISH<|eos|>"]
    assert [r["id"] for r in rows] == ["task999-1", "task999-2"] and rows[0]["source"] == "ni:task999_uppercase"


def test_a_template_without_markers_trains_single_turns_as_prompt_completion(model, tokenizer, tmp_path):
    import copy

    from adapterhub.errors import TrainingConfigError

    unmarked = copy.copy(tokenizer)
    unmarked.chat_template = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] }}"
                              "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\n' }}{% endfor %}"
                              "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    single = [{"instruction": "Shout.", "input": "hi", "output": "HI"}]
    ours = _ours(model, unmarked, _jsonl(tmp_path / "a.jsonl", single), tmp_path / "o")
    native = [{"prompt": [{"role": "user", "content": "Shout.\n\nhi"}],
               "completion": [{"role": "assistant", "content": "HI"}]}]
    assert ours == _trl(model, unmarked, native, tmp_path / "t")
    multi = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "A"},
                          {"role": "user", "content": "b"}, {"role": "assistant", "content": "B"}]}
    with pytest.raises(TrainingConfigError, match=r"m.jsonl:1: several assistant turns need a chat template"):
        _ours(model, unmarked, _jsonl(tmp_path / "m.jsonl", [multi]), tmp_path / "o2")
