"""``adapterhub serve``: one base model, every compatible adapter of a registry, an OpenAI-compatible API.

The admission defaults are written out here rather than imported (importing the engine and Flask
would slow every ``adapterhub`` command); tests/test_serve_limits.py checks they match the library's.
"""

from __future__ import annotations

import re

import click

from .output import registry_option
from .ray_options import ray_options

__all__ = ["COMMANDS"]

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


_HUB_MAX_BODY_BYTES = (4 << 30) + (1 << 20)  # as `adapterhub hub serve` takes by default (objects up to 4 GiB)


class ByteSize(click.ParamType):
    """A byte count: ``1073741824``, ``512MB``, ``1GiB``."""

    name = "bytes"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
        unit = m and m.group(2).lower()
        if m is None or unit not in _UNITS or float(m.group(1)) * _UNITS[unit] < 1:
            self.fail(f"{value!r} is not a byte size (e.g. 1073741824, 512MB, 1GiB)", param, ctx)
        return int(float(m.group(1)) * _UNITS[unit])


@click.command()
@click.option("--base", default=None, metavar="PATH|HUB_ID",
              help="Base model folder, .gguf file or Hub id (default: the tiny base, built once into the cache).")
@registry_option
@click.option("--quantize", type=click.Choice(["auto", "bf16", "int8", "nf4", "none"]), default="auto", show_default=True,
              help="Base weights: auto = bf16 on a CPU (near-lossless; none where no C compiler builds its kernel), "
                   "nf4 on a GPU (bitsandbytes). int8 on a CPU is faster on CPUs without AVX512-BF16 but lossy "
                   "(see BENCHMARKS.md).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option("--max-loaded-adapters", default=16, show_default=True, type=click.IntRange(1, 4096),
              help="Adapters resident at once, per kind (least recently used evicted).")
@click.option("--max-adapter-memory", default="1GiB", show_default=True, type=ByteSize(),
              help="Bytes of adapter weights resident at once, per kind.")
@click.option("--preload", multiple=True, metavar="REF", help="Load this adapter at start-up (repeatable).")
@click.option("--lora-modules", "lora_modules", multiple=True, metavar="NAME=PATH",
              help="Serve a registry reference or a PEFT folder (pushed under NAME) as model NAME, as vLLM's "
                   "flag does; also vLLM's JSON form '{\"name\": ..., \"path\": ...}' (repeatable).")
@click.option("--max-batch-size", default=16, show_default=True, type=click.IntRange(1, 1024),
              help="Most requests decoded together.")
@click.option("--max-lora-rank", default=64, show_default=True, type=click.IntRange(1, 1024),
              help="Largest LoRA rank a slot holds.")
@click.option("--threads", default=64, show_default=True, type=click.IntRange(1, 1024),
              help="HTTP worker threads (each open stream holds one).")
@click.option("--max-waiting-http-requests", default=256, show_default=True, type=click.IntRange(0),
              help="Requests that may wait for a free HTTP worker thread when all --threads are busy (streams "
                   "hold them); beyond, an immediate 429 server_busy with Retry-After. /health and /metrics "
                   "never wait: they have threads of their own.")
@click.option("--send-timeout", "send_timeout_s", default=30.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds an answer may wait for a client that reads nothing (more than 64 KiB of it undelivered) "
                   "before its connection is dropped and its generation cancelled, freeing its batch rows.")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: the GPU if there is one).")
@click.option("--max-queued-requests", default=256, show_default=True, type=click.IntRange(1),
              help="Answers waiting for the engine at most; beyond, requests get 429 with Retry-After.")
@click.option("--max-prompt-tokens", default=None, type=click.IntRange(1),
              help="Longest prompt in tokens  [default: the model's context]")
@click.option("--max-generations-per-request", default=64, show_default=True, type=click.IntRange(1),
              help="Most answers one request may ask for (n times the prompts).")
@click.option("--max-body-bytes", default="16MiB", show_default=True, type=ByteSize(),
              help="Largest request body on /v1 (refused from its Content-Length, before it is read).")
@click.option("--api-key", "api_keys", multiple=True, metavar="KEY",
              help="Require 'Authorization: Bearer KEY' on /v1 (repeatable; default $ADAPTERHUB_API_KEY, "
                   "comma-separated). Prefer the variable: arguments show in `ps`.")
@click.option("--admin-api-key", "admin_api_keys", multiple=True, metavar="KEY",
              help="Keys that may also load and unload adapters (repeatable; default $ADAPTERHUB_ADMIN_API_KEY). "
                   "Without any, API keys may.")
@click.option("--metrics-auth", is_flag=True, help="/metrics needs an API key too (default: open, like /health).")
@click.option("--with-hub", is_flag=True,
              help="Also serve the registry here (adapterhub API, HF protocol, web page; the hub's token rules). "
                   "Needs a registry folder.")
@ray_options
def serve(base, registry, quantize, host, port, max_loaded_adapters, max_adapter_memory, preload, lora_modules,
          max_batch_size, max_lora_rank, threads, max_waiting_http_requests, send_timeout_s, device,
          max_queued_requests, max_prompt_tokens, max_generations_per_request, max_body_bytes, api_keys,
          admin_api_keys, metrics_auth, with_hub, fleet):
    """Serve a base model with a different adapter per request (OpenAI API at /v1).

    One engine thread owns the model and batches requests for different LoRA adapters, soft prompts
    and the base together; adapters load from the registry on first use.
    """
    from adapterhub.api import start_engine
    from adapterhub.location import default_location, is_remote
    from adapterhub.server.http.admission import AdmissionLimits
    from adapterhub.server.http.api_keys import ADMIN_API_KEY_ENV, API_KEY_ENV, ServingKeys, keys_from_env
    from adapterhub.server.http.app import create_app
    from adapterhub.server.http.lora_names import client_folders_allowed, parse_lora_module
    from adapterhub.server.http.wsgi import run

    try:
        # a flag replaces its variable
        keys = ServingKeys.of(list(api_keys) or keys_from_env(API_KEY_ENV),
                              list(admin_api_keys) or keys_from_env(ADMIN_API_KEY_ENV), metrics_need_key=metrics_auth)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    try:
        modules = [parse_lora_module(spec) for spec in lora_modules]
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--lora-modules") from None
    if with_hub and is_remote(registry or default_location()):
        raise click.UsageError("--with-hub serves a registry folder; this registry is a remote hub")
    if fleet.wanted:
        if with_hub:
            raise click.UsageError("--with-hub applies to one process; with Ray replicas, serve the hub with "
                                   "`adapterhub hub serve` and point --registry at it")
        fleet.run(lora_modules=_pinned_modules(registry, base, modules), base=base, registry=registry, quantize=quantize, device=device, max_batch_size=max_batch_size,
                  max_loaded_adapters=max_loaded_adapters, max_adapter_bytes=max_adapter_memory,
                  max_lora_rank=max_lora_rank, max_queued_requests=max_queued_requests, preload=tuple(preload),
                  max_prompt_tokens=max_prompt_tokens, max_generations_per_request=max_generations_per_request,
                  max_body_bytes=max_body_bytes, keys=keys, host=host, port=port)
        return
    limits = AdmissionLimits(max_prompt_tokens=max_prompt_tokens,
                             max_generations_per_request=max_generations_per_request, max_body_bytes=max_body_bytes)
    with start_engine(base, registry=registry, quantize=quantize, device=device, max_batch_size=max_batch_size,
                      max_loaded_adapters=max_loaded_adapters, max_adapter_bytes=max_adapter_memory,
                      max_lora_rank=max_lora_rank, preload=preload, max_queued_requests=max_queued_requests,
                      lora_modules=modules) as handle:
        loaded = handle.engine.loaded
        handle.lora_names.client_folders = client_folders_allowed(host, admin_keys=bool(keys.admin))
        app = create_app(handle.registry, engine=handle.engine, limits=limits, keys=keys, with_hub=with_hub,
                         lora_names=handle.lora_names)
        access = "API key required" if keys.enabled else "open, no API key"

        def ready(url: str) -> None:
            hub = f", registry at {url}/" if with_hub else ""
            click.echo(f"serving {loaded.name} ({loaded.quantize}, {loaded.device}) on {url}: OpenAI API at {url}/v1 "
                       f"({access}){hub}", err=True)

        # The hub's pushes carry adapter files: with the hub mounted the server takes its bodies too
        # (the OpenAI routes still check max_body_bytes themselves).
        body_limit = max(max_body_bytes, _HUB_MAX_BODY_BYTES) if with_hub else max_body_bytes
        run(app, host, port, threads, ready=ready, stream_tokens=True, max_request_body_size=body_limit,
            max_waiting_requests=max_waiting_http_requests, send_timeout_s=send_timeout_s)


def _pinned_modules(registry: str | None, base: str | None, modules: list[tuple[str, str]]) -> tuple[str, ...]:
    """``--lora-modules`` for a fleet: each folder pushed (checked against the served base) and each
    reference pinned here, once, so every replica serves the same versions under the same names."""
    if not modules:
        return ()
    from adapterhub.api import default_base, open_registry
    from adapterhub.server.http.lora_names import pin_lora_module

    store = open_registry(registry)
    served = base or default_base()
    return tuple(pin_lora_module(store, name, path, base=served) for name, path in modules)


COMMANDS = [serve]
