"""Creating and deleting Hub repos (``HfApi.create_repo`` / ``delete_repo``) on a registry of versions.

A repo is an adapter name, and the registry knows a name only once it has a version. The Hub has
empty repos, and clients rely on them: ``push_to_hub`` creates the repo, then reads its model card
and expects "no such file", not "no such repo". So a created repo without versions is remembered in
``hf-repos.json`` beside the index (names only; rewritten whole under a lock) until its first commit
lands or it is deleted. It holds no content: nothing in the registry's index or objects depends on
it, and ``verify`` and ``gc`` need not know it.

``delete_repo`` removes every version of the name through ``LocalRegistry.remove`` (the path
``adapterhub rm NAME --all`` takes); the objects stay until ``gc``, as after any removal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flask import Blueprint, jsonify

from adapterhub import error_codes as codes
from adapterhub.atomic_file import write_json_atomic
from adapterhub.echo import echo
from adapterhub.errors import InvalidName
from adapterhub.file_lock import file_lock
from adapterhub.refs import validate_name
from adapterhub.registry import LocalRegistry

from .auth import WRITE, authorize
from .errors import ApiError
from .hf_errors import add_error_header
from .hf_repo_id import hub_url, repo_not_found
from .registry_api import json_body
from .state import app_state

__all__ = ["bp", "EmptyRepos", "empty_repos", "repo_exists"]

bp = Blueprint("hf_repos", __name__)
add_error_header(bp)

REPOS_FILE = "hf-repos.json"
_MAX_EMPTY = 10_000  # created repos still without a version: the file stays small


class EmptyRepos:
    """The names created through the Hub protocol that have no version yet."""

    def __init__(self, registry_root: Path) -> None:
        self.path = Path(registry_root) / REPOS_FILE

    def names(self) -> frozenset[str]:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return frozenset()
        return frozenset(n for n in doc.get("repos", []) if isinstance(n, str))

    def __contains__(self, name: str) -> bool:
        return name in self.names()

    def add(self, name: str) -> None:
        with file_lock(self.path.with_suffix(".lock")):
            names = self.names()
            if len(names) >= _MAX_EMPTY:
                raise ApiError(codes.TOO_MANY_REPOS,
                               f"this hub holds {_MAX_EMPTY} empty repos already: commit to them or delete some")
            self._write(names | {name})

    def discard(self, name: str) -> None:
        if name not in self.names():
            return
        with file_lock(self.path.with_suffix(".lock")):
            self._write(self.names() - {name})

    def _write(self, names: frozenset[str]) -> None:
        write_json_atomic(self.path, {"repos": sorted(names)})


def empty_repos() -> EmptyRepos:
    return EmptyRepos(app_state()["registry"].root)


def repo_exists(registry: LocalRegistry, name: str) -> bool:
    """A repo exists when its name has a version, or was created and is still empty."""
    return bool(registry.list(name=name, limit=1)) or name in empty_repos()


def _repo_id_of(body: dict[str, Any]) -> str:
    """``organization/name`` from create/delete bodies, checked; only model repos live here."""
    repo_type = body.get("type")
    if repo_type not in (None, "model"):
        raise ApiError(codes.UNSUPPORTED_REPO_TYPE,
                       f"this hub holds model repos (adapters) only, not {echo(str(repo_type))}")
    name, org = body.get("name"), body.get("organization")
    if not isinstance(name, str) or not (org is None or isinstance(org, str)):
        raise InvalidName("give the repo's 'name' (and 'organization') as strings")
    return validate_name(f"{org}/{name}" if org else name)


@bp.post("/api/repos/create")
def create_repo():
    authorize(WRITE)
    body = json_body()
    repo_id = _repo_id_of(body)
    if body.get("private") is True or body.get("visibility") not in (None, "public"):
        raise ApiError(codes.UNSUPPORTED_VISIBILITY,
                       "this hub has no private repos: who may read is set for the whole hub (read tokens)")
    url = f"{hub_url()}/{repo_id}"
    if repo_exists(app_state()["registry"], repo_id):
        # The Hub's 409 carries the url too: create_repo(exist_ok=True) returns it from this answer.
        answer = ApiError(codes.REPO_EXISTS, f"repository {repo_id} already exists").to_dict() | {"url": url}
        return jsonify(answer), 409
    empty_repos().add(repo_id)
    return jsonify({"url": url, "name": repo_id, "id": repo_id})


@bp.delete("/api/repos/delete")
def delete_repo():
    authorize(WRITE)
    repo_id = _repo_id_of(json_body())
    registry: LocalRegistry = app_state()["registry"]
    if not repo_exists(registry, repo_id):
        raise repo_not_found(repo_id)
    if registry.list(name=repo_id, limit=1):
        registry.remove(repo_id, all_versions=True)
    empty_repos().discard(repo_id)
    return jsonify({})
