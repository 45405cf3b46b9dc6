"""The engine: one thread owns the model and decodes every request in one continuously batched loop.

HTTP threads resolve the requested adapter, load it if needed (in their own thread, so a slow load
never stalls the loop or the requests already running) and put the request on a queue. The engine
thread then, between two decode steps, admits queued requests while the batch has room: it runs
their prompts through the model in one prefill pass and appends their key/value cache to the
running batch's cache. Each decode step feeds every row its last token; rows that finish leave at
once, so a short request never waits for a long one.

One batch mixes adapters freely:

* LoRA rows: the ``LoraBatcher`` (``lora_batch.py``) is told which slot each row uses
  (``-1`` = the bare base) and adds each row's own low-rank delta inside the forward pass.
* Soft-prompt rows: the virtual-token embeddings are prepended to the row's prompt embeddings at
  prefill; afterwards the row is an ordinary row whose cache starts with those tokens.

Rows of different lengths share the cache with left padding: the attention mask hides the pads and
explicit position ids keep each row's positions exactly what they would be alone, which is what
makes greedy output equal to PEFT's ``generate`` for the same adapter.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable

from adapterhub.errors import AdapterNotFound, IncompatibleBase, InvalidReference, UnsupportedAdapter

from .requests import GenerationRequest, SamplingParams, StopText, TokenEvent
from .soft_prompts import SoftPrompt, SoftPromptCache

__all__ = ["Engine", "EngineStats", "EngineStopped", "ContextTooLong", "check_compatible", "create_engine"]

log = logging.getLogger(__name__)

_STOP = object()


class EngineStopped(RuntimeError):
    """A request submitted to an engine that is not running (not started, or shutting down)."""


class ContextTooLong(ValueError):
    """A prompt (with its virtual tokens and ``max_tokens``) that does not fit the model's context."""


@dataclass
class EngineStats:
    """What the loop did, for ``/metrics``: decode steps by batch size (bounded: one count per size)."""

    steps: int = 0
    prefills: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)
    generated_tokens: int = 0

    def observe_step(self, size: int) -> None:
        self.steps += 1
        self.batch_sizes[size] = self.batch_sizes.get(size, 0) + 1


@dataclass
class _Row:
    """A request while it is in the batch."""

    request: GenerationRequest
    text: StopText
    generator: Any
    next_position: int = 0
    last_token: int = -1
    generated: list[int] = field(default_factory=list)

    @property
    def slot(self) -> int:
        handle = self.request.lora
        return -1 if handle is None else handle.slot


def create_engine(
    loaded: Any,
    registry: Any,
    *,
    max_batch_size: int = 16,
    max_loaded_adapters: int = 16,
    max_adapter_bytes: int = 1 << 30,
    max_lora_rank: int = 64,
    lora_target_modules: list[str] | None = None,
) -> "Engine":
    """An engine over ``loaded`` with LoRA slots (wrapping the model's linear layers) and a
    soft-prompt cache, each bounded by ``max_loaded_adapters`` and ``max_adapter_bytes``."""
    from .adapter_slots import AdapterSlots
    from .lora_batch import LoraBatcher

    batcher = LoraBatcher(loaded, max_slots=max_loaded_adapters, max_rank=max_lora_rank,
                          target_modules=lora_target_modules)
    slots = AdapterSlots(batcher, registry, max_loaded=max_loaded_adapters, max_bytes=max_adapter_bytes)
    return Engine(loaded, registry, lora_slots=slots, max_batch_size=max_batch_size,
                  max_loaded_adapters=max_loaded_adapters, max_adapter_bytes=max_adapter_bytes)


def check_compatible(version: Any, info: Any) -> None:
    """Refuse an adapter made for another base before any of its bytes are used.

    The registry records the base's fingerprint (architecture + every weight shape) and the shape
    each adapter tensor implies; both are compared with the served base.
    """
    if info is None:
        return
    recorded = version.base.get("fingerprint")
    if recorded and recorded != info.fingerprint:
        raise IncompatibleBase(
            f"{version.ref} was made for base {version.base.get('name')} ({recorded[:19]}), "
            f"this server runs {info.name} ({info.fingerprint[:19]})"
        )
    for module, shape in (version.base.get("shapes") or {}).items():
        if module == "prompt_embeddings":
            if info.hidden_size is not None and list(shape) != [info.hidden_size]:
                raise IncompatibleBase(
                    f"{version.ref}: prompt width {shape[0]}, base {info.name} has hidden size {info.hidden_size}"
                )
            continue
        weight = info.find_weight(module)
        if weight is None or list(info.weights[weight]) != list(shape):
            have = None if weight is None else list(info.weights[weight])
            raise IncompatibleBase(f"{version.ref}: {module} expects shape {list(shape)}, base {info.name} has {have}")


class Engine:
    """Owns the loaded base model and its adapters; ``submit`` is safe from any thread.

    Args:
        loaded: a ``LoadedBase`` (``model_loader.load_base_model``): model, tokenizer, name, info.
        registry: where adapters are resolved and loaded from.
        lora_slots: an ``AdapterSlots`` over the model's ``LoraBatcher``, or ``None`` to serve the
            base and soft prompts only.
        max_batch_size: most rows decoded together.
        max_loaded_adapters, max_adapter_bytes: bounds of the soft-prompt cache (the LoRA slots
            carry their own).
        slot_wait_s: how long a request waits for a LoRA slot while every slot is pinned by
            running requests (``AdapterBusy`` after that).
    """

    def __init__(
        self,
        loaded: Any,
        registry: Any,
        *,
        lora_slots: Any = None,
        max_batch_size: int = 16,
        max_loaded_adapters: int = 16,
        max_adapter_bytes: int = 1 << 30,
        slot_wait_s: float = 300.0,
    ) -> None:
        import torch

        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.registry = registry
        self.lora_slots = lora_slots
        self.max_batch_size = max_batch_size
        self.slot_wait_s = slot_wait_s
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self._embed = self.model.get_input_embeddings()
        self._device = self._embed.weight.device
        self.vocab_size = int(self._embed.num_embeddings)
        self.soft_prompts = SoftPromptCache(
            registry,
            dtype=self._embed.weight.dtype,
            device=self._device,
            max_loaded=max_loaded_adapters,
            max_bytes=max_adapter_bytes,
        )
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        pad = self.tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else min(self.eos_ids, default=0)
        self.stats = EngineStats()
        self._queue: queue.Queue[Any] = queue.Queue()
        self._waiting: list[GenerationRequest] = []
        self._rows: list[_Row] = []
        self._cache: Any = None  # the running batch's DynamicCache, updated in place by each step
        self._mask = torch.zeros((0, 0), dtype=torch.long, device=self._device)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # --- public, any thread --------------------------------------------------------------------

    @property
    def base_name(self) -> str:
        return self.loaded.name

    def start(self) -> "Engine":
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="adapterhub-engine", daemon=True)
                self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the loop; requests still queued or running end with finish reason ``error``."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout)

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def resolve(self, model: str | None) -> Any:
        """The adapter version ``model`` names, checked against the base; ``None`` for the base itself."""
        if model in (None, "", self.base_name):
            return None
        try:
            version = self.registry.resolve(model)
        except InvalidReference as e:
            raise AdapterNotFound(f"model {model!r} does not exist: {e}") from e
        if version.adapter_type not in ("lora", "prompt_tuning"):
            raise UnsupportedAdapter(f"{version.ref}: adapter type {version.adapter_type} cannot be served")
        if version.adapter_type == "lora" and self.lora_slots is None:
            raise UnsupportedAdapter(f"{version.ref}: this server was started without LoRA support")
        check_compatible(version, self.loaded.info)
        return version

    def virtual_tokens(self, version: Any) -> int:
        if version is None or version.adapter_type != "prompt_tuning":
            return 0
        return int(version.peft.get("num_virtual_tokens") or 0)

    def check_fits(self, prompt_tokens: int, version: Any, max_tokens: int) -> None:
        """Raise ``ContextTooLong`` unless prompt, virtual tokens and answer fit the context."""
        used = prompt_tokens + self.virtual_tokens(version)
        if used + max_tokens > self.context_length:
            raise ContextTooLong(
                f"this model's context is {self.context_length} tokens; the prompt takes {used}"
                f" and max_tokens asks for {max_tokens} more"
            )

    def submit(self, prompt_ids: list[int], params: SamplingParams, version: Any = None) -> GenerationRequest:
        """Queue a request and return it; read ``request.stream`` for its tokens.

        The adapter is loaded here, in the caller's thread, if it is not resident: the engine loop
        keeps decoding everyone else meanwhile.
        """
        self.check_fits(len(prompt_ids), version, params.max_tokens)
        request = GenerationRequest(list(prompt_ids), params, adapter=version)
        self._bind(request)
        if self._thread is None:
            self._unbind(request)
            raise EngineStopped("the engine is not running (the server is shutting down)")
        self._queue.put(request)
        return request

    def load_adapter(self, version: Any) -> None:
        """Make ``version`` resident without running a request (``POST /v1/adapters/load``)."""
        if version.adapter_type == "prompt_tuning":
            self.soft_prompts.release(self.soft_prompts.acquire(version))
        else:
            self.lora_slots.release(self.lora_slots.acquire(version.ref, timeout=self.slot_wait_s))

    def unload_adapter(self, ref: str) -> bool:
        """Free a resident adapter now; False when it is not resident, ``AdapterBusy`` while in use."""
        if self.soft_prompts.unload(ref):
            return True
        return bool(self.lora_slots is not None and self.lora_slots.unload(ref))

    def is_loaded(self, ref: str) -> bool:
        return any(a["ref"] == ref for a in self.loaded_adapters())

    def loaded_adapters(self) -> list[dict[str, Any]]:
        out = self.soft_prompts.loaded()
        if self.lora_slots is not None:
            out += [dict(a, adapter_type=a.get("adapter_type", "lora")) for a in self.lora_slots.loaded()]
        return out

    @property
    def running(self) -> int:
        return len(self._rows)

    # --- adapters ------------------------------------------------------------------------------

    def _bind(self, request: GenerationRequest) -> None:
        version = request.adapter
        if version is None:
            return
        if version.adapter_type == "prompt_tuning":
            request.soft_prompt = self.soft_prompts.acquire(version)
        else:
            request.lora = self.lora_slots.acquire(version.ref, timeout=self.slot_wait_s)

    def _unbind(self, request: GenerationRequest) -> None:
        if request.soft_prompt is not None:
            self.soft_prompts.release(request.soft_prompt)
            request.soft_prompt = None
        if request.lora is not None:
            self.lora_slots.release(request.lora)
            request.lora = None

    # --- the engine thread -----------------------------------------------------------------------

    def _loop(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                if not self._take_new(block=not self._rows and not self._waiting):
                    break
                try:
                    self._admit()
                    if self._rows:
                        self._decode_step()
                except Exception as e:  # a bug must not kill the loop: fail the batch, keep serving
                    log.exception("engine step failed")
                    self._fail_all(f"internal error: {type(e).__name__}: {e}")
        self._fail_all("the server is shutting down")
        for request in self._drain():
            self._finish_request(request, TokenEvent(None, "", "error", error="the server is shutting down"))

    def _take_new(self, block: bool) -> bool:
        """Move queued requests into ``_waiting``; False once ``stop`` was called."""
        try:
            item = self._queue.get(block=block)
        except queue.Empty:
            return True
        while True:
            if item is _STOP:
                return False
            self._waiting.append(item)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return True

    def _drain(self) -> Iterable[GenerationRequest]:
        waiting, self._waiting = self._waiting, []
        yield from waiting
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                yield item

    def _admit(self) -> None:
        """Prefill as many waiting requests as the batch has room for and join them to it."""
        import torch

        room = self.max_batch_size - len(self._rows)
        joining: list[GenerationRequest] = []
        while self._waiting and len(joining) < room:
            request = self._waiting.pop(0)
            if request.stream.cancelled:
                self._finish_request(request, TokenEvent(None, "", "cancelled"))
            else:
                joining.append(request)
        if not joining:
            return
        try:
            rows = [self._new_row(r) for r in joining]
            pieces = [self._prompt_embeddings(r.request) for r in rows]
            length = max(p.shape[0] for p in pieces)
            hidden = pieces[0].shape[1]
            pad = self._embed(torch.tensor([self._pad_id], device=self._device))[0]
            embeds = pad.expand(len(rows), length, hidden).clone()
            mask = torch.zeros((len(rows), length), dtype=torch.long, device=self._device)
            for i, p in enumerate(pieces):
                embeds[i, length - p.shape[0]:] = p
                mask[i, length - p.shape[0]:] = 1
                rows[i].next_position = p.shape[0]
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            cache = _new_cache([])
            logits = self._forward(embeds, mask, positions, cache, [r.slot for r in rows])
        except Exception as e:  # not in the batch yet, so _fail_all would not reach them
            for request in joining:
                self._finish_request(request, TokenEvent(None, "", "error", error=f"{type(e).__name__}: {e}"))
            raise
        self.stats.prefills += 1
        offset = len(self._rows)
        self._join(rows, cache, mask)
        self._advance(logits, offset)

    def _decode_step(self) -> None:
        import torch

        tokens = torch.tensor([[r.last_token] for r in self._rows], device=self._device)
        mask = torch.cat([self._mask, torch.ones((len(self._rows), 1), dtype=torch.long, device=self._device)], 1)
        positions = torch.tensor([[r.next_position] for r in self._rows], device=self._device)
        self.stats.observe_step(len(self._rows))
        logits = self._forward(self._embed(tokens), mask, positions, self._cache, [r.slot for r in self._rows])
        self._mask = mask
        for r in self._rows:
            r.next_position += 1
        self._advance(logits, 0)

    def _forward(self, embeds: Any, mask: Any, positions: Any, cache: Any, slots: list[int]) -> Any:
        """One pass of the model over ``embeds``, appending to ``cache``; the last position's logits."""
        if self.lora_slots is not None:
            # Same rows as the previous step: the batcher keeps the weights it gathered for them.
            self.lora_slots.batcher.set_rows(slots)
        out = self.model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :].float()

    def _new_row(self, request: GenerationRequest) -> _Row:
        import torch

        generator = None
        if not request.params.greedy:
            generator = torch.Generator(device=self._device)
            if request.params.seed is not None:
                generator.manual_seed(request.params.seed % (1 << 64))
            else:
                generator.seed()
        return _Row(request, StopText(self.tokenizer, request.params.stop), generator)

    def _prompt_embeddings(self, request: GenerationRequest) -> Any:
        import torch

        ids = torch.tensor(request.prompt_ids, device=self._device)
        embeds = self._embed(ids)
        prompt: SoftPrompt | None = request.soft_prompt
        if prompt is not None:
            embeds = torch.cat([prompt.embeddings.to(embeds.dtype), embeds], 0)
        return embeds

    def _join(self, rows: list[_Row], cache: Any, mask: Any) -> None:
        """Append freshly prefilled rows to the running batch, left-padding the shorter cache."""
        import torch

        if not self._rows:
            self._rows, self._cache, self._mask = rows, cache, mask
            return
        length = max(self._mask.shape[1], mask.shape[1])
        self._cache = _new_cache([
            (torch.cat([_left_pad(k0, length), _left_pad(k1, length)], 0),
             torch.cat([_left_pad(v0, length), _left_pad(v1, length)], 0))
            for (k0, v0), (k1, v1) in zip(_layers(self._cache), _layers(cache))
        ])
        self._mask = torch.cat([_left_pad_mask(self._mask, length), _left_pad_mask(mask, length)], 0)
        self._rows = self._rows + rows

    def _advance(self, logits: Any, offset: int) -> None:
        """Pick the next token of rows ``offset:`` (whose ``logits`` these are), emit it, and let
        finished rows leave the batch."""
        rows = self._rows[offset:]
        done = set()
        for i, (row, token) in enumerate(zip(rows, _sample(rows, logits))):
            if self._emit(row, token) is not None:
                done.add(offset + i)
        if done:
            self._keep([i for i in range(len(self._rows)) if i not in done])

    def _emit(self, row: _Row, token: int) -> str | None:
        """Send ``token`` to the row's client; return the finish reason once the row is done."""
        request = row.request
        if request.stream.cancelled:
            self._finish_row(row, None, "", "cancelled")
            return "cancelled"
        row.generated.append(token)
        row.last_token = token
        self.stats.generated_tokens += 1
        if token in self.eos_ids:
            self._finish_row(row, token, row.text.finish(), "stop")
            return "stop"
        text, stopped = row.text.add(token)
        if stopped:
            self._finish_row(row, token, text, "stop")
            return "stop"
        if len(row.generated) >= request.params.max_tokens:
            self._finish_row(row, token, text + row.text.finish(), "length")
            return "length"
        request.stream.put(TokenEvent(token, text))
        return None

    def _finish_row(self, row: _Row, token: int | None, text: str, reason: str) -> None:
        self._finish_request(
            row.request,
            TokenEvent(token, text, reason, prompt_tokens=len(row.request.prompt_ids),
                       completion_tokens=len(row.generated)),
        )

    def _finish_request(self, request: GenerationRequest, event: TokenEvent) -> None:
        self._unbind(request)
        request.stream.put(event)

    def _keep(self, indices: list[int]) -> None:
        """Shrink the batch to ``indices``, dropping cache columns that are now padding in every row."""
        import torch

        self._rows = [self._rows[i] for i in indices]
        if not indices:
            self._cache, self._mask = None, self._mask[:0, :0]
            return
        idx = torch.tensor(indices, device=self._device)
        mask = self._mask.index_select(0, idx)
        used = mask.any(0).nonzero()
        start = int(used[0]) if used.numel() else mask.shape[1]
        self._mask = mask[:, start:]
        self._cache = _new_cache([(k.index_select(0, idx)[:, :, start:], v.index_select(0, idx)[:, :, start:])
                                  for k, v in _layers(self._cache)])

    def _fail_all(self, message: str) -> None:
        for row in self._rows:
            self._finish_request(row.request, TokenEvent(None, "", "error", error=message))
        self._keep([])


def _sample(rows: list[_Row], logits: Any) -> list[int]:
    """Greedy rows take the argmax; sampled rows draw from their own seeded generator."""
    import torch

    greedy = logits.argmax(-1).tolist()
    out = []
    for i, row in enumerate(rows):
        params = row.request.params
        if params.greedy:
            out.append(greedy[i])
            continue
        probs = torch.softmax(logits[i] / params.temperature, -1)
        if params.top_p < 1:
            probs = _top_p(probs, params.top_p)
        out.append(int(torch.multinomial(probs, 1, generator=row.generator)))
    return out


def _new_cache(kv: list[tuple[Any, Any]]) -> Any:
    """A DynamicCache holding ``kv`` (per layer keys and values), or an empty one."""
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=kv) if kv else DynamicCache()


def _layers(cache: Any) -> list[tuple[Any, Any]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _left_pad(t: Any, length: int) -> Any:
    import torch.nn.functional as F

    return F.pad(t, (0, 0, length - t.shape[2], 0))


def _left_pad_mask(mask: Any, length: int) -> Any:
    import torch.nn.functional as F

    return F.pad(mask, (length - mask.shape[1], 0))


def _top_p(probs: Any, top_p: float) -> Any:
    """Zero every token outside the smallest set whose probability reaches ``top_p``."""
    import torch

    sorted_probs, order = probs.sort(descending=True)
    outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p
    sorted_probs[outside] = 0
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids
