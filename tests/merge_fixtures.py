"""Tiny non-Llama bases (GPT-2: Conv1D + tied embeddings; Qwen2: attention biases) and the PEFT
oracle helpers the merge tests compare against."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pytest

# Fixed token ids (the tiny bases share the 259-token byte vocabulary): several prompts of different lengths.
PROMPTS = ([72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100], [257, 84, 104, 101, 32, 99, 97, 112],
           [100, 101, 102, 32, 102, 40, 120, 41, 58, 10, 32, 32, 114, 101, 116], [35, 35, 35, 32, 117, 115, 101, 114])


def _save(model, out: Path, **kw: Any) -> Path:
    model.save_pretrained(out, **kw)
    return out


@pytest.fixture(scope="session")
def gpt2_base(tmp_path_factory) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    config = GPT2Config(n_embd=64, n_layer=2, n_head=2, vocab_size=259, n_positions=128, bos_token_id=257,
                        eos_token_id=258, tie_word_embeddings=True)
    return _save(GPT2LMHeadModel(config), tmp_path_factory.mktemp("bases") / "tiny-gpt2")


@pytest.fixture(scope="session")
def qwen2_base(tmp_path_factory) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(2)
    config = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=259, tie_word_embeddings=False)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():  # random (not zero) attention biases, so folding into them is visible
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(std=0.1)
    return _save(model, tmp_path_factory.mktemp("bases") / "tiny-qwen2")


@pytest.fixture(scope="session")
def sharded_base(tiny_base, tmp_path_factory) -> Path:
    """The tiny Llama saved in several shards with a model.safetensors.index.json."""
    import shutil

    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("bases") / "tiny-llama-sharded"
    _save(AutoModelForCausalLM.from_pretrained(tiny_base), out, max_shard_size="1MB")
    for f in tiny_base.iterdir():
        if f.name.startswith("tokenizer") or f.name.endswith(".jinja"):
            shutil.copy(f, out / f.name)
    return out


def logits(model) -> list:
    import torch

    with torch.no_grad():
        return [model(input_ids=torch.tensor([p])).logits for p in PROMPTS]


def merged_logits(folder: Path) -> list:
    import torch
    from transformers import AutoModelForCausalLM

    return logits(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval())


def base_logits(base: Path) -> list:
    return merged_logits(base)


def peft_logits(base: Path, adapters: Sequence[Path], weights: Sequence[float] | None = None,
                combination: str | None = None, **kw: Any) -> list:
    """The oracle: the base with the adapter(s) applied by PEFT (combined by ``add_weighted_adapter``)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if combination is None:
        assert len(adapters) == 1
        return logits(PeftModel.from_pretrained(model, str(adapters[0])).eval())
    model = PeftModel.from_pretrained(model, str(adapters[0]), adapter_name="a0")
    for i, a in enumerate(adapters[1:], start=1):
        model.load_adapter(str(a), adapter_name=f"a{i}")
    model.add_weighted_adapter([f"a{i}" for i in range(len(adapters))], list(weights), "m",
                               combination_type=combination, **kw)
    model.set_adapter("m")
    return logits(model.eval())


def max_diff(a: list, b: list) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))
