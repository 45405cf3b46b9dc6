"""One error table, both ends: every adapterhub error class has a row, a real hub answers each class
with its row, and the remote client raises the same class back."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

from adapterhub.errors import ERROR_TABLE, AdapterHubError, RemoteError
from adapterhub.remote import RemoteRegistry
from adapterhub.retry import RetryPolicy
from remote_helpers import start_hub


def _all_subclasses(cls: type) -> set[type]:
    return {cls}.union(*(_all_subclasses(sub) for sub in cls.__subclasses__()))


def _import_every_module() -> None:
    """Error classes defined anywhere in the package count, not only those some test imported.
    (cli/ and server/ are walked on their own: they are not folders inside hub/.)"""
    for package in ("adapterhub", "adapterhub.cli", "adapterhub.server"):
        root = importlib.import_module(package)
        for module in pkgutil.walk_packages(root.__path__, f"{package}."):
            if not module.name.endswith("__main__"):
                importlib.import_module(module.name)


def test_every_error_class_has_one_row_and_codes_are_unique():
    _import_every_module()
    assert set(ERROR_TABLE) == _all_subclasses(AdapterHubError)
    codes = [wire.code for wire in ERROR_TABLE.values()]
    assert len(set(codes)) == len(codes)
    assert all(400 <= wire.http_status < 600 for wire in ERROR_TABLE.values())


@pytest.fixture
def raising_hub(tmp_path):
    """A real hub on loopback with one extra route that raises the class a code names."""
    hub = start_hub(tmp_path / "hub")
    by_code = {wire.code: cls for cls, wire in ERROR_TABLE.items()}

    def raise_code(code: str):
        raise by_code[code](f"raised {code} on purpose")

    hub.counter.app.add_url_rule("/api/test-raise/<code>", view_func=raise_code)
    yield hub
    hub.handle.close()


@pytest.mark.parametrize("cls", list(ERROR_TABLE), ids=lambda cls: cls.__name__)
def test_remote_client_raises_the_class_the_hub_raised(raising_hub, cls):
    """One try: the class and message as raised (retrying 429/503 is test_client_retries')."""
    wire = ERROR_TABLE[cls]
    with RemoteRegistry(raising_hub.url, token=raising_hub.read_token, retry=RetryPolicy(tries=1)) as remote:
        with pytest.raises(AdapterHubError) as info:
            remote._request("GET", f"/api/test-raise/{wire.code}")
    assert type(info.value) is cls
    assert str(info.value) == f"raised {wire.code} on purpose"
    assert info.value.status == wire.http_status


def test_a_code_of_the_http_layer_is_a_remote_error_with_its_status(hub):
    """``invalid_json`` is the HTTP layer's own refusal, not a hub error class."""
    with RemoteRegistry(hub.url, token=hub.write_token) as remote:
        with pytest.raises(RemoteError) as info:
            remote._request("POST", "/api/objects/check", content=b"not json")
    assert type(info.value) is RemoteError and info.value.status == 400
