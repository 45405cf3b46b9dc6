"""The main job on the tiny base (`adapterhub demo --base tiny`), end to end (slow: it trains six adapters), with
its per-task comparison of the bare base, a prompt template, a soft prompt and a LoRA."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from adapterhub.cli.main import cli
from adapterhub.registry import LocalRegistry


@pytest.mark.slow
def test_demo_trains_pushes_merges_and_serves(tmp_path):
    result = CliRunner().invoke(cli, ["demo", "--base", "tiny", "--workdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    registry = LocalRegistry(tmp_path / "registry")
    versions = registry.list()
    trained = {"demo-uppercase", "demo-sentiment", "demo-refusal"}
    assert {v.name for v in versions} == trained | {
        "demo-uppercase-template", "demo-sentiment-template", "demo-refusal-template",
        "demo-uppercase-prompt", "demo-sentiment-prompt", "demo-refusal-lora"}
    for v in versions:
        if v.name not in trained:
            continue
        if v.adapter_type == "lora":
            assert v.metrics["eval_exact_match"] >= 0.9
        else:
            assert v.metrics["eval_exact_match"] > v.metrics["base_eval_exact_match"] + 0.5
    served = [line.split() for line in result.output.splitlines() if line.startswith("demo-")]
    answered_by_own_adapter = [row[0] for row in served if row[-1] == "yes"]
    assert {"demo-uppercase", "demo-sentiment"} <= set(answered_by_own_adapter)
    assert "demo-refusal-template" in [row[0] for row in served]  # served next to the others

    for task in ("uppercase", "sentiment", "refusal"):  # eval: four kinds per task, stored in the registry
        kinds = {v.adapter_type: v for v in registry.list(task=task)}
        assert set(kinds) == {"prompt_template", "prompt_tuning", "lora"}
        table = result.output[result.output.index(f"task {task} ("):].splitlines()[1:7]
        assert [line.split()[1] for line in table[2:6]] == ["base", "prompt_template", "prompt_tuning", "lora"]
        for v in kinds.values():
            assert any(k.startswith("eval.") and k.endswith(".exact_match") for k in v.metrics), v.ref
    refusal = {line.split()[1]: float(line.split()[2].rstrip("%"))
               for line in result.output[result.output.index("task refusal ("):].splitlines()[3:7]}
    assert refusal["prompt_template"] > refusal["base"]  # "Decline to answer." is what the base was tuned to obey
    assert (tmp_path / "eval-refusal.png").is_file()
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config["model_type"] == "llama"
