"""The Flask application factory: the registry API always, the OpenAI API when an engine is given.

Nothing loads at import time. ``create_app`` takes the long-lived objects (the registry, the
inference engine) ready-made, so tests build apps with temporary registries and the real engine on
the tiny base, and ``adapterhub serve`` / ``adapterhub hub serve`` build them from CLI options.
"""

from __future__ import annotations

from typing import Any, Mapping

from flask import Flask

from adapterhub.registry import LocalRegistry

from . import auth, hf_compat, registry_api, web
from .errors import install_error_handlers

__all__ = ["create_app", "EXTENSION"]

EXTENSION = "adapterhub"


def create_app(
    registry: LocalRegistry,
    *,
    engine: Any | None = None,
    config: Mapping[str, Any] | None = None,
) -> Flask:
    """Build the WSGI app. ``app.extensions["adapterhub"]`` holds the registry and the engine."""
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
        from . import health, openai_api

        app.extensions[EXTENSION]["metrics"] = health.ServerMetrics()
        app.register_blueprint(openai_api.bp)
        app.register_blueprint(health.bp)
    return app
