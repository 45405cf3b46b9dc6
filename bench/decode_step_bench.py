"""Where a CPU decode step's time goes, and what the int8 base and the preallocated cache change.

In-process, SmolLM2-135M shape (random weights), ``--batch`` rows after a ``--prompt``-token prefill.
Configurations, sampled interleaved (three steps per turn) so machine noise hits them alike:

* ``hf_eager_fp32``: the fp32 model with transformers' ``DynamicCache`` (what HF eager ``generate``
  runs; every ratio is against it);
* ``fp32_slab``: the same model with the engine's preallocated cache (``kv_cache.BatchCache``);
* ``int8_dynamic_cache``: the CPU int8 base with ``DynamicCache``;
* ``int8_slab``: the CPU int8 base with the engine's cache (what ``adapterhub serve`` runs on a CPU);
* ``int8_slab_8_adapters``: the same with each row on a different rank-16 LoRA, rows in slot order;
* ``int8_slab_8_adapters_shuffled``: the same adapters, rows in another order (as in a server,
  where rows arrive in any order and adapters sit in whichever slots were free);
* ``int8_slab_2_adapters_x4``: 8 rows on 2 adapters, 4 rows each.

Then a profile of one more step of each, self CPU time by kind of op (linear layers, LoRA products,
attention, cache copies, the rest), the time of a row joining a running batch, and what storing
the LoRA slots in a 16-bit dtype would change: one decode step's LoRA products alone (8 rows on
8 rank-16 adapters, every projection of every layer) with the slot stacks in float32, bfloat16 and
float16, computed the way torch can on a CPU (16-bit products, added into the float32 output).

    python bench/decode_step_bench.py
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import DynamicCache  # noqa: E402

from hetero_lora_bench import SHAPES, build_base, emit, make_adapters  # noqa: E402

from adapterhub.adapter_folder import read_adapter_config  # noqa: E402
from adapterhub.server.engine.kv_cache import BatchCache  # noqa: E402
from adapterhub.server.engine.lora.slot_bank import LoraSlotBank  # noqa: E402
from adapterhub.server.engine.model_loader import load_base_model  # noqa: E402

# Self CPU time of these ops, by kind (anything else is "other": norms, rotary, views, dispatch).
KINDS = {
    "linear": ("quantized::linear_dynamic", "aten::addmm", "aten::mm", "aten::linear"),
    "lora": ("aten::bmm", "aten::baddbmm_", "aten::baddbmm", "aten::index_add_", "aten::index_select"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::scaled_dot_product_attention"),
    "cache_copies": ("aten::cat", "aten::copy_"),
}


class Stepper:
    """A model after a prefill, stepping one token per row; ``slab``: the engine's cache, else HF's."""

    def __init__(self, model, ids: torch.Tensor, slab: bool, bank: LoraSlotBank | None = None,
                 rows: list[int] | None = None) -> None:
        self.model, self.bank, self.rows = model, bank, rows
        self.batch = BatchCache(ids.device) if slab else None
        mask = torch.ones_like(ids)
        with torch.inference_mode(), self._rows():
            cache = DynamicCache()
            out = model(input_ids=ids, attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1)
        if self.batch is not None:
            self.batch.join(cache, mask)
        self.cache, self.mask = cache, mask
        self.token = out.logits[:, -1].argmax(-1, keepdim=True)
        self.position = ids.shape[1]

    def _rows(self):
        return self.bank.rows(self.rows) if self.bank is not None else torch.inference_mode()

    def step(self) -> float:
        with torch.inference_mode(), self._rows():
            mask = self.batch.step_mask() if self.batch is not None else torch.cat(
                [self.mask, torch.ones_like(self.mask[:, :1])], 1)
            cache = self.batch.cache if self.batch is not None else self.cache
            positions = torch.full_like(self.token, self.position)
            t0 = time.perf_counter()
            out = self.model(input_ids=self.token, attention_mask=mask, position_ids=positions, cache=cache,
                             use_cache=True, logits_to_keep=1)
            self.token = out.logits[:, -1].argmax(-1, keepdim=True)
            elapsed = time.perf_counter() - t0
        if self.batch is not None:
            self.batch.mask = mask
        self.mask = mask
        self.position += 1
        return elapsed


def by_kind(stepper: Stepper) -> dict[str, float]:
    """Milliseconds of self CPU time per kind of op in one step."""
    from torch.profiler import ProfilerActivity, profile

    stepper.step()  # its rows' plan built, as between batch changes
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        stepper.step()
    totals = dict.fromkeys([*KINDS, "other"], 0.0)
    for event in prof.key_averages():
        kind = next((k for k, names in KINDS.items() if event.key in names), "other")
        if event.key.startswith(("aten::", "quantized::")):
            totals[kind] += event.self_cpu_time_total / 1e3
    return {k: round(v, 2) for k, v in totals.items()}


def join_ms(stepper: Stepper, ids: torch.Tensor, samples: int) -> float:
    """Median time for one freshly prefilled row to join the running batch (cache and mask)."""
    with torch.inference_mode():
        cache = DynamicCache()
        mask = torch.ones_like(ids[:1])
        stepper.model(input_ids=ids[:1], attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1)
    times = []
    for _ in range(samples):
        rows = stepper.batch.mask.shape[0]
        t0 = time.perf_counter()
        stepper.batch.join(cache, mask)
        times.append(time.perf_counter() - t0)
        stepper.batch.keep(list(range(rows)))
    return round(1e3 * statistics.median(times), 3)


def slot_dtype_products(rows: int, rank: int, steps: int) -> dict[str, float]:
    """Median ms of one decode step's grouped LoRA products (``bmm(x, A)``, then ``h @ B`` added into
    the output) over every projection of the SmolLM2-135M shape, with the stacks in each dtype."""
    shape = SHAPES["smol135m"]
    hidden, inter = shape["hidden_size"], shape["intermediate_size"]
    kv = hidden // shape["num_attention_heads"] * shape["num_key_value_heads"]
    # (in, out) of q, k, v, o, gate, up, down; every layer's weights distinct, so they come from memory.
    dims = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden), (hidden, inter), (hidden, inter),
            (inter, hidden)] * shape["num_hidden_layers"]
    x = {n: torch.randn(rows, 1, n) for n in (hidden, inter)}
    out = {n: torch.zeros(rows, 1, n) for n in (hidden, kv, inter)}
    times: dict[str, list[float]] = {}
    stacks = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        stacks[dtype] = [(torch.randn(rows, i, rank).to(dtype), torch.randn(rows, rank, o).to(dtype)) for i, o in dims]
    for _ in range(steps):
        for dtype, layers in stacks.items():
            t0 = time.perf_counter()
            for (i, o), (a, b) in zip(dims, layers):
                h = torch.bmm(x[i] if dtype == torch.float32 else x[i].to(dtype), a)
                if dtype == torch.float32:
                    out[o].baddbmm_(h, b)
                else:
                    out[o].add_(torch.bmm(h, b))
            times.setdefault(str(dtype).removeprefix("torch."), []).append(time.perf_counter() - t0)
    mb = {str(d).removeprefix("torch."): sum(a.nbytes + b.nbytes for a, b in layers) / 1e6
          for d, layers in stacks.items()}
    return {name: {"ms": round(1e3 * statistics.median(t), 2), "slot_mb_read": round(mb[name], 1)}
            for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--steps", type=int, default=24, help="interleaved decode steps sampled per configuration")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        build_base(base, "smol135m", cpu, torch.float32)
        adapters = make_adapters(base, Path(tmp) / "adapters", {16: args.batch}, cpu, torch.float32)[16]
        ids = torch.randint(0, 49152, (args.batch, args.prompt), generator=torch.Generator().manual_seed(0))
        fp32 = load_base_model(str(base), quantize="none", device="cpu").model
        int8 = load_base_model(str(base), quantize="int8", device="cpu")
        bank = LoraSlotBank(int8, max_slots=args.batch, max_rank=16)
        for slot, path in enumerate(adapters):
            bank.load(slot, read_adapter_config(path), str(path / "adapter_model.safetensors"))
        steppers = {
            "hf_eager_fp32": Stepper(fp32, ids, slab=False),
            "fp32_slab": Stepper(fp32, ids, slab=True),
            "int8_dynamic_cache": Stepper(int8.model, ids, slab=False),
            "int8_slab": Stepper(int8.model, ids, slab=True),
            "int8_slab_8_adapters": Stepper(int8.model, ids, slab=True, bank=bank, rows=list(range(args.batch))),
            "int8_slab_8_adapters_shuffled": Stepper(int8.model, ids, slab=True, bank=bank,
                                                     rows=random.Random(0).sample(range(args.batch), args.batch)),
            "int8_slab_2_adapters_x4": Stepper(int8.model, ids, slab=True, bank=bank,
                                               rows=[(i % 2) * (args.batch - 1) for i in range(args.batch)]),
        }
        # The LoRA steppers share one bank, whose plan follows the last rows set: each turn's first
        # step builds its plan anew (timed apart, as what a batch change costs), the others reuse it,
        # as a server's steps do between changes of its batch.
        samples: dict[str, list[float]] = {k: [] for k in steppers}
        first: dict[str, list[float]] = {k: [] for k in steppers}
        for _ in range(max(1, args.steps // 2)):
            for name, stepper in steppers.items():
                first[name].append(stepper.step())
                samples[name] += [stepper.step(), stepper.step()]
        median = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
        ref = median["hf_eager_fp32"]
        for name, ms in median.items():
            emit(config=name, step_ms_median=round(ms, 2), step_ms_min=round(min(samples[name]) * 1e3, 2),
                 first_step_after_rows_change_ms_median=round(statistics.median(first[name]) * 1e3, 2),
                 speed_vs_hf_eager_fp32=round(ref / ms, 2), self_cpu_ms_by_kind=by_kind(steppers[name]))
        base_ms = median["int8_slab"]
        emit(lora_vs_int8_base={k: round(base_ms / v, 3) for k, v in median.items() if "adapters" in k})
        emit(row_join_ms={"fp32_slab": join_ms(steppers["fp32_slab"], ids, 9),
                          "int8_slab": join_ms(steppers["int8_slab"], ids, 9)})
    emit(lora_products_one_step_by_slot_dtype=slot_dtype_products(args.batch, 16, 15))


if __name__ == "__main__":
    main()
