"""The registry over HTTP (``/api/...``): what ``hub.remote.RemoteRegistry`` speaks.

Push is three steps, as in OCI registries, so shared bytes cross the network once:

1. ``POST /api/objects/check`` with the manifest's digests answers which ones the hub lacks;
2. ``PUT /api/objects/sha256/<digest>`` uploads each missing object; the bytes are hashed on the
   way into a temporary file and kept only if they hash to the digest in the URL;
3. ``POST /api/adapters/<name>/versions`` commits the manifest: every object must be present with
   the declared size, the files must form a valid PEFT folder (and fit the base when the hub can
   read it), and the version lands through ``LocalRegistry.push``, i.e. one atomic index write.

Objects are named by digest and file names are checked against a strict alphabet, and a base
named by a filesystem path is refused unless the app allows it (``ALLOW_LOCAL_BASES``), so no
request can name a path outside the registry folder. Downloads (``GET /api/objects/sha256/<digest>``)
honour ``Range`` so interrupted pulls resume, and are verified as ``object_download`` serves them.

Writes are refused from their headers before their bodies are read (``header_gate``): a request
without a write token, or declaring more bytes than the route takes, costs the hub its headers
only, and a chunked body is cut off at the route's limit. No answer names a path of the hub's
machine: error messages read "this hub" for the registry folder (on every route of the app) and
"the pushed adapter" for the folder a commit is checked in.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import EllipsisType
from typing import Any, Mapping

from flask import Blueprint, Flask, Response, current_app, jsonify, request

from adapterhub import error_codes as codes
from adapterhub.adapter_folder import read_adapter_folder
from adapterhub.echo import echo
from adapterhub.errors import AdapterHubError, InvalidAdapter, InvalidName
from adapterhub.refs import validate_name
from adapterhub.registry import AdapterVersion, LocalRegistry
from adapterhub.remote import check_file_name
from adapterhub.serving_config import HUB_MAX_OBJECT_BYTES

from .auth import READ, WRITE, authorize, check_credentials
from .errors import ApiError
from .header_gate import add_gate
from .integers import query_count
from .hf_repo_id import repo_route
from .json_body import json_object
from .object_download import object_response
from .state import app_state

__all__ = ["bp", "MAX_OBJECT_BYTES", "MAX_JSON_BYTES", "MAX_COMMIT_BYTES", "ALLOW_LOCAL_BASES", "hide_registry_path",
           "DEFAULT_MAX_OBJECT", "DEFAULT_MAX_JSON", "json_body", "push_folder", "write_body_limit"]

bp = Blueprint("registry_api", __name__, url_prefix="/api")

MAX_OBJECT_BYTES = "MAX_OBJECT_BYTES"  # app.config key: largest object one PUT may carry
MAX_JSON_BYTES = "MAX_JSON_BYTES"  # app.config key: largest JSON request body
# app.config key: largest Hugging Face commit body (its small files ride inline, base64, see hf_commit)
MAX_COMMIT_BYTES = "MAX_COMMIT_BYTES"
# app.config key: let pushes name their base by a folder on the hub's machine (one-machine setups);
# otherwise a request could make the hub read config and headers from any folder it can see.
ALLOW_LOCAL_BASES = "ALLOW_LOCAL_BASES"
DEFAULT_MAX_OBJECT = HUB_MAX_OBJECT_BYTES
DEFAULT_MAX_JSON = 1 << 20
DEFAULT_MAX_COMMIT = 64 << 20
# The Hugging Face commit route (hf_commit), the one JSON-ish write that carries file bytes.
_HF_COMMIT = re.compile(r"/api/models/[^/]+(?:/[^/]+)?/commit/[^/]+")
MAX_FILES = 32  # files a version may hold (also through the HF commit route)
MAX_PAGE = 1000  # most versions one GET /api/versions answers; `next` is the cursor of the rest
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def _registry() -> LocalRegistry:
    return app_state()["registry"]


def hide_registry_path(response: Response) -> Response:
    """Hub errors name the registry folder (they are written for local users); a hub's clients
    read "this hub" instead, so no error reveals where the hub keeps its files. ``create_app``
    registers it for every route of any app over a registry folder, serving or hub."""
    registry = app_state().get("registry")
    if response.status_code < 400 or response.mimetype != "application/json" or not isinstance(registry, LocalRegistry):
        return response
    try:
        doc = json.loads(response.get_data())
        message = doc["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return response
    if not isinstance(message, str):
        return response
    hidden = message
    for root in {str(registry.root), os.path.abspath(registry.root), os.path.realpath(registry.root)}:
        hidden = hidden.replace(root, "this hub")
    if hidden != message:
        doc["error"]["message"] = hidden
        response.set_data(json.dumps(doc))
    return response



def is_digest(value: Any) -> bool:
    """Whether ``value`` is a sha256 as objects are named: 64 lowercase hex digits."""
    return isinstance(value, str) and _DIGEST.fullmatch(value) is not None


def _check_digest(digest: Any) -> str:
    if not is_digest(digest):
        raise ApiError(codes.INVALID_DIGEST, f"invalid digest {echo(str(digest))}: 64 lowercase hex digits of a sha256")
    return digest


def _check_file_name(path: Any) -> str:
    try:
        return check_file_name(path)
    except InvalidName as e:
        raise ApiError(codes.INVALID_PATH, str(e)) from None


def json_body() -> dict[str, Any]:
    limit = current_app.config.get(MAX_JSON_BYTES, DEFAULT_MAX_JSON)
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(codes.TOO_LARGE, f"request body over {limit} bytes")
    return json_object()


def _field(body: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = body.get(key, default)
    if value is not default and not isinstance(value, kind):
        raise ApiError(codes.INVALID_FIELD, f"field {echo(key)} has the wrong type")
    return value


# --- reading ---------------------------------------------------------------------------------


@bp.get("/versions")
def list_versions():
    authorize(READ)
    args = request.args
    limit = _count(args, "limit", MAX_PAGE)
    found = _registry().list(
        base=args.get("base") or None,
        task=args.get("task") or None,
        adapter_type=args.get("type") or None,
        name=args.get("name") or None,
        tag=args.get("tag") or None,
        limit=limit + 1,
        offset=_count(args, "offset", 0),
        after=args.get("after") or None,
    )
    more, found = len(found) > limit, found[:limit]
    return jsonify({"versions": [v.to_json() for v in found], "next": found[-1].ref if more else None})


def _count(args: Any, key: str, default: int) -> int:
    """A page parameter: a count, the page size at most MAX_PAGE (one answer stays bounded)."""
    value = query_count(args.get(key), key)
    if value is None:
        return default
    return min(value, MAX_PAGE) if key == "limit" else value


@bp.get("/versions/<path:ref>")
def show_version(ref: str):
    authorize(READ)
    return jsonify(_registry().resolve(ref).to_json())


@bp.get("/objects/sha256/<digest>")
def get_object(digest: str):
    authorize(READ)
    return object_response(_registry(), _check_digest(digest))


# --- push ------------------------------------------------------------------------------------


@bp.post("/objects/check")
def check_objects():
    authorize(WRITE)
    digests = _field(json_body(), "digests", list, [])
    if len(digests) > 1000:
        raise ApiError(codes.TOO_MANY, "at most 1000 digests per check")
    store = _registry().store
    return jsonify({"missing": [d for d in map(_check_digest, digests) if not store.has(d)]})


@bp.put("/objects/sha256/<digest>")
def put_object(digest: str):
    authorize(WRITE)
    _check_digest(digest)
    size = request.content_length
    if size is None:
        raise ApiError(codes.LENGTH_REQUIRED, "object uploads need a Content-Length")
    limit = current_app.config.get(MAX_OBJECT_BYTES, DEFAULT_MAX_OBJECT)
    if size > limit:
        raise ApiError(codes.TOO_LARGE, f"object of {size} bytes is over this hub's limit of {limit} bytes")
    stored = _registry().put_object(request.stream, digest)
    if stored.size != size:  # only reachable if the body ended early and still hashed right
        raise ApiError(codes.SHORT_BODY, f"received {stored.size} bytes, Content-Length said {size}")
    return jsonify({"digest": digest, "size": stored.size, "reused": stored.reused}), (200 if stored.reused else 201)


def _manifest(body: dict[str, Any]) -> list[dict[str, Any]]:
    files = _field(body, "files", list, None)
    if not files or len(files) > MAX_FILES:
        raise ApiError(codes.INVALID_MANIFEST, f"'files' must list 1 to {MAX_FILES} files")
    out, seen = [], set()
    for f in files:
        if not isinstance(f, dict) or isinstance(f.get("size"), bool) or not isinstance(f.get("size"), int):
            raise ApiError(codes.INVALID_MANIFEST, "each file is {path, sha256, size}")
        path = _check_file_name(f.get("path"))
        if path in seen:
            raise ApiError(codes.INVALID_MANIFEST, f"file {echo(path)} listed twice")
        seen.add(path)
        out.append({"path": path, "sha256": _check_digest(f.get("sha256")), "size": f["size"]})
    return out


def _check_objects(registry: LocalRegistry, files: list[dict[str, Any]]) -> None:
    """Every object of the manifest is stored, with the size the manifest gives."""
    missing = [f["sha256"] for f in files if not registry.store.has(f["sha256"])]
    if missing:
        raise ApiError(codes.OBJECTS_MISSING, f"upload these objects first: {', '.join(missing)}")
    for f in files:
        size = registry.object_path(f["sha256"]).stat().st_size
        if size != f["size"]:
            raise ApiError(codes.INVALID_MANIFEST, f"{f['path']}: object has {size} bytes, manifest says {f['size']}")


def _check_base(base: str | None) -> None:
    """Refuse a base named by a filesystem path unless the hub allows it (see ``ALLOW_LOCAL_BASES``)."""
    if base is None or current_app.config.get(ALLOW_LOCAL_BASES):
        return
    if base.startswith(("/", ".", "~")) or "\\" in base or ".." in base.split("/"):
        raise ApiError(codes.LOCAL_BASE,
                       f"base {echo(base)} is a path, which means nothing on a shared hub: name the base by its Hub id "
                       "(push with --base ORG/NAME)")


def _lineage(body: dict[str, Any]) -> list[dict[str, Any]]:
    lineage = _field(body, "lineage", list, [])
    if not all(isinstance(x, dict) for x in lineage):
        raise ApiError(codes.INVALID_FIELD, "'lineage' is a list of objects")
    return lineage


@repo_route(bp, "/adapters/{repo}/versions", methods=["POST"])
def commit_version(name: str):
    authorize(WRITE)
    validate_name(name)
    body = json_body()
    files = _manifest(body)
    registry = _registry()
    _check_objects(registry, files)
    with registry.store.staged({f["path"]: f["sha256"] for f in files}) as folder:
        version = push_folder(
            registry,
            folder,
            name=name,
            task=_field(body, "task", str, ""),
            base=_field(body, "base", (str, type(None)), None),
            tags=_field(body, "tags", list, []),
            description=_field(body, "description", str, ""),
            metrics=_field(body, "metrics", dict, {}),
            lineage=_lineage(body),
            training=_field(body, "training", (dict, type(None)), None),
        )
    return jsonify(version.to_json()), 201


def push_folder(registry: LocalRegistry, folder: Path, *, name: str, base: str | None,
                on_latest: int | None | EllipsisType = ..., **metadata: Any) -> AdapterVersion:
    """Record a folder assembled on the hub as the next version of ``name``: the one commit path of
    the registry API and of Hugging Face commits, so both validate exactly as ``adapterhub push``
    does (``LocalRegistry.push``), plus the hub's own rules: no stray files, no base by local path.
    ``on_latest`` makes it a check-and-set on the head (``LocalRegistry.push_if_latest``)."""
    try:
        adapter = read_adapter_folder(folder)
        extra = sorted({p.name for p in folder.iterdir()} - set(adapter.files))
        if extra:
            raise InvalidAdapter(f"not part of a PEFT adapter folder: {', '.join(extra)}")
        _check_base(base or adapter.base_model)
        if on_latest is ...:
            return registry.push(folder, name=name, base=base, **metadata)
        return registry.push_if_latest(folder, on_latest, name=name, base=base, **metadata)
    except AdapterHubError as e:
        raise _without_folder(e, str(folder)) from None


def _without_folder(error: AdapterHubError, folder: str) -> AdapterHubError:
    """The same error, naming "the pushed adapter" instead of the hub's temporary folder."""
    message = str(error)
    if folder not in message:
        return error
    error.args = (message.replace(folder, "the pushed adapter"),) + error.args[1:]
    return error


# --- other writes ----------------------------------------------------------------------------


@bp.post("/tags")
def tag_version():
    authorize(WRITE)
    body = json_body()
    ref, tag = _field(body, "ref", str, None), _field(body, "tag", str, None)
    if ref is None or tag is None:
        raise InvalidName("give 'ref' and 'tag'")
    return jsonify(_registry().tag(ref, tag).to_json())


@bp.delete("/tags")
def untag_version():
    """Remove a tag, keeping its version: ``{"ref": "name:tag"}`` or ``{"ref": REF, "tag": TAG}``."""
    authorize(WRITE)
    body = json_body()
    ref, tag = _field(body, "ref", str, None), _field(body, "tag", (str, type(None)), None)
    if ref is None:
        raise InvalidName("give 'ref' (name:tag), or 'ref' and 'tag'")
    return jsonify(_registry().untag(ref, tag).to_json())


@bp.patch("/versions/<path:ref>/metrics")
def set_metrics(ref: str):
    authorize(WRITE)
    return jsonify(_registry().set_metrics(ref, json_body()).to_json())


@bp.delete("/versions/<path:ref>")
def remove_version(ref: str):
    authorize(WRITE)
    all_versions = request.args.get("all", "").lower() in ("1", "true", "yes")
    removed = _registry().remove(ref, all_versions=all_versions)
    return jsonify({"removed": [v.to_json() for v in removed]})


@bp.get("/verify")
def verify():
    authorize(WRITE)  # re-hashes every object: not for anonymous callers
    return jsonify(_registry().verify().to_dict())


# --- the header gate -------------------------------------------------------------------------

_BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def _body_limit(app: Flask, method: str, path: str, headers: Mapping[str, str]) -> int | None:
    """How many body bytes a hub write may send, decided from its headers (see ``header_gate``):
    0 when its token is missing or short of write scope, or a chunked object upload (which needs
    a Content-Length); otherwise the route's size limit. None for every other request."""
    if method not in _BODY_METHODS or not path.startswith(bp.url_prefix + "/"):
        return None
    if method == "PUT" and path.startswith(bp.url_prefix + "/objects/"):
        if "content-length" not in headers:
            return 0
        return write_body_limit(app, headers, app.config.get(MAX_OBJECT_BYTES, DEFAULT_MAX_OBJECT))
    if method == "POST" and _HF_COMMIT.fullmatch(path):
        return write_body_limit(app, headers, app.config.get(MAX_COMMIT_BYTES, DEFAULT_MAX_COMMIT))
    return write_body_limit(app, headers, app.config.get(MAX_JSON_BYTES, DEFAULT_MAX_JSON))


def write_body_limit(app: Flask, headers: Mapping[str, str], limit: int) -> int:
    """``limit`` for a request with a write token, 0 (no body read) for any other."""
    try:
        check_credentials(app_state(app)["tokens"], headers.get("authorization"), WRITE, required=True)
    except AdapterHubError:
        return 0
    return limit


@bp.record_once
def _install_gate(state) -> None:
    app = state.app
    add_gate(app, lambda method, path, headers: _body_limit(app, method, path, headers))
