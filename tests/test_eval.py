"""``adapterhub eval``: the bare base, a prompt template, a soft prompt and a LoRA on the same rows; answers
through the serving engine equal PEFT's greedy answers (for the template: the base's on the rewritten
prompts), loss equals PEFT's, results stored per data digest, a table and a plot."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from adapterhub.cli.main import cli
from adapterhub.datasets.demo import make_rows
from adapterhub.evaluation.templated import templated_examples
from adapterhub.prompt_template import FewShot, PromptTemplate, write_prompt_template
from adapterhub.registry import LocalRegistry
from adapterhub.train.data import data_digest, load_examples
from adapterhub.train.evaluate import answer_scores


def test_exact_match_and_rouge_l_of_answers():
    exact, rouge = answer_scores([" KOPITA\n", "kopita", "the cat sat"], ["KOPITA", "KOPITA", "the cat sat down"])
    assert exact == pytest.approx(1 / 3)
    assert rouge == pytest.approx((1.0 + 1.0 + 6 / 7) / 3)  # ROUGE-L ignores case; 3 of 4 words: F = 6/7


UPPER = PromptTemplate(template="Capitals: {input}", system="Write words in capital letters.",
                       examples=(FewShot("Capitals: bako", "BAKO"),))


def _peft_answers(tiny_base, folder, examples):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adapterhub.train.evaluate import answer_budget, greedy_answers, response_loss
    from adapterhub.train.sft import prepared_rows
    from adapterhub.train.trainer import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_base))
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    if folder is not None:
        model = PeftModel.from_pretrained(model, folder)
    model.eval()
    with torch.no_grad():
        answers = greedy_answers(model, tokenizer, [e.prompt for e in examples], answer_budget(tokenizer, examples))
        loss = response_loss(model, prepared_rows(model, tokenizer, examples, 512), tokenizer.pad_token_id, 16)
    return answers, loss


def test_eval_compares_base_template_soft_prompt_and_lora(tiny_base, make_lora, make_prompt, tmp_path):
    registry = LocalRegistry(tmp_path / "registry")
    lora, prompt = make_lora(), make_prompt(num_virtual_tokens=4)
    registry.push(lora, name="upper-lora", task="uppercase", base=str(tiny_base))
    registry.push(prompt, name="upper-prompt", task="uppercase", base=str(tiny_base))
    registry.push(write_prompt_template(UPPER, tmp_path / "tpl"), name="upper-template", task="uppercase",
                  base=str(tiny_base))
    rows = make_rows("uppercase")[1][:5]
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = load_examples(data)

    result = CliRunner().invoke(cli, ["eval", "base", "upper-template", "upper-lora", "upper-prompt",
                                      "--data", str(data),
                                      "--registry", str(tmp_path / "registry"), "--plot", str(tmp_path / "eval.png"),
                                      "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["rows"] == 5 and doc["data_sha256"] == data_digest(data) and doc["base"] == str(tiny_base)
    scores = {s["ref"]: s for s in doc["scores"]}
    assert list(scores) == ["base", "upper-template@1", "upper-lora@1", "upper-prompt@1"]
    for ref, folder, rows in (("base", None, examples), ("upper-template@1", None, templated_examples(UPPER, examples)),
                              ("upper-lora@1", lora, examples), ("upper-prompt@1", prompt, examples)):
        answers, loss = _peft_answers(tiny_base, folder, rows)
        assert scores[ref]["answers"] == answers, ref  # the engine's mixed batches answer as PEFT does
        assert scores[ref]["loss"] == pytest.approx(loss, rel=1e-5)
        assert scores[ref]["perplexity"] == pytest.approx(math.exp(loss))
        exact, rouge = answer_scores(answers, [e.response for e in examples])
        assert (scores[ref]["exact_match"], scores[ref]["rouge_l"]) == (exact, pytest.approx(rouge))
    assert scores["upper-lora@1"]["adapter_type"] == "lora" and scores["upper-prompt@1"]["adapter_type"] == "prompt_tuning"
    assert scores["upper-template@1"]["adapter_type"] == "prompt_template"
    assert scores["upper-template@1"]["loss"] != scores["base"]["loss"]  # the template changed what the base read

    hex_digest = data_digest(data).removeprefix("sha256:")
    stored = registry.resolve("upper-lora").metrics
    assert stored[f"eval.{hex_digest}.exact_match"] == scores["upper-lora@1"]["exact_match"]
    assert stored[f"eval.{hex_digest}.rouge_l"] == pytest.approx(scores["upper-lora@1"]["rouge_l"])
    assert stored[f"eval.{hex_digest}.base_loss"] == pytest.approx(scores["base"]["loss"])
    assert stored[f"eval.{hex_digest}.rows"] == 5
    template_metrics = registry.resolve("upper-template").metrics
    assert template_metrics[f"eval.{hex_digest}.loss"] == pytest.approx(scores["upper-template@1"]["loss"])
    assert (tmp_path / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    table = CliRunner().invoke(cli, ["eval", "--base-only", "--base", str(tiny_base), "--data", str(data),
                                     "--registry", str(tmp_path / "registry")])
    assert table.exit_code == 0, table.output
    assert "EXACT MATCH" in table.output and "stored" not in table.output
    assert table.output.splitlines()[3].split()[:4] == ["base", "base", f"{scores['base']['exact_match']:.1%}",
                                                         f"{scores['base']['rouge_l']:.3f}"]


def test_eval_bad_input_is_one_line(tiny_base, make_lora, tmp_path):
    registry = LocalRegistry(tmp_path / "registry")
    registry.push(make_lora(), name="a", task="t", base=str(tiny_base))
    data = tmp_path / "eval.jsonl"
    data.write_text('{"instruction": "x"}\n')
    for args, message in ((["a", "--data", str(data)], 'eval.jsonl:1: missing field "output"'),
                          (["nope", "--data", str(tmp_path / "none.jsonl")], "no such data file"),
                          (["base", "--data", str(data)], None),
                          (["a", "--base-only", "--data", str(data)], "or --base-only with --base")):
        result = CliRunner().invoke(cli, ["eval", *args, "--registry", str(tmp_path / "registry")])
        assert result.exit_code != 0 and result.output.strip().count("\n") == 0, result.output
        if message:
            assert message in result.output
    before = registry.resolve("a").metrics
    assert before == LocalRegistry(tmp_path / "registry").resolve("a").metrics
