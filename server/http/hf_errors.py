"""The Hugging Face error header on Hub routes.

``huggingface_hub`` builds its exception messages from ``X-Error-Message`` (and ``X-Error-Code``
for the class), so a refusal reads the same in a client's traceback as in our JSON body.
"""

from __future__ import annotations

import json

from flask import Blueprint, Response

from .registry_api import hide_registry_path

__all__ = ["add_error_header"]


def add_error_header(bp: Blueprint) -> None:
    """Copy each JSON error's message into ``X-Error-Message`` on ``bp``'s answers (one line, latin-1)."""

    @bp.after_request
    def _error_header(response: Response) -> Response:
        if response.status_code < 400 or response.mimetype != "application/json":
            return response
        response = hide_registry_path(response)  # the header must not name the hub's folder either
        try:
            error = json.loads(response.get_data())["error"]
            message = error["message"] if isinstance(error, dict) else error
        except (ValueError, KeyError, TypeError):
            return response
        if isinstance(message, str):
            line = " ".join(message.split())[:500]
            response.headers["X-Error-Message"] = line.encode("latin-1", "replace").decode("latin-1")
        return response
