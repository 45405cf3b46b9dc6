"""Both registries implement the ``Registry`` protocol call for call, and ``open_registry`` hands
out one of them for each kind of location."""

from __future__ import annotations

import inspect

import pytest

from adapterhub.location import open_registry
from adapterhub.registry import LocalRegistry
from adapterhub.registry_protocol import Registry
from adapterhub.remote import RemoteRegistry

_MEMBERS = sorted(name for name in vars(Registry) if not name.startswith("_"))


def _parameters(func) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(func).parameters.values()]


@pytest.mark.parametrize("cls", [LocalRegistry, RemoteRegistry])
@pytest.mark.parametrize("member", _MEMBERS)
def test_registry_implements_every_call_with_the_protocol_signature(cls, member):
    declared, implemented = inspect.getattr_static(Registry, member), inspect.getattr_static(cls, member)
    if isinstance(declared, property):
        assert isinstance(implemented, property)
    else:
        assert _parameters(implemented) == _parameters(declared)


def test_open_registry_picks_the_kind_by_location(tmp_path):
    assert isinstance(open_registry(tmp_path / "reg"), LocalRegistry)
    with open_registry("http://127.0.0.1:9") as remote:
        assert isinstance(remote, RemoteRegistry)


def test_object_path_is_local_only(tmp_path, hub, make_lora):
    local = LocalRegistry(tmp_path / "reg", durable=False)
    entry = local.push(make_lora(), name="a", task="t").file("adapter_model.safetensors")
    assert local.object_path(entry.sha256).read_bytes()
    with RemoteRegistry(hub.url) as remote:
        assert remote.object_path(entry.sha256) is None
