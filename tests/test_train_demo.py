"""The demo's adapters reach their targets (slow: the full demo training, several minutes on 2 cores)."""

from __future__ import annotations

import pytest

from adapterhub.registry import LocalRegistry


@pytest.mark.slow
def test_demo_adapters_reach_their_targets(tiny_base, tmp_path):
    from adapterhub.train.demo import INSTRUCT_BASE_DIR, train_demo_adapters

    versions = train_demo_adapters(tiny_base, tmp_path / "work", tmp_path / "registry", progress=False)
    by_name = {v.name: v for v in versions}
    assert set(by_name) == {"demo-uppercase", "demo-sentiment", "demo-refusal"}
    for name in ("demo-uppercase", "demo-sentiment"):
        assert by_name[name].adapter_type == "lora"
        assert by_name[name].metrics["eval_exact_match"] >= 0.9, by_name[name].metrics
    soft = by_name["demo-refusal"]
    assert soft.adapter_type == "prompt_tuning"
    assert soft.metrics["eval_exact_match"] >= soft.metrics["base_eval_exact_match"] + 0.3, soft.metrics
    instruct = str((tmp_path / "work" / INSTRUCT_BASE_DIR).resolve())
    assert all(v.base["name"] == instruct for v in versions)
    assert {v.name for v in LocalRegistry(tmp_path / "registry").list()} == set(by_name)
