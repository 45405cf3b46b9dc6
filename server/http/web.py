"""A read-only page at ``/`` for people: the hub's adapters by base model and task.

Rendered by the server from one Jinja template (no front-end build, no JavaScript): per task, the
adapters ranked by their ``adapterhub eval`` results on each data file (the bare base, prompt
templates, soft prompts and LoRAs side by side); for each adapter its versions with tags, type,
size, metrics and the exact command that pulls it from this hub.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from flask import Blueprint, render_template, request

from adapterhub.evaluation.ranking import leaderboards
from adapterhub.registry import AdapterVersion

from .auth import READ, authorize
from .state import app_state

__all__ = ["bp"]

bp = Blueprint("web", __name__, template_folder="templates")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return str(n)


def _groups(versions: list[AdapterVersion]) -> list[dict[str, Any]]:
    """[{base, fingerprint, tasks: [{task, leaderboards, adapters: [{name, versions (newest first)}]}]}], sorted;
    a task's leaderboards rank its versions by their stored ``adapterhub eval`` results."""
    tree: dict[tuple[str, str], dict[str, dict[str, list[AdapterVersion]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for v in versions:
        key = (v.base.get("name") or "unknown base", v.base.get("fingerprint") or "")
        tree[key][v.task or "(no task)"][v.name].append(v)
    return [
        {
            "base": base,
            "fingerprint": fp,
            "tasks": [
                {
                    "task": task,
                    "leaderboards": leaderboards(v for vs in adapters.values() for v in vs),
                    "adapters": [
                        {"name": name, "versions": sorted(vs, key=lambda v: -v.version)}
                        for name, vs in sorted(adapters.items())
                    ],
                }
                for task, adapters in sorted(tasks.items())
            ],
        }
        for (base, fp), tasks in sorted(tree.items())
    ]


# Versions per page: the page reads one page of the index, however many versions the hub holds.
PAGE = 500


@bp.get("/")
def index():
    authorize(READ)
    after = request.args.get("after") or None
    versions = app_state()["registry"].list(limit=PAGE + 1, after=after)
    more = len(versions) > PAGE
    versions = versions[:PAGE]
    return render_template(
        "hub.html",
        groups=_groups(versions),
        count=len({v.name for v in versions}),
        hub_url=request.host_url.rstrip("/"),
        size=_size,
        next_page=f"{versions[-1].name}@{versions[-1].version}" if more else None,
    )
