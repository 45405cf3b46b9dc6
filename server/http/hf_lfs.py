"""Git LFS uploads as ``huggingface_hub`` sends them: the batch API and its basic transfer.

``POST /{repo}.git/info/lfs/objects/batch`` answers, for each ``{oid, size}``, nothing when the
hub already holds that object (the client skips it) or an upload action. The transfer is always
``basic`` (one PUT per object): never ``multipart``, never ``xet``, and no Xet header anywhere, so a
client that asks which transfer to use is told LFS.

The client PUTs the bytes to the action's ``href`` without its token (as to a presigned storage
URL), so the href carries the permission: ``/lfs/objects/<oid>/<size>/<expires>/<signature>``, an
HMAC of the other three under a secret of this app, valid for an hour. Everything sits in the path
because the server's header gate (which refuses a body before it is read) sees the path only: the
gate admits exactly ``size`` bytes for a valid signature and none otherwise. The bytes are hashed
into a temporary file of the object store and kept only if they hash to ``oid``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from typing import Any, Mapping

from flask import Blueprint, Flask, current_app, jsonify, request

from adapterhub import error_codes as codes
from adapterhub.refs import validate_name

from .auth import WRITE, authorize
from .errors import ApiError
from .header_gate import add_gate
from .hf_errors import add_error_header
from .hf_repo_id import hub_url, repo_route
from .registry_api import (DEFAULT_MAX_JSON, DEFAULT_MAX_OBJECT, MAX_JSON_BYTES, MAX_OBJECT_BYTES, is_digest, json_body,
                           write_body_limit)
from .state import app_state

__all__ = ["bp", "UPLOAD_PREFIX", "takes_body"]

bp = Blueprint("hf_lfs", __name__)
add_error_header(bp)

UPLOAD_PREFIX = "/lfs/objects"
UPLOAD_TTL_S = 3600
_MAX_OBJECTS = 256  # what the client sends per batch
_SECRET = "hf_lfs_secret"
_LFS_JSON = "application/vnd.git-lfs+json"
_UPLOAD_PATH = re.compile(re.escape(UPLOAD_PREFIX) + r"/([0-9a-f]{64})/([0-9]{1,15})/([0-9]{1,12})/([0-9a-f]{64})")
_BATCH_PATH = re.compile(r"/[^/]+(?:/[^/]+)?\.git/info/lfs/objects/batch")


def takes_body(path: str) -> bool:
    """The paths of this module whose requests carry a body (the app reads no other body outside /api)."""
    return path.startswith(UPLOAD_PREFIX + "/") or _BATCH_PATH.fullmatch(path) is not None


def _signature(secret: bytes, oid: str, size: int, expires: int) -> str:
    return hmac.new(secret, f"{oid}:{size}:{expires}".encode(), hashlib.sha256).hexdigest()


def _granted_size(app: Flask, path: str) -> int | None:
    """The size a signed upload path allows, or None when the path is not one, or forged, or stale."""
    m = _UPLOAD_PATH.fullmatch(path)
    if m is None:
        return None
    oid, size, expires, signature = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
    wanted = _signature(app_state(app)[_SECRET], oid, size, expires)
    if not hmac.compare_digest(wanted, signature) or expires < time.time():
        return None
    return size


def _object_limit() -> int:
    return current_app.config.get(MAX_OBJECT_BYTES, DEFAULT_MAX_OBJECT)


def _upload_action(oid: str, size: int) -> dict[str, Any]:
    expires = int(time.time()) + UPLOAD_TTL_S
    signature = _signature(app_state()[_SECRET], oid, size, expires)
    return {"upload": {"href": f"{hub_url()}{UPLOAD_PREFIX}/{oid}/{size}/{expires}/{signature}",
                       "expires_in": UPLOAD_TTL_S}}


def _answer(item: Any) -> dict[str, Any]:
    """The batch answer for one requested object: no action, an upload action, or its error."""
    if not isinstance(item, dict) or not is_digest(item.get("oid")):
        raise ApiError(codes.INVALID_FIELD, "each object is {oid: 64 lowercase hex digits of a sha256, size}")
    oid, size = item["oid"], item.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ApiError(codes.INVALID_FIELD, f"object {oid}: size must be a count of bytes")
    limit = _object_limit()
    if size == 0 or size > limit:
        why = "is empty (commit it inline)" if size == 0 else f"is over this hub's limit of {limit} bytes"
        row = codes.EMPTY_OBJECT if size == 0 else codes.TOO_LARGE
        return {"oid": oid, "size": size, "error": {"code": row.http_status, "message": f"object {oid} {why}"}}
    registry = app_state()["registry"]
    if registry.store.has(oid) and registry.object_path(oid).stat().st_size == size:
        return {"oid": oid, "size": size}
    return {"oid": oid, "size": size, "authenticated": True, "actions": _upload_action(oid, size)}


@repo_route(bp, "/{repo}.git/info/lfs/objects/batch", methods=["POST"])
def lfs_batch(repo_id: str):
    authorize(WRITE)
    validate_name(repo_id)
    body = json_body()
    if body.get("operation") != "upload":
        raise ApiError(codes.UNSUPPORTED_OPERATION,
                       "this hub's LFS batch API takes uploads; download files through /resolve/")
    transfers = body.get("transfers", ["basic"])
    if not isinstance(transfers, list) or "basic" not in transfers:
        raise ApiError(codes.UNSUPPORTED_TRANSFER, "this hub speaks the basic LFS transfer only")
    if body.get("hash_algo", "sha256") != "sha256":
        raise ApiError(codes.UNSUPPORTED_HASH, "objects are named by sha256")
    objects = body.get("objects")
    if not isinstance(objects, list) or not 1 <= len(objects) <= _MAX_OBJECTS:
        raise ApiError(codes.INVALID_FIELD, f"'objects' lists 1 to {_MAX_OBJECTS} objects")
    answer = {"transfer": "basic", "hash_algo": "sha256", "objects": [_answer(o) for o in objects]}
    response = jsonify(answer)
    response.mimetype = _LFS_JSON
    return response


@bp.put(f"{UPLOAD_PREFIX}/<oid>/<int:size>/<int:expires>/<signature>")
def lfs_upload(oid: str, size: int, expires: int, signature: str):
    if _granted_size(current_app, request.path) != size:
        raise ApiError(codes.INVALID_UPLOAD_LINK,
                       "this upload link is not valid here or has expired: ask the batch API again")
    if request.content_length != size:
        raise ApiError(codes.LENGTH_MISMATCH,
                       f"the upload link is for {size} bytes: send exactly those, with a Content-Length")
    stored = app_state()["registry"].put_object(request.stream, oid)
    if stored.size != size:  # only reachable if the body ended early and still hashed right
        raise ApiError(codes.SHORT_BODY, f"received {stored.size} bytes, expected {size}")
    return jsonify({"oid": oid, "size": size})


def _body_limit(app: Flask, method: str, path: str, headers: Mapping[str, str]) -> int | None:
    """A signed upload may send its size and no more (and needs a Content-Length); forged, stale
    or chunked ones send nothing. A batch request, JSON, needs a write token, as /api writes do."""
    if _BATCH_PATH.fullmatch(path):
        return write_body_limit(app, headers, app.config.get(MAX_JSON_BYTES, DEFAULT_MAX_JSON))
    if not path.startswith(UPLOAD_PREFIX + "/"):
        return None
    if method != "PUT" or "content-length" not in headers:
        return 0
    return _granted_size(app, path) or 0


@bp.record_once
def _install(state) -> None:
    app = state.app
    app_state(app)[_SECRET] = secrets.token_bytes(32)
    add_gate(app, lambda method, path, headers: _body_limit(app, method, path, headers))
