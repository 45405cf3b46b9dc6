"""Short real trainings on the tiny base: CLI, push with metrics, determinism, QLoRA, prompt tuning, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from adapterhub.cli.main import cli
from adapterhub.datasets.demo import make_rows
from adapterhub.registry import LocalRegistry
from adapterhub.train.data import data_digest

FAST = ["--max-steps", "4", "--batch-size", "4", "--lr", "1e-3", "--threads", "1", "--no-progress"]


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def data(tmp_path):
    train, held_out = make_rows("uppercase")
    return _jsonl(tmp_path / "train.jsonl", train[:24]), _jsonl(tmp_path / "eval.jsonl", held_out[:6])


def _train(tiny_base, data, out, *extra, name="upper"):
    train, held_out = data
    args = ["train", "--base", str(tiny_base), "--data", str(train), "--eval-data", str(held_out),
            "--name", name, "--task", "uppercase", "--output", str(out), "--json", *FAST, *extra]
    return CliRunner().invoke(cli, args)


def test_train_lora_push_stores_metrics_training_record_and_lineage(tiny_base, data, tmp_path, _private_registry):
    result = _train(tiny_base, data, tmp_path / "run", "--target-modules", "q_proj,v_proj", "--r", "4", "--push")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    m = doc["metrics"]
    for key in ("train_loss", "train_tokens_per_s", "eval_loss", "eval_perplexity", "eval_exact_match",
                "eval_rouge_l", "base_eval_exact_match", "base_eval_rouge_l", "truncated_rows"):
        assert key in m
    assert m["train_steps"] == 4 and m["train_rows"] == 24 and m["eval_rows"] == 6
    assert math.isclose(m["eval_perplexity"], math.exp(m["eval_loss"]), rel_tol=1e-9)
    assert m["train_tokens_per_s"] > 0

    version = LocalRegistry(_private_registry).resolve("upper")
    assert version.adapter_type == "lora" and version.task == "uppercase"
    assert version.metrics == pytest.approx(m)
    assert version.training["data"]["train_sha256"] == data_digest(data[0])
    assert version.training["data"]["eval_sha256"] == data_digest(data[1])
    assert version.training["config"]["r"] == 4 and version.training["config"]["method"] == "lora"
    assert version.lineage[0]["base"] == str(tiny_base.resolve())
    assert version.base["name"] == str(tiny_base.resolve())
    assert version.peft["target_modules"] == ["q_proj", "v_proj"]


def test_reported_metrics_match_peft_reloading_the_saved_adapter(tiny_base, data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adapterhub.train.data import load_examples
    from adapterhub.train.evaluate import evaluate_model
    from adapterhub.train.sft import prepared_rows
    from adapterhub.train.trainer import load_tokenizer

    result = _train(tiny_base, data, tmp_path / "run", "--target-modules", "all-linear")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), doc["adapter_dir"])
    tokenizer = load_tokenizer(str(tiny_base))
    examples = load_examples(data[1])
    again = evaluate_model(model, tokenizer, examples, prepared_rows(model, tokenizer, examples, 512))
    assert again.loss == pytest.approx(doc["metrics"]["eval_loss"], rel=1e-4)
    assert again.exact_match == doc["metrics"]["eval_exact_match"]
    assert again.rouge_l == pytest.approx(doc["metrics"]["eval_rouge_l"])
    assert doc["metrics"]["eval_loss"] != pytest.approx(doc["metrics"]["base_eval_loss"])


def test_same_seed_same_adapter_bytes_other_seed_differs(tiny_base, data, tmp_path):
    runs = {}
    for out, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        result = _train(tiny_base, data, tmp_path / out, "--seed", seed, "--target-modules", "q_proj")
        assert result.exit_code == 0, result.output
        runs[out] = (Path(json.loads(result.output)["adapter_dir"]) / "adapter_model.safetensors").read_bytes()
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


def test_qlora_trains_on_an_nf4_base(tiny_base, data, tmp_path, _private_registry):
    import bitsandbytes as bnb

    from adapterhub.train.qlora import load_4bit_base

    model = load_4bit_base(str(tiny_base), "cpu")
    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert model.model.layers[0].self_attn.q_proj.weight.quant_type == "nf4"
    assert not any(p.requires_grad for p in model.parameters())

    result = _train(tiny_base, data, tmp_path / "run", "--method", "qlora", "--target-modules", "q_proj,v_proj",
                    "--push", name="upper-q")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["training"]["quantization"]["quant_type"] == "nf4"
    assert math.isfinite(doc["metrics"]["train_loss"])
    pushed = LocalRegistry(_private_registry).resolve("upper-q")
    assert pushed.adapter_type == "lora" and pushed.training["config"]["method"] == "qlora"


def test_prompt_tuning_adapter_with_text_init(tiny_base, data, tmp_path, _private_registry):
    result = _train(tiny_base, data, tmp_path / "run", "--method", "prompt-tuning", "--num-virtual-tokens", "4",
                    "--prompt-init-text", "Write in capitals", "--push", name="upper-p")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert math.isfinite(doc["metrics"]["eval_loss"])
    pushed = LocalRegistry(_private_registry).resolve("upper-p")
    assert pushed.adapter_type == "prompt_tuning"
    assert pushed.peft["num_virtual_tokens"] == 4


@pytest.mark.parametrize(
    "rows, extra, message",
    [
        ("", [], "no rows (the file is empty)"),
        ('{"instruction": "x"}\n', [], 'train.jsonl:1: missing field "output"'),
        ('{"instruction": "x", "output": "y"}\n{"instruction": ["x"], "output": "y"}\n', [],
         'train.jsonl:2: field "instruction" must be a string, not list'),
        (None, ["--target-modules", "q_proj,qkv_proj"], "target module(s) qkv_proj not in the base"),
        (None, ["--lr", "-1"], "lr must be a positive number"),
        (None, ["--base", "/nonexistent/base"], "base /nonexistent/base: cannot load"),
    ],
)
def test_bad_input_is_one_line_and_nothing_is_pushed(tiny_base, data, tmp_path, _private_registry, rows, extra,
                                                     message):
    train = data[0] if rows is None else tmp_path / "bad" / "train.jsonl"
    if rows is not None:
        train.parent.mkdir()
        train.write_text(rows)
    out = tmp_path / "run"
    args = ["train", "--base", str(tiny_base), "--data", str(train), "--name", "x", "--task", "t",
            "--output", str(out), "--push", *FAST, *extra]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output and result.output.strip().count("\n") == 0
    assert not out.exists()
    assert LocalRegistry(_private_registry).list() == []


def test_a_fresh_run_refuses_a_used_output_folder(tiny_base, data, tmp_path):
    assert _train(tiny_base, data, tmp_path / "run").exit_code == 0
    again = _train(tiny_base, data, tmp_path / "run")
    assert again.exit_code != 0 and "--resume" in again.output


def _peft_forward_greedy(model, tokenizer, messages, max_new_tokens):
    """The oracle: greedy decoding by calling PeftModel's own forward on the whole sequence each step."""
    import torch

    from adapterhub.train.data import encode_prompt

    ids = torch.tensor([encode_prompt(tokenizer, messages)])
    start = ids.size(1)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].argmax().item()
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
            if nxt == tokenizer.eos_token_id:
                break
    return tokenizer.decode(ids[0, start:], skip_special_tokens=True)


def test_soft_prompt_generation_matches_peft_forward_greedy(tiny_base, make_prompt):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adapterhub.train.evaluate import greedy_answers
    from adapterhub.train.trainer import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_base))
    base_model = AutoModelForCausalLM.from_pretrained(tiny_base)
    model = PeftModel.from_pretrained(base_model, make_prompt(num_virtual_tokens=5))
    model.eval()
    prompts = [({"role": "user", "content": t},) for t in ("Hi", "Write the word in capital letters.\n\nkoda", "?")]
    with torch.no_grad():
        got = greedy_answers(model, tokenizer, prompts, max_new_tokens=12, batch_size=3)
        with model.disable_adapter():
            bare = greedy_answers(model, tokenizer, prompts, max_new_tokens=12, batch_size=3)
    want = [_peft_forward_greedy(model, tokenizer, p, 12) for p in prompts]
    assert got == want
    assert got != bare


def test_human_output_without_eval_data(tiny_base, data, tmp_path, _private_registry):
    args = ["train", "--base", str(tiny_base), "--data", str(data[0]), "--name", "plain", "--task", "uppercase",
            "--output", str(tmp_path / "run"), "--push", *FAST]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert f"adapter written to {tmp_path / 'run' / 'adapter'}" in result.output
    assert "0 row(s) truncated" in result.output and "eval:" not in result.output
    assert "pushed plain@1" in result.output
    assert "eval_loss" not in LocalRegistry(_private_registry).resolve("plain").metrics


def test_push_to_a_remote_hub_keeps_metrics_training_and_lineage(tiny_base, data, tmp_path):
    from remote_helpers import start_hub

    hub = start_hub(tmp_path / "hub")
    try:
        result = _train(tiny_base, data, tmp_path / "run", "--push", "--registry", hub.url, "--token",
                        hub.write_token, name="upper-remote")
        assert result.exit_code == 0, result.output
        doc = json.loads(result.output)
        stored = hub.registry.resolve("upper-remote")
        assert stored.metrics == pytest.approx(doc["metrics"])
        assert stored.training["data"]["train_sha256"] == data_digest(data[0])
        assert stored.lineage[0]["base"] == str(tiny_base.resolve())
    finally:
        hub.handle.close()


def test_an_unreachable_hub_fails_before_training(tiny_base, data, tmp_path):
    result = _train(tiny_base, data, tmp_path / "run", "--push", "--registry", "http://127.0.0.1:9")
    assert result.exit_code == 1
    assert "cannot reach the hub at http://127.0.0.1:9" in result.output
    assert not (tmp_path / "run").exists()
