"""The settings of serving, each default written here once: the engine's and the HTTP server's.

``adapterhub serve`` builds its options from these fields (default, bounds and help: the CLI only
names the flag), ``adapterhub.server.start_engine`` and the Ray replicas take them whole, and
``--write-ray-config`` writes them as a Ray Serve config's ``args``. Like PEFT's ``LoraConfig``:
frozen dataclasses, a field's help beside it in ``metadata``, and the bounds checked together in
``__post_init__``, each failure a one-line ``ValueError`` naming the field.

The library describes serving and never runs it: nothing here imports the server, torch or Flask,
so the CLI reads the defaults without loading the engine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .echo import echo

__all__ = ["EngineConfig", "RequestLimits", "HttpConfig", "ServingConfig", "ENGINE_DEFAULTS", "HTTP_DEFAULTS",
           "QUANTIZE_MODES", "HUB_MAX_OBJECT_BYTES", "HUB_BODY_SLACK_BYTES", "check_quantize", "setting"]

QUANTIZE_MODES = ("auto", "bf16", "int8", "nf4", "none")


def setting(default: Any, help: str, *, low: float | None = None, high: float | None = None,
            unit: str | None = None, secret: bool = False) -> Any:
    """A field with its help and its bounds (``low``/``high``, inclusive) in ``metadata``; ``unit``
    ``"bytes"`` marks a byte count (``512MB`` on the command line); a ``secret`` stays out of repr."""
    return field(default=default, repr=not secret,
                 metadata={"help": help, "low": low, "high": high, "unit": unit})


def check_quantize(mode: str) -> None:
    """Raise ``ValueError`` for a mode ``load_base_model`` does not know."""
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"unknown quantize mode {mode!r} (choose from {', '.join(QUANTIZE_MODES)})")


def _check_bounds(config: Any) -> None:
    """Every field with bounds within them (``None`` is allowed where it is the default)."""
    for f in dataclasses.fields(config):
        value, low, high = getattr(config, f.name), f.metadata.get("low"), f.metadata.get("high")
        if (value is None and f.default is None) or (low is None and high is None):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{f.name} must be a number, got {echo(value)}")
        if low is not None and value < low:
            raise ValueError(f"{f.name} must be at least {low:g}")
        if high is not None and value > high:
            raise ValueError(f"{f.name} must be at most {high:g}")


class _Config:
    """What every serving config does: check its bounds, and make a changed copy."""

    def __post_init__(self) -> None:
        _check_bounds(self)

    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes`` (field names; ``TypeError`` for another name), checked again."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class EngineConfig(_Config):
    """How the engine holds the base and its adapters.

    Args:
        quantize: how the base's weights are kept (``auto``: bf16 on a CPU, nf4 on a GPU).
        device: ``cpu``, ``cuda``, ``cuda:1``; ``None`` picks the GPU when there is one.
        max_batch_size: most requests decoded together.
        max_loaded_adapters: adapters resident at once, per kind (LoRA slots, soft prompts).
        max_adapter_bytes: bytes of adapter weights resident at once, per kind.
        max_lora_rank: the largest LoRA rank a slot holds.
        max_queued_requests: answers waiting for the engine at most (``QueueFull`` beyond).
        preload: registry references loaded at start-up.
        prefix_cache_bytes: bound of the prompt-prefix KV store (``server.engine.prefix_cache``); 0: off.
    """

    quantize: str = setting(
        "auto", "Base weights: auto = bf16 on a CPU (near-lossless; none where no C compiler builds its kernel), "
                "nf4 on a GPU (bitsandbytes). int8 on a CPU is faster on CPUs without AVX512-BF16 but lossy "
                "(see BENCHMARKS.md).")
    device: str | None = setting(None, "cpu, cuda, cuda:1 ... (default: the GPU if there is one).")
    max_batch_size: int = setting(16, "Most requests decoded together.", low=1, high=1024)
    max_loaded_adapters: int = setting(16, "Adapters resident at once, per kind (least recently used evicted).",
                                       low=1, high=4096)
    max_adapter_bytes: int = setting(1 << 30, "Bytes of adapter weights resident at once, per kind.", low=1,
                                     unit="bytes")
    max_lora_rank: int = setting(64, "Largest LoRA rank a slot holds.", low=1, high=1024)
    # Enough to keep a full batch fed for many turns on a slow CPU, few enough that a flood is
    # refused in seconds rather than queued for minutes.
    max_queued_requests: int = setting(
        256, "Answers waiting for the engine at most; beyond, requests get 429 with Retry-After.", low=1)
    preload: tuple[str, ...] = setting((), "Load this adapter at start-up (repeatable).")
    # ~11k tokens of SmolLM2-135M's float32 keys and values (46 KB a token); 0 turns reuse off.
    prefix_cache_bytes: int = setting(
        512 << 20, "Bytes of prompt-prefix keys and values kept for reuse, keyed by adapter content (0: off).",
        low=0, unit="bytes")

    def __post_init__(self) -> None:
        check_quantize(self.quantize)
        object.__setattr__(self, "preload", tuple(self.preload))
        super().__post_init__()


@dataclass(frozen=True)
class RequestLimits(_Config):
    """What one request may ask of the server, checked before the work (``server.http.admission``).

    Args:
        max_prompt_tokens: longest prompt in tokens; ``None``: the model's context.
        max_generations_per_request: most answers one request may ask for (``n`` times the prompts).
        max_body_bytes: largest request body on ``/v1`` (refused from its ``Content-Length``).
    """

    max_prompt_tokens: int | None = setting(None, "Longest prompt in tokens  [default: the model's context]", low=1)
    # Four full batches of the default size: a request may ask for several answers, never for a flood.
    max_generations_per_request: int = setting(64, "Most answers one request may ask for (n times the prompts).",
                                               low=1)
    # A request is JSON: 64 prompts of 32k token ids, written as decimal text, stay well below this.
    max_body_bytes: int = setting(16 << 20, "Largest request body on /v1 (refused from its Content-Length, before "
                                            "it is read).", low=1, unit="bytes")


# The registry's HTTP hub (``adapterhub hub serve --max-object-bytes``; ``serve --with-hub`` mounts it):
# the largest object one upload carries, and the body around it (multipart framing, JSON fields).
HUB_MAX_OBJECT_BYTES = 4 << 30
HUB_BODY_SLACK_BYTES = 1 << 20


@dataclass(frozen=True)
class HttpConfig(_Config):
    """How the HTTP server listens, admits requests and checks keys.

    Args:
        host, port: where it listens (port 0 picks a free one).
        threads: HTTP worker threads (each open stream holds one).
        max_waiting_http_requests: requests waiting for a worker thread at most (429 beyond).
        send_timeout_s: how long an answer waits for a client that reads nothing.
        limits: the per-request bounds (``RequestLimits``).
        api_keys, admin_api_keys: keys ``/v1`` requires, and those that may also load adapters
            (the keys themselves: never in ``repr``; they travel on as digests).
        metrics_need_key: ``/metrics`` needs an API key too.
        with_hub: the registry's own routes are served beside the OpenAI API.
    """

    host: str = setting("127.0.0.1", "Interface to listen on.")
    port: int = setting(8000, "0 picks a free port.", low=0, high=65535)
    threads: int = setting(64, "HTTP worker threads (each open stream holds one).", low=1, high=1024)
    max_waiting_http_requests: int = setting(
        256, "Requests that may wait for a free HTTP worker thread when all --threads are busy (streams hold them); "
             "beyond, an immediate 429 server_busy with Retry-After. /health and /metrics never wait: they have "
             "threads of their own.", low=0)
    # As long as an idle keep-alive connection is kept (``wsgi.CHANNEL_TIMEOUT_S``).
    send_timeout_s: float = setting(
        30.0, "Seconds an answer may wait for a client that reads nothing (more than 64 KiB of it undelivered) "
              "before its connection is dropped and its generation cancelled, freeing its batch rows.", low=0.1)
    limits: RequestLimits = field(default_factory=RequestLimits)
    api_keys: tuple[str, ...] = setting(
        (), "Require 'Authorization: Bearer KEY' on /v1 (repeatable; default $ADAPTERHUB_API_KEY, "
            "comma-separated). Prefer the variable: arguments show in `ps`.", secret=True)
    admin_api_keys: tuple[str, ...] = setting(
        (), "Keys that may also load and unload adapters (repeatable; default $ADAPTERHUB_ADMIN_API_KEY). "
            "Without any, API keys may.", secret=True)
    metrics_need_key: bool = setting(False, "/metrics needs an API key too (default: open, like /health).")
    with_hub: bool = setting(False, "Also serve the registry here (adapterhub API, HF protocol, web page; the hub's "
                                    "token rules). Needs a registry folder.")

    def __post_init__(self) -> None:
        object.__setattr__(self, "api_keys", tuple(self.api_keys))
        object.__setattr__(self, "admin_api_keys", tuple(self.admin_api_keys))
        super().__post_init__()

    @property
    def max_request_body_size(self) -> int:
        """The largest body the server reads: the hub's pushes carry adapter files, so with the hub
        mounted it takes those too (the OpenAI routes still check ``limits.max_body_bytes`` themselves)."""
        body = self.limits.max_body_bytes
        return max(body, HUB_MAX_OBJECT_BYTES + HUB_BODY_SLACK_BYTES) if self.with_hub else body


@dataclass(frozen=True)
class ServingConfig(_Config):
    """Everything ``adapterhub serve`` runs with: the engine's settings and the HTTP server's."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    http: HttpConfig = field(default_factory=HttpConfig)


# The defaults as values, for the server's own lower-level parameters (``wsgi.run``, the dispatcher...).
ENGINE_DEFAULTS = EngineConfig()
HTTP_DEFAULTS = HttpConfig()
