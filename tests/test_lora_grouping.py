"""The grouped LoRA product against a per-row reference, for every way a batch's rows can be laid out.

``RowGroups`` picks one of three layouts (rows already in slot order, rows permuted into equal
groups, uneven groups padded with base rows among them) and reads the slot stacks in place or
from a copy of the distinct slots; each must give every row its own adapter's
``x @ A^T @ (scale * B)^T`` on top of the base output, for decode steps and prompts alike, and a
row alone must get what it gets in the batch. The loader's one-pass finiteness check
must refuse NaN and inf in either matrix, and weights that only overflow once scaled.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from adapterhub.adapter_folder import read_adapter_config
from adapterhub.errors import InvalidAdapter
from adapterhub.server.engine.lora import native_delta
from adapterhub.server.engine.lora.layer import wrap_linear_layers
from adapterhub.server.engine.lora.row_plan import BASE_ROW, RowPlans
from adapterhub.server.engine.lora.loader import SlotLoader, read_lora_pairs
from adapterhub.server.engine.model_loader import pack_cpu_layers

SLOTS, RANK, HIDDEN, KV = 6, 16, 256, 64


class _Block(nn.Module):
    """q/k/v read one input (an input group with a shared A store); o reads another."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(HIDDEN, HIDDEN)
        self.k_proj = nn.Linear(HIDDEN, KV, bias=False)
        self.v_proj = nn.Linear(HIDDEN, KV, bias=False)
        self.o_proj = nn.Linear(HIDDEN, HIDDEN, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.o_proj(self.q_proj(x) + torch.cat([self.k_proj(x), self.v_proj(x)], -1)[..., :1])


@pytest.fixture(scope="module", params=["row_by_row", "batched"])
def wrapped(request):
    """The layers with both products: ``native_delta``'s row by row (what a float32 CPU base runs)
    and ``kernels``' batched ones (what a GPU runs; here with the native kernel switched off)."""
    with pytest.MonkeyPatch.context() as patch:
        if request.param == "batched":
            patch.setattr(native_delta, "available", lambda stack: False)
        yield (*_wrapped_block(), request.param)


def _wrapped_block():
    torch.manual_seed(0)
    block = _Block().eval()
    # The CPU default base (what a CPU server runs), which gives a row the same bits in any batch.
    pack_cpu_layers(block, "bf16")
    plans = RowPlans(torch.device("cpu"))
    layers = wrap_linear_layers(block, None, plans, slots=SLOTS, rank=RANK, dtype=torch.float32,
                                device=torch.device("cpu"))
    weights = {}
    g = torch.Generator().manual_seed(1)
    for name, layer in layers.items():
        for slot in range(SLOTS):
            rank = RANK - (slot + len(name)) % 4  # ranks differ by slot and layer
            if name == "k_proj" and slot == 2:
                continue  # an adapter that leaves one member of the group alone
            a = torch.randn(rank, layer.in_features, generator=g) / layer.in_features ** 0.5
            b = torch.randn(layer.out_features, rank, generator=g) * 0.5
            layer.slot(slot)[0][:rank] = a
            layer.slot(slot)[1][:, :rank] = b
            layer.ranks[slot] = rank
            weights[(name, slot)] = (a, b)
    return block, plans, layers, weights


def _reference(layer_name: str, layer, weights, x: torch.Tensor, rows: list[int]) -> torch.Tensor:
    out = layer.base_layer(x).clone()
    for i, slot in enumerate(rows):
        if slot != BASE_ROW and (layer_name, slot) in weights:
            a, b = weights[(layer_name, slot)]
            out[i] += x[i] @ a.t() @ b.t()
    return out


LAYOUTS = {
    "direct": [0, 1, 2, 3],
    "permuted": [3, 0, 2, 1],
    "equal_groups": [4, 1, 4, 1, 1, 4],
    "uneven_with_base_rows": [1, BASE_ROW, 1, 5, 1, BASE_ROW],
    "not_consecutive": [5, 0, 3],
    "one_adapter": [2, 2, 2],
}


@pytest.mark.parametrize("tokens", [1, 5])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_row_gets_its_own_adapter_in_every_layout(wrapped, layout, tokens):
    _, plans, layers, weights, product = wrapped
    rows = LAYOUTS[layout]
    x = torch.randn(len(rows), tokens, HIDDEN, generator=torch.Generator().manual_seed(tokens))
    distinct = tuple(sorted({r for r in rows if r != BASE_ROW}))
    plans.use(tuple(rows), distinct, (0,) * len(distinct))
    try:
        with torch.inference_mode():
            for name in ("q_proj", "k_proj", "v_proj"):  # one input: the group's A product is shared
                got = layers[name](x)
                torch.testing.assert_close(got, _reference(name, layers[name], weights, x, rows), rtol=1e-4,
                                           atol=1e-4)
            batched = layers["o_proj"](x)
            torch.testing.assert_close(batched, _reference("o_proj", layers["o_proj"], weights, x, rows), rtol=1e-4,
                                       atol=1e-4)
            for i, slot in enumerate(rows):  # alone, a row gets what it got in the batch
                plans.use((slot,), () if slot == BASE_ROW else (slot,), (0,) * (slot != BASE_ROW))
                alone = layers["o_proj"](x[i : i + 1])[0]
                if product == "row_by_row":
                    assert torch.equal(alone, batched[i])
                else:  # the product's shapes (rows per adapter, the batch's largest rank, strides)
                    # change with the batch, and BLAS may round each differently
                    torch.testing.assert_close(alone, batched[i], rtol=1e-5, atol=1e-5)
    finally:
        plans.clear()


def test_base_rows_are_the_bare_base_bit_for_bit(wrapped):
    _, plans, layers, _, _ = wrapped
    rows = LAYOUTS["uneven_with_base_rows"]
    x = torch.randn(len(rows), 3, HIDDEN)
    plans.use(tuple(rows), (1, 5), (0, 0))
    try:
        with torch.inference_mode():
            got = layers["q_proj"](x)
            bare = layers["q_proj"].base_layer(x)
        for i, slot in enumerate(rows):
            if slot == BASE_ROW:
                assert torch.equal(got[i], bare[i])
    finally:
        plans.clear()


def _adapter(folder, layers, scale_b: float = 1.0, poison: str | None = None):
    """A PEFT-format file for the wrapped block (q and o), optionally with one bad value."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name in ("q_proj", "o_proj"):
        layer = layers[name]
        tensors[f"base_model.model.{name}.lora_A.weight"] = torch.randn(2, layer.in_features)
        tensors[f"base_model.model.{name}.lora_B.weight"] = torch.randn(layer.out_features, 2) * scale_b
    if poison is not None:
        tensors[f"base_model.model.o_proj.{poison}.weight"][1, 1] = float("nan") if poison == "lora_A" else float("inf")
    save_file(tensors, folder / "adapter_model.safetensors")
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "o_proj"]}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return read_adapter_config(folder), str(folder / "adapter_model.safetensors"), tensors


@pytest.mark.parametrize("poison", ["lora_A", "lora_B"])
def test_a_non_finite_weight_anywhere_in_the_file_is_refused(wrapped, tmp_path, poison):
    _, _, layers, _, _ = wrapped
    config, path, _ = _adapter(tmp_path, layers, poison=poison)
    pairs = read_lora_pairs(config, path, layers, max_rank=RANK, base="block")
    with pytest.raises(InvalidAdapter, match="not finite"):
        SlotLoader(torch.device("cpu")).write(0, pairs, path)


def test_weights_that_overflow_only_once_scaled_are_refused(wrapped, tmp_path):
    _, _, layers, _, _ = wrapped
    config, path, _ = _adapter(tmp_path, layers, scale_b=3e38 / 4)  # finite in the file, x2 (alpha / r) is not
    pairs = read_lora_pairs(config, path, layers, max_rank=RANK, base="block")
    with pytest.raises(InvalidAdapter, match="not finite"):
        SlotLoader(torch.device("cpu")).write(0, pairs, path)


def test_a_load_copies_the_files_rows_with_the_scale_folded_into_b(wrapped, tmp_path):
    _, _, layers, _, _ = wrapped
    config, path, tensors = _adapter(tmp_path, layers)
    pairs = read_lora_pairs(config, path, layers, max_rank=RANK, base="block")
    saved = {n: (layers[n].slot(SLOTS - 1)[0].clone(), layers[n].slot(SLOTS - 1)[1].clone(), layers[n].ranks[SLOTS - 1])
             for n in ("q_proj", "o_proj")}
    try:
        SlotLoader(torch.device("cpu")).write(SLOTS - 1, pairs, path)
        for name in ("q_proj", "o_proj"):
            a, b = layers[name].slot(SLOTS - 1)
            assert torch.equal(a[:2], tensors[f"base_model.model.{name}.lora_A.weight"])  # PEFT's layout
            assert torch.equal(b[:, :2], tensors[f"base_model.model.{name}.lora_B.weight"] * 2.0)
    finally:
        for name, (a, b, rank) in saved.items():
            layers[name].slot(SLOTS - 1)[0].copy_(a)
            layers[name].slot(SLOTS - 1)[1].copy_(b)
            layers[name].ranks[SLOTS - 1] = rank
