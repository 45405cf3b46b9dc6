"""What one version's index record may hold beyond its adapter's settings: finite metrics under
bounded names, and a bounded size for the whole record, all of it standard JSON.

The index holds every record inline and readers load them whole (``list --json``, the hub's page and
API), so, as for the settings (``peft_format.config_values``), size is measured as the JSON the
index stores and refused past a bound. A metric is a number someone compares: NaN and Infinity
compare with nothing, and JSON has no spelling for them (``list --json`` would print ``NaN``).
Metrics merge over time (``set_metrics``), so their bound holds for the merged result.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Mapping

from .echo import echo
from .errors import InvalidAdapter, InvalidName

__all__ = ["MAX_METRICS", "MAX_METRIC_NAME_CHARS", "MAX_INDEX_METRICS_BYTES", "MAX_INDEX_RECORD_BYTES",
           "check_metrics", "check_record"]

MAX_METRICS = 1024
MAX_METRIC_NAME_CHARS = 200  # eval.<12 hex>.<metric> and the like, with room to spare
MAX_INDEX_METRICS_BYTES = 64 << 10  # what one version's metrics may add to the index, as settings may
MAX_INDEX_RECORD_BYTES = 1 << 20  # a whole record: settings, shapes, metrics, lineage, training
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_metric(name: Any, value: Any) -> None:
    if not isinstance(name, str) or not 0 < len(name) <= MAX_METRIC_NAME_CHARS or _CONTROL.search(name):
        raise InvalidName(f"invalid metric name {echo(str(name), 60)}: one line of 1 to {MAX_METRIC_NAME_CHARS} "
                          "characters")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidName(f"invalid metric {echo(name, 60)}={echo(str(value), 60)}: metrics are name -> finite "
                          "number")


def check_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """``metrics`` as a version records them (a copy), or ``InvalidName`` naming the first bad
    entry or the bound that is passed."""
    out = dict(metrics or {})
    if len(out) > MAX_METRICS:
        raise InvalidName(f"{len(out)} metrics: a version holds at most {MAX_METRICS}")
    for name, value in out.items():
        _check_metric(name, value)
    size = len(json.dumps(out))
    if size > MAX_INDEX_METRICS_BYTES:
        raise InvalidName(f"the metrics take {size} bytes in the registry index, over {MAX_INDEX_METRICS_BYTES}")
    return out


def check_record(record: Mapping[str, Any]) -> None:
    """A record the index may store: standard JSON (no NaN or Infinity anywhere, lineage and
    training included) of at most ``MAX_INDEX_RECORD_BYTES``; ``InvalidAdapter`` otherwise."""
    try:
        size = len(json.dumps(record, allow_nan=False))
    except ValueError:
        raise InvalidAdapter("the version's record holds NaN or Infinity (in its lineage or training record): "
                             "JSON numbers are finite") from None
    if size > MAX_INDEX_RECORD_BYTES:
        raise InvalidAdapter(f"the version's record takes {size} bytes in the registry index, over "
                             f"{MAX_INDEX_RECORD_BYTES} (its lineage or training record is too long)")
