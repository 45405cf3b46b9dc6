"""``GET /health`` and ``GET /metrics``: what the server holds and what it has done.

``/health`` is one JSON document for people and load balancers (base, quantization, memory,
resident adapters; on a hub without an engine, just ``{"status": "ok"}``). ``/metrics`` is the
Prometheus exposition written by ``prometheus_client`` from a registry of the app's own (several
apps in one process, as in the tests, never share or clash), with ``process_*`` from its process
collector. A serving app exports, under our names, requests and tokens by adapter, latency and time
to first token, the adapter caches, decode batch sizes, adapters resident and every counter of the
engine's ``EngineStats``; and, under vLLM's names, the figures dashboards and gateway routers read
from vLLM (``vllm_metrics``). A hub exports its requests by route and status. Request-level figures
are recorded by the views into ``ServerMetrics``; engine-level ones are read from the engine when
scraped (``EngineCollector``). ``/metrics`` can be put behind the API keys (``api_keys``); on a hub
it follows the read rule (a token when reads need one); ``/health`` stays open for load balancers.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any, Iterator

from flask import Blueprint, Flask, Response, jsonify, request
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, ProcessCollector,
                               generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from . import vllm_metrics
from .auth import READ, authorize
from .state import app_state

if TYPE_CHECKING:
    from adapterhub.server.engine.adapters.cache_stats import CacheStats
    from adapterhub.server.engine.engine import Engine
    from adapterhub.server.engine.prefix_cache import PrefixCacheStats

    from .lora_names import LoraNames

__all__ = ["bp", "ServerMetrics", "EngineCollector", "HubMetrics", "install_hub_metrics", "health_document"]

bp = Blueprint("health", __name__)

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _new_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return registry


class ServerMetrics:
    """Per-adapter request counters and latency histograms (ours and vLLM's), shared by every HTTP
    thread; ``registry`` is what ``/metrics`` renders."""

    def __init__(self, model_name: str = "") -> None:
        self.registry = _new_registry()
        reg = self.registry
        self.requests = Counter("adapterhub_requests", "HTTP requests by adapter, endpoint and status",
                                ["adapter", "endpoint", "status"], registry=reg)
        self.prompt_tokens = Counter("adapterhub_prompt_tokens", "prompt tokens by adapter", ["adapter"], registry=reg)
        self.completion_tokens = Counter("adapterhub_completion_tokens", "generated tokens by adapter", ["adapter"],
                                         registry=reg)
        self.latency = Histogram("adapterhub_request_latency_seconds", "time from request to last token",
                                 ["adapter"], buckets=LATENCY_BUCKETS, registry=reg)
        self.ttft = Histogram("adapterhub_time_to_first_token_seconds", "time from request to first token",
                              ["adapter"], buckets=LATENCY_BUCKETS, registry=reg)
        self.vllm = vllm_metrics.RequestMetrics(reg, model_name)

    def count_request(self, adapter: str, endpoint: str, status: int) -> None:
        self.requests.labels(adapter, endpoint, str(status)).inc()

    def observe_generation(self, adapter: str, *, prompt_tokens: int, completion_tokens: int,
                           latency_s: float, ttft_s: float | None, finish_reason: str | None = None) -> None:
        """One finished answer (``finish_reason`` as the engine ended it: stop, length, cancelled)."""
        self.prompt_tokens.labels(adapter).inc(prompt_tokens)
        self.completion_tokens.labels(adapter).inc(completion_tokens)
        self.latency.labels(adapter).observe(latency_s)
        if ttft_s is not None:
            self.ttft.labels(adapter).observe(ttft_s)
        self.vllm.observe(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, latency_s=latency_s,
                          ttft_s=ttft_s, finish_reason=finish_reason)


# EngineStats counters by field name: (metric, help). A field not listed here is still exported,
# as adapterhub_engine_<field>_total, so a counter the engine adds is never silently left out.
_ENGINE_COUNTERS = {
    "steps": ("adapterhub_decode_steps_total", "decode steps run"),
    "prefills": ("adapterhub_prefills_total", "prefill passes run"),
    "generated_tokens": ("adapterhub_generated_tokens_total", "tokens generated"),
    "failed": ("adapterhub_failed_requests_total", "requests the engine ended with an error, by error code"),
    "cancelled": ("adapterhub_cancelled_requests_total", "requests cancelled before they finished"),
    "rejected_queue_full": ("adapterhub_queue_full_rejections_total", "requests refused because the queue was full"),
}
_ENGINE_HISTOGRAMS = ("batch_sizes",)  # rendered as adapterhub_batch_size

_CACHE_COUNTERS = (
    ("adapter_cache_hits_total", "adapter cache hits", "hits"),
    ("adapter_cache_misses_total", "adapter cache misses (loads)", "misses"),
    ("adapter_cache_evictions_total", "adapters evicted (least recently used)", "evictions"),
    ("adapter_loads_total", "adapter loads", "loads"),
    ("adapter_load_seconds_total", "seconds spent loading adapters", "load_seconds"),
)


def histogram_family(name: str, help_text: str, bounds: tuple[float, ...], counts: dict[int, int]) -> Metric:
    """A histogram family from exact value counts (the engine counts batch sizes, not buckets)."""
    family = HistogramMetricFamily(name, help_text)
    buckets = [(str(b), sum(n for v, n in counts.items() if v <= b)) for b in bounds]
    buckets.append(("+Inf", sum(counts.values())))
    family.add_metric([], buckets, sum_value=sum(v * n for v, n in counts.items()))
    return family


class EngineCollector:
    """Engine-level figures, read from the engine at each scrape (nothing to keep in step)."""

    def __init__(self, engine: Engine, lora_names: LoraNames) -> None:
        self.engine = engine
        self.lora_names = lora_names

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        yield histogram_family("adapterhub_batch_size", "rows per decode step", BATCH_BUCKETS,
                               dict(engine.stats.batch_sizes))
        yield from self._engine_counters()
        yield from self._caches()
        yield from self._prefix_cache()
        resident = engine.loaded_adapters()
        family = GaugeMetricFamily("adapterhub_adapters_resident", "adapters loaded, by kind", labels=["kind"])
        for kind, _ in self.engine.adapter_caches():
            family.add_metric([kind], sum(1 for a in resident if a.get("adapter_type") == kind))
        yield family
        yield GaugeMetricFamily("adapterhub_running_requests", "rows in the running batch", value=engine.running)
        yield GaugeMetricFamily("adapterhub_queued_requests", "requests waiting for a place in the batch",
                                value=engine.queued)
        yield from vllm_metrics.engine_families(engine, resident, self.lora_names)

    def _engine_counters(self) -> Iterator[Metric]:
        """Every counter of the stats: an int is one sample, a dict one sample per key (its ``code`` label)."""
        stats = self.engine.stats
        for f in dataclasses.fields(stats):
            if f.name in _ENGINE_HISTOGRAMS:
                continue
            name, help_text = _ENGINE_COUNTERS.get(f.name, (f"adapterhub_engine_{f.name}_total", f"engine {f.name}"))
            value = getattr(stats, f.name)
            if isinstance(value, dict):
                family = CounterMetricFamily(name, help_text, labels=["code"])
                for key, n in sorted(value.items()):
                    family.add_metric([str(key)], n)
            else:
                family = CounterMetricFamily(name, help_text, value=value)
            yield family

    def _caches(self) -> Iterator[Metric]:
        caches: list[tuple[str, CacheStats]] = [(kind, cache.stats) for kind, cache in self.engine.adapter_caches()]
        for name, help_text, field in _CACHE_COUNTERS:
            family = CounterMetricFamily("adapterhub_" + name, help_text, labels=["kind"])
            for kind, stats in caches:
                family.add_metric([kind], getattr(stats, field))
            yield family


    def _prefix_cache(self) -> Iterator[Metric]:
        """The prompt-prefix store (``prefix_cache``), ours and vLLM's names; nothing when it is off."""
        cache = self.engine.prefix_cache
        if cache is None:
            return
        stats = cache.stats
        for name, help_text, value in _prefix_counters(stats):
            yield CounterMetricFamily(name, help_text, value=value)
        yield GaugeMetricFamily("adapterhub_prefix_cache_bytes", "bytes of cached prefix keys and values",
                                value=cache.bytes_resident)
        yield GaugeMetricFamily("adapterhub_prefix_cache_max_bytes", "the prefix store's bound (--prefix-cache-bytes)",
                                value=cache.max_bytes)
        yield from vllm_metrics.prefix_cache_families(self.engine.base_name, stats)


def _prefix_counters(stats: PrefixCacheStats) -> list[tuple[str, str, int]]:
    return [
        ("adapterhub_prefix_cache_queries_total", "prompts looked up in the prefix store", stats.queries),
        ("adapterhub_prefix_cache_hits_total", "prompts that reused a cached prefix", stats.hits),
        ("adapterhub_prefix_cache_tokens_queried_total", "prompt tokens looked up", stats.tokens_queried),
        ("adapterhub_prefix_cache_tokens_reused_total", "prompt tokens not prefilled: their KV was cached",
         stats.tokens_reused),
        ("adapterhub_prefix_cache_evictions_total", "cached blocks evicted (least recently used)", stats.blocks_evicted),
    ]


class HubMetrics:
    """A hub's requests by route (the URL rule, so the label set stays bounded), method and status."""

    def __init__(self) -> None:
        self.registry = _new_registry()
        self.requests = Counter("adapterhub_hub_requests", "hub HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=self.registry)

    def count(self, response: Response) -> Response:
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        self.requests.labels(rule, request.method, str(response.status_code)).inc()
        return response


def install_hub_metrics(app: Flask) -> None:
    """Count every request of a hub app and serve ``/health`` and ``/metrics`` on it."""
    metrics = HubMetrics()
    app_state(app)["metrics"] = metrics
    app.after_request(metrics.count)
    app.register_blueprint(bp)


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
        "queued_requests": engine.queued,
        "max_batch_size": engine.max_batch_size,
        "max_queued_requests": engine.max_queued_requests,
        "prefix_cache": _prefix_cache_line(engine),
    }


def _prefix_cache_line(engine: Engine) -> dict[str, Any] | None:
    cache = engine.prefix_cache
    if cache is None:
        return None
    stats = cache.stats
    return {"bytes": cache.bytes_resident, "max_bytes": cache.max_bytes, "blocks": cache.blocks_resident,
            "queries": stats.queries, "hits": stats.hits, "tokens_queried": stats.tokens_queried,
            "tokens_reused": stats.tokens_reused,
            "token_hit_rate": round(stats.tokens_reused / stats.tokens_queried, 4) if stats.tokens_queried else 0.0}


@bp.get("/health")
def health():
    return jsonify(health_document(app_state().get("engine")))


@bp.get("/metrics")
def metrics():
    state = app_state()
    if state.get("engine") is None and "tokens" in state:  # a hub: its read rule
        authorize(READ)
    return Response(generate_latest(state["metrics"].registry), content_type=CONTENT_TYPE_LATEST)
