"""What every replica of a deployment is started with: the ``adapterhub serve`` options, made explicit.

The driver (``adapterhub serve --replicas``) resolves everything that depends on where it runs
(the default registry folder, a relative path, the token ``adapterhub login`` stored) before the
settings travel, since a replica may start on another machine. API keys travel as the digests
``ServingKeys`` keeps, never as the keys themselves.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from adapterhub.serving_config import EngineConfig, RequestLimits

if TYPE_CHECKING:
    from adapterhub.server.http.api_keys import ServingKeys

__all__ = ["ReplicaSettings"]

# The configs a replica's settings carry whole; a Ray config's ``args`` name their fields directly.
_NESTED = {"engine": EngineConfig, "limits": RequestLimits}


@dataclass(frozen=True)
class ReplicaSettings:
    """One replica's engine and HTTP options: the ``EngineConfig`` and ``RequestLimits`` of
    ``adapterhub serve`` (their defaults are its defaults), with where the registry is and the keys."""

    registry: str
    base: str | None = None
    token: str | None = field(default=None, repr=False)
    engine: EngineConfig = field(default_factory=EngineConfig)
    limits: RequestLimits = field(default_factory=RequestLimits)
    api_key_digests: tuple[str, ...] = ()
    admin_key_digests: tuple[str, ...] = ()
    metrics_need_key: bool = False
    # ``--lora-modules`` as served names of pinned references, ``NAME=name@N`` (``pin_lora_module``)
    lora_modules: tuple[str, ...] = ()

    def served_names(self) -> dict[str, str]:
        """``lora_modules`` as served name -> reference."""
        from adapterhub.server.http.lora_names import parse_lora_module

        return dict(parse_lora_module(spec) for spec in self.lora_modules)

    @classmethod
    def resolved(cls, registry: str | None, *, token: str | None = None, **options: Any) -> ReplicaSettings:
        """Settings whose registry is absolute (a folder) or carries its token (a hub URL)."""
        from adapterhub.location import portable_location

        location, token = portable_location(registry, token=token)
        return cls(registry=location, token=token, **options)

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> ReplicaSettings:
        """Settings from a Ray Serve config's ``args`` (``serve run``/``serve deploy``); unknown keys refused."""
        owners = {f.name: cls for f in dataclasses.fields(cls) if f.name not in _NESTED}
        owners |= {f.name: config for config in _NESTED.values() for f in dataclasses.fields(config)}
        unknown = sorted(set(args) - set(owners))
        if unknown:
            raise ValueError(f"unknown adapterhub args: {', '.join(unknown)} (known: {', '.join(sorted(owners))})")
        hints = {config: typing.get_type_hints(config) for config in {cls, *_NESTED.values()}}
        values = {k: _coerce(k, v, hints[owners[k]][k]) for k, v in args.items()}
        if "registry" not in values:
            raise ValueError("args.registry is required: a registry folder every replica can read, or a hub URL")
        nested = {name: config(**{k: values.pop(k) for k in list(values) if owners[k] is config})
                  for name, config in _NESTED.items()}
        return cls.resolved(values.pop("registry"), **values, **nested)

    def serving_keys(self) -> ServingKeys:
        """The keys requests need: the carried digests, else this process's ``$ADAPTERHUB_API_KEY``
        and ``$ADAPTERHUB_ADMIN_API_KEY`` (a flag replaces its variable, as in ``adapterhub serve``).
        Raises ``ValueError`` as ``ServingKeys.of`` does (e.g. metrics behind a key, but no key)."""
        from adapterhub.server.http.api_keys import ADMIN_API_KEY_ENV, API_KEY_ENV, ServingKeys, keys_from_env

        api = [bytes.fromhex(h) for h in self.api_key_digests]
        admin = [bytes.fromhex(h) for h in self.admin_key_digests]
        env = ServingKeys.of([] if api else keys_from_env(API_KEY_ENV), [] if admin else keys_from_env(ADMIN_API_KEY_ENV))
        keys = ServingKeys(tuple(api) or env.api, tuple(admin) or env.admin, self.metrics_need_key)
        if keys.metrics_need_key and not keys.enabled:
            raise ValueError("metrics_need_key needs an API key (api_key_digests or $ADAPTERHUB_API_KEY)")
        return keys

    def as_args(self) -> dict[str, Any]:
        """The settings as a Ray Serve config's ``args`` (what ``from_args`` reads back), without the
        hub token: a file is no place for it (replicas read ``$ADAPTERHUB_TOKEN``, e.g. from the
        config's ``runtime_env.env_vars`` or the pod's secret)."""
        flat: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in _NESTED:
                flat |= dataclasses.asdict(getattr(self, f.name))
            elif f.name != "token":
                flat[f.name] = getattr(self, f.name)
        out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in flat.items()}
        return {k: v for k, v in out.items() if v is not None and v != []}


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """A config value as its field's type; ``serve run key=value`` gives every value as a string."""
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
    kind = next(t for t in typing.get_args(hint) if t is not type(None)) if optional else hint
    kind = typing.get_origin(kind) or kind
    if kind is tuple:
        items = value.split(",") if isinstance(value, str) else value
        return tuple(str(v).strip() for v in items if str(v).strip())
    if not isinstance(value, str):
        return value
    if optional and value.lower() in ("", "none", "null"):
        return None
    if kind is str:
        return value
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        return kind(value)
    except ValueError:
        raise ValueError(f"args.{name}: {value!r} is not a {kind.__name__}") from None
