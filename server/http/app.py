"""The Flask application factory: the registry API always, the OpenAI API when an engine is given.

Nothing loads at import time. ``create_app`` takes the long-lived objects (the registry, the
inference engine) ready-made, so tests build apps with temporary registries and the real engine on
the tiny base, and ``adapterhub serve`` / ``adapterhub hub serve`` build them from CLI options.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from flask import Flask

from adapterhub.registry import LocalRegistry
from adapterhub.registry_protocol import Registry

from . import auth, hf_compat, registry_api, web
from .errors import install_error_handlers
from .state import EXTENSION, app_state

if TYPE_CHECKING:
    from adapterhub.server.engine.engine import Engine

__all__ = ["create_app"]


def create_app(
    registry: Registry,
    *,
    engine: Engine | None = None,
    config: Mapping[str, Any] | None = None,
) -> Flask:
    """Build the WSGI app. ``app_state(app)`` holds the registry and the engine."""
    app = Flask("adapterhub")
    app.config.update(config or {})
    app.extensions[EXTENSION] = {"registry": registry, "engine": engine}
    install_error_handlers(app)
    if isinstance(registry, LocalRegistry):  # a server in front of a remote hub does not re-serve it
        auth.init_app(app)
        app.register_blueprint(registry_api.bp)
        app.register_blueprint(hf_compat.bp)
        app.register_blueprint(web.bp)
    if engine is not None:
        from . import health, openai_api  # they import the engine's modules: only a serving app pays for them

        app_state(app)["metrics"] = health.ServerMetrics()
        app.register_blueprint(openai_api.bp)
        app.register_blueprint(health.bp)
    return app
