"""vLLM's LoRA API on ``adapterhub serve``: the calls of vLLM's documentation work unchanged.

The server runs as a user runs it (``python -m adapterhub.cli serve``, its own process) with vLLM's
``--lora-modules`` in both of vLLM's forms; the load/unload calls send the exact JSON bodies of
vLLM's "Dynamically serving LoRA Adapters" section over plain HTTP, as its ``curl`` lines do; then
the real ``openai`` client generates with ``model=<lora_name>`` and gets PEFT's greedy tokens.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
from urllib.parse import urlsplit

import pytest

from adapterhub.registry import LocalRegistry
from adapterhub.server import start_engine
from adapterhub.serving_config import HttpConfig
from conftest import save_lora
from serving_helpers import peft_greedy, start_serve_process

PROMPT = [5, 17, 42, 9, 33]
STEPS = 6


@pytest.fixture(scope="module")
def served(tiny_base, tmp_path_factory):
    work = tmp_path_factory.mktemp("vllm")
    registry = LocalRegistry(work / "registry")
    folders = {"tenant": save_lora(tiny_base, work / "tenant", seed=1),
               "sql": save_lora(tiny_base, work / "sql", seed=2),
               "boot": save_lora(tiny_base, work / "boot", seed=3)}
    registry.push(folders["tenant"], name="tenant", task="t", base=str(tiny_base))
    proc, url, lines = start_serve_process(
        ["--base", str(tiny_base), "--quantize", "none", "--device", "cpu", "--registry", str(work / "registry"),
         "--lora-modules", f"boot={folders['boot']}",
         "--lora-modules", json.dumps({"name": "tenant-alias", "path": "tenant"})], dict(os.environ))
    try:
        yield url, registry, folders, tiny_base
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


def _post(url: str, path: str, raw_body: str) -> tuple[int, str, bytes]:
    """What ``curl -X POST URL/PATH -H "Content-Type: application/json" -d 'BODY'`` sends."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.request("POST", path, raw_body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    return resp.status, resp.headers.get("Content-Type", ""), raw


def _generate(url: str, model: str) -> list[int]:
    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    done = client.completions.create(model=model, prompt=PROMPT, max_tokens=STEPS, temperature=0,
                                     extra_body={"return_token_ids": True})
    assert done.model == model
    return done.choices[0].model_extra["token_ids"]


def _error(raw: bytes) -> dict:
    doc = json.loads(raw)
    assert set(doc["error"]) >= {"message", "type", "code"}
    return doc["error"]


def test_load_a_peft_folder_as_vllm_documents_it(served):
    url, registry, folders, base = served
    body = '{\n    "lora_name": "sql_adapter",\n    "lora_path": "%s"\n}' % folders["sql"]
    status, ctype, raw = _post(url, "/v1/load_lora_adapter", body)
    assert (status, raw.decode()) == (200, "Success: LoRA adapter 'sql_adapter' added successfully.")
    assert ctype.startswith("text/plain")
    assert _generate(url, "sql_adapter") == peft_greedy(base, folders["sql"], PROMPT, STEPS)
    assert registry.resolve("sql_adapter").task.startswith("served")  # pushed, with its base check

    status, _, raw = _post(url, "/v1/load_lora_adapter", body)  # vLLM: 400 unless load_inplace
    assert status == 400 and _error(raw)["code"] == "already_loaded"
    inplace = json.dumps({"lora_name": "sql_adapter", "lora_path": str(folders["sql"]), "load_inplace": True})
    assert _post(url, "/v1/load_lora_adapter", inplace)[0] == 200
    assert [v.version for v in registry.list(name="sql_adapter")] == [1]  # the same files are not stored twice

    from openai import OpenAI

    models = {m.id for m in OpenAI(base_url=url + "/v1", api_key="unused").models.list()}
    assert {"sql_adapter", "boot", "tenant-alias"} <= models

    status, _, raw = _post(url, "/v1/unload_lora_adapter", '{\n    "lora_name": "sql_adapter"\n}')
    assert (status, raw.decode()) == (200, "Success: LoRA adapter 'sql_adapter' removed successfully.")
    status, _, raw = _post(url, "/v1/unload_lora_adapter", '{\n    "lora_name": "sql_adapter"\n}')
    assert status == 404 and "cannot be found" in _error(raw)["message"]


def test_load_a_registry_reference_under_another_name(served):
    url, registry, folders, base = served
    body = json.dumps({"lora_name": "my-tenant", "lora_path": "tenant@1"})
    assert _post(url, "/v1/load_lora_adapter", body)[0] == 200
    assert _generate(url, "my-tenant") == peft_greedy(base, folders["tenant"], PROMPT, STEPS)
    assert [v.name for v in registry.list()].count("my-tenant") == 0  # an alias, nothing pushed
    assert _post(url, "/v1/unload_lora_adapter", json.dumps({"lora_name": "my-tenant"}))[0] == 200


def test_lora_modules_serve_at_start_up(served):
    url, _, folders, base = served
    assert _generate(url, "boot") == peft_greedy(base, folders["boot"], PROMPT, STEPS)
    assert _generate(url, "tenant-alias") == peft_greedy(base, folders["tenant"], PROMPT, STEPS)


@pytest.mark.parametrize("body, status", [
    ('{"lora_name": "x"}', 400),
    ('{"lora_path": "tenant"}', 400),
    ('{"lora_name": 3, "lora_path": "tenant"}', 400),
    ('{"lora_name": "x", "lora_path": "tenant", "load_inplace": "yes"}', 400),
    ('{"lora_name": "../x", "lora_path": "tenant"}', 400),
    ('{"lora_name": "ghost", "lora_path": "/nonexistent/adapter"}', 404),
    ('[1, 2]', 400),
    ('not json', 400),
])
def test_bad_loads_are_refused_and_change_nothing(served, body, status):
    url, registry, _, _ = served
    before = [v.ref for v in registry.list()]
    got, _, raw = _post(url, "/v1/load_lora_adapter", body)
    assert got == status, raw
    _error(raw)
    assert [v.ref for v in registry.list()] == before


def test_a_folder_that_is_no_adapter_stores_nothing(served, tmp_path):
    url, registry, _, _ = served
    before = [v.ref for v in registry.list()]
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "adapter_config.json").write_text("{not json")
    status, _, raw = _post(url, "/v1/load_lora_adapter", json.dumps({"lora_name": "junk", "lora_path":
                                                                      str(tmp_path / "junk")}))
    assert status == 400 and _error(raw)["code"] == "invalid_adapter"
    assert [v.ref for v in registry.list()] == before


def test_unload_without_a_name_is_400(served):
    url, _, _, _ = served
    status, _, raw = _post(url, "/v1/unload_lora_adapter", "{}")
    assert status == 400 and _error(raw)["code"] == "missing_field"


def test_bad_lora_modules_flag_is_one_line(tmp_path):
    from click.testing import CliRunner

    from adapterhub.cli.main import cli

    result = CliRunner().invoke(cli, ["serve", "--lora-modules", "no-equals-sign"])
    assert result.exit_code == 2 and "--lora-modules" in result.output and "Traceback" not in result.output


def test_load_and_unload_need_the_admin_key(tiny_base, tmp_path):
    from adapterhub.server.engine.engine import create_engine
    from adapterhub.server.engine.model_loader import load_base_model
    from adapterhub.server.http.api_keys import ServingKeys
    from adapterhub.server.http.app import create_app

    registry = LocalRegistry(tmp_path / "registry")
    registry.push(save_lora(tiny_base, tmp_path / "lora"), name="tenant", task="t", base=str(tiny_base))
    with create_engine(load_base_model(str(tiny_base), quantize="none", device="cpu"), registry) as engine:
        client = create_app(registry, engine=engine, keys=ServingKeys.of(["user"], ["admin"])).test_client()
        body = {"lora_name": "t", "lora_path": "tenant"}
        assert client.post("/v1/load_lora_adapter", json=body).status_code == 401
        assert client.post("/v1/load_lora_adapter", json=body,
                           headers={"Authorization": "Bearer user"}).status_code == 403
        assert client.post("/v1/load_lora_adapter", json=body,
                           headers={"Authorization": "Bearer admin"}).status_code == 200
        assert client.post("/v1/unload_lora_adapter", json={"lora_name": "t"},
                           headers={"Authorization": "Bearer user"}).status_code == 403
        assert client.post("/v1/unload_lora_adapter", json={"lora_name": "t"},
                           headers={"Authorization": "Bearer admin"}).status_code == 200


def test_a_client_names_server_folders_only_behind_admin_keys_or_on_loopback(tiny_base, tmp_path):
    import adapterhub
    from adapterhub.server.http.lora_names import client_folders_allowed

    assert client_folders_allowed("127.0.0.1", admin_keys=False) and client_folders_allowed("::1", admin_keys=False)
    assert client_folders_allowed("localhost", admin_keys=False)
    assert not client_folders_allowed("0.0.0.0", admin_keys=False) and not client_folders_allowed("::", admin_keys=False)
    assert client_folders_allowed("0.0.0.0", admin_keys=True)

    registry = LocalRegistry(tmp_path / "registry")
    folder = save_lora(tiny_base, tmp_path / "secret", seed=4)
    registry.push(folder, name="known", task="t", base=str(tiny_base))
    # Listening on every interface with no admin key: a client may not make the server read folders.
    with start_engine(tiny_base, registry=registry, quantize="none", device="cpu",
                      http=HttpConfig(host="0.0.0.0", port=0)) as handle:
        url = f"http://127.0.0.1:{handle.server.port}"
        before = [v.ref for v in registry.list()]
        status, _, raw = _post(url, "/v1/load_lora_adapter", json.dumps({"lora_name": "x", "lora_path": str(folder)}))
        assert status == 403 and "push the adapter" in _error(raw)["message"]
        assert [v.ref for v in registry.list()] == before  # nothing read, nothing stored
        status, _, _ = _post(url, "/v1/load_lora_adapter", json.dumps({"lora_name": "y", "lora_path": "known"}))
        assert status == 200
