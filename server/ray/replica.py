"""One Ray Serve replica: a base model, our engine, and the Flask app ``adapterhub serve`` runs.

Adapters are Ray Serve multiplexed models keyed by their version's digest. Ray's router sends a
request to a replica whose multiplexed ids include the request's; the replica's per-model LRU
(``max_num_models_per_replica`` = ``max_loaded_adapters``) is the one eviction policy: when Ray
drops an adapter, ``ResidentAdapter.__del__`` unloads it from the engine. The engine's own caches
are as large as Ray's count, so they never evict an adapter Ray still lists; the one exception is
an adapter Ray drops while a request still uses it, which stays until that request ends and is then
the least recently used entry the engine's cache evicts first.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable

from ray import serve

from .forwarding import ForwardedRequest, ResponseHead, call_app
from .settings import ReplicaSettings

__all__ = ["EngineReplica", "ResidentAdapter", "REPLICA_HEADER", "LOADS_HEADER"]

# Every answer says which replica made it and how many adapter loads that replica has done
# (cumulative): operators see where a request ran; the affinity benchmark counts loads from them.
REPLICA_HEADER = "X-Adapterhub-Replica"
LOADS_HEADER = "X-Adapterhub-Replica-Adapter-Loads"
_DONE = object()


class ResidentAdapter:
    """An adapter Ray counts as loaded on this replica; unloads it from the engine when Ray evicts it."""

    def __init__(self, engine: Any, ref: str) -> None:
        self.engine = engine
        self.ref = ref
        self._evicted = False

    def __del__(self) -> None:
        """Ray's eviction calls this, and garbage collection again later: only the first unloads
        (by then Ray may have loaded the same adapter anew, under another object)."""
        from adapterhub.errors import AdapterInUse

        if self._evicted:
            return
        self._evicted = True
        try:
            self.engine.unload_adapter(self.ref)
        except AdapterInUse:
            pass  # still generating: the engine's LRU evicts it once idle, before anything Ray holds


class EngineReplica:
    """The engine deployment's class (``app.build`` wraps it in ``serve.deployment``)."""

    def __init__(self, settings: ReplicaSettings) -> None:
        from adapterhub.api import open_registry
        from adapterhub.server.http.admission import AdmissionLimits
        from adapterhub.server.http.app import create_app
        from adapterhub.server.serving import start_engine

        registry = open_registry(settings.registry, token=settings.token)
        self._handle = start_engine(settings.base, registry=registry, config=settings.engine)
        for name, ref in settings.served_names().items():  # loaded on first use, through Ray's LRU
            self._handle.lora_names.add(name, ref, load=False)
        engine = self._handle.engine
        self._app = create_app(registry, engine=engine, limits=AdmissionLimits.of(settings.limits),
                               keys=settings.serving_keys(), with_hub=False, lora_names=self._handle.lora_names)
        self._replica_id = serve.get_replica_context().replica_id.unique_id
        # Every request in progress holds a thread (waiting for its answer or its next event), so
        # the pool is sized for the requests Ray lets in (``app.build``), not Ray's default of a
        # few threads per CPU, which would cap the engine's batch far below --max-batch-size.
        self._pool = ThreadPoolExecutor(max_workers=2 * settings.engine.max_batch_size + 4,
                                        thread_name_prefix="adapterhub-replica")

        async def resident(model_id: str) -> ResidentAdapter:
            adapter = await self._run(engine.resolve, model_id)
            await self._run(engine.load_adapter, adapter)
            return ResidentAdapter(engine, adapter.version.ref)

        self._resident = serve.multiplexed(max_num_models_per_replica=settings.engine.max_loaded_adapters)(resident)

    async def forward(self, forwarded: ForwardedRequest) -> tuple[ResponseHead, bytes]:
        """Answer one forwarded request whole: its head and its body."""
        await self._ensure_resident(serve.get_multiplexed_model_id())
        gone = threading.Event()
        try:
            head, content = await self._run(self._answer_whole, forwarded, gone.is_set)
        finally:
            gone.set()  # cancelled (the client left): the app's disconnect watcher stops its generation
        return self._with_replica(head), content

    async def forward_stream(self, forwarded: ForwardedRequest) -> AsyncIterator[ResponseHead | bytes]:
        """Answer one forwarded request as it is made: its head, then one chunk per streamed event."""
        await self._ensure_resident(serve.get_multiplexed_model_id())
        gone = threading.Event()
        head, body = await self._run(call_app, self._app, forwarded, gone.is_set)
        try:
            yield self._with_replica(head)
            while (chunk := await self._run(next, body, _DONE)) is not _DONE:
                yield chunk
        finally:
            gone.set()
            await self._run(body.close)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _answer_whole(self, forwarded: ForwardedRequest, gone: Callable[[], bool]) -> tuple[ResponseHead, bytes]:
        head, body = call_app(self._app, forwarded, gone)
        try:
            return head, b"".join(body)
        finally:
            body.close()

    def _with_replica(self, head: ResponseHead) -> ResponseHead:
        return ResponseHead(head.status, (*head.headers, (REPLICA_HEADER, self._replica_id),
                                          (LOADS_HEADER, str(self._handle.engine.adapter_loads()))))

    async def _ensure_resident(self, model_id: str) -> None:
        """Tell Ray's multiplexer this replica holds the adapter (loading it on a miss); a failure
        here (a version removed meanwhile, a load error) is left to the app, which resolves the
        request again and answers with the cause's own status."""
        if not model_id:
            return
        try:
            await self._resident(model_id)
        except Exception:
            pass

    def check_health(self) -> None:
        """Ray restarts a replica whose engine thread died."""
        if not self._handle.engine.is_alive():
            raise RuntimeError("the engine thread has stopped")

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None:  # Ray calls it when it stops the replica: end the engine thread
            handle.stop()
