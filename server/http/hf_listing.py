"""What ``huggingface_hub`` asks about repos and accounts: ``list_models``, ``list_repo_refs``,
``list_repo_commits`` and ``whoami`` (``GET /api/whoami-v2``, which ``hf auth login`` calls).

The registry's words map onto git's: the one branch is ``main`` (the newest version), the tags are
the registry's tags (``latest`` is ``main`` itself, so it is not repeated), and every version is a
commit whose id is its digest's first 40 hex digits, newest first. Lists come a page at a time with
the Hub's ``Link: <...>; rel="next"`` header, which the client follows.
"""

from __future__ import annotations

from typing import Any, Iterator
from urllib.parse import urlencode

from flask import Blueprint, jsonify, request

from adapterhub.refs import LATEST
from adapterhub.registry import AdapterVersion, LocalRegistry

from .auth import READ, authorize, check_credentials
from .integers import query_count
from .hf_compat import commit_id, model_tags, repo_head, repo_info
from .hf_errors import add_error_header
from .hf_repo_id import hub_url, repo_route
from .registry_api import MAX_PAGE
from .state import app_state

__all__ = ["bp"]

bp = Blueprint("hf_listing", __name__)
add_error_header(bp)

_CURSOR = "cursor"


def _registry() -> LocalRegistry:
    return app_state()["registry"]


def _page_size() -> int:
    value = query_count(request.args.get("limit") or None, "limit")
    return min(value, MAX_PAGE) if value else MAX_PAGE


def _paged(items: list[dict[str, Any]], next_cursor: str | None):
    """A JSON list answer, with the Hub's ``Link`` to the next page when there is one."""
    response = jsonify(items)
    if next_cursor is not None:
        args = [(k, v) for k, v in request.args.items(multi=True) if k != _CURSOR] + [(_CURSOR, next_cursor)]
        response.headers["Link"] = f'<{hub_url()}{request.path}?{urlencode(args)}>; rel="next"'
    return response


def _matches(v: AdapterVersion, filters: list[str], author: str | None, search: str | None) -> bool:
    tags = set(model_tags(v))
    return (all(f in tags for f in filters)
            and (author is None or v.name.partition("/")[0] == author and "/" in v.name)
            and (search is None or search.lower() in v.name.lower()))


@bp.get("/api/models")
def list_models():
    """One page of repos (each name's newest version), filtered by tags, author (the ``org/`` part)
    and a search in the id; the page reads at most ``limit`` versions of the index."""
    authorize(READ)
    args = request.args
    size = _page_size()
    found = _registry().list(tag=LATEST, limit=size + 1, after=args.get(_CURSOR) or None)
    more, found = len(found) > size, found[:size]
    filters = [f for f in args.getlist("filter") if f]
    hits = [v for v in found if _matches(v, filters, args.get("author") or None, args.get("search") or None)]
    return _paged([repo_info(v) for v in hits], found[-1].ref if more else None)


def _versions(registry: LocalRegistry, name: str) -> Iterator[AdapterVersion]:
    """Every version of ``name``, oldest first, read a page at a time."""
    after = None
    while True:
        page = registry.list(name=name, limit=MAX_PAGE, after=after)
        yield from page
        if len(page) < MAX_PAGE:
            return
        after = page[-1].ref


def _ref(kind: str, name: str, v: AdapterVersion) -> dict[str, str]:
    return {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": commit_id(v)}


@repo_route(bp, "/api/models/{repo}/refs", methods=["GET"])
def list_refs(repo_id: str):
    head = repo_head(repo_id, "main")
    tags = [] if head is None else [
        _ref("tags", tag, v) for v in _versions(_registry(), repo_id) for tag in v.tags if tag != LATEST
    ]
    answer: dict[str, Any] = {
        "branches": [] if head is None else [_ref("heads", "main", head)],
        "converts": [],
        "tags": sorted(tags, key=lambda t: t["name"]),
    }
    if request.args.get("include_prs"):
        answer["pullRequests"] = []
    return jsonify(answer)


def _commit(v: AdapterVersion) -> dict[str, Any]:
    title = v.ref + (f" ({', '.join(v.tags)})" if v.tags else "")
    return {"id": commit_id(v), "authors": [{"user": "adapterhub"}], "date": v.created, "title": title,
            "message": v.description}


@repo_route(bp, "/api/models/{repo}/commits/<path:revision>", methods=["GET"])
def list_commits(repo_id: str, revision: str):
    """The versions up to the one ``revision`` names, newest first, a page of ``MAX_PAGE`` at a time."""
    head = repo_head(repo_id, revision)
    if head is None:
        return jsonify([])
    start = query_count(request.args.get(_CURSOR, "0"), "cursor")
    history = [v for v in _versions(_registry(), repo_id) if v.version <= head.version][::-1]
    page = history[start:start + MAX_PAGE]
    more = start + MAX_PAGE < len(history)
    return _paged([_commit(v) for v in page], str(start + MAX_PAGE) if more else None)


@bp.get("/api/whoami-v2")
def whoami():
    """The token's account: its name and role ("read" or "write"); 401 without a token the hub knows."""
    record = check_credentials(app_state()["tokens"], request.headers.get("Authorization"), READ, required=True)
    assert record is not None  # required=True raises instead
    name = record.name or f"token-{record.id}"
    return jsonify({
        "type": "user",
        "id": record.id,
        "name": name,
        "fullname": name,
        "email": None,
        "emailVerified": False,
        "isPro": False,
        "orgs": [],
        "auth": {"type": "access_token", "accessToken": {"displayName": name, "role": record.scope,
                                                        "createdAt": record.created}},
    })
