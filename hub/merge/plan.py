"""Decide everything about a merge before a byte is written: which adapter edits which base tensor,
whether the shapes fit, what the output holds and in which dtype.

Every refusal (unknown method, wrong number of weights, an adapter for another base, a prompt
adapter, DoRA in a combination, ...) is raised here, so a failed merge leaves nothing behind.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..base_model import BaseInfo
from ..errors import IncompatibleBase, MergeError
from ..peft_format import FLOAT_CODES, check_shape_fits, missing_module
from .io import ShardedReader, TensorSpec
from .lora_delta import AdapterTensors, LoraModule, apply_dora, load_adapter_tensors
from .methods import get_method
from .sources import AdapterSource

if TYPE_CHECKING:
    import numpy as np

__all__ = ["MergeOptions", "MergePlan", "OutputTensor", "SourceEdit", "plan_merge", "DTYPES", "weight_seed"]

# --dtype choices -> safetensors dtype codes.
DTYPES = {"fp32": "F32", "bf16": "BF16", "fp16": "F16"}


@dataclass(frozen=True)
class MergeOptions:
    """How to combine adapters and what to write.

    Args:
        method: a name from ``hub.merge.methods.METHODS``.
        weights: one weight per adapter (``None``: 1.0 each).
        density: fraction of delta entries kept by ``ties`` / ``dare_*`` (required by them).
        seed: seeds DARE's random drop (per weight, see ``weight_seed``).
        dtype: ``fp32`` | ``bf16`` | ``fp16`` for floating tensors of the output; ``None`` keeps the base's.
        max_shard_bytes: output shard budget; ``None`` mirrors the base's largest shard.
    """

    method: str = field(default="linear", metadata={"help": "combination method"})
    weights: tuple[float, ...] | None = field(default=None, metadata={"help": "one weight per adapter"})
    density: float | None = field(default=None, metadata={"help": "kept fraction for ties/dare"})
    seed: int = field(default=0, metadata={"help": "DARE seed"})
    dtype: str | None = field(default=None, metadata={"help": "output dtype"})
    max_shard_bytes: int | None = field(default=None, metadata={"help": "output shard size budget"})

    def __post_init__(self) -> None:
        method = get_method(self.method)
        if self.weights is not None and not all(math.isfinite(w) for w in self.weights):
            raise MergeError(f"weights must be finite numbers, got {list(self.weights)}")
        if method.uses_density:
            if self.density is None:
                raise MergeError(f"method {self.method} needs a density (the fraction of delta entries to keep)")
            if not 0 < self.density <= 1:
                raise MergeError(f"density must be in (0, 1], got {self.density}")
        elif self.density is not None:
            raise MergeError(f"method {self.method} does not prune; --density applies to ties and dare_* only")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise MergeError(f"unknown dtype {self.dtype!r} (choose from {', '.join(DTYPES)})")
        if self.max_shard_bytes is not None and self.max_shard_bytes <= 0:
            raise MergeError("max shard size must be positive")

    def weights_for(self, n: int) -> tuple[float, ...]:
        """The per-adapter weights, checked against the number of adapters."""
        if self.weights is None:
            return (1.0,) * n
        if len(self.weights) != n:
            raise MergeError(f"{len(self.weights)} weights given for {n} adapters; give one weight per adapter")
        return self.weights


def weight_seed(seed: int, tensor_name: str) -> int:
    """DARE's generator seed for one tensor: independent of the order tensors are processed in."""
    return (seed * 1_000_003 + zlib.crc32(tensor_name.encode())) % (2**63)


@dataclass
class SourceEdit:
    """What one adapter does to one output tensor: replace it, add LoRA deltas, or both (in that order)."""

    source: int
    saved: "np.ndarray | None" = None
    loras: list[LoraModule] = field(default_factory=list)
    bias_loras: list[LoraModule] = field(default_factory=list)

    def apply(self, weight: "np.ndarray", scratch: "np.ndarray | None" = None) -> "np.ndarray":
        """The tensor this adapter alone makes of ``weight`` (float32), as PEFT's merge would.

        ``weight`` is updated in place where possible (the caller hands over a buffer it owns), and
        deltas are formed in ``scratch`` when given, so folding a large matrix allocates nothing.
        """
        w = self.saved.copy() if self.saved is not None else weight
        for lora in self.loras:
            w = apply_dora(w, lora) if lora.magnitude is not None else lora.add_to(w, scratch)
        for lora in self.bias_loras:
            w += lora.bias_delta()
        return w

    def delta(self, weight: "np.ndarray | None") -> "np.ndarray":
        """The change this adapter makes: exact ``scale * B @ A`` when it only adds LoRA deltas."""
        if self.saved is None and all(m.magnitude is None for m in self.loras):
            parts = [m.delta() for m in self.loras] + [m.bias_delta() for m in self.bias_loras]
            total = parts[0]
            for p in parts[1:]:
                total = total + p
            return total
        return self.apply(weight.copy()) - weight


@dataclass
class OutputTensor:
    """One tensor of the merged model: where its base values come from and who edits it."""

    name: str
    read_from: str
    spec: TensorSpec
    edits: list[SourceEdit] = field(default_factory=list)


@dataclass
class MergePlan:
    """A checked merge: the base reader, the output tensors in write order, and the combination rule."""

    base_dir: Path
    reader: ShardedReader
    sources: list[AdapterSource]
    adapters: list[AdapterTensors]
    options: MergeOptions
    weights: tuple[float, ...]
    outputs: list[OutputTensor]
    untied: bool
    max_shard_bytes: int

    @property
    def edited(self) -> list[OutputTensor]:
        return [o for o in self.outputs if o.edits]


def _tied_embeddings(base_dir: Path) -> tuple[str, str] | None:
    """(input, output) embedding weight names when the base ties them, else ``None``.

    Read from the model class itself (instantiated on the meta device: no memory, no weights), so
    every architecture's own naming is used (``model.embed_tokens`` / ``transformer.wte`` ...).
    """
    if json.loads((base_dir / "config.json").read_text()).get("tie_word_embeddings") is False:
        return None  # said outright: no need to import transformers (seconds of a merge's start-up)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(base_dir)
    except (OSError, ValueError) as e:
        raise IncompatibleBase(f"base {base_dir}: cannot read config.json ({e})") from e
    if not getattr(config, "tie_word_embeddings", False):
        return None
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, ImportError) as e:
        raise IncompatibleBase(
            f"base {base_dir}: its config ties the embeddings but transformers cannot build it as a causal LM "
            f"to name them ({e})"
        ) from e
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    if out is None or inp.weight is not out.weight:
        return None
    names = {id(m): n for n, m in model.named_modules()}
    return names[id(inp)] + ".weight", names[id(out)] + ".weight"


def _base_info(base_dir: Path, reader: ShardedReader) -> BaseInfo:
    config = json.loads((base_dir / "config.json").read_text()) if (base_dir / "config.json").is_file() else {}
    weights = {n: reader.info(n).shape for n in reader.names()}
    return BaseInfo(str(base_dir), config.get("model_type"), config.get("hidden_size"), weights)


class _Targets:
    """Maps adapter module paths to output tensors, aliasing a tied output embedding that the
    checkpoint does not store to the input embedding's bytes."""

    def __init__(self, info: BaseInfo, reader: ShardedReader, tied: tuple[str, str] | None) -> None:
        self.info = info
        self.tied = tied
        self.outputs: dict[str, OutputTensor] = {
            n: OutputTensor(n, n, TensorSpec(n, reader.info(n).dtype, reader.info(n).shape)) for n in reader.names()
        }

    def lookup(self, module_or_tensor: str, label: str) -> OutputTensor:
        name = self.info.find_weight(module_or_tensor)
        if name is None and self.tied is not None:
            inp, out = self.tied
            if module_or_tensor in (out, out.rsplit(".", 1)[0]):
                if out not in self.outputs:
                    spec = self.outputs[inp].spec
                    self.outputs[out] = OutputTensor(out, inp, TensorSpec(out, spec.dtype, spec.shape))
                name = out
        if name is None:
            raise missing_module(module_or_tensor, base=self.info.name, where=label)
        return self.outputs[name]

    def bias_of(self, module: str, label: str) -> OutputTensor:
        name = module + ".bias"
        found = self.info.find_weight(name)
        if found is None:
            raise MergeError(
                f"{label}: {module} has a LoRA bias (lora_bias=True) but the base layer has no bias to fold it into"
            )
        return self.outputs[found]


def _edit(target: OutputTensor, source: int) -> SourceEdit:
    for e in target.edits:
        if e.source == source:
            return e
    target.edits.append(SourceEdit(source))
    return target.edits[-1]


def _add_adapter(targets: _Targets, index: int, src: AdapterSource, tensors: AdapterTensors) -> None:
    base = targets.info.name
    for lora in tensors.loras:
        target = targets.lookup(lora.module, src.label)
        check_shape_fits(target.name, lora.weight_shape, target.spec.shape, base=base, where=src.label)
        _edit(target, index).loras.append(lora)
        if lora.bias is not None:
            bias = targets.bias_of(lora.module, src.label)
            check_shape_fits(bias.name, lora.bias.shape, bias.spec.shape, base=base, where=src.label)
            _edit(bias, index).bias_loras.append(lora)
    for saved in tensors.saved:
        target = targets.lookup(saved.name, src.label)
        check_shape_fits(target.name, saved.tensor.shape, target.spec.shape, base=base, where=src.label)
        _edit(target, index).saved = saved.tensor
        # PEFT loads a saved embedding base layer into the parameter it shares with a tied output layer.
        if targets.tied is not None and ".base_layer" in saved.raw_name and target.name == targets.tied[0]:
            _edit(targets.lookup(targets.tied[1], src.label), index).saved = saved.tensor


def plan_merge(base_dir: str | Path, sources: Sequence[AdapterSource], options: MergeOptions) -> MergePlan:
    """Check every adapter against the base and lay out the output; raises before anything is written."""
    base_dir = Path(base_dir)
    if not sources:
        raise MergeError("no adapters to merge")
    weights = options.weights_for(len(sources))
    if not base_dir.is_dir():
        raise IncompatibleBase(f"base {base_dir}: not a folder (merging needs the base model's files)")
    if not (base_dir / "config.json").is_file():
        raise IncompatibleBase(f"base {base_dir}: no config.json")
    reader = ShardedReader(base_dir)
    info = _base_info(base_dir, reader)
    tied = _tied_embeddings(base_dir)
    targets = _Targets(info, reader, tied)
    adapters = [load_adapter_tensors(s.folder) for s in sources]
    for src, tensors in zip(sources, adapters):
        tensors.check_finite(src.label)
    for i, (src, tensors) in enumerate(zip(sources, adapters)):
        if tensors.uses_dora and len(sources) > 1:
            raise MergeError(f"{src.label} is a DoRA adapter: DoRA folds exactly alone, but has no defined combination")
        _add_adapter(targets, i, src, tensors)
    untied = tied is not None and any(targets.outputs[n].edits for n in tied if n in targets.outputs)
    if untied:
        targets.lookup(tied[1], "tied output embedding")  # written out explicitly from the input embedding's bytes
    outputs = [o for o in targets.outputs.values() if o.read_from == o.name or untied]
    if options.dtype is not None:
        code = DTYPES[options.dtype]
        for o in outputs:
            if o.spec.dtype in FLOAT_CODES:
                o.spec = TensorSpec(o.spec.name, code, o.spec.shape)
    budget = options.max_shard_bytes or max(reader.shard_sizes().values())
    return MergePlan(base_dir, reader, list(sources), adapters, options, weights, outputs, untied, budget)
