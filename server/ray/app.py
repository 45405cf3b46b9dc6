"""The Ray Serve application: an ingress in front of N engine replicas.

``build`` is what ``adapterhub serve --replicas`` deploys; ``build_app`` is the same application
for Ray's own tools, as an application builder that takes the config's ``args``::

    serve run adapterhub.server.ray.app:build_app registry=/shared/registry num_replicas=2
    serve deploy deploy/serve_config.yaml        # or a KubeRay RayService (deploy/kuberay-rayservice.yaml)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ray import serve
from ray.serve import Application

from .ingress import OpenAIIngress
from .replica import EngineReplica
from .settings import ReplicaSettings

__all__ = ["Scaling", "build", "build_app", "ENGINE_DEPLOYMENT", "INGRESS_DEPLOYMENT", "APP_NAME"]

APP_NAME = "adapterhub"
ENGINE_DEPLOYMENT = "AdapterEngine"
INGRESS_DEPLOYMENT = "OpenAIIngress"


@dataclass(frozen=True)
class Scaling:
    """How many engine replicas, and what each reserves: a fixed count, or autoscaling bounds."""

    num_replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.num_replicas < 1:
            raise ValueError("num_replicas must be at least 1")
        low, high = self.min_replicas, self.max_replicas
        if (low is not None and low < 0) or (high is not None and high < 1) or (
                low is not None and high is not None and low > high):
            raise ValueError(f"replica bounds must satisfy 0 <= min_replicas <= max_replicas, max_replicas >= 1; "
                             f"got min_replicas={low}, max_replicas={high}")
        if self.target_ongoing_requests is not None and self.target_ongoing_requests <= 0:
            raise ValueError("target_ongoing_requests must be positive")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError("num_cpus and num_gpus must not be negative")

    @property
    def autoscaling(self) -> bool:
        return any(v is not None for v in (self.min_replicas, self.max_replicas, self.target_ongoing_requests))

    def deployment_options(self) -> dict[str, Any]:
        """``serve.deployment`` options: ``num_replicas``, or an ``autoscaling_config`` starting at it."""
        if not self.autoscaling:
            return {"num_replicas": self.num_replicas}
        low = 1 if self.min_replicas is None else self.min_replicas
        high = max(self.num_replicas, low) if self.max_replicas is None else self.max_replicas
        config: dict[str, Any] = {"min_replicas": low, "max_replicas": high,
                                  "initial_replicas": min(max(self.num_replicas, low), high)}
        if self.target_ongoing_requests is not None:
            config["target_ongoing_requests"] = self.target_ongoing_requests
        return {"autoscaling_config": config}


def build(settings: ReplicaSettings, scaling: Scaling = Scaling()) -> Application:
    """The application: engine replicas (with ``scaling``) behind the OpenAI ingress.

    A replica takes at most two batches of requests at once (one decoding, one waiting); past
    that Ray's router tries another replica, and beyond ``max_queued_requests`` waiting in the
    router the ingress answers 429, as a single server does when its queue is full.
    """
    engine = serve.deployment(
        EngineReplica, name=ENGINE_DEPLOYMENT, logging_config=_QUIET,
        ray_actor_options={"num_cpus": scaling.num_cpus, "num_gpus": scaling.num_gpus},
        max_ongoing_requests=2 * settings.engine.max_batch_size,
        max_queued_requests=settings.engine.max_queued_requests,
        **scaling.deployment_options(),
    ).bind(settings)
    return serve.deployment(OpenAIIngress, name=INGRESS_DEPLOYMENT, ray_actor_options={"num_cpus": 0}, logging_config=_QUIET,
                            max_ongoing_requests=settings.engine.max_queued_requests + 2 * settings.engine.max_batch_size,
                            ).bind(engine, settings)


# A log line per request costs each hop about a millisecond; the engine's /metrics count requests.
_QUIET = {"enable_access_log": False, "log_level": "WARNING"}

_SCALING_ARGS = {"num_replicas": int, "min_replicas": int, "max_replicas": int, "target_ongoing_requests": float,
                 "num_cpus": float, "num_gpus": float}


def build_app(args: Mapping[str, Any]) -> Application:
    """Ray's application-builder entry point: ``args`` holds ``ReplicaSettings`` fields and the
    ``Scaling`` ones (``num_replicas``, ``min_replicas``...); ``serve run`` passes them as strings."""
    scaling = {k: _SCALING_ARGS[k](v) for k, v in args.items() if k in _SCALING_ARGS}
    settings = ReplicaSettings.from_args({k: v for k, v in args.items() if k not in _SCALING_ARGS})
    return build(settings, Scaling(**scaling))
