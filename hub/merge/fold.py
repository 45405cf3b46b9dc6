"""Execute a merge plan: stream the base tensor by tensor, fold the deltas in, write the shards.

Untouched tensors are copied as raw bytes in bounded chunks (converted chunk by chunk when the
output dtype differs); only edited tensors are materialised, one at a time, in float32.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import MergeError
from .io import ShardedWriter, torch_dtype
from .methods import get_method
from .plan import MergePlan, OutputTensor, weight_seed

if TYPE_CHECKING:
    import torch

__all__ = ["fold_into", "combined_delta", "merged_tensor"]

_EXACT_ALONE = ("linear", "cat")


def combined_delta(plan: MergePlan, out: OutputTensor, weight: "torch.Tensor | None") -> "torch.Tensor":
    """The method's combination of every editing adapter's delta for one tensor (float32).

    ``weight`` (the base values, float32) is only needed for edits that replace or rescale the
    tensor (``modules_to_save``, DoRA); pure LoRA deltas never read it.
    """
    import torch

    method = get_method(plan.options.method)
    deltas = [e.delta(weight) for e in out.edits]
    weights = [plan.weights[e.source] for e in out.edits]
    generator = torch.Generator().manual_seed(weight_seed(plan.options.seed, out.name))
    return method.combine(deltas, weights, plan.options.density, generator)


def merged_tensor(plan: MergePlan, out: OutputTensor, weight: "torch.Tensor") -> "torch.Tensor":
    """The merged values of one edited tensor (float32); non-finite results are refused."""
    alone = len(out.edits) == 1 and plan.weights[out.edits[0].source] == 1.0
    if alone and plan.options.method in _EXACT_ALONE:
        merged = out.edits[0].apply(weight)  # bit-for-bit what PEFT's merge computes
    else:
        merged = weight + combined_delta(plan, out, weight)
    if not bool(merged.isfinite().all()):
        raise MergeError(f"merging {out.name} produced non-finite values (overflow in the adapter weights?)")
    return merged


def fold_into(plan: MergePlan, out_dir: Path) -> list[str]:
    """Write the merged model's weights into ``out_dir``; returns the weight file names."""
    reader = plan.reader
    with reader, ShardedWriter(out_dir, [o.spec for o in plan.outputs], plan.max_shard_bytes) as writer:
        for out in plan.outputs:
            if not out.edits:
                writer.write_chunks(out.name, reader.iter_chunks(out.read_from, out.spec.dtype))
                continue
            weight = reader.get(out.read_from).float()
            writer.write_tensor(out.name, merged_tensor(plan, out, weight).to(torch_dtype(out.spec.dtype)))
    return writer.file_names
