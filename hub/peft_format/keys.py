"""How PEFT names a LoRA adapter's tensors, and what base weight each LoRA pair edits.

``save_pretrained`` writes ``ADAPTER_KEY_PREFIX + <module>.<part>[.weight|.bias]`` with the
adapter name removed; every key that is not a LoRA part is a full tensor the adapter carries as-is
(``modules_to_save``, trained biases, a saved embedding base layer, trainable tokens).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Generic, Mapping, Protocol, Sequence, TypeVar

from ..errors import InvalidAdapter

__all__ = [
    "ADAPTER_KEY_PREFIX",
    "LORA_PAIRS",
    "LoraKey",
    "GroupedTensors",
    "adapter_key",
    "parse_adapter_key",
    "group_adapter_tensors",
    "lora_pair",
    "implied_weight_shape",
]

ADAPTER_KEY_PREFIX = "base_model.model."
_LORA_KEY = re.compile(
    r"^(?P<module>.+?)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
    r"(?:\.(?P<kind>weight|bias))?$"
)
# (A, B) part names of a linear and of an embedding LoRA; an embedding's factors are stored
# transposed (``A: r x num_embeddings``, ``B: dim x r``) and without a ``.weight`` suffix.
LORA_PAIRS = (("lora_A", "lora_B"), ("lora_embedding_A", "lora_embedding_B"))

T = TypeVar("T")


class _Shaped(Protocol):
    @property
    def shape(self) -> Sequence[int]: ...


S = TypeVar("S", bound=_Shaped)


@dataclass(frozen=True)
class LoraKey:
    """A parsed LoRA tensor key: ``part`` is a factor of ``LORA_PAIRS`` or ``lora_magnitude_vector``
    (DoRA); ``kind`` is ``weight``, ``bias`` or ``None``."""

    module: str
    part: str
    kind: str | None

    @property
    def slot(self) -> str:
        """The name this tensor goes by within its module: the part, ``lora_B.bias`` for a LoRA bias."""
        return f"{self.part}.bias" if self.kind == "bias" else self.part


def _strip(key: str) -> str:
    return key[len(ADAPTER_KEY_PREFIX):] if key.startswith(ADAPTER_KEY_PREFIX) else key


def parse_adapter_key(key: str) -> tuple[str, LoraKey | None]:
    """The key without PEFT's model prefix, and its LoRA parts (``None`` for a tensor saved whole)."""
    name = _strip(key)
    m = _LORA_KEY.match(name)
    return name, None if m is None else LoraKey(m.group("module"), m.group("part"), m.group("kind"))


def adapter_key(module: str, part: str) -> str:
    """The key PEFT saves ``part`` of ``module``'s LoRA under (what ``parse_adapter_key`` reads back)."""
    suffix = "" if part.startswith(("lora_embedding", "lora_magnitude")) else ".weight"
    return f"{ADAPTER_KEY_PREFIX}{module}.{part}{suffix}"


@dataclass
class GroupedTensors(Generic[T]):
    """An adapter's tensors by role: ``lora[module][slot]`` (see ``LoraKey.slot``), and the tensors
    saved whole under their prefix-less names."""

    lora: dict[str, dict[str, T]] = field(default_factory=dict)
    saved: dict[str, T] = field(default_factory=dict)


def group_adapter_tensors(tensors: Mapping[str, T]) -> GroupedTensors[T]:
    """Sort a PEFT adapter's tensors (header entries or arrays) into LoRA parts and saved tensors."""
    out: GroupedTensors[T] = GroupedTensors()
    for key, tensor in tensors.items():
        name, parsed = parse_adapter_key(key)
        if parsed is None:
            out.saved[name] = tensor
        else:
            out.lora.setdefault(parsed.module, {})[parsed.slot] = tensor
    return out


def lora_pair(module: str, parts: Mapping[str, S]) -> tuple[S, S, bool]:
    """``(A, B, embedding)`` of one module's LoRA, checked to be a 2-d low-rank pair."""
    for a_part, b_part in LORA_PAIRS:
        if a_part in parts and b_part in parts:
            a, b = parts[a_part], parts[b_part]
            if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1]:
                raise InvalidAdapter(
                    f"{module}: {a_part} {list(a.shape)} and {b_part} {list(b.shape)} do not form a low-rank pair"
                )
            return a, b, (a_part, b_part) == LORA_PAIRS[1]
    raise InvalidAdapter(f"{module}: has only half of a LoRA pair ({', '.join(sorted(parts))})")


def implied_weight_shape(a_shape: Sequence[int], b_shape: Sequence[int], *, transposed: bool) -> tuple[int, int]:
    """The base weight a pair edits, in the checkpoint's own layout: ``out x in``, or ``in x out``
    for layers stored transposed (embeddings, ``fan_in_fan_out`` ones such as GPT-2's ``Conv1D``)."""
    out_in = (int(b_shape[0]), int(a_shape[1]))
    return out_in[::-1] if transposed else out_in
