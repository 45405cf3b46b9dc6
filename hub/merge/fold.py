"""Execute a merge plan: stream the base tensor by tensor, fold the deltas in, write the shards.

Untouched tensors are copied by the kernel (``copy_file_range``), or in bounded chunks converted
one by one when the output dtype differs; only edited tensors are materialised, one at a time,
in float32, in a single reused buffer.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from .io import ShardedWriter, torch_dtype
from .methods import get_method
from .plan import MergePlan, OutputTensor, weight_seed

if TYPE_CHECKING:
    import torch

__all__ = ["fold_into", "combined_delta", "merged_tensor", "one_thread"]

_EXACT_ALONE = ("linear", "cat")


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread for the duration, then restore the previous setting.

    A streaming fold is bound by memory and disk (rank-r updates, copies), and OpenMP's
    synchronisation between threads costs more than it saves, badly so on a busy machine:
    measured on the 1.5 GB benchmark model on the 2-core VM, 4.2 s with two threads, 1.0-2.2 s with one.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
    """The merged values of one edited tensor (float32). ``weight`` may be updated in place.

    Adapters were checked finite when planned; the result is not re-scanned (a pass over every
    edited weight for an overflow finite inputs practically never reach).
    """
    alone = len(out.edits) == 1 and plan.weights[out.edits[0].source] == 1.0
    if alone and plan.options.method in _EXACT_ALONE:
        return out.edits[0].apply(weight)  # what PEFT's merge computes
    return weight.add_(combined_delta(plan, out, weight))


def fold_into(plan: MergePlan, out_dir: Path) -> list[str]:
    """Write the merged model's weights into ``out_dir``; returns the weight file names."""
    import torch

    reader = plan.reader
    # One read buffer reused for every edited tensor: no page faults on a fresh allocation each time.
    largest = max((reader.byte_range(o.read_from)[2] for o in plan.edited), default=0)
    buffer = torch.empty(largest, dtype=torch.uint8)
    with reader, ShardedWriter(out_dir, [o.spec for o in plan.outputs], plan.max_shard_bytes) as writer:
        for out in plan.outputs:
            if not out.edits:
                if out.spec.dtype == reader.info(out.read_from).dtype:
                    writer.copy_range(out.name, *reader.byte_range(out.read_from))
                else:
                    writer.write_chunks(out.name, reader.iter_chunks(out.read_from, out.spec.dtype))
                continue
            weight = reader.get(out.read_from, buffer=buffer).float()
            writer.write_tensor(out.name, merged_tensor(plan, out, weight).to(torch_dtype(out.spec.dtype)))
    return writer.file_names
