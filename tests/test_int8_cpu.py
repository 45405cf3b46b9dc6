"""The CPU int8 base: a row's result never depends on its batch, LoRA rows are PEFT's delta on top
of the same int8 layers, and the int8 base stays close to fp32.

The oracle for "batch-invariant" is the same row run alone; for LoRA, PEFT's own ``LoraLayer`` over
the server's ``Int8Linear`` (``serving_helpers.peft_cpu_int8_model``); for closeness, PEFT on the
fp32 base.
"""

from __future__ import annotations

import json
import threading

import pytest
import torch
from torch import nn

from conftest import save_lora
from serving_helpers import peft_cpu_int8_model, push_serving_adapters
from adapterhub.registry import LocalRegistry
from adapterhub.server.engine.engine import create_engine
from adapterhub.server.engine.int8_linear import Int8Linear, quantize_linear_layers
from adapterhub.server.engine.lora.slot_bank import LoraSlotBank
from adapterhub.server.engine.model_loader import load_base_model
from adapterhub.server.engine.request import SamplingParams

# Teacher-forced top-1 agreement of the int8 base (+ LoRA) with PEFT on the fp32 base over every
# prompt position of the test below (the tiny base is random-init, so its top logits are close).
MIN_TOP1_AGREEMENT = 0.9


def _rows_with_an_outlier(rows: int, width: int, seed: int) -> torch.Tensor:
    x = torch.randn(rows, width, generator=torch.Generator().manual_seed(seed))
    x[1] *= 80.0  # a batch mate with a far larger range than the others
    return x


def test_a_row_gets_the_same_bits_alone_and_in_any_batch():
    torch.manual_seed(0)
    linear = nn.Linear(96, 160)
    layer = Int8Linear.from_linear(linear)
    x = _rows_with_an_outlier(12, 96, seed=1)
    with torch.inference_mode():
        batched = layer(x)
        for i in range(len(x)):
            assert torch.equal(layer(x[i : i + 1])[0], batched[i])
        assert torch.equal(layer(x.view(3, 4, 96)).view(12, 160), batched)  # prompt-shaped input
        # torch's own dynamic int8 scales per tensor: the outlier moves the other rows (why this exists)
        dynamic = torch.ao.quantization.quantize_dynamic(nn.Sequential(linear), {nn.Linear}, dtype=torch.qint8)
        assert not torch.equal(dynamic(x[:1])[0], dynamic(x[:2])[0])


@pytest.mark.parametrize("poison", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_row_fails_alone(poison):
    """A row gone NaN or inf upstream (an adapter whose activations overflow) comes out NaN, and
    every other row gets exactly the bits it gets without it: fbgemm's per-tensor quantization
    parameters never see the broken row."""
    torch.manual_seed(0)
    layer = Int8Linear.from_linear(nn.Linear(96, 160))
    x = _rows_with_an_outlier(6, 96, seed=2)
    with torch.inference_mode():
        clean = layer(x).clone()
        x[3, 7] = poison
        mixed = layer(x)
    assert torch.isnan(mixed[3]).all()
    others = [i for i in range(6) if i != 3]
    assert torch.equal(mixed[others], clean[others])


def test_int8_error_is_int8_sized_and_bias_is_not_rescaled():
    torch.manual_seed(0)
    linear = nn.Linear(256, 64)
    nn.init.normal_(linear.bias, std=1.0)
    x = torch.randn(16, 256)
    with torch.inference_mode():
        exact, ours = linear(x), Int8Linear.from_linear(linear)(x)
    error = (ours - exact).abs().amax(1) / exact.abs().amax(1)
    assert 0 < float(error.max()) < 0.05
    zero = torch.zeros(1, 256)
    with torch.inference_mode():
        torch.testing.assert_close(Int8Linear.from_linear(linear)(zero)[0], linear.bias, atol=0, rtol=0)


def test_layers_sharing_an_input_are_one_product_and_compute_the_same_bits():
    torch.manual_seed(0)
    block = nn.ModuleDict({n: nn.Linear(64, 32 if n != "q_proj" else 64, bias=False) for n in ("q_proj", "k_proj", "v_proj")})
    alone = nn.ModuleDict({n: Int8Linear.from_linear(m) for n, m in block.items()})
    quantize_linear_layers(block, shared_inputs=(("q_proj", "k_proj", "v_proj"),))
    assert block["q_proj"].group is block["v_proj"].group is not None  # one int8 product for the three
    x, y = torch.randn(5, 64), torch.randn(5, 64)
    with torch.inference_mode():
        for name in ("q_proj", "k_proj", "k_proj", "v_proj"):  # k twice: recomputed, not taken from q
            assert torch.equal(block[name](x), alone[name](x))
        assert torch.equal(block["q_proj"](x), alone["q_proj"](x))
        assert torch.equal(block["k_proj"](y), alone["k_proj"](y))  # another tensor: scaled afresh


def test_auto_is_int8_on_cpu_with_an_int8_head(tiny_base):
    loaded = load_base_model(str(tiny_base))
    assert loaded.quantize == "int8" and loaded.dtype == torch.float32
    assert isinstance(loaded.model.get_output_embeddings(), Int8Linear)
    assert isinstance(loaded.model.get_input_embeddings(), nn.Embedding)  # soft prompts look up fp32 rows
    assert not any(type(m) is nn.Linear for m in loaded.model.modules())
    assert loaded.footprint_bytes < load_base_model(str(tiny_base), quantize="none").footprint_bytes
    with pytest.raises(ValueError, match="int8 on the CPU computes in float32"):
        load_base_model(str(tiny_base), quantize="int8", dtype="bfloat16")


def test_engine_rows_get_their_solo_tokens_in_batches_of_any_composition(tiny_base, tmp_path):
    """Through the engine on the int8 base: each request alone first, then in mixed batches of
    different composition (LoRAs, soft prompts, base rows, a long prompt, rows joining mid-decode)."""
    registry = LocalRegistry(tmp_path / "reg")
    push_serving_adapters(registry, tiny_base, tmp_path / "adapters")
    loaded = load_base_model(str(tiny_base), device="cpu")
    requests = {  # name -> (adapter, prompt ids, max_tokens)
        "base": (None, [72, 101, 108, 108, 111], 10),
        "qv": ("lora-qv", [87, 111, 114, 108, 100, 33], 12),
        "all": ("lora-all", [1, 2, 3], 9),
        "prompt": ("prompt-4", [200, 17, 90, 5], 11),
        "long": ("lora-all", list(range(40, 40 + 57)), 8),
        "prompt7": ("prompt-7", [9], 7),
    }
    with create_engine(loaded, registry, max_batch_size=4, max_loaded_adapters=4) as engine:
        def run(names: list[str]) -> dict[str, list[int]]:
            submitted = {n: engine.submit(requests[n][1], SamplingParams(max_tokens=requests[n][2], temperature=0),
                                          engine.resolve(requests[n][0])) for n in names}
            out = {}
            for n, request in submitted.items():
                events = list(request.stream)
                assert events[-1].finish_reason in ("stop", "length"), events[-1]
                out[n] = [e.token_id for e in events if e.token_id is not None]
            return out

        alone = {n: run([n])[n] for n in requests}
        for batch in (["qv", "base", "all", "prompt"], ["long", "qv", "prompt7"], ["all", "all", "base"],
                      ["prompt", "long", "base", "qv", "all", "prompt7"]):  # 6 rows, 4 slots: rows join mid-decode
            got = run(list(dict.fromkeys(batch)))
            assert got == {n: alone[n] for n in got}, batch
        # rows joining while others decode, from several client threads at once
        results: dict[str, list[int]] = {}
        threads = [threading.Thread(target=lambda n=n: results.update(run([n]))) for n in requests]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == alone


def test_lora_rows_on_int8_agree_with_peft_on_the_fp32_base(tiny_base, tmp_path):
    """LoRA rows on the int8 base equal PEFT's delta on the same int8 layers (logits within 1e-4),
    and pick PEFT-on-fp32's top-1 token at ``MIN_TOP1_AGREEMENT`` of the positions or more."""
    from peft import PeftModel

    configs = {"qv": dict(r=8, lora_alpha=16), "all": dict(r=16, lora_alpha=32, target_modules="all-linear")}
    folders = {n: save_lora(tiny_base, tmp_path / n, seed=i, **c) for i, (n, c) in enumerate(configs.items())}
    loaded = load_base_model(str(tiny_base), quantize="int8")
    bank = LoraSlotBank(loaded, max_slots=2, max_rank=16)
    for slot, folder in enumerate(folders.values()):
        bank.load(slot, json.loads((folder / "adapter_config.json").read_text()),
                  str(folder / "adapter_model.safetensors"))
    ids = torch.randint(3, 256, (4, 48), generator=torch.Generator().manual_seed(0))
    rows = [0, 1, -1, 1]
    with torch.inference_mode(), bank.rows(rows):
        ours = loaded.model(ids).logits
    agree = 0
    for i, slot in enumerate(rows):
        folder = None if slot < 0 else list(folders.values())[slot]
        same_layers = peft_cpu_int8_model(str(tiny_base), None if folder is None else str(folder))
        fp32 = load_base_model(str(tiny_base), quantize="none").model
        if folder is not None:
            fp32 = PeftModel.from_pretrained(fp32, folder)
        with torch.inference_mode():
            torch.testing.assert_close(ours[i], same_layers(ids[i : i + 1]).logits[0], atol=1e-4, rtol=0)
            agree += int((fp32.eval()(ids[i : i + 1]).logits[0].argmax(-1) == ours[i].argmax(-1)).sum())
    share = agree / ids.numel()
    print(f"top-1 agreement with PEFT on the fp32 base: {share:.3f} of {ids.numel()} positions")
    assert share >= MIN_TOP1_AGREEMENT
