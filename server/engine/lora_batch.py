"""Heterogeneous-batch LoRA: one gathered low-rank update per layer, whatever the adapters of the rows.

PEFT's mixed batch loops over the distinct adapters of a batch at every targeted layer, so its cost
grows with their number. Here every linear layer any LoRA may target is wrapped once, at start-up,
by a ``GatheredLoraLinear`` that owns two preallocated stacks of adapter weights with fixed slots:

    A: [slots + 1, max_rank, in_features]     B: [slots + 1, out_features, max_rank]

(slot ``slots`` stays zero and stands for "no adapter"). Loading an adapter writes its tensors into
one slot, ranks padded with zeros and the LoRA scale folded into B; nothing is re-wrapped. Before
each forward the engine says which slot each batch row uses (``set_rows``). From that, once per
batch membership (not per step), each layer builds its update in one of two forms:

  * per row: each row's A and B gathered into ``[rows, in, r]`` / ``[rows, r, out]``; the update is
    two batched matmuls. Minimal flops; used for prompts and for CPU decode steps with many
    distinct adapters;
  * side by side: the batch's distinct adapters as one wide ``A [k*r, in]`` and ``B [out, k*r]``,
    with a 0/1 mask keeping each row's own block: ``(x @ A^T * mask) @ B^T``. Reads each adapter
    once and launches two kernels whatever k is; used for one adapter, GPU decode steps, and CPU
    decode steps with few distinct adapters.

Layers that read the same input (q/k/v, gate/up) share one A product, and the B product is added
into the base output in place (``baddbmm_`` / ``addmm_``), so a Llama decoder layer runs 11 extra
kernels whatever the number of adapters. Zero padding adds exact zeros, so a row's result is its
adapter's ``scale * B @ A @ x`` up to float rounding, whatever else is in the batch. Layers that no
adapter of the batch targets are skipped, and each works at the largest rank its adapters use.
"""

from __future__ import annotations

import math
import os
import re
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from adapterhub.errors import IncompatibleBase, InvalidAdapter, UnsupportedAdapter
from adapterhub.safetensors_header import SafetensorsFormatError, TensorInfo, read_safetensors_header

from .model_loader import LoadedBase

__all__ = ["LoraBatcher", "GatheredLoraLinear", "check_lora_config", "BASE_ROW"]

BASE_ROW = -1  # a row that uses no adapter

_PREFIX = "base_model.model."
_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B)\.weight$")
_TORCH_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}

# Config fields that change what a LoRA computes beyond ``scale * B @ A``; a fast path that ignored
# them would be silently wrong, so an adapter that sets any of them is refused.
_UNSUPPORTED_FLAGS = {
    "use_dora": "DoRA (use_dora)",
    "fan_in_fan_out": "fan_in_fan_out (Conv1D-style weights)",
    "lora_bias": "lora_bias",
    "use_qalora": "QALoRA (use_qalora)",
}
_UNSUPPORTED_SETTINGS = {
    "modules_to_save": "modules_to_save",
    "trainable_token_indices": "trainable_token_indices",
    "layer_replication": "layer_replication",
    "target_parameters": "target_parameters (LoRA on raw parameters)",
    "alora_invocation_tokens": "aLoRA (alora_invocation_tokens)",
    "megatron_config": "megatron_config",
    "velora_config": "VeLoRA (velora_config)",
    "monteclora_config": "MonteCLoRA (monteclora_config)",
    "use_bdlora": "block-diagonal LoRA (use_bdlora)",
    "arrow_config": "Arrow routing (arrow_config)",
    "kasa_config": "KaSA (kasa_config)",
}

# Tensors that betray a LoRA variant even when its config does not say so.
_UNSUPPORTED_TENSORS = (("lora_embedding", "embedding LoRA"), ("lora_magnitude_vector", "DoRA"))


def check_lora_config(config: dict[str, Any]) -> None:
    """Raise ``UnsupportedAdapter`` for a LoRA config the gathered path cannot compute exactly."""
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise UnsupportedAdapter(f"peft_type {peft_type} is not a LoRA; adapter slots hold LoRA adapters only")
    for key, what in _UNSUPPORTED_FLAGS.items():
        if config.get(key):
            raise UnsupportedAdapter(f"{what} is not supported by the batched LoRA server")
    for key, what in _UNSUPPORTED_SETTINGS.items():
        if config.get(key) not in (None, False, [], {}, ""):
            raise UnsupportedAdapter(f"{what} is not supported by the batched LoRA server")
    bias = config.get("bias", "none")
    if bias not in (None, "none"):
        raise UnsupportedAdapter(f"bias={bias!r} (trained biases) is not supported by the batched LoRA server")


def _scale(config: dict[str, Any], module: str, rank: int) -> float:
    """PEFT's scaling for one module: ``alpha / r`` (rsLoRA: ``alpha / sqrt(r)``), alpha_pattern applied."""
    alpha = config.get("lora_alpha", 8)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            alpha = value
            break
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


@dataclass
class _Plan:
    """The batch as the layers see it, fixed between two ``set_rows`` calls that differ."""

    rows: tuple[int, ...]
    versions: tuple[int, ...]
    idx: torch.Tensor  # [rows] slot per row on the device, BASE_ROW mapped to the zero slot
    distinct: tuple[int, ...]
    stale: str | None = None
    cache: dict[Any, Any] = field(default_factory=dict)  # (layer, decode?) -> its update


_SKIP = object()
# Sibling layers that transformers' decoder blocks call with one and the same input tensor.
_SHARED_INPUT = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class GatheredLoraLinear(nn.Module):
    """A base linear layer (plain, nf4 or int8) plus slot stacks of LoRA weights for it."""

    def __init__(self, base_layer: nn.Module, name: str, batcher: "LoraBatcher", slots: int, rank: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.name = name
        self.in_features = int(base_layer.in_features)
        self.out_features = int(base_layer.out_features)
        self._batcher = batcher
        # Buffers, not parameters (they never train), kept out of state_dict().
        self.register_buffer("lora_A", torch.zeros(slots + 1, rank, self.in_features, dtype=dtype, device=device),
                             persistent=False)
        self.register_buffer("lora_B", torch.zeros(slots + 1, self.out_features, rank, dtype=dtype, device=device),
                             persistent=False)
        self.ranks = [0] * slots  # rank each slot holds for this layer (0: nothing)
        self.group = _InputGroup([self])  # replaced when siblings read the same input

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, slots={len(self.ranks)}, max_rank={self.lora_A.shape[1]}"

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
        plan = self._batcher._plan
        if plan is None:
            return out
        if plan.stale is not None:
            raise RuntimeError(plan.stale)
        if x.shape[0] != len(plan.rows):
            raise ValueError(f"batch has {x.shape[0]} rows but set_rows() described {len(plan.rows)}")
        decode = x.dim() == 2 or x.shape[1] == 1
        update = plan.cache.get((self, decode))
        if update is None:
            self.group.prepare(plan, decode)
            update = plan.cache[(self, decode)]
        if update is _SKIP:
            return out
        return update(x, out)


class _InputGroup:
    """Wrapped layers that read the same input (q/k/v, gate/up): their A products run as one.

    The first member called with an input computes the low-rank activations of every member; the
    others, called with that same tensor object, take their slice. Anything else (another input,
    a member called twice) recomputes, so sharing is an optimisation, never an assumption.
    """

    def __init__(self, members: list[GatheredLoraLinear]) -> None:
        self.members = members

    def prepare(self, plan: _Plan, decode: bool) -> None:
        """Build every member's update for ``plan`` (once per plan and phase)."""
        active = {m: tuple(s for s in plan.distinct if m.ranks[s] > 0) for m in self.members}
        users = [m for m in self.members if active[m]]
        for m in self.members:
            if not active[m]:
                plan.cache[(m, decode)] = _SKIP
        if not users:
            return
        first = users[0].lora_A
        distinct = {s for m in users for s in active[m]}
        # Side by side (the batch's distinct adapters as one wide A and B) costs k times the flops
        # of per-row products but reads each adapter once and needs no per-row copies: right for
        # one adapter, for a GPU decode step (launch-bound) and for a CPU decode step with few
        # distinct adapters; per-row products otherwise.
        rows = len(plan.rows)
        per_row = not (len(distinct) == 1 or (decode and (first.device.type == "cuda" or 4 * len(distinct) <= rows)))
        downs, ups, masks, width = [], [], [], 0
        for m in users:
            rank = max(m.ranks[s] for s in active[m])
            if per_row:
                downs.append(m.lora_A.index_select(0, plan.idx)[:, :rank].transpose(1, 2))  # [rows, in, r]
                b = m.lora_B.index_select(0, plan.idx)[:, :, :rank].transpose(1, 2).contiguous()  # [rows, r, out]
                cols = rank
            else:
                sel = torch.tensor(active[m], device=first.device)
                k = len(active[m])
                downs.append(m.lora_A.index_select(0, sel)[:, :rank].reshape(k * rank, m.in_features))
                b = m.lora_B.index_select(0, sel)[:, :, :rank].permute(1, 0, 2).reshape(m.out_features, k * rank).t()
                owner = torch.tensor(plan.rows, device=first.device).unsqueeze(1) == sel.unsqueeze(0)  # [rows, k]
                masks.append(owner.repeat_interleave(rank, dim=1))
                cols = k * rank
            ups.append((m, width, width + cols, b))
            width += cols
        if per_row:
            down = _Down(torch.cat(downs, dim=2).contiguous(), None, True, users)
        else:
            mask = torch.cat(masks, dim=1)
            down = _Down(torch.cat(downs, dim=0), None if bool(mask.all()) else mask.to(first.dtype), False, users)
        for m, lo, hi, b in ups:
            plan.cache[(m, decode)] = _Up(down, m, lo, hi, b, per_row)


class _Down:
    """``x`` -> low-rank activations of every member of an input group, computed once per input."""

    __slots__ = ("a", "mask", "mask3", "per_row", "members", "x", "h", "pending")

    def __init__(self, a: torch.Tensor, mask: torch.Tensor | None, per_row: bool,
                 members: list[GatheredLoraLinear]) -> None:
        self.a, self.mask, self.per_row, self.members = a, mask, per_row, members
        self.mask3 = None if mask is None else mask.unsqueeze(1)
        self.x: torch.Tensor | None = None
        self.h: torch.Tensor | None = None
        self.pending: set = set()

    def __call__(self, x: torch.Tensor, member: GatheredLoraLinear) -> torch.Tensor:
        if self.x is x and member in self.pending:
            self.pending.discard(member)
            h = self.h
            if not self.pending:
                self.x = self.h = None
            return h
        xs = x if x.dtype == self.a.dtype else x.to(self.a.dtype)
        if self.per_row:
            h = torch.bmm(xs.reshape(xs.shape[0], -1, xs.shape[-1]), self.a)  # [rows, tokens, width]
        else:
            h = F.linear(xs, self.a)
            if self.mask is not None:
                h = h * (self.mask3 if x.dim() == 3 else self.mask)
        if len(self.members) > 1:
            self.x, self.h, self.pending = x, h, {m for m in self.members if m is not member}
        return h


class _Up:
    """One member's B product, added into the base output in place (one fused op where possible)."""

    __slots__ = ("down", "member", "lo", "hi", "b", "per_row")

    def __init__(self, down: _Down, member: GatheredLoraLinear, lo: int, hi: int, b: torch.Tensor,
                 per_row: bool) -> None:
        self.down, self.member, self.lo, self.hi, self.b, self.per_row = down, member, lo, hi, b, per_row

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        h = self.down(x, self.member)[..., self.lo : self.hi]
        fused = out.dtype == self.b.dtype and out.is_contiguous() and not out.requires_grad
        if self.per_row:
            if fused:
                out.view(out.shape[0], -1, out.shape[-1]).baddbmm_(h, self.b)
                return out
            delta = torch.bmm(h, self.b).reshape(out.shape)
        else:
            h2 = h.reshape(-1, h.shape[-1])
            if fused:
                out.view(-1, out.shape[-1]).addmm_(h2, self.b)
                return out
            delta = (h2 @ self.b).reshape(out.shape)
        return out + delta.to(out.dtype)


@dataclass(frozen=True)
class _Pair:
    module: GatheredLoraLinear
    a: TensorInfo
    b: TensorInfo
    rank: int
    scale: float


class LoraBatcher:
    """Wraps every base module any LoRA may target with a gathered-LoRA forward.

    Args:
        loaded: the base model; its layers are wrapped in place.
        max_slots: how many adapters can be resident at once.
        max_rank: the largest LoRA rank a slot holds (smaller ranks are zero-padded).
        target_modules: module name suffixes to wrap (``["q_proj", "v_proj"]``, PEFT style); ``None``
            wraps every linear layer except the output head. An adapter touching a layer that is not
            wrapped is refused with ``IncompatibleBase``.
    """

    def __init__(self, loaded: LoadedBase, *, max_slots: int, max_rank: int,
                 target_modules: Iterable[str] | None = None) -> None:
        if max_slots < 1 or max_rank < 1:
            raise ValueError("max_slots and max_rank must be positive")
        self.loaded = loaded
        self.max_slots = max_slots
        self.max_rank = max_rank
        self.device = loaded.device
        self.dtype = loaded.dtype
        self._plan: _Plan | None = None
        self._memo: _Plan | None = None  # the last plan built, reused while the same rows come back
        self._versions = [0] * max_slots
        self._occupied = [False] * max_slots
        self._lock = threading.Lock()
        self._staging: torch.Tensor | None = None
        self._load_stream = torch.cuda.Stream(device=self.device) if self.device.type == "cuda" else None
        self.modules: dict[str, GatheredLoraLinear] = self._wrap(loaded.model, target_modules)
        if not self.modules:
            raise ValueError("no linear layer of the base matches target_modules")

    # --- wrapping ------------------------------------------------------------------------------

    def _wrap(self, model: nn.Module, targets: Iterable[str] | None) -> dict[str, GatheredLoraLinear]:
        wanted = None if targets is None else [t for t in targets]
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        chosen: list[tuple[str, nn.Module]] = []
        for name, module in model.named_modules():
            if not isinstance(module, nn.Linear) or isinstance(module, GatheredLoraLinear):
                continue
            if wanted is None:
                if module is not head:
                    chosen.append((name, module))
            elif any(name == t or name.endswith("." + t) for t in wanted):
                chosen.append((name, module))
        wrapped: dict[str, GatheredLoraLinear] = {}
        for name, module in chosen:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            layer = GatheredLoraLinear(module, name, self, self.max_slots, self.max_rank, self.dtype, self.device)
            setattr(parent, child, layer)
            wrapped[name] = layer
        for names in _SHARED_INPUT:
            parents = {n.rpartition(".")[0] for n in wrapped if n.rpartition(".")[2] in names}
            for parent_name in parents:
                members = [wrapped[f"{parent_name}.{c}" if parent_name else c] for c in names
                           if (f"{parent_name}.{c}" if parent_name else c) in wrapped]
                if len(members) > 1 and len({m.in_features for m in members}) == 1:
                    group = _InputGroup(members)
                    for m in members:
                        m.group = group
        return wrapped

    # --- loading -------------------------------------------------------------------------------

    def slot_bytes(self) -> int:
        """Bytes one slot takes in the preallocated stacks (at max_rank, for every wrapped layer)."""
        width = torch.empty((), dtype=self.dtype).element_size()
        return sum(self.max_rank * (m.in_features + m.out_features) for m in self.modules.values()) * width

    def _pairs(self, config: dict[str, Any], tensors: dict[str, TensorInfo], where: str) -> list[_Pair]:
        names = {(key[len(_PREFIX):] if key.startswith(_PREFIX) else key): info for key, info in tensors.items()}
        for marker, what in _UNSUPPORTED_TENSORS:
            found = next((n for n in names if marker in n), None)
            if found is not None:
                raise UnsupportedAdapter(f"{where}: {what} ({found}) is not supported by the batched LoRA server")
        halves: dict[str, dict[str, TensorInfo]] = {}
        for name, info in names.items():
            m = _KEY.match(name)
            if m is None:
                raise UnsupportedAdapter(
                    f"{where}: tensor {name} is not a LoRA A/B weight (modules_to_save or a bias?); not supported"
                )
            halves.setdefault(m.group("module"), {})[m.group("part")] = info
        pairs = []
        for module_name, parts in sorted(halves.items()):
            if len(parts) != 2:
                raise InvalidAdapter(f"{where}: {module_name} has only {', '.join(parts)}")
            layer = self.modules.get(module_name)
            if layer is None:
                raise IncompatibleBase(
                    f"{where}: adapter targets {module_name}, which is not a linear layer this server wraps"
                )
            a, b = parts["lora_A"], parts["lora_B"]
            if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1]:
                raise InvalidAdapter(f"{where}: {module_name} lora_A {list(a.shape)} and lora_B {list(b.shape)} "
                                     "do not form a low-rank pair")
            if a.shape[1] != layer.in_features or b.shape[0] != layer.out_features:
                raise IncompatibleBase(
                    f"{where}: {module_name} adapter implies shape [{b.shape[0]}, {a.shape[1]}], base has "
                    f"[{layer.out_features}, {layer.in_features}]"
                )
            rank = a.shape[0]
            if rank > self.max_rank:
                raise UnsupportedAdapter(f"{where}: {module_name} has rank {rank}, above this server's max rank "
                                         f"{self.max_rank}")
            for t in (a, b):
                if t.dtype not in _TORCH_DTYPES:
                    raise InvalidAdapter(f"{where}: {module_name} has dtype {t.dtype}, expected a float type")
            pairs.append(_Pair(layer, a, b, rank, _scale(config, module_name, rank)))
        if not pairs:
            raise InvalidAdapter(f"{where}: no lora_A/lora_B tensors")
        return pairs

    def _stage(self, path: str, size: int) -> torch.Tensor:
        """The file's bytes in (pinned, on CUDA) host memory, reusing one staging buffer."""
        if self._staging is None or self._staging.numel() < size:
            self._staging = torch.empty(max(size, 1 << 20), dtype=torch.uint8,
                                        pin_memory=self.device.type == "cuda")
        buf = self._staging[:size]
        with open(path, "rb", buffering=0) as f:
            view = memoryview(buf.numpy())
            got = 0
            while got < size:
                n = f.readinto(view[got:])
                if not n:
                    raise InvalidAdapter(f"{path}: file shrank while being read")
                got += n
        return buf

    @staticmethod
    def _tensor(buf: torch.Tensor, data_start: int, info: TensorInfo) -> torch.Tensor:
        start, end = data_start + info.offsets[0], data_start + info.offsets[1]
        raw = buf[start:end]
        dtype = _TORCH_DTYPES[info.dtype]
        if start % dtype.itemsize:
            raw = raw.clone()  # view(dtype) needs an aligned offset
        return raw.view(dtype).view(info.shape)

    def load(self, slot: int, config: dict, weights_path: str) -> int:
        """Read a PEFT ``adapter_model.safetensors`` into ``slot``; return the bytes its weights take there.

        Everything is checked (config, names, shapes, ranks) before a byte is written, so a refused
        adapter leaves the slot as it was. Raises ``IncompatibleBase`` when a tensor does not fit a
        wrapped layer, ``InvalidAdapter`` / ``UnsupportedAdapter`` for a file or config the fast path
        cannot compute exactly.
        """
        self._check_slot(slot)
        where = str(weights_path)
        check_lora_config(config)
        try:
            tensors = read_safetensors_header(weights_path)
        except (OSError, SafetensorsFormatError) as e:
            raise InvalidAdapter(f"{where}: {e}") from e
        pairs = self._pairs(config, tensors, where)
        with self._lock:
            if self._occupied[slot]:
                self._release(slot)
            size = os.stat(weights_path).st_size
            buf = self._stage(weights_path, size)
            data_start = 8 + int.from_bytes(bytes(buf[:8].tolist()), "little")
            stream = self._load_stream
            if stream is not None:  # the zeroing of the slot's previous adapter runs on the compute stream
                stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream) if stream is not None else nullcontext():
                for p in pairs:
                    a = self._tensor(buf, data_start, p.a)
                    b = self._tensor(buf, data_start, p.b)
                    p.module.lora_A[slot, : p.rank].copy_(a, non_blocking=True)
                    dst = p.module.lora_B[slot, :, : p.rank]
                    dst.copy_(b, non_blocking=True)
                    dst.mul_(p.scale)
                    p.module.ranks[slot] = p.rank
            if stream is not None:
                stream.synchronize()
            self._occupied[slot] = True
            self._bump(slot)
        width = torch.empty((), dtype=self.dtype).element_size()
        return sum(p.rank * (p.module.in_features + p.module.out_features) for p in pairs) * width

    def free(self, slot: int) -> None:
        """Empty ``slot`` (its weights are zeroed) so another adapter can be loaded into it."""
        self._check_slot(slot)
        with self._lock:
            if self._occupied[slot]:
                self._release(slot)
                self._bump(slot)

    def _release(self, slot: int) -> None:
        for m in self.modules.values():
            r = m.ranks[slot]
            if r:
                m.lora_A[slot, :r].zero_()
                m.lora_B[slot, :, :r].zero_()
                m.ranks[slot] = 0
        self._occupied[slot] = False

    def _bump(self, slot: int) -> None:
        self._versions[slot] += 1
        for plan in (self._plan, self._memo):
            if plan is not None and slot in plan.distinct:
                plan.stale = f"adapter slot {slot} changed after set_rows(); call set_rows() again"

    def _check_slot(self, slot: int) -> None:
        if not isinstance(slot, int) or not 0 <= slot < self.max_slots:
            raise ValueError(f"slot {slot!r} out of range 0..{self.max_slots - 1}")

    def occupied(self, slot: int) -> bool:
        self._check_slot(slot)
        return self._occupied[slot]

    # --- batch rows ----------------------------------------------------------------------------

    def set_rows(self, slot_per_row: torch.Tensor | Sequence[int] | None) -> None:
        """Say which slot each batch row uses for the next forward (``-1``: the bare base).

        Rows equal to the last ones set (and slots unchanged since) reuse the gathered weights built
        for them, so calling this before every decode step costs nothing while batch membership is
        unchanged, even with ``rows()`` scopes in between.
        ``None`` (or all ``-1``) runs the bare base with no LoRA work at all.
        """
        if slot_per_row is None:
            self._plan = None
            return
        rows = tuple(int(r) for r in (slot_per_row.tolist() if isinstance(slot_per_row, torch.Tensor) else slot_per_row))
        distinct = tuple(sorted({r for r in rows if r != BASE_ROW}))
        if not distinct:
            self._plan = None
            return
        for s in distinct:
            if not 0 <= s < self.max_slots or not self._occupied[s]:
                raise ValueError(f"row uses slot {s}, which holds no adapter")
        versions = tuple(self._versions[s] for s in distinct)
        memo = self._memo
        if memo is not None and memo.stale is None and memo.rows == rows and memo.versions == versions:
            self._plan = memo
            return
        idx = torch.tensor([self.max_slots if r == BASE_ROW else r for r in rows], dtype=torch.long, device=self.device)
        self._plan = self._memo = _Plan(rows, versions, idx, distinct)

    @contextmanager
    def rows(self, slot_per_row: torch.Tensor | Sequence[int] | None) -> Iterator[None]:
        """``set_rows`` for the duration of a ``with`` block; the previous rows come back after it."""
        previous = self._plan
        self.set_rows(slot_per_row)
        try:
            yield
        finally:
            self._plan = previous
