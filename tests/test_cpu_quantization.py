"""The CPU quantized bases (``bf16``, the default, and ``int8``): a row's result never depends on its
batch, LoRA rows are PEFT's delta on top of the same packed layers, and the base stays close to fp32.

The oracle for "batch-invariant" is the same row run alone; for LoRA, PEFT's own ``LoraLayer`` over
the server's ``PackedLinear`` (``serving_helpers.peft_cpu_packed_model``); for closeness, PEFT on the
fp32 base. The same checks on the real SmolLM2-135M-Instruct weights, with perplexity and greedy
agreement against ``none``, are in ``test_real_model_quantization.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch
from torch import nn

from conftest import save_lora
from serving_helpers import peft_cpu_packed_model, push_serving_adapters
from adapterhub.adapter_folder import read_adapter_config
from adapterhub.registry import LocalRegistry
from adapterhub.server.engine.engine import create_engine
from adapterhub.server.engine.lora.slot_bank import LoraSlotBank
from adapterhub.server.engine.model_loader import CPU_PACKED_MODES, cpu_product, load_base_model, pack_cpu_layers
from adapterhub.server.engine.packed_linear import PackedLinear
from adapterhub.server.engine.request import SamplingParams

# Teacher-forced top-1 agreement of the quantized base (+ LoRA) with PEFT on the fp32 base over every
# prompt position of the test below (the tiny base is random-init, so its top logits are close).
MIN_TOP1_AGREEMENT = {"int8": 0.9, "bf16": 0.97}
# Largest error of one layer's output relative to the largest exact output, per mode.
MAX_RELATIVE_ERROR = {"int8": 0.05, "bf16": 0.01}
# LoRA logits against PEFT on the same packed layers. Our delta and PEFT's differ by float32
# rounding (other op order); the next layer rounds its input again (to bfloat16, or to an int8 step),
# so a value on a rounding boundary moves by a whole step, and such steps add up over 30 layers:
# a bfloat16 step is finer and crossed more often; an int8 step (1/127 of the row's largest value)
# is coarser, so one crossing moves a logit further (up to 6e-3 measured on a Xeon with AMX).
PEFT_TOLERANCE = {"int8": 1e-2, "bf16": 5e-3}

pytestmark = pytest.mark.filterwarnings("ignore:torch.quantize_per_channel:UserWarning")


def _layer(linear: nn.Linear, mode: str) -> PackedLinear:
    return PackedLinear.single(linear, cpu_product(mode), mode)


def _rows_with_an_outlier(rows: int, width: int, seed: int) -> torch.Tensor:
    x = torch.randn(rows, width, generator=torch.Generator().manual_seed(seed))
    x[1] *= 80.0  # a batch mate with a far larger range than the others
    return x


@pytest.mark.parametrize("mode", CPU_PACKED_MODES)
@pytest.mark.parametrize("shape", [(96, 160), (576, 960), (100, 37), (45, 17)])
def test_a_row_gets_the_same_bits_alone_and_in_any_batch(mode, shape):
    """Widths that are not multiples of the kernels' blocks included (padding must add nothing)."""
    torch.manual_seed(0)
    linear = nn.Linear(*shape)
    layer = _layer(linear, mode)
    x = _rows_with_an_outlier(21, shape[0], seed=1)
    with torch.inference_mode():
        batched = layer(x)
        for i in range(len(x)):
            assert torch.equal(layer(x[i : i + 1])[0], batched[i])
        for rows in (2, 8, 9, 17):
            assert torch.equal(layer(x[:rows]), batched[:rows])
        assert torch.equal(layer(x[:20].view(4, 5, shape[0])).view(20, shape[1]), batched[:20])  # prompt-shaped


@pytest.mark.parametrize("mode", CPU_PACKED_MODES)
def test_a_long_prompt_past_the_kept_buffers_gets_each_rows_bits(mode):
    """A prefill of more rows than a layer keeps buffers for (a fresh buffer each call, which must
    live until the kernel is done with it)."""
    torch.manual_seed(0)
    layer = _layer(nn.Linear(576, 960), mode)
    x = torch.randn(700, 576)
    with torch.inference_mode():
        whole = [layer(x) for _ in range(3)]
        assert all(torch.equal(w, whole[0]) for w in whole)
        for i in (0, 255, 256, 699):
            assert torch.equal(layer(x[i : i + 1])[0], whole[0][i])


def test_torch_dynamic_int8_moves_rows_with_their_batch_mates():
    """Why the int8 layer scales rows itself: torch's own dynamic int8 scales per tensor."""
    torch.manual_seed(0)
    linear = nn.Linear(96, 160)
    x = _rows_with_an_outlier(4, 96, seed=1)
    dynamic = torch.ao.quantization.quantize_dynamic(nn.Sequential(linear), {nn.Linear}, dtype=torch.qint8)
    with torch.inference_mode():
        assert not torch.equal(dynamic(x[:1])[0], dynamic(x[:2])[0])


@pytest.mark.parametrize("mode", CPU_PACKED_MODES)
@pytest.mark.parametrize("poison", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_row_fails_alone(mode, poison):
    """A row gone NaN or inf upstream (an adapter whose activations overflow) comes out non-finite,
    and every other row gets exactly the bits it gets without it."""
    torch.manual_seed(0)
    layer = _layer(nn.Linear(96, 160), mode)
    x = _rows_with_an_outlier(6, 96, seed=2)
    with torch.inference_mode():
        clean = layer(x).clone()
        x[3, 7] = poison
        mixed = layer(x)
    assert not torch.isfinite(mixed[3]).any()
    others = [i for i in range(6) if i != 3]
    assert torch.equal(mixed[others], clean[others])


@pytest.mark.parametrize("mode", CPU_PACKED_MODES)
def test_error_is_the_modes_size_and_bias_is_exact(mode):
    torch.manual_seed(0)
    linear = nn.Linear(256, 64)
    nn.init.normal_(linear.bias, std=1.0)
    x = torch.randn(16, 256)
    with torch.inference_mode():
        exact, ours = linear(x), _layer(linear, mode)(x)
        error = (ours - exact).abs().amax(1) / exact.abs().amax(1)
        assert 0 < float(error.max()) < MAX_RELATIVE_ERROR[mode]
        torch.testing.assert_close(_layer(linear, mode)(torch.zeros(1, 256))[0], linear.bias, atol=0, rtol=0)


@pytest.mark.parametrize("extreme", [False, True])
def test_int8_products_are_integer_products_of_per_row_codes(extreme):
    """The int8 layer's definition: each row scaled to max |x| = 1 and rounded to ``2^(bits-1) - 1``
    steps each side of zero (8 bits with VNNI, else 7), weights symmetric int8 per output channel,
    integer products. ``extreme``: every code at its limit, where 16-bit pair sums would saturate."""
    from adapterhub.server.engine.int8_linear import activation_bits

    torch.manual_seed(0)
    linear = nn.Linear(576, 64, bias=False)
    x = torch.randn(7, 576) * torch.logspace(-2, 2, 7)[:, None]
    if extreme:
        linear.weight.data = torch.where(torch.rand(64, 576) < 0.5, -1.0, 1.0)
        linear.weight.data[:, 0] = 1.0
        x = torch.where(linear.weight.data[:7] > 0, 3.0, -3.0)  # every product at +max * max
    steps = (1 << (activation_bits() - 1)) - 1
    with torch.inference_mode():
        ours = _layer(linear, "int8")(x)
    w_scale = linear.weight.abs().amax(1, keepdim=True) / 127
    w_codes = torch.round(linear.weight / w_scale).double()
    row_max = x.abs().amax(1, keepdim=True)
    x_codes = torch.round(x / row_max * steps).double()
    ref = (x_codes @ w_codes.T) * (row_max.double() / steps) * w_scale.double().T
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))


def test_bf16_products_are_bfloat16_values_summed_in_float32():
    """The bf16 kernel's definition: inputs and weights rounded to bfloat16 (round to nearest even),
    their exact products summed in float32 (so a float64 sum of the same values is within a few
    float32 roundings)."""
    torch.manual_seed(0)
    linear = nn.Linear(576, 200)
    x = torch.randn(9, 576) * torch.logspace(-3, 3, 576)  # values of very different sizes in one row
    with torch.inference_mode():
        ours = _layer(linear, "bf16")(x)
    ref = x.bfloat16().double() @ linear.weight.bfloat16().double().T + linear.bias.double()
    scale = (x.bfloat16().double().abs() @ linear.weight.bfloat16().double().abs().T)
    assert float(((ours.double() - ref).abs() / scale).max()) < 1e-5


def test_every_build_of_the_bf16_kernel_gives_the_same_bits(tmp_path):
    """Built for this CPU, without AVX512-BF16 (``-mno-avx512bf16``: the AVX2 fused multiply-add path
    where the CPU has AVX2) and without AVX2 (``-mno-avx2``: the plain C path), the kernel computes
    the very same values, for decode-sized and prompt-sized row counts: every CPU serves the same
    answers."""
    script = (
        "import sys, torch\nfrom torch import nn\n"
        "from adapterhub.server.engine.bf16_linear import Bf16Product, native_bf16\n"
        "torch.manual_seed(0)\nouts = []\n"
        "for k, n, m in [(576, 960, 13), (100, 37, 3), (1536, 48, 8), (64, 40, 150)]:\n"
        "    lin = nn.Linear(k, n)\n"
        "    outs.append(Bf16Product(lin.weight, lin.bias, (n,))(torch.randn(m, k)))\n"
        "torch.save({'native': native_bf16(), 'outs': outs}, sys.argv[1])\n")
    results = {}
    for name, flags in (("this_cpu", ""), ("no_bf16", "-mno-avx512bf16"), ("plain_c", "-mno-avx2")):
        env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), ADAPTERHUB_KERNEL_CFLAGS=flags)
        subprocess.run([sys.executable, "-c", script, str(tmp_path / f"{name}.pt")], env=env, check=True, timeout=300)
        results[name] = torch.load(tmp_path / f"{name}.pt")
    assert not results["no_bf16"]["native"] and not results["plain_c"]["native"]
    for other in ("no_bf16", "plain_c"):
        for a, b in zip(results["this_cpu"]["outs"], results[other]["outs"]):
            assert torch.equal(a, b)


@pytest.mark.parametrize("mode", CPU_PACKED_MODES)
def test_layers_sharing_an_input_are_one_product_and_compute_the_same_bits(mode):
    torch.manual_seed(0)
    block = nn.ModuleDict({n: nn.Linear(64, 32 if n != "q_proj" else 64, bias=False) for n in ("q_proj", "k_proj", "v_proj")})
    alone = nn.ModuleDict({n: _layer(m, mode) for n, m in block.items()})
    pack_cpu_layers(block, mode)
    assert block["q_proj"].group is block["v_proj"].group is not None  # one product for the three
    x, y = torch.randn(5, 64), torch.randn(5, 64)
    with torch.inference_mode():
        for name in ("q_proj", "k_proj", "k_proj", "v_proj"):  # k twice: recomputed, not taken from q
            assert torch.equal(block[name](x), alone[name](x))
        assert torch.equal(block["q_proj"](x), alone["q_proj"](x))
        assert torch.equal(block["k_proj"](y), alone["k_proj"](y))  # another tensor: computed afresh


def test_auto_is_bf16_on_cpu_with_a_packed_head(tiny_base):
    loaded = load_base_model(str(tiny_base))
    assert loaded.quantize == "bf16" and loaded.dtype == torch.float32
    assert isinstance(loaded.model.get_output_embeddings(), PackedLinear)
    assert isinstance(loaded.model.get_input_embeddings(), nn.Embedding)  # soft prompts look up fp32 rows
    assert not any(type(m) is nn.Linear for m in loaded.model.modules())
    assert loaded.footprint_bytes < load_base_model(str(tiny_base), quantize="none").footprint_bytes
    for mode in CPU_PACKED_MODES:
        with pytest.raises(ValueError, match=f"{mode} on the CPU computes in float32"):
            load_base_model(str(tiny_base), quantize=mode, dtype="bfloat16")


def test_auto_serves_the_weights_as_stored_where_no_kernel_can_be_built(tiny_base, tmp_path):
    """No C compiler: ``auto`` falls back to ``none`` (logged), an explicit ``bf16`` says why it cannot."""
    script = (
        "from adapterhub.server.engine.model_loader import load_base_model\n"
        f"print(load_base_model({str(tiny_base)!r}).quantize)\n"
        "try:\n"
        f"    load_base_model({str(tiny_base)!r}, quantize='bf16')\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), CC="/nonexistent/cc", PATH=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    lines = done.stdout.splitlines()
    assert lines[0] == "none", done.stderr
    assert lines[1].startswith("KernelUnavailable no C compiler found")


@pytest.mark.parametrize("mode", CPU_PACKED_MODES)
def test_engine_rows_get_their_solo_tokens_in_batches_of_any_composition(tiny_base, tmp_path, mode):
    """Through the engine on the quantized base: each request alone first, then in mixed batches of
    different composition (LoRAs, soft prompts, base rows, a long prompt, rows joining mid-decode)."""
    registry = LocalRegistry(tmp_path / "reg")
    push_serving_adapters(registry, tiny_base, tmp_path / "adapters")
    loaded = load_base_model(str(tiny_base), quantize=mode, device="cpu")
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


@pytest.mark.parametrize("mode", CPU_PACKED_MODES)
def test_lora_rows_agree_with_peft_on_the_same_layers_and_on_the_fp32_base(tiny_base, tmp_path, mode):
    """LoRA rows on the quantized base equal PEFT's delta on the same packed layers (logits within
    ``PEFT_TOLERANCE``), and pick PEFT-on-fp32's top-1 token at ``MIN_TOP1_AGREEMENT`` of the
    positions or more."""
    from peft import PeftModel

    configs = {"qv": dict(r=8, lora_alpha=16), "all": dict(r=16, lora_alpha=32, target_modules="all-linear")}
    folders = {n: save_lora(tiny_base, tmp_path / n, seed=i, **c) for i, (n, c) in enumerate(configs.items())}
    loaded = load_base_model(str(tiny_base), quantize=mode)
    bank = LoraSlotBank(loaded, max_slots=2, max_rank=16)
    for slot, folder in enumerate(folders.values()):
        bank.load(slot, read_adapter_config(folder),
                  str(folder / "adapter_model.safetensors"))
    ids = torch.randint(3, 256, (4, 48), generator=torch.Generator().manual_seed(0))
    rows = [0, 1, -1, 1]
    with torch.inference_mode(), bank.rows(rows):
        ours = loaded.model(ids).logits
    agree = 0
    for i, slot in enumerate(rows):
        folder = None if slot < 0 else list(folders.values())[slot]
        same_layers = peft_cpu_packed_model(str(tiny_base), None if folder is None else str(folder), mode)
        fp32 = load_base_model(str(tiny_base), quantize="none").model
        if folder is not None:
            fp32 = PeftModel.from_pretrained(fp32, folder)
        with torch.inference_mode():
            torch.testing.assert_close(ours[i], same_layers(ids[i : i + 1]).logits[0], atol=PEFT_TOLERANCE[mode], rtol=0)
            agree += int((fp32.eval()(ids[i : i + 1]).logits[0].argmax(-1) == ours[i].argmax(-1)).sum())
    share = agree / ids.numel()
    print(f"{mode}: top-1 agreement with PEFT on the fp32 base: {share:.3f} of {ids.numel()} positions")
    assert share >= MIN_TOP1_AGREEMENT[mode]
