"""The Flask application factory: the hub's routes, the OpenAI API, or both.

Nothing loads at import time. ``create_app`` takes the long-lived objects (the registry, the
inference engine) ready-made, so tests build apps with temporary registries and the real engine on
the tiny base, and ``adapterhub serve`` / ``adapterhub hub serve`` build them from CLI options.

An app without an engine is a hub (``adapterhub hub serve``): registry API, Hugging Face protocol,
web page, ``/health`` and ``/metrics``. An app with an engine is a serving port: the OpenAI API,
vLLM's LoRA routes, ``/health`` and ``/metrics``, and the hub's routes only when asked (``with_hub``,
``adapterhub serve --with-hub``), since they hand out every adapter of the registry; they then keep
the hub's own token rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

from flask import Flask

from adapterhub.registry import LocalRegistry
from adapterhub.registry_protocol import Registry

from . import api_keys, auth, hf_commit, hf_compat, hf_lfs, hf_listing, hf_repos, registry_api, web
from .admission import AdmissionLimits
from .api_keys import ServingKeys
from .errors import install_error_handlers
from .header_gate import add_gate
from .json_body import StandardJSON
from .state import EXTENSION, app_state

if TYPE_CHECKING:
    from adapterhub.server.engine.engine import Engine

    from .lora_names import LoraNames

__all__ = ["create_app"]

# No route of ours reads a body sent with these.
_BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def create_app(
    registry: Registry,
    *,
    engine: Engine | None = None,
    config: Mapping[str, Any] | None = None,
    limits: AdmissionLimits | None = None,
    keys: ServingKeys | None = None,
    with_hub: bool | None = None,
    lora_names: LoraNames | None = None,
) -> Flask:
    """Build the WSGI app. ``app_state(app)`` holds the registry and the engine.

    ``with_hub`` defaults to "only without an engine"; the hub routes need a registry folder (a
    server in front of a remote hub does not re-serve it): ``ValueError`` when asked for them over
    a remote registry. ``limits`` and ``keys`` apply to the OpenAI API (defaults: the documented
    limits, no keys). ``lora_names`` are the names vLLM's LoRA routes serve (default: none yet;
    ``start_engine`` passes those of ``--lora-modules``).
    """
    if with_hub and not isinstance(registry, LocalRegistry):
        raise ValueError("the hub routes need a registry folder, not a remote hub")
    app = Flask("adapterhub")
    app.json = StandardJSON(app)
    app.config.update(config or {})
    app.extensions[EXTENSION] = {"registry": registry, "engine": engine}
    install_error_handlers(app)
    if isinstance(registry, LocalRegistry):
        app.after_request(registry_api.hide_registry_path)
    body_prefixes: list[str] = []
    if (engine is None if with_hub is None else with_hub) and isinstance(registry, LocalRegistry):
        body_prefixes.append(registry_api.bp.url_prefix)
        auth.init_app(app)
        app.register_blueprint(registry_api.bp)
        for hf_bp in (hf_compat.bp, hf_repos.bp, hf_lfs.bp, hf_commit.bp, hf_listing.bp):
            app.register_blueprint(hf_bp)
        app.register_blueprint(web.bp)
    if engine is not None:
        # they import the engine's modules: only a serving app pays for them
        from . import health, openai_api, vllm_compat
        from .lora_names import LoraNames

        state = app_state(app)
        state["metrics"] = health.ServerMetrics(engine.base_name)
        state["lora_names"] = lora_names or LoraNames(engine)
        state["metrics"].registry.register(health.EngineCollector(engine, state["lora_names"]))
        api_keys.install(app, keys or ServingKeys(), prefix=openai_api.bp.url_prefix,
                         admin_endpoints=openai_api.ADMIN_ENDPOINTS | vllm_compat.ADMIN_ENDPOINTS,
                         metrics_endpoint="health.metrics")
        openai_api.init_app(app, engine, limits or AdmissionLimits())
        app.register_blueprint(vllm_compat.bp)
        app.register_blueprint(health.bp)
        body_prefixes.append(openai_api.bp.url_prefix)
    else:
        from .health import install_hub_metrics

        install_hub_metrics(app)
    _refuse_bodies_outside(app, tuple(body_prefixes), also=hf_lfs.takes_body if hf_lfs.bp.name in app.blueprints else None)
    return app


def _refuse_bodies_outside(app: Flask, prefixes: tuple[str, ...], also: Callable[[str], bool] | None = None) -> None:
    """The routes' own gates only speak for their requests; every other request (a GET, a POST to
    /health or to no route) would have its body read up to the server-wide limit, which on a hub is
    its 4 GiB object limit, before the app answers. None of them is read: they are answered from
    their headers. ``also`` names more paths that take bodies (the Hub protocol's Git LFS routes)."""
    def gate(method: str, path: str, headers: Mapping[str, str]) -> int | None:
        taken = method not in _BODYLESS_METHODS and (
            any(path == p or path.startswith(p + "/") for p in prefixes) or (also is not None and also(path)))
        return None if taken else 0

    add_gate(app, gate)
