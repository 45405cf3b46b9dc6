"""``GET /health`` and ``GET /metrics``: what the server holds and what it has done.

``/health`` is one JSON document for people and load balancers (base, quantization, memory,
resident adapters). ``/metrics`` is Prometheus text, written by hand (a few counters and
histograms do not justify a dependency): requests and tokens by adapter, latency and time to first
token, the adapter caches (hits, misses, evictions, load time), decode batch sizes and adapters
resident. Request-level figures are recorded by the OpenAI views into ``ServerMetrics``;
engine-level ones are read from the engine when scraped.
"""

from __future__ import annotations

import os
import threading
from bisect import bisect_left
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Iterable

from flask import Blueprint, Response, jsonify

from .state import app_state

if TYPE_CHECKING:
    from adapterhub.server.engine.adapters.cache_stats import CacheStats
    from adapterhub.server.engine.engine import Engine

__all__ = ["bp", "ServerMetrics", "Histogram", "render_metrics", "health_document"]

bp = Blueprint("health", __name__)

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    """Cumulative-bucket histogram with fixed bounds: constant memory however many observations."""

    def __init__(self, buckets: Iterable[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect_left(self.buckets, value)] += times
        self.total += value * times
        self.count += times

    def lines(self, name: str, labels: dict[str, str]) -> list[str]:
        out, running = [], 0
        for bound, n in zip(self.buckets + (float("inf"),), self.counts):
            running += n
            le = "+Inf" if bound == float("inf") else _num(bound)
            out.append(f"{name}_bucket{_labels({**labels, 'le': le})} {running}")
        out.append(f"{name}_sum{_labels(labels)} {_num(self.total)}")
        out.append(f"{name}_count{_labels(labels)} {self.count}")
        return out


class ServerMetrics:
    """Per-adapter request counters and latency histograms, shared by every HTTP thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self.prompt_tokens: dict[str, int] = defaultdict(int)
        self.completion_tokens: dict[str, int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.ttft: dict[str, Histogram] = {}

    def count_request(self, adapter: str, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(adapter, endpoint, str(status))] += 1

    def observe_generation(self, adapter: str, *, prompt_tokens: int, completion_tokens: int,
                           latency_s: float, ttft_s: float | None) -> None:
        with self._lock:
            self.prompt_tokens[adapter] += prompt_tokens
            self.completion_tokens[adapter] += completion_tokens
            self.latency.setdefault(adapter, Histogram(LATENCY_BUCKETS)).observe(latency_s)
            if ttft_s is not None:
                self.ttft.setdefault(adapter, Histogram(LATENCY_BUCKETS)).observe(ttft_s)

    def lines(self) -> list[str]:
        with self._lock:
            out = _family("adapterhub_requests_total", "counter", "HTTP requests by adapter, endpoint and status")
            out += [f"adapterhub_requests_total{_labels({'adapter': a, 'endpoint': e, 'status': s})} {n}"
                    for (a, e, s), n in sorted(self.requests.items())]
            for name, table, what in (("adapterhub_prompt_tokens_total", self.prompt_tokens, "prompt tokens"),
                                      ("adapterhub_completion_tokens_total", self.completion_tokens,
                                       "generated tokens")):
                out += _family(name, "counter", f"{what} by adapter")
                out += [f"{name}{_labels({'adapter': a})} {n}" for a, n in sorted(table.items())]
            for name, table, what in (("adapterhub_request_latency_seconds", self.latency,
                                       "time from request to last token"),
                                      ("adapterhub_time_to_first_token_seconds", self.ttft,
                                       "time from request to first token")):
                out += _family(name, "histogram", what)
                for a, h in sorted(table.items()):
                    out += h.lines(name, {"adapter": a})
            return out


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    esc = lambda v: str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")  # noqa: E731
    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in labels.items()) + "}"


def _num(x: float) -> str:
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


def _family(name: str, kind: str, help_text: str) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]


def _cache_lines(kind: str, stats: CacheStats) -> list[str]:
    labels = _labels({"kind": kind})
    return [
        f"adapterhub_adapter_cache_hits_total{labels} {stats.hits}",
        f"adapterhub_adapter_cache_misses_total{labels} {stats.misses}",
        f"adapterhub_adapter_cache_evictions_total{labels} {stats.evictions}",
        f"adapterhub_adapter_loads_total{labels} {stats.loads}",
        f"adapterhub_adapter_load_seconds_total{labels} {_num(stats.load_seconds)}",
    ]


def render_metrics(engine: Engine | None, metrics: ServerMetrics) -> str:
    """The whole Prometheus exposition: request metrics, then the engine's."""
    out = metrics.lines()
    if engine is not None:
        batch = Histogram(BATCH_BUCKETS)
        for size, n in sorted(engine.stats.batch_sizes.items()):
            batch.observe(size, n)
        out += _family("adapterhub_batch_size", "histogram", "rows per decode step")
        out += batch.lines("adapterhub_batch_size", {})
        out += _family("adapterhub_decode_steps_total", "counter", "decode steps run")
        out += [f"adapterhub_decode_steps_total {engine.stats.steps}"]
        caches = [("prompt_tuning", engine.soft_prompts.stats)]
        if engine.lora_slots is not None:
            caches.append(("lora", engine.lora_slots.stats))
        for name, help_text in (("adapter_cache_hits_total", "adapter cache hits"),
                                ("adapter_cache_misses_total", "adapter cache misses (loads)"),
                                ("adapter_cache_evictions_total", "adapters evicted (least recently used)"),
                                ("adapter_loads_total", "adapter loads"),
                                ("adapter_load_seconds_total", "seconds spent loading adapters")):
            out += _family("adapterhub_" + name, "counter", help_text)
            out += [line for kind, stats in caches for line in _cache_lines(kind, stats)
                    if line.startswith("adapterhub_" + name + "{")]
        resident = engine.loaded_adapters()
        out += _family("adapterhub_adapters_resident", "gauge", "adapters loaded, by kind")
        for kind in ("lora", "prompt_tuning"):
            n = sum(1 for a in resident if a.get("adapter_type") == kind)
            out.append(f"adapterhub_adapters_resident{_labels({'kind': kind})} {n}")
        out += _family("adapterhub_running_requests", "gauge", "rows in the running batch")
        out.append(f"adapterhub_running_requests {engine.running}")
    return "\n".join(out) + "\n"


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def health_document(engine: Engine | None) -> dict[str, Any]:
    """What ``/health`` answers: the base, how it is held, and the adapters resident."""
    if engine is None:
        return {"status": "ok", "base": None, "loaded_adapters": []}
    loaded = engine.loaded
    adapters = engine.loaded_adapters()
    adapter_bytes = sum(int(a.get("bytes") or 0) for a in adapters)
    return {
        "status": "ok",
        "base": loaded.name,
        "quantization": loaded.quantize,
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "memory": {
            "base_bytes": loaded.footprint_bytes,
            "adapter_bytes": adapter_bytes,
            "process_rss_bytes": _rss_bytes(),
        },
        "loaded_adapters": adapters,
        "running_requests": engine.running,
        "max_batch_size": engine.max_batch_size,
    }


@bp.get("/health")
def health():
    ext = app_state()
    return jsonify(health_document(ext.get("engine")))


@bp.get("/metrics")
def metrics():
    ext = app_state()
    text = render_metrics(ext.get("engine"), ext.setdefault("metrics", ServerMetrics()))
    return Response(text, mimetype="text/plain; version=0.0.4")
