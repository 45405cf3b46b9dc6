"""The engine as the HTTP layer and the CLI see it: build one, start it, submit requests, stop it.

HTTP threads resolve the requested adapter once (``resolve``: ``adapters.resolution``), and
``submit`` pins what it resolved into its cache entry in their own thread (so a slow load never
stalls the loop or the requests already running) before putting the request on the scheduler's
queue. Where a resolved adapter is kept resident is ``adapters.picker``; how requests share the
model is ``scheduler``.

Structured outputs: ``compile_grammar`` turns a request's ``GrammarSpec`` into the grammar its
rows follow, on the grammar cache's own threads (``structured.grammar_cache``), and the caller
passes it to ``submit``: the request joins the batch with its grammar ready.

Admission: at most ``max_queued_requests`` requests wait for a place in the batch; ``submit``
raises ``QueueFull`` (with an estimate of when to retry) beyond that, before any adapter is loaded
for the refused request.
"""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING, Any

from adapterhub.serving_config import EngineConfig

from .adapters.picker import AdapterPicker
from .adapters.prompt_template_cache import PromptTemplateCache
from .adapters.resolution import AdapterResolver, Resolved
from .adapters.soft_prompt_cache import SoftPromptCache
from .compute_threads import favour_the_engine_thread, release_thread_pool
from .prefix_cache import PrefixCache
from .request import GenerationRequest, SamplingParams
from .structured.grammar_cache import GrammarCache

if TYPE_CHECKING:
    from collections.abc import Sequence

    from adapterhub.registry import AdapterVersion
    from adapterhub.registry_protocol import Registry

    from .adapters.lora_cache import LoraCache
    from .model_loader import LoadedBase
    from .scheduler import EngineStats
    from .structured.grammar_cache import CompiledConstraint
    from .structured.spec import GrammarSpec

__all__ = ["Engine", "EngineStopped", "ContextTooLong", "QueueFull", "create_engine"]


class EngineStopped(RuntimeError):
    """A request submitted to an engine that is not running (not started, or shutting down)."""


class ContextTooLong(ValueError):
    """A prompt (with its virtual tokens and ``max_tokens``) that does not fit the model's context."""


class QueueFull(RuntimeError):
    """Too many requests are waiting for the engine; ``retry_after_s`` estimates when one more fits."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def create_engine(
    loaded: LoadedBase,
    registry: Registry,
    config: EngineConfig | None = None,
    *,
    lora_target_modules: list[str] | None = None,
    **settings: Any,
) -> Engine:
    """An engine over ``loaded`` with LoRA slots (wrapping the model's linear layers) and a
    soft-prompt cache, each bounded by ``max_loaded_adapters`` and ``max_adapter_bytes``; at most
    ``max_queued_requests`` requests wait for a place in the batch (``QueueFull`` beyond).

    ``config`` (default ``EngineConfig()``) is taken whole; ``settings`` change some of its fields
    (``max_batch_size=4``), as ``EngineConfig.replace`` does. Its ``quantize``, ``device`` and
    ``preload`` are the caller's to apply: ``loaded`` is loaded already, and nothing loads here."""
    from .adapters.lora_cache import LoraCache
    from .lora.slot_bank import LoraSlotBank

    config = (config or EngineConfig()).replace(**settings)
    bank = LoraSlotBank(loaded, max_slots=config.max_loaded_adapters, max_rank=config.max_lora_rank,
                        target_modules=lora_target_modules)
    slots = LoraCache(bank, registry, max_loaded=config.max_loaded_adapters, max_bytes=config.max_adapter_bytes)
    return Engine(loaded, registry, lora_slots=slots, config=config)


class Engine:
    """Owns the loaded base model and its adapters; ``submit`` is safe from any thread.

    Args:
        loaded: a ``LoadedBase`` (``model_loader.load_base_model``): model, tokenizer, name, info.
        registry: where adapters are resolved and loaded from.
        lora_slots: a ``LoraCache`` over the model's ``LoraSlotBank``, or ``None`` to serve the
            base and soft prompts only.
        config: the ``EngineConfig`` whose ``max_batch_size`` (most rows decoded together),
            ``max_loaded_adapters`` and ``max_adapter_bytes`` (bounds of the soft-prompt cache: the
            LoRA slots carry their own) and ``max_queued_requests`` (most requests waiting for a
            place in the batch, ``QueueFull`` beyond) apply; default ``EngineConfig()``.
        slot_wait_s: how long a request waits for a LoRA slot while every slot is pinned by
            running requests (``AdapterBusy`` after that).
    """

    def __init__(
        self,
        loaded: LoadedBase,
        registry: Registry,
        *,
        lora_slots: LoraCache | None = None,
        config: EngineConfig | None = None,
        slot_wait_s: float = 300.0,
    ) -> None:
        # torch comes with the first engine, not with this module: the HTTP layer imports its errors.
        from .scheduler import Scheduler

        config = config or EngineConfig()
        self.config = config
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.registry = registry
        self.lora_slots = lora_slots
        self.max_batch_size = config.max_batch_size
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 2048))
        embed = self.model.get_input_embeddings()
        self.vocab_size = int(embed.num_embeddings)
        self.soft_prompts = SoftPromptCache(registry, dtype=embed.weight.dtype, device=embed.weight.device,
                                            max_loaded=config.max_loaded_adapters, max_bytes=config.max_adapter_bytes)
        templates = PromptTemplateCache(registry)
        self.adapters = AdapterPicker(soft_prompts=self.soft_prompts, prompt_templates=templates,
                                      lora_slots=lora_slots, slot_wait_s=slot_wait_s)
        self.resolver = AdapterResolver(registry, base_name=loaded.name, base_info=loaded.info,
                                        lora=lora_slots is not None, templates=templates)
        fingerprint = loaded.info.fingerprint if loaded.info is not None else loaded.name
        self.prefix_cache = PrefixCache(config.prefix_cache_bytes, salt=f"{fingerprint}|{loaded.quantize}|{loaded.dtype}") \
            if config.prefix_cache_bytes else None
        self._scheduler = Scheduler(self.model, self.tokenizer, max_batch_size=config.max_batch_size,
                                    max_queued=config.max_queued_requests, set_rows=None if lora_slots is None else lora_slots.bank.set_rows,
                                    release=self.adapters.unpin, prefix_cache=self.prefix_cache)
        self.grammars = GrammarCache(self.tokenizer, self.vocab_size, self._scheduler.eos_ids)

    @property
    def base_name(self) -> str:
        return self.loaded.name

    @property
    def stats(self) -> EngineStats:
        return self._scheduler.stats

    @property
    def running(self) -> int:
        return self._scheduler.running

    @property
    def queued(self) -> int:
        """Requests waiting for a place in the batch."""
        return self._scheduler.queued

    @property
    def max_queued_requests(self) -> int:
        return self._scheduler.max_queued

    def start(self) -> Engine:
        """Start the engine loop. The calling thread (which built the model) gives up its torch
        worker threads, so that the loop's are the only ones (``compute_threads``).

        What is alive now (the model, its modules, the libraries: hundreds of thousands of objects)
        is moved out of the cycle collector's sight (``gc.freeze``): otherwise each full collection
        walks all of it, a pause of tens of milliseconds landing on whatever request allocates at
        that moment (adapter loads measured p95 15-17 ms frozen, 17-24 ms not). Objects freed by
        reference count are unaffected; garbage already waiting is collected first. Request threads
        hand the GIL back to the loop sooner (``compute_threads.favour_the_engine_thread``)."""
        gc.collect()
        gc.freeze()
        release_thread_pool()
        favour_the_engine_thread()
        self._scheduler.start()
        return self

    def is_alive(self) -> bool:
        """Whether the engine loop runs: a health check's answer (Ray restarts a replica whose loop died)."""
        return self._scheduler.is_alive()

    def adapter_caches(self) -> list[tuple[str, Any]]:
        """(adapter kind, its cache) for every kind this engine serves; each has ``stats``."""
        caches: list[tuple[str, Any]] = [("prompt_tuning", self.soft_prompts),
                                         ("prompt_template", self.adapters.prompt_templates)]
        if self.lora_slots is not None:
            caches.append(("lora", self.lora_slots))
        return caches

    def adapter_loads(self) -> int:
        """Adapters loaded since start, every kind: what affinity routing exists to keep low."""
        return sum(cache.stats.loads for _, cache in self.adapter_caches())

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the loop; requests still queued or running end with finish reason ``error``
        (``ErrorCode.SHUTTING_DOWN``)."""
        self._scheduler.stop(timeout)

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def resolve(self, model: str | None) -> Resolved:
        """The adapter ``model`` names, checked against the base (``Resolved(None)``: the base itself)."""
        return self.resolver.resolve(model)

    def servable(self, version: AdapterVersion) -> bool:
        """Whether ``version`` would resolve here: the rule ``resolve`` applies, as a yes or no."""
        return self.resolver.servable(version)

    def check_fits(self, prompt_tokens: int, adapter: Resolved, max_tokens: int) -> None:
        """Raise ``ContextTooLong`` unless prompt, virtual tokens and answer fit the context."""
        used = prompt_tokens + adapter.virtual_tokens
        if used + max_tokens > self.context_length:
            raise ContextTooLong(
                f"this model's context is {self.context_length} tokens; the prompt takes {used}"
                f" and max_tokens asks for {max_tokens} more"
            )

    def compile_grammar(self, spec: GrammarSpec) -> CompiledConstraint:
        """The grammar ``spec`` compiles to for this base's tokenizer (cached; compiled off the
        engine thread while the caller waits); ``GrammarInvalid`` when it does not compile."""
        return self.grammars.get(spec)

    def submit(self, prompt_ids: list[int], params: SamplingParams, adapter: Resolved | None = None,
               group: str | None = None, grammar: CompiledConstraint | None = None) -> GenerationRequest:
        """Queue one request and return it (``submit_all`` of one row); read ``request.stream`` for
        its tokens. ``adapter`` is what ``resolve`` returned (``None``: the base)."""
        return self.submit_all([(prompt_ids, params)], adapter, group, grammar)[0]

    def submit_all(self, rows: Sequence[tuple[list[int], SamplingParams]], adapter: Resolved | None = None,
                   group: str | None = None, grammar: CompiledConstraint | None = None) -> list[GenerationRequest]:
        """Queue one request per (prompt ids, params) row, all or none, and return them. Requests of
        one ``group`` (the answers of one HTTP request) share the batch as one (``scheduler``); with
        ``grammar`` (from ``compile_grammar``) every token of each answer is one it allows.

        Every row is checked before any is queued: ``ContextTooLong`` for a prompt that does not
        fit, ``ValueError`` for ids outside the vocabulary. The adapter ``resolve`` checked is then
        pinned into its cache entry here, in the caller's thread, loading it if it is not resident:
        the engine loop keeps decoding everyone else meanwhile. Raises ``QueueFull`` when
        ``max_queued_requests`` are already waiting (checked before loading anything, and again
        when queueing), ``EngineStopped`` when the engine is not running; a failure cancels the
        rows already queued.
        """
        from .scheduler import Enqueued

        adapter = adapter or Resolved(None)
        for prompt_ids, params in rows:
            self.check_fits(len(prompt_ids), adapter, params.max_tokens)
            if not all(0 <= t < self.vocab_size for t in prompt_ids):  # a lookup past the end is fatal on CUDA
                raise ValueError(f"token ids must be integers in [0, {self.vocab_size})")
        queued: list[GenerationRequest] = []
        try:
            for prompt_ids, params in rows:
                request = GenerationRequest(list(prompt_ids), params, adapter=adapter.version, group=group,
                                            grammar=grammar)
                if not self._scheduler.has_room():
                    raise self._queue_full()
                self.adapters.pin(request)
                outcome = self._scheduler.enqueue(request)
                if outcome is not Enqueued.QUEUED:
                    self.adapters.unpin(request)
                    if outcome is Enqueued.FULL:
                        raise self._queue_full()
                    raise EngineStopped("the engine is not running (the server is shutting down)")
                queued.append(request)
        except BaseException:
            for request in queued:
                request.stream.cancel()
            raise
        return queued

    def _queue_full(self) -> QueueFull:
        self._scheduler.count_refusal()
        return QueueFull(f"the server is busy: {self._scheduler.max_queued} requests are already waiting",
                         retry_after_s=self._scheduler.retry_after_s())

    def load_adapter(self, adapter: Resolved) -> None:
        """Make what ``resolve`` returned resident without running a request (``POST /v1/adapters/load``)."""
        self.adapters.load(adapter.version)

    def unload_adapter(self, ref: str) -> bool:
        """Free a resident adapter now; False when it is not resident, ``AdapterBusy`` while in use."""
        return self.adapters.unload(ref)

    def is_loaded(self, ref: str) -> bool:
        return ref in self.loaded_refs()

    def loaded_refs(self) -> set[str]:
        """The references of the resident adapters (one listing for a page that asks about many)."""
        return {a["ref"] for a in self.loaded_adapters()}

    def loaded_adapters(self) -> list[dict[str, Any]]:
        return self.adapters.loaded()
