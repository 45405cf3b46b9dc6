"""Where a CPU decode step's time goes, and what the int8 base and the preallocated cache change.

In-process, SmolLM2-135M shape (random weights), ``--batch`` rows after a ``--prompt``-token prefill.
Configurations, sampled interleaved step by step so machine noise hits them alike:

* ``hf_eager_fp32``: the fp32 model with transformers' ``DynamicCache`` (what HF eager ``generate``
  runs; every ratio is against it);
* ``fp32_slab``: the same model with the engine's preallocated cache (``kv_cache.BatchCache``);
* ``int8_dynamic_cache``: the CPU int8 base with ``DynamicCache``;
* ``int8_slab``: the CPU int8 base with the engine's cache (what ``adapterhub serve`` runs on a CPU);
* ``int8_slab_8_adapters``: the same with each row on a different rank-16 LoRA.

Then a profile of one more step of each, self CPU time by kind of op (linear layers, LoRA products,
attention, cache copies, the rest), and the time of a row joining a running batch.

    python bench/decode_step_bench.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import DynamicCache  # noqa: E402

from hetero_lora_bench import build_base, emit, make_adapters  # noqa: E402

from adapterhub.server.engine.kv_cache import BatchCache  # noqa: E402
from adapterhub.server.engine.lora.slot_bank import LoraSlotBank  # noqa: E402
from adapterhub.server.engine.model_loader import load_base_model  # noqa: E402

# Self CPU time of these ops, by kind (anything else is "other": norms, rotary, views, dispatch).
KINDS = {
    "linear": ("quantized::linear_dynamic", "aten::addmm", "aten::mm", "aten::linear"),
    "lora": ("aten::bmm", "aten::baddbmm_", "aten::baddbmm"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::scaled_dot_product_attention"),
    "cache_copies": ("aten::cat", "aten::copy_", "aten::index_select"),
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
            bank.load(slot, json.loads((path / "adapter_config.json").read_text()), str(path / "adapter_model.safetensors"))
        steppers = {
            "hf_eager_fp32": Stepper(fp32, ids, slab=False),
            "fp32_slab": Stepper(fp32, ids, slab=True),
            "int8_dynamic_cache": Stepper(int8.model, ids, slab=False),
            "int8_slab": Stepper(int8.model, ids, slab=True),
            "int8_slab_8_adapters": Stepper(int8.model, ids, slab=True, bank=bank, rows=list(range(args.batch))),
        }
        samples: dict[str, list[float]] = {k: [] for k in steppers}
        for _ in range(args.steps):
            for name, stepper in steppers.items():
                samples[name].append(stepper.step())
        median = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
        ref = median["hf_eager_fp32"]
        for name, ms in median.items():
            emit(config=name, step_ms_median=round(ms, 2), step_ms_min=round(min(samples[name]) * 1e3, 2),
                 speed_vs_hf_eager_fp32=round(ref / ms, 2), self_cpu_ms_by_kind=by_kind(steppers[name]))
        emit(row_join_ms={"fp32_slab": join_ms(steppers["fp32_slab"], ids, 9),
                          "int8_slab": join_ms(steppers["int8_slab"], ids, 9)})


if __name__ == "__main__":
    main()
