"""vLLM's dynamic LoRA routes: ``POST /v1/load_lora_adapter`` and ``POST /v1/unload_lora_adapter``.

The bodies are vLLM's (``{"lora_name", "lora_path", "load_inplace"}``, ``{"lora_name"}``) and so are
the answers: 200 with vLLM's plain-text success line; 400 for a missing field or a name already
served without ``load_inplace``; 404 for a path that is neither a PEFT folder nor a registry
reference, or an unload of a name not served. Errors keep this server's JSON shape; an adapter
the registry refuses (invalid, another base) answers as a push would (400, 409). What a name means
is ``lora_names``'s business. Like ``/v1/adapters/load`` these change what every tenant is served,
so with admin keys set they need one (``ADMIN_ENDPOINTS``).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, request

from adapterhub import error_codes as codes

from .errors import ApiError
from .json_body import json_object
from .lora_names import LoraNames
from .state import app_state

__all__ = ["bp", "ADMIN_ENDPOINTS", "with_served_names"]

bp = Blueprint("vllm", __name__, url_prefix="/v1")
ADMIN_ENDPOINTS = frozenset({"vllm.load_lora_adapter", "vllm.unload_lora_adapter"})


def _names() -> LoraNames:
    names = app_state().get("lora_names")
    if names is None:
        raise ApiError(codes.NO_MODEL, "this server holds no model (start it with `adapterhub serve`)")
    return names


def _body() -> dict[str, Any]:
    app_state()["limits"].check_body(request.content_length)
    return json_object()


def _text(value: Any, key: str) -> str:
    if value is not None and not isinstance(value, str):
        raise ApiError(codes.INVALID_TYPE, f"'{key}' must be a string")
    return value or ""


@bp.after_request
def _count(response: Response) -> Response:
    app_state()["metrics"].count_request(g.get("adapter_label", "unknown"), request.endpoint or "-",
                                         response.status_code)
    return response


@bp.post("/load_lora_adapter")
def load_lora_adapter():
    names = _names()
    body = _body()
    name, path = _text(body.get("lora_name"), "lora_name"), _text(body.get("lora_path"), "lora_path")
    if not name or not path:
        raise ApiError(codes.MISSING_FIELD, "both 'lora_name' and 'lora_path' must be provided")
    inplace = body.get("load_inplace", False)
    if not isinstance(inplace, bool):
        raise ApiError(codes.INVALID_TYPE, "'load_inplace' must be a boolean")
    version = names.add(name, path, replace=inplace, client=True)  # NameTaken: 400 already_loaded
    g.adapter_label = version.ref
    return Response(f"Success: LoRA adapter '{name}' added successfully.", mimetype="text/plain")


@bp.post("/unload_lora_adapter")
def unload_lora_adapter():
    names = _names()
    name = _text(_body().get("lora_name"), "lora_name")
    if not name:
        raise ApiError(codes.MISSING_FIELD, "'lora_name' needs to be provided to unload a LoRA adapter")
    g.adapter_label = names.remove(name)
    return Response(f"Success: LoRA adapter '{name}' removed successfully.", mimetype="text/plain")


def with_served_names(rows: list[dict[str, Any]], names: LoraNames, loaded: set[str]) -> list[dict[str, Any]]:
    """``/v1/models`` rows with one per served name (vLLM lists each; ``root`` is the version it
    serves), replacing a registry row of the same id; ``loaded``: the resident references."""
    served = names.served()
    engine = names.engine
    return [r for r in rows if r["id"] not in served] + [
        {"id": name, "object": "model", "created": 0, "owned_by": "adapterhub", "root": ref,
         "parent": engine.base_name, "loaded": ref in loaded}
        for name, ref in sorted(served.items())]
