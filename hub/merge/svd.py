"""Write a combination back as a LoRA adapter (``--as-adapter``) instead of a full model.

``cat`` concatenates the factors (``A = [w_i s_i A_i]``, ``B = [B_i]``): rank = sum of ranks and
the delta is exactly ``sum_i w_i dW_i``, as PEFT's ``cat``. Every other method combines dense
deltas and keeps the best rank-R approximation of each (truncated SVD, ``B = U S``, ``A = V^T``),
reporting how much of each delta the rank keeps. Scale is 1 everywhere (``lora_alpha = r``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..adapter_folder import ADAPTER_WEIGHTS
from ..errors import MergeError
from ..peft_format import LORA_PAIRS, adapter_key
from .fold import combined_delta
from .lora_delta import LoraModule
from .plan import MergePlan, OutputTensor

if TYPE_CHECKING:
    import torch

__all__ = ["AdapterExport", "write_adapter"]


@dataclass(frozen=True)
class AdapterExport:
    """What was written: ranks per module and the worst relative Frobenius error of the truncation."""

    rank: int
    modules: int
    max_relative_error: float

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "modules": self.modules, "max_relative_error": self.max_relative_error}


def _pair_of(plan: MergePlan, out: OutputTensor) -> list[tuple[LoraModule, float]]:
    pairs = []
    for e in out.edits:
        src = plan.sources[e.source].label
        if e.saved is not None or e.bias_loras or any(m.magnitude is not None for m in e.loras):
            raise MergeError(
                f"--as-adapter: {src} changes {out.name} with modules_to_save, a LoRA bias or DoRA, "
                "which a plain LoRA adapter cannot express; merge into a model instead"
            )
        pairs += [(m, plan.weights[e.source]) for m in e.loras]
    return pairs


def _concat(pairs: list[tuple[LoraModule, float]]) -> tuple["torch.Tensor", "torch.Tensor", float]:
    import torch

    a = torch.cat([torch.from_numpy(m.A) * (w * m.scale) for m, w in pairs], dim=0)
    b = torch.cat([torch.from_numpy(m.B) for m, _ in pairs], dim=1)
    return a, b, 0.0


def _truncate(delta_peft_layout: "torch.Tensor", rank: int) -> tuple["torch.Tensor", "torch.Tensor", float]:
    import torch

    u, s, vh = torch.linalg.svd(delta_peft_layout, full_matrices=False)
    k = min(rank, s.numel())
    b = torch.zeros(delta_peft_layout.shape[0], rank)
    a = torch.zeros(rank, delta_peft_layout.shape[1])
    b[:, :k] = u[:, :k] * s[:k]
    a[:k] = vh[:k]
    total = float(s.square().sum())
    error = (float(s[k:].square().sum()) / total) ** 0.5 if total > 0 else 0.0
    return a, b, error


def write_adapter(plan: MergePlan, out_dir: Path, *, rank: int | None, base_name: str) -> AdapterExport:
    """Write the combined adapter (PEFT folder) into ``out_dir``; ``rank`` is required unless ``cat``."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    is_cat = plan.options.method == "cat"
    if is_cat and rank is not None:
        raise MergeError("--rank does not apply to cat: it keeps every rank (the sum of the adapters' ranks)")
    if not is_cat and (rank is None or rank <= 0):
        raise MergeError(f"--as-adapter with {plan.options.method} needs --rank R (a positive integer)")
    tensors: dict[str, "torch.Tensor"] = {}
    ranks: dict[str, int] = {}
    fan_in_fan_out = False
    worst = 0.0
    for out in plan.edited:
        pairs = _pair_of(plan, out)
        first = pairs[0][0]
        if is_cat:
            a, b, error = _concat(pairs)
        else:
            delta = torch.from_numpy(combined_delta(plan, out, None))
            a, b, error = _truncate(delta.T if (first.embedding or first.fan_in_fan_out) else delta, rank)
        worst = max(worst, error)
        fan_in_fan_out = fan_in_fan_out or first.fan_in_fan_out
        a_part, b_part = LORA_PAIRS[first.embedding]
        tensors[adapter_key(first.module, a_part)] = a.contiguous()
        tensors[adapter_key(first.module, b_part)] = b.contiguous()
        ranks[first.module] = a.shape[0]
    r = max(ranks.values())
    pattern = {m: k for m, k in ranks.items() if k != r}
    config = LoraConfig(
        task_type="CAUSAL_LM", r=r, lora_alpha=r, target_modules=sorted(ranks), rank_pattern=pattern,
        alpha_pattern=dict(pattern), fan_in_fan_out=fan_in_fan_out, base_model_name_or_path=base_name,
        lora_dropout=0.0, inference_mode=True,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out_dir))
    save_file(tensors, str(out_dir / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return AdapterExport(r, len(ranks), worst)
