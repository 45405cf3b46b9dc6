"""The engine ``adapterhub serve`` runs, in this process: ``start_engine`` and its ``EngineHandle``.

Here, not in the library: the library (``import adapterhub``) describes serving
(``adapterhub.serving_config``) and never imports the engine or Flask. ``start_engine`` takes an
``EngineConfig`` whole, and an ``HttpConfig`` when the OpenAI API should listen too;
``adapterhub serve`` and the Ray replicas build the same engine through it, and ``serve_http``
is the command's blocking server over the same app.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from adapterhub.api import RegistryLike, default_base
from adapterhub.location import as_registry
from adapterhub.registry_protocol import Registry
from adapterhub.serving_config import EngineConfig, HttpConfig

if TYPE_CHECKING:
    from flask import Flask

    from adapterhub.server.engine.engine import Engine
    from adapterhub.server.http.api_keys import ServingKeys
    from adapterhub.server.http.lora_names import LoraNames
    from adapterhub.server.http.wsgi import ServerHandle

__all__ = ["EngineHandle", "start_engine", "engine_factory", "serve_http", "serving_keys", "IN_PROCESS_HTTP"]

# ``start_engine(http=True)``: a free port and a few threads, for a notebook or a test; the
# command's own defaults (``HttpConfig()``) are for a server.
IN_PROCESS_HTTP = HttpConfig(port=0, threads=8)


@dataclass
class EngineHandle:
    """A serving engine running in this process: one base model, any adapter of ``registry`` per
    request, requests from many threads batched together. ``url`` is set when an HTTP server
    (the OpenAI API, as ``adapterhub serve`` runs it) listens too.

    Use it as a context manager, or call ``stop()``: the engine owns a thread and the model.
    """

    engine: Engine
    registry: Registry
    server: ServerHandle | None = None
    lora_names: LoraNames | None = None

    @property
    def base(self) -> str:
        """The base model's folder or Hub id; also the model name that selects no adapter."""
        return self.engine.base_name

    @property
    def url(self) -> str | None:
        """``http://host:port`` of the HTTP server (the OpenAI API is under ``/v1``), or None."""
        return self.server.url if self.server is not None else None

    def generate(self, prompt: str | Sequence[Mapping[str, str]], *, adapter: str | None = None,
                 max_tokens: int = 32, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                 stop: Sequence[str] = ()) -> str:
        """Generate an answer to ``prompt`` with ``adapter`` (a registry reference; None: the bare base).

        A string is tokenized as ``/v1/completions`` does; a list of chat messages is rendered as
        training renders it (the base's chat template, else the Alpaca template), so an adapter made
        by ``train_adapter`` sees the format it learned. ``temperature=0`` decodes greedily, which matches
        PEFT's ``generate`` with the same adapter. Safe to call from many threads at once.

        Returns the generated text (without a matched ``stop`` string). Raises ``AdapterNotFound``,
        ``IncompatibleBase`` (an adapter of another base), ``UnsupportedAdapter``, ``ValueError``
        for bad sampling settings or a prompt longer than the context, ``RuntimeError`` when the
        engine is stopped or the generation fails.
        """
        from adapterhub.prompt_encoding import encode_templated

        from .engine.request import SamplingParams

        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                                stop=tuple(stop))
        resolved = self.engine.resolve(adapter)
        ids = encode_templated(self.engine.tokenizer, prompt, resolved.template()).ids  # as the server encodes it
        return self.engine.submit(ids, params, resolved).stream.text()

    def stop(self) -> None:
        """Stop the HTTP server (if any), then the engine; requests still running end with an error."""
        if self.server is not None:
            self.server.close()
        self.engine.stop()

    def __enter__(self) -> EngineHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_engine(base: str | os.PathLike | None = None, *, registry: RegistryLike = None,
                 config: EngineConfig | None = None, http: HttpConfig | bool = False,
                 lora_modules: Iterable[tuple[str, str]] = (), **settings: Any) -> EngineHandle:
    """Load ``base`` and start the engine ``adapterhub serve`` runs, in this process.

    ``base`` defaults to ``default_base()``. ``config`` (an ``EngineConfig``; default its defaults,
    which are ``adapterhub serve``'s) says how: ``quantize`` (``auto``: bf16 on a CPU, nf4 on a
    GPU), ``device``, the batch, the adapter caches (``max_loaded_adapters``, ``max_adapter_bytes``
    per kind), ``max_lora_rank``, ``max_queued_requests`` (``submit`` raises ``QueueFull`` beyond)
    and ``preload``; keyword ``settings`` change some of its fields (``quantize="none"``).
    Adapters load from ``registry`` on first use; ``lora_modules`` (name, path) pairs serve a
    registry reference or a PEFT folder (pushed under that name) as ``name``, as vLLM's
    ``--lora-modules`` does. With ``http`` (an ``HttpConfig``, or True for ``IN_PROCESS_HTTP``: a
    free port) the OpenAI API also listens, in a background thread, with that config's limits and keys.

    Returns an ``EngineHandle``; stop it when done. Raises ``IncompatibleBase`` when the base cannot
    be loaded, ``AdapterNotFound`` / ``IncompatibleBase`` / ``InvalidAdapter`` / ``InvalidName`` for a
    bad ``preload`` or ``lora_modules`` entry (nothing is left running), ``ValueError`` for a setting
    out of its bounds, an unknown quantize mode or device or an empty or spaced API key, ``TypeError``
    for a setting ``EngineConfig`` has no field for, ``OSError`` when the port is taken.
    """
    from .engine.engine import create_engine
    from .engine.model_loader import load_base_model
    from .http.lora_names import LoraNames

    config = (config or EngineConfig()).replace(**settings)
    listen = IN_PROCESS_HTTP if http is True else http or None
    keys = serving_keys(listen) if listen is not None else None
    store = as_registry(registry)
    loaded = load_base_model(str(base) if base is not None else default_base(), quantize=config.quantize,
                             device=config.device)
    engine = create_engine(loaded, store, config).start()
    # no client may name a folder to load unless an HTTP server says it may (``_openai_app``)
    handle = EngineHandle(engine, store, lora_names=LoraNames(engine, client_folders=False))
    try:
        for ref in config.preload:
            engine.load_adapter(engine.resolve(ref))
        for name, path in lora_modules:
            handle.lora_names.add(name, path)
        if listen is not None:
            from .http.wsgi import start_in_thread

            handle.server = start_in_thread(_openai_app(handle, listen, keys), listen.host, listen.port,
                                            listen.threads, **_server_options(listen))
    except BaseException:
        engine.stop()
        raise
    return handle


def engine_factory(registry: RegistryLike = None, **settings: Any) -> Callable[[str], Engine]:
    """``base -> a started engine`` over ``registry`` with ``settings`` (``EngineConfig`` fields): what
    the library's evaluation takes (``evaluation.compare.evaluate_refs(engine_for=...)``); it stops
    the engine itself."""
    store = as_registry(registry)
    return lambda base: start_engine(base, registry=store, **settings).engine


def serving_keys(http: HttpConfig) -> ServingKeys:
    """The keys ``http`` names, as the server checks them; ``ValueError`` for an empty or spaced key,
    or metrics behind a key without any key."""
    from .http.api_keys import ServingKeys

    return ServingKeys.of(http.api_keys, http.admin_api_keys, metrics_need_key=http.metrics_need_key)


def serve_http(handle: EngineHandle, http: HttpConfig, keys: ServingKeys,
               ready: Callable[[str], None] | None = None) -> None:
    """Serve ``handle``'s engine over HTTP as ``http`` says, in this thread, until interrupted;
    ``ready(url)`` once the socket listens (``adapterhub serve``)."""
    from .http.wsgi import run

    run(_openai_app(handle, http, keys), http.host, http.port, http.threads, ready=ready, **_server_options(http))


def _openai_app(handle: EngineHandle, http: HttpConfig, keys: ServingKeys) -> Flask:
    """The OpenAI API (and, with ``with_hub``, the registry's routes) over ``handle``; clients may name
    adapter folders to load only where ``lora_names.client_folders_allowed`` says so."""
    from .http.admission import AdmissionLimits
    from .http.app import create_app
    from .http.lora_names import client_folders_allowed

    handle.lora_names.client_folders = client_folders_allowed(http.host, admin_keys=bool(keys.admin))
    return create_app(handle.registry, engine=handle.engine, limits=AdmissionLimits.of(http.limits), keys=keys,
                      with_hub=http.with_hub, lora_names=handle.lora_names)


def _server_options(http: HttpConfig) -> dict[str, Any]:
    return {"stream_tokens": True, "max_request_body_size": http.max_request_body_size,
            "max_waiting_requests": http.max_waiting_http_requests, "send_timeout_s": http.send_timeout_s}
