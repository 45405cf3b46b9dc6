"""The gathered heterogeneous-batch LoRA against PEFT: one PeftModel per row is the oracle.

A batch mixes rows of several adapters (different ranks, rsLoRA, rank/alpha patterns, different
target layers, dropout) and rows of the bare base; every row must give PEFT's logits and greedy
tokens, on an fp32 base, on an nf4 base (compared with PEFT on the same nf4 base) and on the CPU bf16 and int8
bases (PEFT's delta on top of the same packed layers). Adapters the
fast path cannot compute exactly are refused, and a refused load leaves the slot as it was.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import save_lora
from serving_helpers import peft_cpu_packed_model
from adapterhub.adapter_folder import read_adapter_config
from adapterhub.errors import IncompatibleBase, InvalidAdapter, UnsupportedAdapter
from adapterhub.tinybase import TinyBaseSpec, build_tiny_base
from adapterhub.server.engine.lora.slot_bank import LoraSlotBank
from adapterhub.server.engine.model_loader import CPU_PACKED_MODES, load_base_model

# Each config exercises one thing PEFT's scaling or targeting does differently.
CONFIGS = {
    "qv_r4": dict(r=4, lora_alpha=8),
    "all_linear_rslora_r8": dict(r=8, lora_alpha=16, use_rslora=True, target_modules="all-linear"),
    "patterns": dict(r=2, lora_alpha=4, target_modules=["q_proj", "k_proj", "down_proj", "up_proj"],
                     rank_pattern={"k_proj": 6}, alpha_pattern={"down_proj": 3}),
    "mlp_dropout_r3": dict(r=3, lora_alpha=5, lora_dropout=0.3, target_modules=["gate_proj", "o_proj"]),
}
ROWS = ["qv_r4", None, "all_linear_rslora_r8", "patterns", "qv_r4", "mlp_dropout_r3"]  # None: bare base
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def adapters(tiny_base, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {name: save_lora(tiny_base, root / name, seed=i, **cfg) for i, (name, cfg) in enumerate(CONFIGS.items())}


def _load_into(bank: LoraSlotBank, slot: int, folder: Path) -> int:
    return bank.load(slot, read_adapter_config(folder), str(folder / "adapter_model.safetensors"))


def _prompts() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (len(ROWS), 9), generator=g)


def _peft_row_model(tiny_base: Path, adapters: dict[str, Path], quantize: str, name: str | None,
                    device: torch.device):
    """PEFT alone for one row's adapter (``None``: the bare base) on the ``quantize`` base."""
    from peft import PeftModel

    if quantize in CPU_PACKED_MODES and device.type == "cpu":
        return peft_cpu_packed_model(str(tiny_base), None if name is None else str(adapters[name]), quantize)
    model = _base(tiny_base, quantize, device).model
    if name is not None:
        model = PeftModel.from_pretrained(model, adapters[name])
    return model.eval()


def _peft_rows(tiny_base: Path, adapters: dict[str, Path], quantize: str, ids: torch.Tensor, rows=ROWS):
    """Per row, PEFT alone: logits of the prompt, and greedy tokens."""
    logits, tokens = [], []
    for i, name in enumerate(rows):
        model = _peft_row_model(tiny_base, adapters, quantize, name, ids.device)
        with torch.no_grad():
            logits.append(model(ids[i : i + 1]).logits[0])
            tokens.append(_greedy(model, ids[i : i + 1])[0])
    return torch.stack(logits), torch.stack(tokens)


def _assert_peft_greedy_up_to_ties(tiny_base: Path, adapters: dict[str, Path], quantize: str, ids: torch.Tensor,
                                   tokens: torch.Tensor, ref_tokens: torch.Tensor, tol: float) -> None:
    """Our greedy tokens are PEFT's, except where PEFT's own logits tie within ``tol``: teacher-forced
    on our tokens, PEFT's logit of each token we chose is at most ``tol`` below its best (the tiny
    random base has near-ties, which a quantized layer's rounding may break either way)."""
    for i, name in enumerate(ROWS):
        if torch.equal(tokens[i], ref_tokens[i]):
            continue
        model = _peft_row_model(tiny_base, adapters, quantize, name, ids.device)
        with torch.no_grad():
            logits = model(torch.cat([ids[i], tokens[i]])[None]).logits[0, ids.shape[1] - 1 : -1]
        chosen = logits.gather(1, tokens[i][:, None]).squeeze(1)
        assert float((logits.max(1).values - chosen).max()) <= tol, (name, tokens[i], ref_tokens[i])


def _greedy(model, ids: torch.Tensor, **kw) -> torch.Tensor:
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                             min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=256, **kw)
    return out[:, ids.shape[1]:]


def _base(tiny_base: Path, quantize: str, device: torch.device, dtype: str = "float32"):
    return load_base_model(str(tiny_base), quantize=quantize, device=str(device), dtype=dtype)


def _ours(tiny_base: Path, adapters: dict[str, Path], quantize: str, ids: torch.Tensor, dtype: str = "float32"):
    loaded = _base(tiny_base, quantize, ids.device, dtype)
    bank = LoraSlotBank(loaded, max_slots=len(CONFIGS) + 1, max_rank=8)
    slot_of = {}
    for slot, name in enumerate(CONFIGS, start=1):  # slot 0 left empty on purpose
        assert _load_into(bank, slot, adapters[name]) > 0
        slot_of[name] = slot
    rows = [-1 if n is None else slot_of[n] for n in ROWS]
    with torch.no_grad(), bank.rows(rows):
        logits = loaded.model(ids).logits
        decode = loaded.model(ids[:, :1]).logits  # one token per row: the decode path
    with bank.rows(rows):
        tokens = _greedy(loaded.model, ids)
    return logits, decode, tokens


def _peft_mixed(tiny_base: Path, adapters: dict[str, Path], quantize: str, ids: torch.Tensor, rows=ROWS,
                dtype: str = "float32"):
    """PEFT's own mixed batch (``adapter_names``): the base layers see the same whole batch as ours."""
    from peft import PeftModel

    names = list(CONFIGS)
    model = PeftModel.from_pretrained(_base(tiny_base, quantize, ids.device, dtype).model,
                                      adapters[names[0]], adapter_name=names[0])
    for n in names[1:]:
        model.load_adapter(adapters[n], adapter_name=n)
    model.eval()
    adapter_names = ["__base__" if n is None else n for n in rows]
    with torch.no_grad():
        logits = model(ids, adapter_names=adapter_names).logits
        decode = model(ids[:, :1], adapter_names=adapter_names).logits
    return logits, decode, _greedy(model, ids, adapter_names=adapter_names)


@pytest.mark.parametrize("quantize, tol", [("int8", 1e-2), ("bf16", 5e-3)])
def test_mixed_batch_on_cpu_packed_layers_matches_peft_per_row_on_the_same_layers(tiny_base, adapters, quantize, tol):
    """The CPU modes compute every row on its own (int8 scales activations per row, bf16 rounds
    each value), so a row's numerics do not depend on its batch mates: the oracle is PEFT row by
    row, its delta on top of the same quantized layers. Each layer rounds its input (bf16: to
    bfloat16; int8: to 1/127 of the row's largest value), so float32-rounding differences between
    our delta and PEFT's move a value that sits on a rounding boundary by one step: up to 4e-3 in
    the logits for int8 (measured, on the all-linear adapter's row; rows that do not flip agree to
    1e-7), a third of that for bf16, whose tolerance is nf4's."""
    _check_against_peft_rows(tiny_base, adapters, quantize, tol, _prompts())


def _check_against_peft_mixed(tiny_base, adapters, quantize: str, tol: float, ids: torch.Tensor,
                              dtype: str = "float32") -> None:
    ref_logits, ref_decode, ref_tokens = _peft_mixed(tiny_base, adapters, quantize, ids, dtype=dtype)
    logits, decode, tokens = _ours(tiny_base, adapters, quantize, ids, dtype)
    torch.testing.assert_close(logits, ref_logits, atol=tol, rtol=0)
    torch.testing.assert_close(decode, ref_decode, atol=tol, rtol=0)
    assert torch.equal(tokens, ref_tokens)


@pytest.mark.parametrize("quantize, tol", [("none", 1e-5), ("nf4", 5e-3)])
def test_mixed_batch_matches_peft_per_row(tiny_base, adapters, quantize, tol):
    """nf4: bitsandbytes computes in low precision, so a 1-ulp input change moves an output by ~1e-4;
    PEFT against itself at batch 1 and batch 6 differs that much too. Tokens must still agree."""
    _check_against_peft_rows(tiny_base, adapters, quantize, tol, _prompts())


def _check_against_peft_rows(tiny_base, adapters, quantize: str, tol: float, ids: torch.Tensor) -> None:
    ref_logits, ref_tokens = _peft_rows(tiny_base, adapters, quantize, ids)
    ref_decode, _ = _peft_rows(tiny_base, adapters, quantize, ids[:, :1])
    logits, decode, tokens = _ours(tiny_base, adapters, quantize, ids)
    base_row = ROWS.index(None)
    assert (ref_logits - ref_logits[base_row]).abs().amax(dim=(1, 2))[0] > 0.1  # the adapters matter
    torch.testing.assert_close(logits, ref_logits, atol=tol, rtol=0)
    torch.testing.assert_close(decode, ref_decode, atol=tol, rtol=0)
    _assert_peft_greedy_up_to_ties(tiny_base, adapters, quantize, ids, tokens, ref_tokens, tol)


def test_few_adapters_in_a_big_batch(tiny_base, adapters):
    """Two adapters and base rows over 8 rows: decode steps take the side-by-side path with a row mask."""
    rows = ["qv_r4", None, "patterns", "qv_r4", None, "patterns", "patterns", "qv_r4"]
    ids = torch.randint(0, 256, (len(rows), 5), generator=torch.Generator().manual_seed(1))
    ref_logits, ref_tokens = _peft_rows(tiny_base, adapters, "none", ids, rows)
    loaded = load_base_model(str(tiny_base), quantize="none")
    bank = LoraSlotBank(loaded, max_slots=2, max_rank=8)
    _load_into(bank, 0, adapters["qv_r4"])
    _load_into(bank, 1, adapters["patterns"])
    slots = [{"qv_r4": 0, "patterns": 1, None: -1}[n] for n in rows]
    with bank.rows(slots):
        tokens = _greedy(loaded.model, ids)
        with torch.no_grad():
            decode = loaded.model(ids[:, :1]).logits
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(decode, ref_logits[:, :1], atol=1e-5, rtol=0)


def test_base_rows_and_no_rows_are_the_bare_base(tiny_base, adapters):
    loaded = load_base_model(str(tiny_base), quantize="none")
    ids = _prompts()[:2]
    with torch.no_grad():
        bare = loaded.model(ids).logits
    bank = LoraSlotBank(loaded, max_slots=2, max_rank=8)
    _load_into(bank, 0, adapters["qv_r4"])
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, bare)  # no set_rows: no LoRA work
        with bank.rows([-1, 0]):
            mixed = loaded.model(ids).logits
    assert torch.equal(mixed[0], bare[0])
    assert not torch.allclose(mixed[1], bare[1])


def test_reloading_a_slot_leaves_nothing_of_the_previous_adapter(tiny_base, adapters):
    """A rank-8 all-linear adapter, then a rank-4 q/v one in the same slot: only the second counts."""
    from peft import PeftModel

    ids = _prompts()[:1]
    loaded = load_base_model(str(tiny_base), quantize="none")
    bank = LoraSlotBank(loaded, max_slots=1, max_rank=8)
    _load_into(bank, 0, adapters["all_linear_rslora_r8"])
    bank.set_rows([0])
    _load_into(bank, 0, adapters["qv_r4"])
    with pytest.raises(RuntimeError, match="set_rows"):
        loaded.model(ids)  # the rows were set for the adapter that left the slot
    with torch.no_grad(), bank.rows([0]):
        ours = loaded.model(ids).logits
    ref = PeftModel.from_pretrained(load_base_model(str(tiny_base), quantize="none").model, adapters["qv_r4"])
    with torch.no_grad():
        torch.testing.assert_close(ours, ref(ids).logits, atol=1e-5, rtol=0)
    bank.free(0)
    assert not bank.occupied(0)
    with pytest.raises(ValueError, match="holds no adapter"):
        bank.set_rows([0])


def test_an_adapter_loaded_again_or_rewritten_in_place_is_what_its_file_holds(tiny_base, adapters, tmp_path):
    """Headers are remembered per file version: loading the same file again reuses its parse, and a
    file rewritten at the same path, same config, its data now at other offsets, is read anew."""
    from peft import PeftModel
    from safetensors.torch import load_file, save_file

    ids = _prompts()[:1]
    loaded = load_base_model(str(tiny_base), quantize="none")
    bank = LoraSlotBank(loaded, max_slots=1, max_rank=8)
    folder = tmp_path / "moving"
    shutil.copytree(adapters["all_linear_rslora_r8"], folder)
    ref = PeftModel.from_pretrained(load_base_model(str(tiny_base), quantize="none").model, folder)
    with torch.no_grad():
        expected = ref(ids).logits

    def load_and_check() -> None:
        _load_into(bank, 0, folder)
        with torch.no_grad(), bank.rows([0]):
            torch.testing.assert_close(loaded.model(ids).logits, expected, atol=1e-5, rtol=0)
        bank.free(0)

    load_and_check()
    load_and_check()  # the remembered header
    weights = folder / "adapter_model.safetensors"
    save_file(load_file(weights), weights, metadata={"format": "pt", "note": "x" * 1000})  # every offset moves
    load_and_check()


def test_rows_must_describe_the_batch(tiny_base, adapters):
    loaded = load_base_model(str(tiny_base), quantize="none")
    bank = LoraSlotBank(loaded, max_slots=2, max_rank=8)
    _load_into(bank, 0, adapters["qv_r4"])
    with pytest.raises(ValueError, match="3 rows"), bank.rows([0, 0]):
        loaded.model(_prompts()[:3])
    with pytest.raises(ValueError, match="out of range"):
        bank.free(5)


def _edited(folder: Path, dest: Path, **changes) -> Path:
    shutil.copytree(folder, dest)
    cfg_path = dest / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(changes)
    cfg_path.write_text(json.dumps(cfg))
    return dest


@pytest.mark.parametrize(
    "kind, match",
    [
        ("dora", "DoRA"),
        ("embedding", "embedding LoRA"),
        ("modules_to_save", "modules_to_save"),
        ("bias", "bias"),
        ("fan_in_fan_out", "fan_in_fan_out"),
        ("rank_too_big", "max rank"),
    ],
)
def test_unsupported_adapters_are_refused_and_the_slot_kept(tiny_base, adapters, tmp_path, kind, match):
    made = {
        "dora": lambda: save_lora(tiny_base, tmp_path / "x", use_dora=True),
        "embedding": lambda: save_lora(tiny_base, tmp_path / "x", target_modules=["embed_tokens", "q_proj"]),
        "modules_to_save": lambda: save_lora(tiny_base, tmp_path / "x", modules_to_save=["lm_head"]),
        "bias": lambda: save_lora(tiny_base, tmp_path / "x", bias="lora_only"),
        "fan_in_fan_out": lambda: _edited(adapters["qv_r4"], tmp_path / "x", fan_in_fan_out=True),
        "rank_too_big": lambda: save_lora(tiny_base, tmp_path / "x", r=16),
    }
    folder = made[kind]()
    loaded = load_base_model(str(tiny_base), quantize="none")
    bank = LoraSlotBank(loaded, max_slots=1, max_rank=8)
    _load_into(bank, 0, adapters["qv_r4"])
    ids = _prompts()[:1]
    with torch.no_grad(), bank.rows([0]):
        before = loaded.model(ids).logits
    with pytest.raises(UnsupportedAdapter, match=match):
        _load_into(bank, 0, folder)
    with torch.no_grad(), bank.rows([0]):
        assert torch.equal(loaded.model(ids).logits, before)


def test_adapter_for_another_base_is_incompatible(tiny_base, tmp_path):
    other = build_tiny_base(tmp_path / "wide", TinyBaseSpec(hidden_size=64, intermediate_size=128))
    folder = save_lora(other, tmp_path / "wide-lora")
    bank = LoraSlotBank(load_base_model(str(tiny_base), quantize="none"), max_slots=1, max_rank=8)
    with pytest.raises(IncompatibleBase, match="q_proj"):
        _load_into(bank, 0, folder)
    assert not bank.occupied(0)


def test_adapter_on_a_layer_not_wrapped_is_incompatible(tiny_base, adapters):
    bank = LoraSlotBank(load_base_model(str(tiny_base), quantize="none"), max_slots=1, max_rank=8,
                          target_modules=["q_proj", "v_proj"])
    assert _load_into(bank, 0, adapters["qv_r4"]) > 0
    with pytest.raises(IncompatibleBase, match="not a linear layer this server wraps"):
        _load_into(bank, 0, adapters["patterns"])


def test_broken_weights_file_is_invalid(tiny_base, adapters, tmp_path):
    folder = shutil.copytree(adapters["qv_r4"], tmp_path / "broken")
    (folder / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    bank = LoraSlotBank(load_base_model(str(tiny_base), quantize="none"), max_slots=1, max_rank=8)
    with pytest.raises(InvalidAdapter):
        _load_into(bank, 0, folder)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_adapter_file_into_fp32_slots(tiny_base, adapters, tmp_path, dtype):
    """Adapters are often saved in bf16 or fp16: the slot converts on copy, as PEFT upcasts on load."""
    from peft import PeftModel
    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(adapters["patterns"], tmp_path / "half")
    weights = folder / "adapter_model.safetensors"
    save_file({k: v.to(dtype) for k, v in load_file(weights).items()}, weights)
    loaded = load_base_model(str(tiny_base), quantize="none")
    bank = LoraSlotBank(loaded, max_slots=1, max_rank=8)
    _load_into(bank, 0, folder)
    ids = _prompts()[:2]
    with torch.no_grad(), bank.rows([0, -1]):
        ours = loaded.model(ids).logits
    ref = PeftModel.from_pretrained(load_base_model(str(tiny_base), quantize="none").model, folder)
    with torch.no_grad():
        torch.testing.assert_close(ours[:1], ref(ids[:1]).logits, atol=1e-5, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("quantize, tol", [("none", 1e-4), ("nf4", 5e-3)])
def test_mixed_batch_on_cuda_matches_peft_per_row(tiny_base, adapters, quantize, tol):
    """The CPU oracle on a CUDA device, which also covers pinned staging and the load stream."""
    _check_against_peft_rows(tiny_base, adapters, quantize, tol, _prompts().cuda())


@pytest.mark.gpu
def test_mixed_batch_on_cuda_int8_matches_peft_mixed_batch(tiny_base, adapters):
    _check_against_peft_mixed(tiny_base, adapters, "int8", 5e-3, _prompts().cuda())


@pytest.mark.gpu
def test_mixed_batch_on_cuda_bf16_matches_peft_mixed_batch(tiny_base, adapters):
    """bf16 slots: the LoRA scale is folded into B before rounding, PEFT scales after, hence the tolerance."""
    _check_against_peft_mixed(tiny_base, adapters, "none", 5e-2, _prompts().cuda(), dtype="bfloat16")

