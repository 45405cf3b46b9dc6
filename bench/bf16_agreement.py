"""bf16 agreement: how far the gathered-LoRA batch is from PEFT, next to how far PEFT is from itself.

In bf16 a row's logits depend on how the arithmetic is grouped: PEFT's mixed batch
(``adapter_names``) and PEFT with one adapter on one row already differ, and on a random-weight
model near-tied logits turn those roundings into different greedy tokens. For one batch (row i
uses adapter i % 8; rank 16 on all linear layers) this prints the first differing greedy step per
row and the largest last-position logit difference for: ours against PEFT's mixed batch, PEFT's
mixed batch against PEFT alone, and ours against PEFT alone (the first rows). One JSON line.

    python bench/bf16_agreement.py                                        # CPU, SmolLM2-135M shape
    python bench/bf16_agreement.py --device cuda --shape llama-3.2-1b --rows 32 --new 32
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from hetero_lora_bench import SHAPES, build_base, make_adapters  # noqa: E402
from adapterhub.adapter_folder import read_adapter_config  # noqa: E402
from adapterhub.server.engine.lora.slot_bank import LoraSlotBank  # noqa: E402
from adapterhub.server.engine.model_loader import load_base_model  # noqa: E402

ADAPTERS = 8
ALONE_ROWS = 4  # PEFT alone runs one row at a time: the first few are enough to compare


def greedy(model, ids: torch.Tensor, new: int, **kw) -> torch.Tensor:
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                             min_new_tokens=new, do_sample=False, pad_token_id=0, **kw)
    return out[:, ids.shape[1]:]


def last_logits(model, ids: torch.Tensor, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, **kw).logits[:, -1].float()


def first_difference(a: torch.Tensor, b: torch.Tensor) -> int:
    """The first greedy step where two rows differ (their length when they never do)."""
    diff = (a != b).nonzero()
    return len(a) if len(diff) == 0 else int(diff[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shape", default="smol135m", choices=sorted(SHAPES))
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=8)
    args = ap.parse_args()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    device, dtype = torch.device(args.device), torch.bfloat16
    with tempfile.TemporaryDirectory(prefix="bf16-agreement-") as tmp:
        base = Path(tmp) / "base"
        build_base(base, args.shape, device, dtype)
        paths = make_adapters(base, Path(tmp) / "adapters", {16: ADAPTERS}, device, dtype)[16]
        ids = torch.randint(1, SHAPES[args.shape]["vocab_size"], (args.rows, args.prompt),
                            generator=torch.Generator().manual_seed(0)).to(device)
        names = [f"a{i % ADAPTERS}" for i in range(args.rows)]

        plain = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, device_map={"": str(device)})
        peft = PeftModel.from_pretrained(plain, paths[0], adapter_name="a0")
        for i, p in enumerate(paths[1:], start=1):
            peft.load_adapter(p, adapter_name=f"a{i}")
        peft.eval()
        mixed, mixed_logits = greedy(peft, ids, args.new, adapter_names=names), last_logits(peft, ids, adapter_names=names)
        alone, alone_logits = [], []
        for i in range(min(ALONE_ROWS, args.rows)):
            peft.set_adapter(names[i])
            alone.append(greedy(peft, ids[i : i + 1], args.new)[0])
            alone_logits.append(last_logits(peft, ids[i : i + 1])[0])
        alone_logits = torch.stack(alone_logits)

        loaded = load_base_model(str(base), quantize="none", device=str(device), dtype=dtype)
        bank = LoraSlotBank(loaded, max_slots=ADAPTERS, max_rank=16)
        for slot, p in enumerate(paths):
            bank.load(slot, read_adapter_config(p), str(p / "adapter_model.safetensors"))
        with bank.rows([i % ADAPTERS for i in range(args.rows)]):
            ours, ours_logits = greedy(loaded.model, ids, args.new), last_logits(loaded.model, ids)
        bare_logits = last_logits(loaded.model, ids)

    k = len(alone)
    top2 = mixed_logits.topk(2).values
    print(json.dumps({
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "shape": args.shape, "rows": args.rows, "new_tokens": args.new,
        "first_difference_ours_vs_peft_mixed": [first_difference(ours[i], mixed[i]) for i in range(args.rows)],
        "first_difference_peft_mixed_vs_peft_alone": [first_difference(mixed[i], alone[i]) for i in range(k)],
        "first_difference_ours_vs_peft_alone": [first_difference(ours[i], alone[i]) for i in range(k)],
        "logits_max_diff_ours_vs_peft_mixed": float((ours_logits - mixed_logits).abs().max()),
        "logits_max_diff_peft_mixed_vs_peft_alone": float((mixed_logits[:k] - alone_logits).abs().max()),
        "logits_max_diff_ours_vs_peft_alone": float((ours_logits[:k] - alone_logits).abs().max()),
        "adapter_effect_max_logit_change": float((mixed_logits - bare_logits).abs().max()),
        "median_gap_between_top_two_logits": float((top2[:, 0] - top2[:, 1]).median()),
    }))


if __name__ == "__main__":
    main()
