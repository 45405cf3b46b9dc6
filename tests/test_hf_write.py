"""The Hugging Face Hub write side: the real ``huggingface_hub`` client and real PEFT against a hub on
loopback create ``org/name`` repos, upload PEFT folders (inline and through Git LFS), ``push_to_hub``
and read back identical logits; every commit is one registry version, pushed through the same checks
as ``adapterhub push``; bad commits, read-only tokens, traversal names and oversized bodies are 4xx
and change nothing.

``huggingface_hub`` reads ``HF_ENDPOINT`` when it is imported, so the client runs in a fresh
interpreter (one for the whole scenario: importing torch, transformers and PEFT is the slow part).
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import textwrap

import httpx2
import pytest
import torch
from click.testing import CliRunner

from adapterhub.cli.main import cli
from adapterhub.registry import LocalRegistry
from adapterhub.remote import RemoteRegistry
from adapterhub.server.http.hf_commit import HF_INLINE_MAX_BYTES
from adapterhub.server.http.registry_api import MAX_COMMIT_BYTES, MAX_OBJECT_BYTES
from conftest import snapshot
from remote_helpers import start_hub
from test_hf_compat import INPUT_IDS, _client_env, _logits

CLIENT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, out, lora, prompt, pushed_src, lfs_url, lfs_write, write, read = sys.argv[1:10]
    out, ids = Path(out), torch.tensor(json.loads(sys.argv[10]))
    api, result = HfApi(token=write), {}

    def logits(model):
        with torch.no_grad():
            return model.eval()(ids).logits

    def status(call):
        try:
            call()
            return 200
        except HfHubHTTPError as e:
            return e.response.status_code

    result["created"] = str(api.create_repo("org/lora"))
    result["create_again"] = status(lambda: api.create_repo("org/lora"))
    result["exist_ok"] = str(api.create_repo("org/lora", exist_ok=True))
    result["upload"] = api.upload_folder(repo_id="org/lora", folder_path=lora).oid
    api.create_repo("org/prompt")
    result["upload_prompt"] = api.upload_folder(repo_id="org/prompt", folder_path=prompt).oid

    original = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), pushed_src)
    want = logits(original)
    result["push_to_hub"] = original.push_to_hub("org/pushed", token=write).oid
    again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), "org/pushed")
    result["pushed_identical"] = bool(torch.equal(logits(again), want))
    torch.save(logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), "org/lora")),
               out / "lora.pt")
    torch.save(logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), "org/prompt")),
               out / "prompt.pt")

    result["filter_lora"] = sorted(m.id for m in api.list_models(filter="lora"))
    result["filter_prompt"] = sorted(m.id for m in api.list_models(filter=["peft", "prompt_tuning"]))
    result["search"] = sorted(m.id for m in api.list_models(search="push"))
    result["author"] = sorted(m.id for m in api.list_models(author="org"))
    refs = api.list_repo_refs("org/lora")
    result["refs"] = {"branches": [(b.name, b.target_commit) for b in refs.branches],
                      "tags": [(t.name, t.target_commit) for t in refs.tags]}
    result["commits"] = [c.commit_id for c in api.list_repo_commits("org/lora")]
    result["whoami"] = api.whoami()
    result["whoami_read"] = HfApi(token=read).whoami()["auth"]["accessToken"]["role"]

    ro = HfApi(token=read)
    result["read_only"] = {
        "create": status(lambda: ro.create_repo("org/other")),
        "upload": status(lambda: ro.upload_folder(repo_id="org/lora", folder_path=prompt)),
        "delete": status(lambda: ro.delete_repo("org/lora")),
    }

    # Files over the hub's inline limit go through Git LFS, which this client speaks when told not
    # to use Xet; a second upload of the same bytes finds every object present and sends none.
    constants.HF_HUB_DISABLE_XET = True
    lfs = HfApi(endpoint=lfs_url, token=lfs_write)
    lfs.create_repo("org/lfs")
    result["lfs_upload"] = lfs.upload_folder(repo_id="org/lfs", folder_path=lora).oid
    lfs.create_repo("org/lfs-again")
    result["lfs_again"] = lfs.upload_folder(repo_id="org/lfs-again", folder_path=lora).oid

    api.create_repo("org/gone")
    api.delete_repo("org/gone")
    try:
        api.model_info("org/gone")
        result["deleted"] = "still there"
    except RepositoryNotFoundError:
        result["deleted"] = "ok"
    print(json.dumps(result))
    """
)


@pytest.fixture
def lfs_hub(tmp_path):
    """A hub whose inline limit sends every adapter weight file through Git LFS."""
    h = start_hub(tmp_path / "lfs-hub", config={HF_INLINE_MAX_BYTES: 1024})
    yield h
    h.handle.close()


def test_huggingface_hub_creates_uploads_and_push_to_hub_against_the_hub(hub, lfs_hub, make_lora, make_prompt,
                                                                        tiny_base, tmp_path):
    lora, prompt = make_lora("lora", seed=1), make_prompt("prompt", seed=2)
    pushed_src = make_lora("pushed", seed=3, r=8, target_modules=["q_proj", "o_proj"])
    out = tmp_path / "client"
    out.mkdir()
    env = _client_env(tmp_path, hub.url) | {"HF_TOKEN": hub.write_token}
    proc = subprocess.run(
        [sys.executable, "-c", CLIENT, str(tiny_base), str(out), str(lora), str(prompt), str(pushed_src),
         lfs_hub.url, lfs_hub.write_token, hub.write_token, hub.read_token, json.dumps(INPUT_IDS)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])

    assert r["created"] == r["exist_ok"] == f"{hub.url}/org/lora" and r["create_again"] == 409
    v_lora, v_prompt, v_pushed = (hub.registry.resolve(n) for n in ("org/lora", "org/prompt", "org/pushed"))
    assert r["upload"] == v_lora.digest[:40] and r["upload_prompt"] == v_prompt.digest[:40]
    assert r["push_to_hub"] == v_pushed.digest[:40] and v_pushed.adapter_type == "lora"
    # each commit is one version, with exactly the adapter's bytes
    assert {f.path: f.sha256 for f in v_lora.files} == {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in lora.iterdir()}
    assert [v.ref for v in hub.registry.list()] == ["org/lora@1", "org/prompt@1", "org/pushed@1"]
    assert r["pushed_identical"] is True
    assert torch.equal(torch.load(out / "lora.pt"), _logits(tiny_base, lora))
    assert torch.equal(torch.load(out / "prompt.pt"), _logits(tiny_base, prompt))

    assert r["filter_lora"] == ["org/lora", "org/pushed"] and r["filter_prompt"] == ["org/prompt"]
    assert r["search"] == ["org/pushed"] and r["author"] == ["org/lora", "org/prompt", "org/pushed"]
    assert r["refs"] == {"branches": [["main", v_lora.digest[:40]]], "tags": []}
    assert r["commits"] == [v_lora.digest[:40]]
    assert r["whoami"]["name"] == "tests" and r["whoami"]["auth"]["accessToken"]["role"] == "write"
    assert r["whoami_read"] == "read"
    assert r["read_only"] == {"create": 403, "upload": 403, "delete": 403}
    assert r["deleted"] == "ok"

    lfs_versions = {v.name: v for v in lfs_hub.registry.list()}
    assert r["lfs_upload"] == r["lfs_again"] == lfs_versions["org/lfs"].digest[:40]
    assert lfs_versions["org/lfs"].digest == lfs_versions["org/lfs-again"].digest == v_lora.digest
    weights = lfs_versions["org/lfs"].file("adapter_model.safetensors")
    batch = httpx2.post(f"{lfs_hub.url}/org/lfs.git/info/lfs/objects/batch", headers=_auth(lfs_hub.write_token),
                        json={"operation": "upload", "transfers": ["basic"],
                              "objects": [{"oid": weights.sha256, "size": weights.size}]}).json()
    assert batch["transfer"] == "basic" and batch["objects"] == [{"oid": weights.sha256, "size": weights.size}]

    for h in (hub, lfs_hub):
        report = h.registry.verify()
        assert report.ok and not report.orphans and not report.temporaries, report.to_dict()
    # the registry side sees the same org/name adapters
    shown = CliRunner().invoke(cli, ["show", "org/pushed", "--registry", hub.url, "--json"])
    assert shown.exit_code == 0 and json.loads(shown.output)["name"] == "org/pushed"


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _commit_body(*ops: dict, summary: str = "up") -> bytes:
    lines = [{"key": "header", "value": {"summary": summary, "description": ""}}, *ops]
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines)


def _inline(path: str, data: bytes) -> dict:
    return {"key": "file", "value": {"path": path, "content": base64.b64encode(data).decode(), "encoding": "base64"}}


@pytest.fixture
def small_hub(tmp_path):
    h = start_hub(tmp_path / "small-hub", config={MAX_COMMIT_BYTES: 200_000, MAX_OBJECT_BYTES: 100_000})
    yield h
    h.handle.close()


def test_bad_commits_tokens_names_and_sizes_are_refused_and_change_nothing(small_hub, make_lora):
    hub, lora = small_hub, make_lora("lora", seed=1)
    client = httpx2.Client(base_url=hub.url, timeout=30)
    w, ro = _auth(hub.write_token), _auth(hub.read_token)
    assert client.post("/api/repos/create", headers=w, json={"name": "name", "organization": "org"}).status_code == 200
    files = [_inline(p.name, p.read_bytes()) for p in sorted(lora.iterdir())]
    good = client.post("/api/models/org/name/commit/main", headers=w, content=_commit_body(*files))
    assert good.status_code == 200, good.text
    before = snapshot(hub.registry.root)

    def refused(response, status: int, says: str) -> None:
        assert response.status_code == status, response.text
        message = response.json()["error"]["message"]
        assert says in message and "\n" not in message and str(hub.registry.root) not in message
        assert snapshot(hub.registry.root) == before

    bad_config = _inline("adapter_config.json", b"{not json")
    refused(client.post("/api/models/org/name/commit/main", headers=w, content=_commit_body(bad_config)), 400,
            "adapter_config.json")
    refused(client.post("/api/models/org/name/commit/main", headers=w,
                        content=_commit_body(_inline("training_args.bin", b"x"))), 400, "not part of a PEFT")
    refused(client.post("/api/models/org/name/commit/main", headers=w,
                        content=_commit_body({"key": "deletedFile", "value": {"path": "adapter_model.safetensors"}})),
            400, "adapter_model")
    refused(client.post("/api/models/org/name/commit/main", headers=w,
                        content=_commit_body(_inline("sub/adapter_config.json", b"{}"))), 400, "plain files")
    refused(client.post("/api/models/org/name/commit/main", headers=w, content=b"not json\n"), 400, "JSON lines")
    refused(client.post("/api/models/org/name/commit/main", headers=w,
                        content=_commit_body({"key": "lfsFile", "value": {"path": "adapter_model.safetensors",
                                                                          "algo": "sha256", "oid": "0" * 64}})),
            409, "upload object")
    refused(client.post("/api/models/org/name/commit/v2", headers=w, content=_commit_body()), 400, "main")
    refused(client.post("/api/models/org/absent/commit/main", headers=w, content=_commit_body(*files)), 404, "absent")
    # over the commit body limit: refused from its headers, before the body is read
    refused(client.post("/api/models/org/name/commit/main", headers=w, content=b"x" * 300_000), 413, "limit")

    # a read-only token may do none of the writes
    writes = [
        ("POST", "/api/repos/create", {"json": {"name": "x"}}),
        ("DELETE", "/api/repos/delete", {"json": {"name": "name", "organization": "org"}}),
        ("POST", "/api/models/org/name/preupload/main", {"json": {"files": []}}),
        ("POST", "/api/models/org/name/commit/main", {"content": _commit_body(*files)}),
        ("POST", "/org/name.git/info/lfs/objects/batch", {"json": {"operation": "upload", "objects": []}}),
    ]
    for method, url, kw in writes:
        refused(client.request(method, url, headers=ro, **kw), 403, "read scope")
        refused(client.request(method, url, **kw), 401, "token")
    assert client.get("/api/whoami-v2").status_code == 401
    assert client.get("/api/whoami-v2", headers=_auth("ahub_unknown")).status_code == 401

    # traversal and malformed repo ids
    for name, org in [("..", "org"), ("a", ".."), ("b", "a/c"), ("a\\b", None), ("", "org"), ("-x", None)]:
        refused(client.post("/api/repos/create", headers=w, json={"name": name, "organization": org}), 400, "invalid")
    assert client.get("/api/models/a/b/c").status_code == 404
    assert client.get("/org/..%2F..%2Fetc/resolve/main/passwd").status_code == 404

    # LFS: forged or reused links, wrong bytes, objects over the limit
    data = b"0123456789" * 100
    oid = hashlib.sha256(data).hexdigest()
    batch = client.post("/org/name.git/info/lfs/objects/batch", headers=w,
                        json={"operation": "upload", "objects": [{"oid": oid, "size": len(data)},
                                                                 {"oid": "a" * 64, "size": 200_000}]}).json()
    assert batch["objects"][1]["error"]["code"] == 413 and "actions" not in batch["objects"][1]
    href = batch["objects"][0]["actions"]["upload"]["href"]
    refused(client.put(href[:-1] + ("0" if href[-1] != "0" else "1"), content=data), 403, "not valid")
    refused(client.put(href, content=data[:-1] + b"!"), 400, "sha256")
    assert not hub.registry.store.has(oid)
    assert client.put(href, content=data).status_code == 200 and hub.registry.store.has(oid)


def test_org_names_through_the_cli_and_the_registry_api(hub, make_lora, tmp_path):
    lora = make_lora("lora", seed=1)
    local = tmp_path / "local"
    run = CliRunner().invoke
    for registry in (str(local), hub.url):
        auth = ["--token", hub.write_token] if registry == hub.url else []
        pushed = run(cli, ["push", str(lora), "--name", "org/sent", "--task", "t", "--registry", registry, *auth])
        assert pushed.exit_code == 0, pushed.output
        assert run(cli, ["tag", "org/sent@1", "prod", "--registry", registry, *auth]).exit_code == 0
        out = tmp_path / f"out-{len(registry)}"
        pulled = run(cli, ["pull", "org/sent:prod", "-o", str(out), "--registry", registry])
        assert pulled.exit_code == 0, pulled.output
        assert (out / "adapter_model.safetensors").read_bytes() == (lora / "adapter_model.safetensors").read_bytes()
        shown = run(cli, ["show", "org/sent@1", "--registry", registry, "--json"])
        assert json.loads(shown.output)["name"] == "org/sent"
        assert run(cli, ["rm", "org/sent", "--all", "--registry", registry, *auth]).exit_code == 0
    assert LocalRegistry(local).list() == [] and hub.registry.list() == []
    bad = run(cli, ["push", str(lora), "--name", "org/../x", "--task", "t", "--registry", str(local)])
    assert bad.exit_code != 0 and len(bad.output.strip().splitlines()) == 1
    RemoteRegistry(hub.url, token=hub.write_token).push(lora, name="org/web", task="t")
    page = httpx2.get(hub.url + "/")
    assert page.status_code == 200 and "org/web" in page.text
