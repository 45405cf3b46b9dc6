"""Hub repo ids in URLs: ``name`` or ``org/name``, matched by two explicit rules, never a ``path``.

A ``path`` converter would swallow the ``/resolve/...`` or ``/refs`` after an id, and an id with
more slashes would reach the views; two rules (one segment, two segments) keep every id exactly
what ``validate_name`` accepts. Where a URL reads both ways (an ``org/name`` whose second part is a
route word, such as ``a/refs``), Werkzeug prefers the one-part id's static route.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from flask import Blueprint, request

from adapterhub import error_codes as codes
from adapterhub.error_codes import WireCode
from adapterhub.echo import echo
from adapterhub.errors import AdapterHubError
from adapterhub.refs import validate_name

from .errors import ApiError

__all__ = ["DEFAULT_BRANCH", "REPO", "repo_route", "checked_repo_id", "hub_url", "hf_not_found", "repo_not_found"]

DEFAULT_BRANCH = "main"
REPO = "{repo}"  # where a rule takes the repo id
_JOINED: dict[Callable[..., Any], Callable[..., Any]] = {}


def repo_route(bp: Blueprint, rule: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``view(repo_id, **rest)`` under ``rule`` with ``{repo}`` as ``name`` and as ``org/name``."""
    if REPO not in rule:
        raise ValueError(f"rule {rule!r} has no {REPO}")

    def register(view: Callable[..., Any]) -> Callable[..., Any]:
        joined = _JOINED.get(view)
        if joined is None:  # one view function per endpoint, however many rules lead to it
            @functools.wraps(view)
            def joined(name: str, org: str | None = None, **rest: Any) -> Any:
                return view(f"{org}/{name}" if org is not None else name, **rest)

            _JOINED[view] = joined
        for part in ("<name>", "<org>/<name>"):
            bp.add_url_rule(rule.replace(REPO, part), endpoint=view.__name__, view_func=joined, **options)
        return view

    return register


def hf_not_found(row: WireCode, message: str) -> ApiError:
    """A 404 of the Hugging Face protocol: ``huggingface_hub`` picks its exception class
    (``RepositoryNotFoundError``, ``RevisionNotFoundError``, ...) by the ``X-Error-Code`` header."""
    return ApiError(row, message, headers={"X-Error-Code": row.code})


def repo_not_found(repo_id: str) -> ApiError:
    return hf_not_found(codes.REPO_NOT_FOUND, f"repository {echo(repo_id)} not found")


def checked_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is a valid adapter name; a 404 ``RepoNotFound`` otherwise (no such repo can exist)."""
    try:
        return validate_name(repo_id)
    except AdapterHubError:
        raise repo_not_found(repo_id) from None


def hub_url() -> str:
    """This hub's address as the client reached it (what ``HF_ENDPOINT`` says)."""
    return request.host_url.rstrip("/")
