"""Who gets into ``adapterhub serve``: API keys on /v1, admin keys for load/unload, the hub routes only on request.

The server runs as a user runs it (``python -m adapterhub.cli serve`` in its own process), the API
key from ``$ADAPTERHUB_API_KEY`` and the admin key from its flag; the client is the real ``openai``
package wherever one is involved.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from adapterhub.cli.main import cli
from adapterhub.registry import LocalRegistry
from conftest import save_lora
from serving_helpers import start_serve_process

API_KEYS = ("env-key-one", "env-key-two")
ADMIN_KEY = "admin-key-7f3a"


@pytest.fixture(scope="module")
def served(tiny_base, tmp_path_factory):
    work = tmp_path_factory.mktemp("auth")
    registry = LocalRegistry(work / "registry")
    registry.push(save_lora(tiny_base, work / "lora"), name="tenant", task="t", base=str(tiny_base))
    env = dict(os.environ, ADAPTERHUB_API_KEY=",".join(API_KEYS))
    proc, url, lines = start_serve_process(
        ["--base", str(tiny_base), "--quantize", "none", "--device", "cpu", "--registry", str(work / "registry"),
         "--admin-api-key", ADMIN_KEY, "--metrics-auth"], env)
    try:
        yield url, lines, tiny_base
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


def _request(url: str, method: str, path: str, body: dict | None = None, key: str | None = None):
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    conn.request(method, path, None if body is None else json.dumps(body), headers)
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    return resp.status, resp.headers, raw


def test_the_openai_client_needs_a_key(served):
    from openai import AuthenticationError, OpenAI

    url, _, base = served
    with pytest.raises(AuthenticationError) as refused:
        OpenAI(base_url=url + "/v1", api_key="not-a-key", max_retries=0).completions.create(
            model=str(base), prompt="hi", max_tokens=2)
    assert refused.value.status_code == 401
    assert "not-a-key" not in refused.value.response.text
    for key in API_KEYS:  # both keys of the comma-separated variable
        client = OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
        done = client.completions.create(model="tenant", prompt="hi", max_tokens=3, temperature=0)
        assert done.choices[0].finish_reason in ("stop", "length")
        assert "tenant" in [m.id for m in client.models.list().data]


@pytest.mark.parametrize("method, path", [("GET", "/v1/models"), ("POST", "/v1/completions"),
                                          ("POST", "/v1/chat/completions"), ("POST", "/v1/adapters/load"),
                                          ("GET", "/v1/no-such-route")])
def test_every_v1_route_answers_401_without_a_key(served, method, path):
    url, _, base = served
    status, headers, raw = _request(url, method, path, {"model": str(base), "prompt": "x"})
    assert status == 401, raw
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert json.loads(raw)["error"]["code"] == "missing_api_key"
    status, _, raw = _request(url, method, path, {"model": str(base), "prompt": "x"}, key="Bearer-wrong")
    assert status == 401 and json.loads(raw)["error"]["code"] == "invalid_api_key"


def test_load_and_unload_need_the_admin_key(served):
    url, _, _ = served
    for path in ("/v1/adapters/load", "/v1/adapters/unload"):
        status, _, raw = _request(url, "POST", path, {"model": "tenant"}, key=API_KEYS[0])
        assert status == 403 and json.loads(raw)["error"]["code"] == "admin_key_required"
    status, _, raw = _request(url, "POST", "/v1/adapters/load", {"model": "tenant"}, key=ADMIN_KEY)
    assert status == 200 and json.loads(raw)["loaded"] is True
    status, _, raw = _request(url, "POST", "/v1/adapters/unload", {"model": "tenant"}, key=ADMIN_KEY)
    assert status == 200 and json.loads(raw)["loaded"] is False
    status, _, _ = _request(url, "POST", "/v1/completions", {"model": "tenant", "prompt": "x", "max_tokens": 1},
                            key=ADMIN_KEY)
    assert status == 200  # an admin key may generate too


def test_health_is_open_metrics_needs_a_key_and_the_hub_routes_are_absent(served):
    url, _, _ = served
    status, _, raw = _request(url, "GET", "/health")
    assert status == 200 and json.loads(raw)["status"] == "ok"
    assert _request(url, "GET", "/metrics")[0] == 401
    status, _, raw = _request(url, "GET", "/metrics", key=API_KEYS[1])
    assert status == 200 and b"adapterhub_requests_total" in raw
    for path in ("/", "/api/versions", "/api/models/tenant", "/tenant/resolve/main/adapter_config.json"):
        status, _, raw = _request(url, "GET", path, key=API_KEYS[0])
        assert status == 404, path


def test_a_body_without_a_key_is_not_read(served):
    """The key is checked from the headers: a client announcing 100 MB gets its 401 without sending it."""
    url, _, _ = served
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000000\r\n\r\n{\"prompt\": \"")
        started = time.monotonic()
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 401") and time.monotonic() - started < 2


def test_keys_never_reach_the_log(served):
    url, lines, _ = served
    _request(url, "POST", "/v1/completions", {"model": "x", "prompt": "x"}, key="a-wrong-secret-key")
    text = "".join(lines)
    assert "API key required" in text
    for secret in (*API_KEYS, ADMIN_KEY, "a-wrong-secret-key"):
        assert secret not in text


def test_hub_routes_mount_with_with_hub_and_keep_the_hub_token_rules(tiny_base, tmp_path):
    from adapterhub.server.engine.engine import create_engine
    from adapterhub.server.engine.model_loader import load_base_model
    from adapterhub.server.http.api_keys import ServingKeys
    from adapterhub.server.http.app import create_app

    registry = LocalRegistry(tmp_path / "reg")
    registry.push(save_lora(tiny_base, tmp_path / "lora"), name="shared", task="t", base=str(tiny_base))
    engine = create_engine(load_base_model(str(tiny_base), quantize="none", device="cpu"), registry)
    keys = ServingKeys.of(["serving-key"])
    hidden = create_app(registry, engine=engine, keys=keys).test_client()
    assert hidden.get("/api/versions").status_code == 404 and hidden.get("/").status_code == 404
    client = create_app(registry, engine=engine, keys=keys, with_hub=True).test_client()
    versions = client.get("/api/versions")  # the hub's rules: reads open, no serving key involved
    assert versions.status_code == 200 and "shared" in versions.get_data(as_text=True)
    assert client.get("/").status_code == 200
    assert client.delete("/api/versions/shared@1").status_code == 401  # writes need a hub token
    assert client.get("/v1/models").status_code == 401  # while /v1 keeps the serving keys


@pytest.mark.parametrize("args, message", [
    (["--api-key", " "], "API key must be non-empty"),
    (["--admin-api-key", "two words"], "without spaces"),
    (["--metrics-auth"], "needs an API key"),
    (["--with-hub", "--registry", "http://127.0.0.1:9/"], "--with-hub serves a registry folder"),
])
def test_serve_refuses_bad_access_options(args, message, monkeypatch):
    monkeypatch.delenv("ADAPTERHUB_API_KEY", raising=False)
    result = CliRunner().invoke(cli, ["serve", *args])
    assert result.exit_code == 2 and message in result.output, result.output
