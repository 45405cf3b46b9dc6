"""Merged models against PEFT itself: every fold and every combination is checked on logits."""

from __future__ import annotations

import json

import pytest
from conftest import save_lora, save_prompt_tuning
from merge_fixtures import base_logits, gpt2_base, max_diff, merged_logits, peft_logits, qwen2_base, sharded_base  # noqa: F401

from adapterhub.errors import IncompatibleBase, MergeError, UnsupportedAdapter
from adapterhub.merge import MergeOptions, merge_adapter, merge_model
from adapterhub.peft_format import read_safetensors_header

TOL = 1e-4


def _fold(tmp_path, base, adapters, **options):
    out = tmp_path / "merged"
    result = merge_model([str(a) for a in adapters], str(base), out, MergeOptions(**options))
    return out, result


def _train_magnitudes(adapter):
    """A freshly made DoRA adapter folds exactly like plain LoRA (its magnitudes start at the norms of
    W + dW); move them, as training would, so the DoRA rescaling is really exercised."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(adapter / "adapter_model.safetensors")
    g = torch.Generator().manual_seed(5)
    for k, t in tensors.items():
        if "lora_magnitude_vector" in k:
            tensors[k] = t * (1 + 0.2 * torch.randn(t.shape, generator=g))
    save_file(tensors, adapter / "adapter_model.safetensors")
    return adapter


def _assert_exact(out, base, oracle):
    """Merged == PEFT within 1e-4, and the adapter really moves the logits (the check is not vacuous)."""
    diff = max_diff(merged_logits(out), oracle)
    assert diff <= TOL, diff
    assert max_diff(base_logits(base), oracle) > 100 * TOL
    return diff


# --- one adapter, folded exactly ------------------------------------------------------------------

LLAMA_CONFIGS = {
    "plain": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "rslora": dict(r=8, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "k_proj", "down_proj"]),
    "patterns": dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                     rank_pattern={"k_proj": 2, "layers.1.self_attn.q_proj": 8}, alpha_pattern={"v_proj": 32}),
    "embedding+modules_to_save": dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"],
                                      modules_to_save=["lm_head"]),
    "dora": dict(r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "v_proj", "o_proj", "up_proj"]),
    "all-linear": dict(r=2, lora_alpha=4, target_modules="all-linear"),
}


@pytest.mark.parametrize("kind", LLAMA_CONFIGS)
def test_llama_fold_matches_peft(kind, tiny_base, tmp_path):
    adapter = save_lora(tiny_base, tmp_path / "a", **LLAMA_CONFIGS[kind])
    if kind == "dora":
        _train_magnitudes(adapter)
    out, result = _fold(tmp_path, tiny_base, [adapter])
    print(f"{kind}: max |logits diff| vs PEFT = {_assert_exact(out, tiny_base, peft_logits(tiny_base, [adapter])):.3g}")
    assert result.edited_tensors > 0 and not result.untied_embeddings
    assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()
    card = (out / "README.md").read_text()
    assert result.adapters[0]["digest"] in card and str(tiny_base) in card


@pytest.mark.parametrize("dora", [False, True])
def test_gpt2_conv1d_fan_in_fan_out_keeps_tied_embeddings(dora, gpt2_base, tmp_path):
    adapter = save_lora(gpt2_base, tmp_path / "a", r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"],
                        fan_in_fan_out=True, use_dora=dora)
    if dora:
        _train_magnitudes(adapter)
    out, result = _fold(tmp_path, gpt2_base, [adapter])
    print(f"gpt2 conv1d dora={dora}: {_assert_exact(out, gpt2_base, peft_logits(gpt2_base, [adapter])):.3g}")
    assert not result.untied_embeddings
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    assert "lm_head.weight" not in read_safetensors_header(out / "model.safetensors")


@pytest.mark.parametrize("config", [
    dict(target_modules=["wte", "c_attn"], fan_in_fan_out=True),  # LoRA on the input embedding only
    dict(target_modules=["c_attn"], fan_in_fan_out=True, modules_to_save=["lm_head"]),  # output side only
])
def test_gpt2_tied_embeddings_are_untied_when_one_side_changes(config, gpt2_base, tmp_path):
    adapter = save_lora(gpt2_base, tmp_path / "a", r=4, lora_alpha=8, **config)
    out, result = _fold(tmp_path, gpt2_base, [adapter])
    print(f"gpt2 tied {config}: {_assert_exact(out, gpt2_base, peft_logits(gpt2_base, [adapter])):.3g}")
    assert result.untied_embeddings
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False


@pytest.mark.parametrize("config", [
    dict(target_modules=["q_proj", "k_proj", "v_proj"], lora_bias=True),
    dict(target_modules=["q_proj", "v_proj", "gate_proj"], bias="all"),
])
def test_qwen2_attention_biases(config, qwen2_base, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = save_lora(qwen2_base, tmp_path / "a", r=4, lora_alpha=8, **config)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(qwen2_base), str(adapter))
    with torch.no_grad():  # give the trainable biases values, as training would
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(adapter)
    out, _ = _fold(tmp_path, qwen2_base, [adapter])
    print(f"qwen2 {config}: {_assert_exact(out, qwen2_base, peft_logits(qwen2_base, [adapter])):.3g}")


def test_sharded_base_in_sharded_model_out(sharded_base, tmp_path):
    assert (sharded_base / "model.safetensors.index.json").is_file()
    adapter = save_lora(sharded_base, tmp_path / "a", target_modules=["q_proj", "v_proj", "down_proj"])
    out, result = _fold(tmp_path, sharded_base, [adapter], max_shard_bytes=1_000_000)
    assert len(result.files) >= 3 and (out / "model.safetensors.index.json").is_file()
    _assert_exact(out, sharded_base, peft_logits(sharded_base, [adapter]))


def test_bf16_output(tiny_base, tmp_path):
    adapter = save_lora(tiny_base, tmp_path / "a")
    out, _ = _fold(tmp_path, tiny_base, [adapter], dtype="bf16")
    dtypes = {t.dtype for t in read_safetensors_header(out / "model.safetensors").values()}
    assert dtypes == {"BF16"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert max_diff(merged_logits(out), peft_logits(tiny_base, [adapter])) < 0.1


# --- combinations ---------------------------------------------------------------------------------


@pytest.fixture
def two_loras(tiny_base, tmp_path):
    """Two adapters of different ranks over overlapping modules."""
    a = save_lora(tiny_base, tmp_path / "a", seed=1, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    b = save_lora(tiny_base, tmp_path / "b", seed=2, r=8, lora_alpha=8, target_modules=["q_proj", "o_proj"])
    return a, b


@pytest.mark.parametrize("method", ["linear", "cat"])
def test_linear_and_cat_equal_peft_cat(method, two_loras, tiny_base, tmp_path):
    out, _ = _fold(tmp_path, tiny_base, two_loras, method=method, weights=(0.7, -0.4))
    oracle = peft_logits(tiny_base, two_loras, [0.7, -0.4], "cat")
    print(f"{method} of 2 (ranks 4, 8): {_assert_exact(out, tiny_base, oracle):.3g}")


def test_ties_equals_peft_ties_on_deltas(two_loras, tiny_base, tmp_path):
    out, _ = _fold(tmp_path, tiny_base, two_loras, method="ties", weights=(1.0, 0.5), density=0.5)
    oracle = peft_logits(tiny_base, two_loras, [1.0, 0.5], "ties_svd", density=0.5, svd_rank=512,
                         svd_full_matrices=False)
    print(f"ties: {_assert_exact(out, tiny_base, oracle):.3g}")
    linear, _ = _fold(tmp_path / "l", tiny_base, two_loras, weights=(1.0, 0.5))
    assert max_diff(merged_logits(out), merged_logits(linear)) > 100 * TOL  # trimming did something


def test_combined_modules_to_save_are_task_vectors(qwen2_base, tmp_path):
    """Saved modules in a combination add ``w_i * (saved_i - base)``, as LoRA deltas do (PEFT has no
    reference for this; checked on the tensors)."""
    from safetensors.torch import load_file, save_file

    a = save_lora(qwen2_base, tmp_path / "a", seed=1, target_modules=["q_proj"], modules_to_save=["lm_head"])
    b = save_lora(qwen2_base, tmp_path / "b", seed=2, target_modules=["v_proj"], modules_to_save=["lm_head"])
    for folder, shift in ((a, 0.5), (b, -0.25)):  # make the saved heads differ from the base's
        tensors = load_file(folder / "adapter_model.safetensors")
        tensors["base_model.model.lm_head.weight"] += shift
        save_file(tensors, folder / "adapter_model.safetensors")
    out, _ = _fold(tmp_path, qwen2_base, [a, b], weights=(0.6, 0.4))
    base_head = load_file(qwen2_base / "model.safetensors")["lm_head.weight"]
    merged_head = load_file(out / "model.safetensors")["lm_head.weight"]
    assert (merged_head - (base_head + 0.6 * 0.5 + 0.4 * -0.25)).abs().max() < 1e-6


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_is_reproducible_by_seed(method, two_loras, tiny_base, tmp_path):
    opts = dict(method=method, density=0.3, weights=(1.0, 1.0))
    a, _ = _fold(tmp_path / "1", tiny_base, two_loras, seed=7, **opts)
    b, _ = _fold(tmp_path / "2", tiny_base, two_loras, seed=7, **opts)
    c, _ = _fold(tmp_path / "3", tiny_base, two_loras, seed=8, **opts)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_as_adapter_cat_is_lossless_and_has_lineage(two_loras, tiny_base, tmp_path):
    from adapterhub.location import open_registry

    result = merge_adapter([str(p) for p in two_loras], str(tiny_base), MergeOptions(method="cat", weights=(0.7, 0.3)),
                           name="combo", rank=None)
    version = open_registry().resolve("combo")
    assert [x["weight"] for x in version.lineage] == [0.7, 0.3]
    assert all(x["digest"].startswith("sha256:") for x in version.lineage)
    assert result.adapter["rank"] == 12 and result.adapter["max_relative_error"] == 0.0
    open_registry().pull("combo", tmp_path / "pulled")
    diff = max_diff(peft_logits(tiny_base, [tmp_path / "pulled"]), peft_logits(tiny_base, two_loras, [0.7, 0.3], "cat"))
    assert diff <= TOL, diff


def test_as_adapter_svd_full_rank_is_exact_and_low_rank_reports_error(two_loras, tiny_base, tmp_path):
    from adapterhub.location import open_registry

    full = merge_adapter([str(p) for p in two_loras], str(tiny_base), MergeOptions(weights=(0.7, 0.3)),
                         name="full", rank=12)
    assert full.adapter["max_relative_error"] < 1e-5
    open_registry().pull("full", tmp_path / "full")
    oracle = peft_logits(tiny_base, two_loras, [0.7, 0.3], "cat")
    assert max_diff(peft_logits(tiny_base, [tmp_path / "full"]), oracle) <= TOL
    low = merge_adapter([str(p) for p in two_loras], str(tiny_base), MergeOptions(weights=(0.7, 0.3)),
                        name="low", rank=2)
    assert low.adapter["max_relative_error"] > 0.1


# --- refusals: a clear error and nothing written ----------------------------------------------------


def _nothing_written(tmp_path):
    assert not (tmp_path / "merged").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".merged")]


def test_adapter_for_another_base_is_refused(tiny_base, tmp_path):
    from adapterhub.tinybase import TinyBaseSpec, build_tiny_base

    other = build_tiny_base(tmp_path / "other", TinyBaseSpec(hidden_size=64, intermediate_size=128))
    adapter = save_lora(other, tmp_path / "a")
    with pytest.raises(IncompatibleBase, match="implies shape"):
        _fold(tmp_path, tiny_base, [adapter])
    _nothing_written(tmp_path)


def test_missing_base_files_are_refused(sharded_base, tiny_base, tmp_path):
    import shutil

    adapter = save_lora(tiny_base, tmp_path / "a")
    empty = tmp_path / "empty-base"
    empty.mkdir()
    (empty / "config.json").write_text((tiny_base / "config.json").read_text())
    with pytest.raises(IncompatibleBase, match="no model.safetensors"):
        _fold(tmp_path, empty, [adapter])
    broken = tmp_path / "broken"
    shutil.copytree(sharded_base, broken)
    next(broken.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(IncompatibleBase, match="missing"):
        _fold(tmp_path, broken, [adapter])
    with pytest.raises(IncompatibleBase, match="no such model folder"):
        _fold(tmp_path, tmp_path / "nowhere", [adapter])
    _nothing_written(tmp_path)


@pytest.mark.parametrize("options, message", [
    (dict(method="slerp"), "unknown merge method"),
    (dict(weights=(1.0, 2.0, 3.0)), "3 weights given for 2 adapters"),
    (dict(method="ties"), "needs a density"),
    (dict(method="dare_ties", density=1.5), "density must be in"),
    (dict(density=0.5), "does not prune"),
    (dict(dtype="int4"), "unknown dtype"),
])
def test_bad_options_are_refused(options, message, two_loras, tiny_base, tmp_path):
    with pytest.raises(MergeError, match=message):
        _fold(tmp_path, tiny_base, two_loras, **options)
    _nothing_written(tmp_path)


def test_prompt_tuning_and_dora_combination_are_refused(tiny_base, tmp_path):
    prompt = save_prompt_tuning(tiny_base, tmp_path / "p")
    with pytest.raises(UnsupportedAdapter, match="prepends learned virtual tokens"):
        _fold(tmp_path, tiny_base, [prompt])
    dora = save_lora(tiny_base, tmp_path / "d", use_dora=True)
    plain = save_lora(tiny_base, tmp_path / "l")
    with pytest.raises(MergeError, match="DoRA"):
        _fold(tmp_path, tiny_base, [dora, plain])
    _nothing_written(tmp_path)


def test_existing_out_needs_force(tiny_base, tmp_path):
    adapter = save_lora(tiny_base, tmp_path / "a")
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(MergeError, match="--force"):
        merge_model([str(adapter)], str(tiny_base), out, MergeOptions())
    assert (out / "keep.txt").read_text() == "mine"
    merge_model([str(adapter)], str(tiny_base), out, MergeOptions(), force=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_non_finite_adapter_is_refused(tiny_base, tmp_path):
    from safetensors.torch import load_file, save_file

    adapter = save_lora(tiny_base, tmp_path / "a")
    tensors = load_file(adapter / "adapter_model.safetensors")
    last = sorted(k for k in tensors if "lora_B" in k)[-1]
    tensors[last] = tensors[last] * float("inf")
    save_file(tensors, adapter / "adapter_model.safetensors")
    with pytest.raises(MergeError, match="non-finite"):
        _fold(tmp_path, tiny_base, [adapter])
    _nothing_written(tmp_path)


def test_crash_while_writing_leaves_no_half_model(tiny_base, tmp_path, monkeypatch):
    """A fault injected after some tensors are on disk (a full disk, a kill): no --out, no temporaries."""
    from adapterhub.merge.io import ShardedWriter

    adapter = save_lora(tiny_base, tmp_path / "a")
    real = ShardedWriter.write_tensor
    calls = []

    def failing(self, name, tensor):
        calls.append(name)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(self, name, tensor)

    monkeypatch.setattr(ShardedWriter, "write_tensor", failing)
    with pytest.raises(OSError, match="No space"):
        _fold(tmp_path, tiny_base, [adapter])
    _nothing_written(tmp_path)


def test_verify_refuses_dare_before_writing(two_loras, tiny_base, tmp_path):
    with pytest.raises(MergeError, match="no PEFT reference"):
        merge_model([str(p) for p in two_loras], str(tiny_base), tmp_path / "merged",
                    MergeOptions(method="dare_linear", density=0.5), verify=True)
    _nothing_written(tmp_path)


def test_verify_reports_the_figure(two_loras, tiny_base, tmp_path):
    result = merge_model([str(p) for p in two_loras], str(tiny_base), tmp_path / "merged",
                         MergeOptions(method="ties", density=0.5), verify=True)
    assert result.verify.passed and result.verify.max_abs_diff <= TOL and result.verify.prompts >= 4
    assert "ties_svd" in result.verify.reference


def test_qlora_adapter_is_merged_onto_the_full_precision_base(tiny_base, tmp_path):
    """An adapter trained on an nf4 base (QLoRA) folds into the fp32 base named by --base, not into
    re-quantized weights: the result equals PEFT applying the adapter to the fp32 base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantized = AutoModelForCausalLM.from_pretrained(
        tiny_base, quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=torch.float32))
    torch.manual_seed(3)
    lora = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                      init_lora_weights=False)
    get_peft_model(quantized, lora).save_pretrained(tmp_path / "qlora")
    out, _ = _fold(tmp_path, tiny_base, [tmp_path / "qlora"])
    assert {t.dtype for t in read_safetensors_header(out / "model.safetensors").values()} == {"F32"}
    print(f"qlora onto fp32: {_assert_exact(out, tiny_base, peft_logits(tiny_base, [tmp_path / 'qlora'])):.3g}")


def test_an_integer_tensor_an_adapter_saves_replaces_the_base_one_unchanged(tmp_path):
    """A saved module's integer buffer (``position_ids`` and the like) is not float arithmetic:
    it replaces the base's as stored, and the float weights beside it still fold."""
    import torch
    from safetensors.torch import load_file, save_file

    from adapterhub.tinybase import build_tiny_base

    base = build_tiny_base(tmp_path / "base")
    weights = load_file(base / "model.safetensors")
    weights["model.norm.position_ids"] = torch.arange(8)
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
    adapter = save_lora(base, tmp_path / "adapter")
    saved = load_file(adapter / "adapter_model.safetensors")
    saved["base_model.model.model.norm.position_ids"] = torch.arange(8) + 2**40  # not exact in float32
    save_file(saved, adapter / "adapter_model.safetensors", metadata={"format": "pt"})
    out, _ = _fold(tmp_path, base, [adapter])
    merged = load_file(out / "model.safetensors")
    assert torch.equal(merged["model.norm.position_ids"], torch.arange(8) + 2**40)
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"],
                           weights["model.layers.0.self_attn.q_proj.weight"])
