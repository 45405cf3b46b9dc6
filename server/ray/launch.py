"""What ``adapterhub serve --replicas`` runs: start (or join) Ray, deploy the application, wait.

A local Ray is private to the command (two of them on one machine do not meet) and gets as many
logical CPUs as the replicas reserve, at least the machine's count, so N replicas start on a
smaller machine too (they then share its cores). On an existing cluster
(``--ray-address``) the application is deployed there and deleted again when the command is
stopped; Ray's own ``serve deploy`` of a config file (``write_config``) keeps it up without a
driver.
"""

from __future__ import annotations

import math
import os
import signal
import threading
from typing import Any, Callable

import yaml

from .app import APP_NAME, ENGINE_DEPLOYMENT, Scaling, build
from .settings import ReplicaSettings

__all__ = ["launch", "serve_config"]

IMPORT_PATH = "adapterhub.server.ray.app:build_app"


def launch(settings: ReplicaSettings, scaling: Scaling, *, address: str | None, host: str, port: int,
           ready: Callable[[str], None]) -> None:
    """Deploy and serve until SIGINT/SIGTERM; ``ready(url)`` once every replica answers."""
    import ray
    from ray import serve

    if address is None:
        reserved = math.ceil(scaling.num_replicas * scaling.num_cpus)
        # "local": always a new, private Ray (a bare init would join another local cluster, whose
        # Serve application of the same name this one would replace)
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, reserved), include_dashboard=False,
                 logging_level="WARNING")
    else:
        ray.init(address=address, logging_level="WARNING")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build(settings, scaling), name=APP_NAME, route_prefix="/")
        ready(f"http://{host}:{port}")
        stop.wait()
    finally:
        if address is None:
            serve.shutdown()
        else:
            serve.delete(APP_NAME)
        ray.shutdown()


def serve_config(settings: ReplicaSettings, scaling: Scaling, *, host: str, port: int) -> str:
    """A Ray Serve config file (``serve deploy``/``serve run``, a RayService's ``serveConfigV2``)
    for the same application: settings as the builder's ``args``, scaling on the engine deployment."""
    deployment: dict[str, Any] = {"name": ENGINE_DEPLOYMENT, **scaling.deployment_options(),
                                  "ray_actor_options": {"num_cpus": scaling.num_cpus, "num_gpus": scaling.num_gpus}}
    config = {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [{"name": APP_NAME, "route_prefix": "/", "import_path": IMPORT_PATH,
                          "args": settings.as_args(), "deployments": [deployment]}],
    }
    return yaml.safe_dump(config, sort_keys=False)
