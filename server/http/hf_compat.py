"""The Hugging Face Hub download protocol, read side: every adapter is a model repo.

With ``HF_ENDPOINT`` pointing here, ``huggingface_hub`` (``hf_hub_download``, ``snapshot_download``)
and everything built on it (``PeftModel.from_pretrained``) download adapters unchanged. The repo id
is the adapter name (``name`` or ``org/name``); a repo created empty (``hf_repos``) has no files
until its first commit. A revision is a tag (``main`` means ``latest`` unless a tag is called
``main``), a version number, or a commit id. A version's commit id is the first 40 hex digits of
its manifest digest, so it looks like a git commit to the client and stays unique per content;
any prefix of at least 6 digits, with or without ``sha256:``, also resolves. File ETags are the
files' sha256 (what the client names cached blobs by); no redirects, no Xet headers.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, jsonify

from adapterhub import error_codes as codes
from adapterhub.echo import echo
from adapterhub.errors import AdapterNotFound, AdapterHubError
from adapterhub.integers import parse_decimal
from adapterhub.refs import LATEST, Reference, validate_tag
from adapterhub.registry import AdapterVersion, LocalRegistry

from .auth import READ, authorize
from .hf_errors import add_error_header
from .hf_repo_id import DEFAULT_BRANCH, checked_repo_id, hf_not_found, repo_not_found, repo_route
from .hf_repos import empty_repos
from .object_download import object_response
from .state import app_state

__all__ = ["bp", "commit_id", "model_tags", "repo_head", "repo_info"]

bp = Blueprint("hf_compat", __name__)  # registry_api hides the registry's path in its errors, app-wide
add_error_header(bp)

_HEX = re.compile(r"^(?:sha256:)?([0-9a-f]{6,64})$")
_LFS_POINTER_SIZE = 134  # what a git-lfs pointer file of a sha256 takes; the client only records it


def commit_id(v: AdapterVersion) -> str:
    return v.digest[:40]


def _registry() -> LocalRegistry:
    return app_state()["registry"]


def _candidates(name: str, revision: str) -> list[Reference]:
    """Readings of ``revision``, most specific first: a tag, a version number, a digest, ``main``."""
    out: list[Reference] = []
    try:
        out.append(Reference(name, tag=validate_tag(revision)))
    except AdapterHubError:
        pass
    version = parse_decimal(revision)
    if version:
        out.append(Reference(name, version=version))
    m = _HEX.match(revision)
    if m:
        out.append(Reference(name, digest=m.group(1)))
    if revision == DEFAULT_BRANCH:
        out.append(Reference(name, tag=LATEST))
    return out


def repo_head(repo_id: str, revision: str) -> AdapterVersion | None:
    """The version ``revision`` names in the repo; ``None`` for ``main`` of a repo created empty.
    404 ``RepoNotFound`` / ``RevisionNotFound`` as the Hub answers them."""
    authorize(READ)
    registry = _registry()
    checked_repo_id(repo_id)
    if not registry.list(name=repo_id, limit=1):
        if repo_id in empty_repos():
            if revision == DEFAULT_BRANCH:
                return None
            raise hf_not_found(codes.REVISION_NOT_FOUND, f"{repo_id} is empty: it has no revision {echo(revision)}")
        raise repo_not_found(repo_id)
    for ref in _candidates(repo_id, revision):
        try:
            return registry.resolve(ref)
        except AdapterNotFound:
            continue
    raise hf_not_found(codes.REVISION_NOT_FOUND, f"{repo_id} has no revision {echo(revision)}")


def _with_commit(response, v: AdapterVersion | None):
    if v is not None:
        response.headers["X-Repo-Commit"] = commit_id(v)
    return response


def model_tags(v: AdapterVersion) -> list[str]:
    """The Hub tags of a version, which ``list_models(filter=...)`` matches."""
    base = v.base.get("name")
    return (["peft", v.adapter_type] + ([f"task:{v.task}"] if v.task else [])
            + ([f"base_model:{base}"] if base else []))


def _empty_info(repo_id: str) -> dict[str, Any]:
    return {"id": repo_id, "modelId": repo_id, "private": False, "disabled": False, "gated": False,
            "downloads": 0, "likes": 0, "tags": [], "siblings": []}


def repo_info(v: AdapterVersion) -> dict[str, Any]:
    return {
        "_id": v.digest[:24],
        "id": v.name,
        "modelId": v.name,
        "sha": commit_id(v),
        "private": False,
        "disabled": False,
        "gated": False,
        "downloads": 0,
        "likes": 0,
        "library_name": "peft",
        "tags": model_tags(v),
        "lastModified": v.created,
        "createdAt": v.created,
        "cardData": {"base_model": v.base.get("name"), "library_name": "peft"},
        "siblings": [{"rfilename": f.path, "size": f.size} for f in v.files],
        "usedStorage": v.total_size,
    }


@repo_route(bp, "/api/models/{repo}", methods=["GET"])
@repo_route(bp, "/api/models/{repo}/revision/<path:revision>", methods=["GET"])
def model_info(repo_id: str, revision: str = DEFAULT_BRANCH):
    v = repo_head(repo_id, revision)
    return _with_commit(jsonify(repo_info(v) if v is not None else _empty_info(repo_id)), v)


@repo_route(bp, "/api/models/{repo}/tree/<revision>", methods=["GET"])
@repo_route(bp, "/api/models/{repo}/tree/<revision>/<path:path_in_repo>", methods=["GET"])
def model_tree(repo_id: str, revision: str, path_in_repo: str = ""):
    v = repo_head(repo_id, revision)
    path_in_repo = path_in_repo.strip("/")
    if path_in_repo:  # the repo is flat: no folders to list
        raise hf_not_found(codes.ENTRY_NOT_FOUND, f"{repo_id}@{revision} has no folder {echo(path_in_repo)}")
    entries = [
        {
            "type": "file",
            "path": f.path,
            "size": f.size,
            "oid": f.sha256,
            "lfs": {"oid": f.sha256, "size": f.size, "pointerSize": _LFS_POINTER_SIZE},
        }
        for f in (v.files if v is not None else ())
    ]
    return _with_commit(jsonify(entries), v)


@repo_route(bp, "/{repo}/resolve/<revision>/<path:filename>", methods=["GET", "HEAD"])
def resolve_file(repo_id: str, revision: str, filename: str):
    v = repo_head(repo_id, revision)
    try:
        if v is None:
            raise AdapterNotFound(f"{repo_id} is empty")
        entry = v.file(filename)
    except AdapterNotFound:
        err = hf_not_found(codes.ENTRY_NOT_FOUND, f"{repo_id}@{revision} has no file {echo(filename)}")
        if v is not None:
            err.headers["X-Repo-Commit"] = commit_id(v)
        raise err from None
    headers = {
        "X-Linked-Size": str(entry.size),
        "X-Linked-ETag": f'"{entry.sha256}"',
        "Content-Disposition": f'attachment; filename="{filename}"',  # a stored file name: plain, no quotes
    }
    return _with_commit(object_response(_registry(), entry.sha256, headers), v)
