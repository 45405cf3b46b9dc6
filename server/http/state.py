"""Where the app keeps its long-lived objects: one entry of ``app.extensions``, under one name.

``create_app`` fills it (``registry``, ``engine``, and ``tokens`` / ``metrics`` when those parts are
on); views read it through ``app_state``. It lives apart from ``app`` so blueprints can read it
without importing the factory that imports them.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app

__all__ = ["EXTENSION", "app_state"]

EXTENSION = "adapterhub"


def app_state(app: Flask | None = None) -> dict[str, Any]:
    """The shared objects of ``app`` (default: the app handling the current request)."""
    return (app or current_app).extensions[EXTENSION]
