"""adapterhub.peft_format against PEFT itself: real saved adapters, PEFT's own scaling, real files."""

from __future__ import annotations

import json

import pytest
from conftest import save_lora

from adapterhub.adapter_folder import read_adapter_config
from adapterhub.errors import IncompatibleBase, InvalidAdapter, SafetensorsFormatError, UnsupportedAdapter
from adapterhub.peft_format import (
    ADAPTER_KEY_PREFIX,
    DTYPES,
    FLOAT_CODES,
    LORA_VARIANTS,
    adapter_key,
    check_mergeable,
    check_servable,
    check_shapes_fit,
    group_adapter_tensors,
    lora_pair,
    parse_adapter_config,
    pattern_value,
    read_safetensors_header,
    torch_dtype,
)

PATTERNS = {
    "rslora+patterns": dict(r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                            rank_pattern={"k_proj": 2, r"layers\.[02]\.self_attn\.q_proj": 8},
                            alpha_pattern={"v_proj": 32, "layers.1.self_attn.o_proj": 3}),
    "first pattern wins": dict(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                               rank_pattern={"q_proj": 2, "self_attn.q_proj": 6}, alpha_pattern={"proj": 5, "v_proj": 7}),
}


@pytest.mark.parametrize("kind", PATTERNS)
def test_scale_and_rank_match_peft(kind, tiny_base, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base),
                           LoraConfig(task_type="CAUSAL_LM", **PATTERNS[kind]))
    model.save_pretrained(tmp_path / "a")
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    header = read_safetensors_header(tmp_path / "a" / "adapter_model.safetensors")
    layers = {n: m for n, m in model.base_model.model.named_modules() if isinstance(m, LoraLayer)}
    assert len(layers) >= 8
    for name, layer in layers.items():
        rank = layer.r["default"]
        assert pattern_value(config["rank_pattern"], name, config["r"]) == rank, name
        assert header[adapter_key(name, "lora_A")].shape[0] == rank
        assert parse_adapter_config(config, "a").lora.scale(name, rank) == pytest.approx(layer.scaling["default"], rel=1e-12), name


def test_keys_of_every_variant_group_as_peft_saved_them(tiny_base, tmp_path):
    cases = {
        "dora": dict(use_dora=True),
        "bias": dict(lora_bias=True),
        "embedding": dict(target_modules=["embed_tokens", "q_proj"], modules_to_save=["lm_head"]),
    }
    for kind, config in cases.items():
        folder = save_lora(tiny_base, tmp_path / kind, **config)
        header = read_safetensors_header(folder / "adapter_model.safetensors")
        grouped = group_adapter_tensors(header)
        assert grouped.lora, kind
        for module, parts in grouped.lora.items():
            a, b, embedding = lora_pair(module, parts)
            a_part, b_part = ("lora_embedding_A", "lora_embedding_B") if embedding else ("lora_A", "lora_B")
            assert header[adapter_key(module, a_part)] is a and header[adapter_key(module, b_part)] is b
        extra = set().union(*grouped.lora.values()) - {"lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B"}
        assert extra == {"dora": {"lora_magnitude_vector"}, "bias": {"lora_B.bias"}, "embedding": set()}[kind]
        assert all(ADAPTER_KEY_PREFIX + name in header for name in grouped.saved)
        if kind == "embedding":
            assert set(grouped.saved) == {"lm_head.weight", "model.embed_tokens.base_layer.weight"}


def test_half_a_pair_is_invalid():
    class Info:
        def __init__(self, *shape):
            self.shape = shape

    with pytest.raises(InvalidAdapter, match="half of a LoRA pair"):
        lora_pair("q", {"lora_A": Info(4, 8)})
    with pytest.raises(InvalidAdapter, match="low-rank pair"):
        lora_pair("q", {"lora_A": Info(4, 8), "lora_B": Info(8, 3)})


@pytest.mark.parametrize("config, variant, merge", [
    (dict(use_dora=True), "DoRA", True),
    (dict(target_modules=["embed_tokens", "q_proj"]), "embedding LoRA", True),
    (dict(modules_to_save=["lm_head"]), "modules_to_save", True),
    (dict(bias="lora_only"), "trained biases", True),
    (dict(lora_bias=True), "LoRA bias", True),
    (dict(layer_replication=[[0, 2], [1, 4]]), "layer_replication", False),
    (dict(trainable_token_indices=[1, 2]), "trainable_token_indices", False),
])
def test_variants_of_real_adapters_are_judged_by_the_table(config, variant, merge, tiny_base, tmp_path):
    folder = save_lora(tiny_base, tmp_path / "a", **config)
    saved_config = read_adapter_config(folder)
    grouped = group_adapter_tensors(read_safetensors_header(folder / "adapter_model.safetensors"))
    with pytest.raises(UnsupportedAdapter, match=variant):
        check_servable(saved_config, grouped, "a")
    if merge:
        check_mergeable(saved_config, grouped, "a")
    else:
        with pytest.raises(UnsupportedAdapter, match=variant):
            check_mergeable(saved_config, grouped, "a")


def test_plain_and_scaled_lora_pass_both_checks(tiny_base, tmp_path):
    folder = save_lora(tiny_base, tmp_path / "a", **PATTERNS["rslora+patterns"])
    config = read_adapter_config(folder)
    grouped = group_adapter_tensors(read_safetensors_header(folder / "adapter_model.safetensors"))
    check_servable(config, grouped, "a")
    check_mergeable(config, grouped, "a")


def test_the_table_says_why_for_every_row():
    names = [v.name for v in LORA_VARIANTS]
    assert len(names) == len(set(names))
    for v in LORA_VARIANTS:
        assert v.merge_note and v.serve_note, v.name


def test_header_data_start_and_dtypes_match_the_safetensors_library(tmp_path):
    import torch
    from safetensors.torch import save_file

    tensors = {
        "f32": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "bf16": torch.linspace(-2, 2, 5).to(torch.bfloat16),
        "f16": torch.ones(3, dtype=torch.float16) / 3,
        "i64": torch.tensor([1, -2, 3]),
        "u8": torch.tensor([7, 8], dtype=torch.uint8),
        "b": torch.tensor([True, False]),
        "f8": torch.zeros(4).to(torch.float8_e4m3fn),
    }
    path = tmp_path / "t.safetensors"
    save_file(tensors, path, metadata={"format": "pt"})
    raw = path.read_bytes()
    header = read_safetensors_header(path)
    assert {i.data_start for i in header.values()} == {8 + int.from_bytes(raw[:8], "little")}
    for name, t in tensors.items():
        info = header[name]
        start, end = info.file_range
        dtype = torch_dtype(info.dtype)
        assert dtype == t.dtype and DTYPES[info.dtype].itemsize == t.element_size()
        assert torch.equal(torch.frombuffer(bytearray(raw[start:end]), dtype=dtype).reshape(info.shape), t)
    assert set(FLOAT_CODES) == {"F64", "F32", "F16", "BF16"}


def test_malformed_weights_are_an_invalid_adapter(tiny_base, tmp_path):
    from adapterhub.adapter_folder import read_adapter_folder

    folder = save_lora(tiny_base, tmp_path / "a")
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(SafetensorsFormatError, match="byte range"):
        read_adapter_folder(folder)
    assert issubclass(SafetensorsFormatError, InvalidAdapter)


def test_shapes_for_another_base_are_incompatible(tiny_base, tmp_path):
    from adapterhub.adapter_folder import read_adapter_folder
    from adapterhub.base_model import load_base_info
    from adapterhub.tinybase import TinyBaseSpec, build_tiny_base

    other = build_tiny_base(tmp_path / "wide", TinyBaseSpec(hidden_size=64, intermediate_size=128))
    adapter = read_adapter_folder(save_lora(other, tmp_path / "wide-lora"))
    shapes = {u.module: u.weight_shape for u in adapter.modules}
    info = load_base_info(str(tiny_base))
    with pytest.raises(IncompatibleBase, match="adapter implies shape .* for model.layers.0.self_attn.q_proj"):
        check_shapes_fit(shapes, info.weights, base=info.name, hidden_size=info.hidden_size, where="wide@1")
    mine = load_base_info(str(other))
    check_shapes_fit(shapes, mine.weights, base=mine.name, hidden_size=mine.hidden_size)
    with pytest.raises(IncompatibleBase, match="which base .* does not have"):
        check_shapes_fit({"model.layers.9.mlp.up_proj": (1, 1)}, mine.weights, base=mine.name, hidden_size=None)
