"""``adapterhub serve``: one base model, every compatible adapter of a registry, an OpenAI-compatible API.

Every setting's default, bounds and help are its field's in ``adapterhub.serving_config`` (which
imports neither the engine nor Flask, so every ``adapterhub`` command stays quick); this module
names the flags, builds one ``ServingConfig`` and hands it on whole.
"""

from __future__ import annotations

import click

from adapterhub.serving_config import QUANTIZE_MODES, EngineConfig, HttpConfig, RequestLimits, ServingConfig

from .config_options import config_option, take
from .output import registry_option
from .ray_options import ray_options

__all__ = ["COMMANDS"]


@click.command()
@click.option("--base", default=None, metavar="PATH|HUB_ID",
              help="Base model folder, .gguf file or Hub id (default: the tiny base, built once into the cache).")
@registry_option
@config_option(EngineConfig, "quantize", type=click.Choice(QUANTIZE_MODES))
@config_option(HttpConfig, "host")
@config_option(HttpConfig, "port")
@config_option(EngineConfig, "max_loaded_adapters")
@config_option(EngineConfig, "max_adapter_bytes", "--max-adapter-memory")
@config_option(EngineConfig, "preload", metavar="REF")
@click.option("--lora-modules", "lora_modules", multiple=True, metavar="NAME=PATH",
              help="Serve a registry reference or a PEFT folder (pushed under NAME) as model NAME, as vLLM's "
                   "flag does; also vLLM's JSON form '{\"name\": ..., \"path\": ...}' (repeatable).")
@config_option(EngineConfig, "max_batch_size")
@config_option(EngineConfig, "max_lora_rank")
@config_option(HttpConfig, "threads")
@config_option(HttpConfig, "max_waiting_http_requests")
@config_option(HttpConfig, "send_timeout_s", "--send-timeout")
@config_option(EngineConfig, "device")
@config_option(EngineConfig, "max_queued_requests")
@config_option(EngineConfig, "prefix_cache_bytes")
@config_option(RequestLimits, "max_prompt_tokens")
@config_option(RequestLimits, "max_generations_per_request")
@config_option(RequestLimits, "max_body_bytes")
@config_option(HttpConfig, "api_keys", "--api-key", metavar="KEY")
@config_option(HttpConfig, "admin_api_keys", "--admin-api-key", metavar="KEY")
@config_option(HttpConfig, "metrics_need_key", "--metrics-auth")
@config_option(HttpConfig, "with_hub")
@ray_options
def serve(base, registry, lora_modules, fleet, **options):
    """Serve a base model with a different adapter per request (OpenAI API at /v1).

    One engine thread owns the model and batches requests for different LoRA adapters, soft prompts
    and the base together; adapters load from the registry on first use.
    """
    from adapterhub.location import default_location, is_remote
    from adapterhub.server.http.api_keys import ADMIN_API_KEY_ENV, API_KEY_ENV, keys_from_env
    from adapterhub.server.http.lora_names import parse_lora_module
    from adapterhub.server.serving import serve_http, serving_keys, start_engine

    # a flag replaces its variable
    http = take(HttpConfig, options, limits=take(RequestLimits, options),
                api_keys=options["api_keys"] or tuple(keys_from_env(API_KEY_ENV)),
                admin_api_keys=options["admin_api_keys"] or tuple(keys_from_env(ADMIN_API_KEY_ENV)))
    config = ServingConfig(engine=take(EngineConfig, options), http=http)
    try:
        keys = serving_keys(http)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    try:
        modules = [parse_lora_module(spec) for spec in lora_modules]
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--lora-modules") from None
    if http.with_hub and is_remote(registry or default_location()):
        raise click.UsageError("--with-hub serves a registry folder; this registry is a remote hub")
    if fleet.wanted:
        if http.with_hub:
            raise click.UsageError("--with-hub applies to one process; with Ray replicas, serve the hub with "
                                   "`adapterhub hub serve` and point --registry at it")
        fleet.run(config, keys, base=base, registry=registry, lora_modules=_pinned_modules(registry, base, modules))
        return
    with start_engine(base, registry=registry, config=config.engine, lora_modules=modules) as handle:
        loaded = handle.engine.loaded
        access = "API key required" if keys.enabled else "open, no API key"

        def ready(url: str) -> None:
            hub = f", registry at {url}/" if http.with_hub else ""
            click.echo(f"serving {loaded.name} ({loaded.quantize}, {loaded.device}) on {url}: OpenAI API at {url}/v1 "
                       f"({access}){hub}", err=True)

        serve_http(handle, http, keys, ready)


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
