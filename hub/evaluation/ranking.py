"""Leaderboards from stored evaluation results: per data file, the versions ranked by exact match, then ROUGE-L.

``adapterhub eval`` stores ``eval.<data sha256>.<metric>`` in every version it measured (and the
bare base's results as ``base_<metric>`` when the base was measured in the same run). Only
results on the same data compare, so a task gets one board per data digest; the hub's page shows
them per task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

from .compare import BASE_REF

__all__ = ["Standing", "Leaderboard", "leaderboards"]

_RANKED_BY = ("exact_match", "rouge_l")


@dataclass(frozen=True)
class Standing:
    ref: str
    adapter_type: str
    exact_match: float
    rouge_l: float


@dataclass(frozen=True)
class Leaderboard:
    data_sha256: str  # 64 hex
    rows: int | None
    standings: tuple[Standing, ...]  # best first


def _results(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """digest -> {metric: value} of the ``eval.`` entries of one version's metrics."""
    out: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "eval" and isinstance(value, (int, float)) and math.isfinite(value):
            out.setdefault(parts[1], {})[parts[2]] = float(value)
    return out


def _standing(ref: str, kind: str, values: dict[str, float], prefix: str = "") -> Standing | None:
    found = [values.get(prefix + m) for m in _RANKED_BY]
    if any(v is None for v in found):
        return None
    return Standing(ref, kind, *found)


def leaderboards(versions: Iterable[Any]) -> list[Leaderboard]:
    """One board per data digest the versions were evaluated on, most entries first; the bare base
    joins a board when some version recorded its results there."""
    boards: dict[str, dict[str, Standing]] = {}
    rows: dict[str, int] = {}
    for v in versions:
        for digest, values in _results(v.metrics).items():
            board = boards.setdefault(digest, {})
            own = _standing(v.ref, v.adapter_type, values)
            if own is not None:
                board[v.ref] = own
            base = _standing(BASE_REF, "base", values, prefix="base_")
            if base is not None:
                board.setdefault(BASE_REF, base)
            if "rows" in values:
                rows[digest] = int(values["rows"])
    ranked = [Leaderboard(digest, rows.get(digest),
                          tuple(sorted(board.values(), key=lambda s: (-s.exact_match, -s.rouge_l, s.ref))))
              for digest, board in boards.items() if board]
    return sorted(ranked, key=lambda b: (-len(b.standings), b.data_sha256))
