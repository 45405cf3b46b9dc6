"""Per-module LoRA math: what one adapter adds to one base weight, exactly as PEFT computes it.

Every function returns float32 numpy arrays in the base checkpoint's own layout (GPT-2's
``Conv1D`` stores ``in x out``), so the caller only ever adds or combines same-shaped deltas.
Adapter files are read without torch (see ``dtypes``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..adapter_folder import ADAPTER_WEIGHTS, PROMPT_TEMPLATE, AdapterFolder
from ..errors import MergeError, UnsupportedAdapter
from ..peft_format import (
    check_mergeable,
    group_adapter_tensors,
    implied_weight_shape,
    lora_pair,
    read_safetensors_header,
)
from .dtypes import FLOAT_CODES, numpy_dtype, to_float32

__all__ = ["DELTA_BLOCK", "LoraModule", "SavedTensor", "AdapterTensors", "load_adapter_tensors", "apply_dora"]

DELTA_BLOCK = 256 * 1024  # float32 elements of delta formed at a time when folding (1 MiB)


@dataclass(frozen=True)
class LoraModule:
    """One LoRA pair of an adapter, with its scale and optional DoRA magnitude / LoRA bias."""

    module: str
    A: np.ndarray  # r x in (embeddings: r x num_embeddings), float32
    B: np.ndarray  # out x r (embeddings: dim x r), float32
    scale: float
    embedding: bool
    fan_in_fan_out: bool
    bias: np.ndarray | None = None
    magnitude: np.ndarray | None = None

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    @property
    def weight_shape(self) -> tuple[int, int]:
        """Shape of the base weight this pair edits, in the checkpoint's layout."""
        return implied_weight_shape(self.A.shape, self.B.shape, transposed=self._transposed)

    @property
    def _transposed(self) -> bool:
        return self.embedding or self.fan_in_fan_out

    def delta(self, out: np.ndarray | None = None, rows: slice = slice(None)) -> np.ndarray:
        """``(B @ A) * scale`` in the base checkpoint's layout (its ``rows`` only), PEFT's order of
        operations; written into ``out`` (a float32 array of that shape) when given."""
        if self._transposed:
            d = np.matmul(self.A.T[rows], self.B.T, out=out)
        else:
            d = np.matmul(self.B[rows], self.A, out=out)
        d *= np.float32(self.scale)
        return d

    def add_to(self, weight: np.ndarray, scratch: np.ndarray | None = None) -> np.ndarray:
        """``weight += delta`` in place, a block of rows at a time, so each block's delta is added
        while it is still in the CPU cache instead of a whole delta making a round trip through
        memory; ``scratch`` (float32, ``DELTA_BLOCK`` elements) spares an allocation per call."""
        step = max(1, DELTA_BLOCK // weight.shape[1])
        need = step * weight.shape[1]  # above DELTA_BLOCK only for rows wider than it
        block = scratch if scratch is not None and scratch.size >= need else np.empty(need, dtype=np.float32)
        for start in range(0, weight.shape[0], step):
            part = weight[start : start + step]
            part += self.delta(block[: part.size].reshape(part.shape), slice(start, start + step))
        return weight

    def bias_delta(self) -> np.ndarray | None:
        """What ``lora_bias=True`` adds to the base layer's bias: ``scale * lora_B.bias``."""
        return None if self.bias is None else self.bias * np.float32(self.scale)


@dataclass(frozen=True)
class SavedTensor:
    """A full tensor the adapter carries (``modules_to_save``, trainable biases): it replaces the base's."""

    name: str  # checkpoint-style name, e.g. ``lm_head.weight``
    tensor: np.ndarray  # float32, or as stored for a non-float tensor (written back unchanged)
    raw_name: str  # as PEFT saved it (``...embed_tokens.base_layer.weight`` for a saved embedding base layer)


@dataclass(frozen=True)
class AdapterTensors:
    """Everything an adapter contributes, grouped the way the merge plan consumes it."""

    loras: tuple[LoraModule, ...]
    saved: tuple[SavedTensor, ...]

    @property
    def uses_dora(self) -> bool:
        return any(m.magnitude is not None for m in self.loras)

    def check_finite(self, label: str) -> None:
        """Refuse NaN or infinite adapter values before anything is written (they would poison the model)."""
        for m in self.loras:
            for part, t in (("A", m.A), ("B", m.B), ("bias", m.bias), ("magnitude", m.magnitude)):
                if t is not None and not bool(np.isfinite(t).all()):
                    raise MergeError(f"{label}: {m.module} lora {part} holds non-finite values (NaN or inf)")
        for saved in self.saved:
            if saved.tensor.dtype == np.float32 and not bool(np.isfinite(saved.tensor).all()):
                raise MergeError(f"{label}: saved tensor {saved.name} holds non-finite values (NaN or inf)")


def _check_mergeable(adapter: AdapterFolder) -> None:
    """Refuse adapters whose effect is not a change of base weights, saying why."""
    if adapter.adapter_type == "prompt_tuning":
        raise UnsupportedAdapter(
            f"{adapter.path}: a prompt-tuning adapter prepends learned virtual tokens to every input; it changes "
            "no weight, so it cannot be folded into a model (serve it with the base instead)"
        )
    if adapter.adapter_type == PROMPT_TEMPLATE:
        raise UnsupportedAdapter(
            f"{adapter.path}: a prompt template rewrites the prompt text and has no parameters, so it cannot be "
            "folded into a model (serve it with the base instead)"
        )
    check_mergeable(adapter.settings, group_adapter_tensors(adapter.tensors), str(adapter.path))


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file: float ones as float32, others (a saved module's integer
    buffers) as stored. The file was validated when the adapter was read."""
    header = read_safetensors_header(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, info in header.items():
        start, end = info.file_range
        raw = data[start:end].view(numpy_dtype(info.dtype))
        values = to_float32(raw, info.dtype) if info.dtype in FLOAT_CODES else raw
        out[name] = np.array(values, dtype=values.dtype).reshape(info.shape)  # a copy: the map closes
    del data
    return out


def load_adapter_tensors(adapter: AdapterFolder) -> AdapterTensors:
    """Load a (validated) LoRA adapter's tensors and attach PEFT's per-module scale to each pair."""
    _check_mergeable(adapter)
    grouped = group_adapter_tensors(_read_tensors(adapter.path / ADAPTER_WEIGHTS))
    lora = adapter.settings.lora
    saved = [SavedTensor(name.replace(".base_layer", ""), tensor, name) for name, tensor in grouped.saved.items()]
    loras = []
    for module, p in sorted(grouped.lora.items()):
        a, b, embedding = lora_pair(module, p)
        loras.append(LoraModule(
            module=module, A=a, B=b, scale=lora.scale(module, a.shape[0]), embedding=embedding,
            fan_in_fan_out=lora.fan_in_fan_out and not embedding, bias=p.get("lora_B.bias"),
            magnitude=p.get("lora_magnitude_vector"),
        ))
    return AdapterTensors(tuple(loras), tuple(saved))


def apply_dora(weight: np.ndarray, lora: LoraModule) -> np.ndarray:
    """The merged DoRA weight: ``m / ||W + dW||_row * (W + dW)``, norms taken per output feature.

    This is PEFT's ``merge`` for DoRA linears; computed in float32 in the checkpoint layout.
    """
    w = weight + lora.delta()
    w_out_in = w.T if lora.fan_in_fan_out else w
    factor = lora.magnitude / np.linalg.norm(w_out_in, axis=1)
    merged = factor.reshape(-1, 1) * w_out_in
    return merged.T if lora.fan_in_fan_out else merged
