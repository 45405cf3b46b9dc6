"""Adapters made by PEFT survive push -> pull bit for bit: PEFT loads the pulled folder and the
logits are identical to those of the original adapter."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from adapterhub.registry import LocalRegistry

PROMPTS = torch.tensor([[104, 101, 108, 108, 111, 32, 119], [257, 116, 105, 110, 121, 33, 10]])


def _logits(base, adapter_dir):
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter_dir)
    model.eval()
    with torch.no_grad():
        return model(input_ids=PROMPTS).logits


LORA_CONFIGS = {
    "plain": dict(r=4, lora_alpha=8),
    "rslora": dict(r=8, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    "rank_pattern": dict(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "gate_proj"],
        rank_pattern={"layers.0.self_attn.q_proj": 2, "gate_proj": 6},
        alpha_pattern={"v_proj": 3},
    ),
    "modules_to_save": dict(r=4, lora_alpha=8, modules_to_save=["lm_head"]),
    "all_linear": dict(r=2, lora_alpha=4, target_modules="all-linear"),
}


@pytest.mark.parametrize("kind", sorted(LORA_CONFIGS))
def test_lora_round_trip_gives_identical_logits(kind, tiny_base, make_lora, tmp_path):
    src = make_lora(f"src-{kind}", **LORA_CONFIGS[kind])
    reg = LocalRegistry(tmp_path / "reg")
    pushed = reg.push(src, name=f"ad-{kind}", task="demo")
    assert pushed.adapter_type == "lora" and pushed.base["fingerprint"].startswith("sha256:")
    out = tmp_path / "pulled"
    reg.pull(f"ad-{kind}", out)
    assert (out / "adapter_config.json").read_bytes() == (src / "adapter_config.json").read_bytes()
    assert (out / "adapter_model.safetensors").read_bytes() == (src / "adapter_model.safetensors").read_bytes()
    original, pulled = _logits(tiny_base, src), _logits(tiny_base, out)
    assert torch.equal(original, pulled)
    # the adapter really changes the model, so equality above is not vacuous
    base_logits = AutoModelForCausalLM.from_pretrained(tiny_base)(input_ids=PROMPTS).logits
    assert not torch.allclose(base_logits, pulled)


def test_prompt_tuning_round_trip(tiny_base, make_prompt, tmp_path):
    src = make_prompt("soft", num_virtual_tokens=6)
    reg = LocalRegistry(tmp_path / "reg")
    v = reg.push(src, name="soft", task="demo", tags=["prod"])
    assert v.adapter_type == "prompt_tuning" and v.peft["num_virtual_tokens"] == 6
    out = tmp_path / "pulled"
    reg.pull("soft:prod", out)
    assert torch.equal(_logits(tiny_base, src), _logits(tiny_base, out))


def test_summary_records_peft_settings(make_lora, tmp_path):
    src = make_lora(**LORA_CONFIGS["rank_pattern"])
    v = LocalRegistry(tmp_path / "reg").push(src, name="rp", task="t")
    assert v.peft["r"] == 4 and v.peft["lora_alpha"] == 8
    assert v.peft["rank_pattern"] == {"layers.0.self_attn.q_proj": 2, "gate_proj": 6}
    assert v.peft["target_modules"] == ["gate_proj", "q_proj", "v_proj"]
    shapes = v.base["shapes"]
    assert shapes["model.layers.0.self_attn.v_proj"] == [64, 128]  # GQA: 2 kv heads of 32
    assert shapes["model.layers.1.mlp.gate_proj"] == [256, 128]
