"""The README's main job, end to end (slow: it trains three adapters)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from adapterhub.cli.main import cli
from adapterhub.registry import LocalRegistry


@pytest.mark.slow
def test_demo_trains_pushes_merges_and_serves(tmp_path):
    result = CliRunner().invoke(cli, ["demo", "--workdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    versions = LocalRegistry(tmp_path / "registry").list()
    assert {v.name for v in versions} == {"demo-uppercase", "demo-sentiment", "demo-refusal"}
    for v in versions:
        if v.adapter_type == "lora":
            assert v.metrics["eval_exact_match"] >= 0.9
        else:
            assert v.metrics["eval_exact_match"] > v.metrics["base_eval_exact_match"] + 0.5
    served = [line.split() for line in result.output.splitlines() if line.startswith("demo-")]
    answered_by_own_adapter = [row[0] for row in served if row[-1] == "yes"]
    assert {"demo-uppercase", "demo-sentiment"} <= set(answered_by_own_adapter)
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config["model_type"] == "llama"
