"""``adapterhub serve``'s Ray Serve options: replicas on a local Ray or a cluster, autoscaling bounds.

Any of them turns ``serve`` into a fleet (``adapterhub.server.ray``, the ``adapterhub[ray]``
extra); without them ``serve`` stays one process and never imports Ray.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

if TYPE_CHECKING:
    from adapterhub.serving_config import ServingConfig

__all__ = ["ray_options", "Fleet"]


@dataclass(frozen=True)
class Fleet:
    """The Ray options as given; ``wanted`` when any asks for Ray."""

    replicas: int | None
    ray_address: str | None
    min_replicas: int | None
    max_replicas: int | None
    target_ongoing_requests: float | None
    num_cpus: float
    num_gpus: float
    write_config: Path | None

    @property
    def wanted(self) -> bool:
        return any(v is not None for v in (self.replicas, self.ray_address, self.min_replicas, self.max_replicas,
                                            self.target_ongoing_requests, self.write_config))

    def run(self, config: ServingConfig, keys: Any, *, base: str | None, registry: str | None,
            lora_modules: tuple[str, ...]) -> None:
        """Deploy ``config`` (or, with ``--write-ray-config``, write the config file and return)."""
        try:
            from adapterhub.server.ray.app import Scaling
            from adapterhub.server.ray.launch import launch, serve_config
            from adapterhub.server.ray.settings import ReplicaSettings
        except ImportError as e:
            raise click.UsageError(f"serving on Ray needs the ray extra: pip install 'adapterhub[ray]' ({e})") from None
        try:
            scaling = Scaling(num_replicas=self.replicas or 1, min_replicas=self.min_replicas,
                              max_replicas=self.max_replicas, target_ongoing_requests=self.target_ongoing_requests,
                              num_cpus=self.num_cpus, num_gpus=self.num_gpus)
        except ValueError as e:
            raise click.UsageError(str(e)) from None
        settings = ReplicaSettings.resolved(registry, base=base, engine=config.engine, limits=config.http.limits,
                                            api_key_digests=tuple(k.hex() for k in keys.api),
                                            admin_key_digests=tuple(k.hex() for k in keys.admin),
                                            metrics_need_key=keys.metrics_need_key, lora_modules=lora_modules)
        host, port = config.http.host, config.http.port
        if self.write_config is not None:
            self.write_config.write_text(serve_config(settings, scaling, host=host, port=port))
            click.echo(f"wrote {self.write_config}: run it with `serve deploy {self.write_config}`", err=True)
            return

        def ready(url: str) -> None:
            where = self.ray_address or "a local Ray"
            click.echo(f"serving {settings.base or 'the tiny base'} ({scaling.num_replicas} replica(s) on {where}) "
                       f"on {url}: OpenAI API at {url}/v1", err=True)

        launch(settings, scaling, address=self.ray_address, host=host, port=port, ready=ready)


def ray_options(command: Callable) -> Callable:
    """Add the Ray options to ``command``; it receives them as one ``fleet`` argument."""
    options = [
        click.option("--replicas", type=click.IntRange(1, 4096), default=None,
                     help="Serve from N engine replicas on Ray Serve (a local Ray unless --ray-address); requests "
                          "go to a replica that holds their adapter. Needs adapterhub[ray]."),
        click.option("--ray-address", default=None, metavar="ADDR",
                     help="Deploy onto this Ray cluster (e.g. ray://head:10001 or auto) instead of a local Ray."),
        click.option("--min-replicas", type=click.IntRange(0), default=None, help="Autoscaling: fewest replicas."),
        click.option("--max-replicas", type=click.IntRange(1), default=None, help="Autoscaling: most replicas."),
        click.option("--target-ongoing-requests", type=click.FloatRange(0, min_open=True), default=None,
                     help="Autoscaling: requests per replica Ray aims for."),
        click.option("--num-cpus-per-replica", "num_cpus", type=click.FloatRange(0), default=1.0, show_default=True,
                     help="CPUs Ray reserves for each replica."),
        click.option("--num-gpus-per-replica", "num_gpus", type=click.FloatRange(0), default=0.0, show_default=True,
                     help="GPUs Ray reserves for each replica (1 to serve on a GPU)."),
        click.option("--write-ray-config", "write_config", type=click.Path(dir_okay=False, path_type=Path),
                     default=None, help="Write the Ray Serve config file for these options (for `serve deploy` "
                                        "or a KubeRay RayService) and exit."),
    ]

    @functools.wraps(command)
    def with_fleet(*args: Any, replicas, ray_address, min_replicas, max_replicas, target_ongoing_requests, num_cpus,
                   num_gpus, write_config, **kwargs: Any) -> Any:
        fleet = Fleet(replicas, ray_address, min_replicas, max_replicas, target_ongoing_requests, num_cpus, num_gpus,
                      write_config)
        return command(*args, fleet=fleet, **kwargs)

    for option in reversed(options):
        with_fleet = option(with_fleet)
    return with_fleet
