"""vLLM's metric names, so dashboards and gateway routers written for vLLM read this server too.

Request-level (``RequestMetrics``, recorded as each answer finishes): ``vllm:time_to_first_token_seconds``,
``vllm:inter_token_latency_seconds``, ``vllm:e2e_request_latency_seconds`` (histograms, vLLM's
buckets), ``vllm:request_success_total{finished_reason}`` (stop, length, abort: a cancelled answer),
``vllm:prompt_tokens_total`` and ``vllm:generation_tokens_total``. The engine reports each answer's
first and last token times, not every token's, so an answer of n tokens adds n - 1 observations of
its mean interval to the inter-token histogram: its sum and count are exact, its buckets hold means.

Engine-level (``engine_families``, read at each scrape): ``vllm:num_requests_running``,
``vllm:num_requests_waiting`` and ``vllm:lora_requests_info``, a gauge whose value is the scrape
time and whose labels are what gateway routers read for adapter affinity: ``max_lora`` (LoRA slots),
``running_lora_adapters`` (the LoRA adapters resident, comma-separated, by the name clients use: the
served name of ``/v1/load_lora_adapter`` / ``--lora-modules``, else the registry name) and
``waiting_lora_adapters``, which stays empty here: a request's adapter is loaded before the request
is queued, so no request ever waits for an adapter. The other families carry ``model_name`` (the
base as served), as vLLM's do.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from adapterhub.server.engine.engine import Engine
    from adapterhub.server.engine.prefix_cache import PrefixCacheStats

    from .lora_names import LoraNames

__all__ = ["RequestMetrics", "engine_families", "FINISHED_REASONS"]

# vLLM's buckets (vllm/v1/metrics/loggers.py), so quantiles compare across servers.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)
# The engine's finish reasons under vLLM's names.
FINISHED_REASONS = {"stop": "stop", "length": "length", "cancelled": "abort"}


class RequestMetrics:
    """The request-level vLLM families, in ``registry``."""

    def __init__(self, registry: CollectorRegistry, model_name: str) -> None:
        self.model_name = model_name
        labels = ["model_name"]
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              labels, buckets=TTFT_BUCKETS, registry=registry)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                             labels, buckets=ITL_BUCKETS, registry=registry)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                             labels, buckets=E2E_BUCKETS, registry=registry)
        self.success = Counter("vllm:request_success", "Count of successfully processed requests.",
                               ["model_name", "finished_reason"], registry=registry)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", labels,
                                     registry=registry)
        self.generation_tokens = Counter("vllm:generation_tokens", "Number of generation tokens processed.", labels,
                                         registry=registry)
        for reason in FINISHED_REASONS.values():  # every reason shows from the start, as in vLLM
            self.success.labels(model_name, reason)
        for family in (self.ttft, self.itl, self.e2e, self.prompt_tokens, self.generation_tokens):
            family.labels(model_name)

    def observe(self, *, prompt_tokens: int, completion_tokens: int, latency_s: float, ttft_s: float | None,
                finish_reason: str | None) -> None:
        name = self.model_name
        self.prompt_tokens.labels(name).inc(prompt_tokens)
        self.generation_tokens.labels(name).inc(completion_tokens)
        self.e2e.labels(name).observe(latency_s)
        if ttft_s is not None:
            self.ttft.labels(name).observe(ttft_s)
            intervals = completion_tokens - 1
            if intervals > 0:
                mean = max(0.0, latency_s - ttft_s) / intervals
                itl = self.itl.labels(name)
                for _ in range(intervals):
                    itl.observe(mean)
        reason = FINISHED_REASONS.get(finish_reason or "")
        if reason is not None:
            self.success.labels(name, reason).inc()


def _served_names(resident: list[dict[str, Any]], lora_names: LoraNames) -> list[str]:
    """Resident LoRA adapters by the names clients send as ``model``."""
    aliases: dict[str, list[str]] = {}
    for name, ref in lora_names.served().items():
        aliases.setdefault(ref, []).append(name)
    names: set[str] = set()
    for a in resident:
        if a.get("adapter_type") == "lora":
            names.update(aliases.get(a["ref"], [a["name"]]))
    return sorted(names)


def engine_families(engine: Engine, resident: list[dict[str, Any]], lora_names: LoraNames) -> Iterator[Metric]:
    """The engine-level vLLM families, as of now."""
    yield from _per_model(GaugeMetricFamily, engine.base_name, (
        ("vllm:num_requests_running", "Number of requests in model execution batches.", engine.running),
        ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", engine.queued),
    ))
    info = GaugeMetricFamily("vllm:lora_requests_info", "Running stats on lora requests.",
                             labels=["max_lora", "running_lora_adapters", "waiting_lora_adapters"])
    max_lora = engine.lora_slots.bank.max_slots if engine.lora_slots is not None else 0
    info.add_metric([str(max_lora), ",".join(_served_names(resident, lora_names)), ""], time.time())
    yield info


def prefix_cache_families(model: str, stats: PrefixCacheStats) -> Iterator[Metric]:
    """vLLM's prefix-cache counters: prompt tokens looked up, and those found cached."""
    yield from _per_model(CounterMetricFamily, model, (
        ("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.", stats.tokens_queried),
        ("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", stats.tokens_reused),
    ))


def _per_model(kind: type, model: str, rows: tuple[tuple[str, str, float], ...]) -> Iterator[Metric]:
    """One ``kind`` family (gauge or counter) per ``(name, help, value)`` row, labelled ``model_name``."""
    for name, help_text, value in rows:
        family = kind(name, help_text, labels=["model_name"])
        family.add_metric([model], value)
        yield family
