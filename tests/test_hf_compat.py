"""The Hugging Face Hub download protocol: the real ``huggingface_hub`` client and real PEFT, pointed at a hub on
loopback with ``HF_ENDPOINT``, download adapters whose logits equal the pushed ones; ``hf://`` imports work.

``huggingface_hub`` reads ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` when it is imported, so the client side runs
in a fresh interpreter with its own environment and cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from adapterhub.registry import LocalRegistry
from adapterhub.remote import RemoteRegistry
from remote_helpers import start_hub
from adapterhub.server.http.auth import READ_TOKEN_REQUIRED

INPUT_IDS = [[257, 72, 101, 108, 108, 111, 33, 10]]

CLIENT = textwrap.dedent(
    """
    import hashlib, json, sys
    from pathlib import Path
    import torch
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, out, commit1 = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    result = {"snapshots": {}, "errors": {}}

    def digests(folder):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(folder).iterdir() if p.is_file()}

    for rev in ["main", "prod", "1", "2", commit1]:
        result["snapshots"][rev] = digests(snapshot_download("sent", revision=rev))
    result["local_dir"] = digests(snapshot_download("sent", revision="prod", local_dir=out / "local"))
    result["single"] = hashlib.sha256(
        Path(hf_hub_download("sent", "adapter_model.safetensors", revision="1")).read_bytes()).hexdigest()
    info = HfApi().model_info("sent", revision="prod")
    result["info"] = {"sha": info.sha, "siblings": sorted(s.rfilename for s in info.siblings)}

    for label, call, cls in [
        ("repo", lambda: hf_hub_download("no-such-adapter", "adapter_config.json"), RepositoryNotFoundError),
        ("revision", lambda: hf_hub_download("sent", "adapter_config.json", revision="nosuchtag"), RevisionNotFoundError),
        ("entry", lambda: hf_hub_download("sent", "pytorch_model.bin"), EntryNotFoundError),
    ]:
        try:
            call()
            result["errors"][label] = "no error"
        except cls:
            result["errors"][label] = "ok"
        except Exception as e:
            result["errors"][label] = f"{type(e).__name__}: {e}"

    closed_url, read_token = sys.argv[5], sys.argv[6]
    result["closed_with_token"] = hashlib.sha256(Path(hf_hub_download(
        "sent", "adapter_config.json", endpoint=closed_url, token=read_token, cache_dir=out / "closed")).read_bytes()).hexdigest()
    try:
        hf_hub_download("sent", "adapter_model.safetensors", endpoint=closed_url, token=False, cache_dir=out / "anon")
        result["closed_without_token"] = "downloaded"
    except Exception as e:
        result["closed_without_token"] = str(e).splitlines()[0]

    ids = torch.tensor(json.loads(sys.argv[4]))
    for rev in ["prod", "2"]:
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), "sent", revision=rev).eval()
        with torch.no_grad():
            torch.save(model(ids).logits, out / f"logits-{rev}.pt")
    print(json.dumps(result))
    """
)


def _client_env(tmp_path: Path, url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="0",
               HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false")
    return env


def _logits(base: Path, adapter: Path) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    with torch.no_grad():
        return model(torch.tensor(INPUT_IDS)).logits


@pytest.fixture
def closed_hub(tmp_path):
    h = start_hub(tmp_path / "closed-hub", config={READ_TOKEN_REQUIRED: True})
    yield h
    h.handle.close()


def test_huggingface_hub_and_peft_download_from_the_hub(hub, closed_hub, make_lora, tiny_base, tmp_path):
    first, second = make_lora("first", seed=1), make_lora("second", seed=2, r=8, target_modules=["q_proj", "o_proj"])
    remote = RemoteRegistry(hub.url, token=hub.write_token)
    v1 = remote.push(first, name="sent", task="sentiment", tags=["prod"])
    v2 = remote.push(second, name="sent", task="sentiment")
    RemoteRegistry(closed_hub.url, token=closed_hub.write_token).push(first, name="sent", task="sentiment")
    out = tmp_path / "client"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", CLIENT, str(tiny_base), str(out), v1.digest[:40], json.dumps(INPUT_IDS),
         closed_hub.url, closed_hub.read_token],
        env=_client_env(tmp_path, hub.url), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])

    want1 = {f.path: f.sha256 for f in v1.files}
    want2 = {f.path: f.sha256 for f in v2.files}
    snaps = result["snapshots"]
    assert snaps["prod"] == snaps["1"] == snaps[v1.digest[:40]] == want1
    assert snaps["main"] == snaps["2"] == want2  # main is the latest version
    assert result["local_dir"] == want1
    assert result["single"] == want1["adapter_model.safetensors"]
    assert result["info"] == {"sha": v1.digest[:40], "siblings": sorted(want1)}
    assert result["errors"] == {"repo": "ok", "revision": "ok", "entry": "ok"}
    assert result["closed_with_token"] == want1["adapter_config.json"]
    assert "401 UNAUTHORIZED" in result["closed_without_token"]

    assert torch.equal(torch.load(out / "logits-prod.pt"), _logits(tiny_base, first))
    assert torch.equal(torch.load(out / "logits-2.pt"), _logits(tiny_base, second))
    assert not torch.equal(torch.load(out / "logits-prod.pt"), torch.load(out / "logits-2.pt"))


def test_hf_url_import_from_a_hub_compatible_endpoint(hub, lora_for_import, tmp_path):
    RemoteRegistry(hub.url, token=hub.write_token).push(lora_for_import, name="sent", task="sentiment")
    local = tmp_path / "local-registry"
    cmd = [str(Path(sys.executable).parent / "adapterhub"), "pull", "hf://sent@1", "-o", str(tmp_path / "out"),
           "--registry", str(local), "--json"]
    env = _client_env(tmp_path, hub.url)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["name"] == "sent" and doc["version"] == 1
    assert doc["lineage"][0]["source"] == "hf://sent" and doc["lineage"][0]["endpoint"] == hub.url
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        assert (tmp_path / "out" / f).read_bytes() == (lora_for_import / f).read_bytes()
    assert LocalRegistry(local).resolve("sent").digest == hub.registry.resolve("sent@1").digest

    again = subprocess.run(cmd + ["--force"], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert [v.ref for v in LocalRegistry(local).list()] == ["sent@1"]  # same bytes: no second version

    missing = subprocess.run(cmd[:2] + ["hf://org/absent", "-o", str(tmp_path / "o2"), "--registry", str(local)],
                             env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1
    assert missing.stderr.startswith("Error: cannot import hf://org/absent from " + hub.url)
    assert "Traceback" not in missing.stderr and not (tmp_path / "o2").exists()


@pytest.fixture
def lora_for_import(make_lora):
    return make_lora("importable")


def test_repo_info_and_tree_shapes(hub, make_lora):
    """What the client parses: siblings, sha, and the tree entries with their LFS sha256."""
    v = RemoteRegistry(hub.url, token=hub.write_token).push(make_lora("x"), name="sent", task="t")
    from adapterhub.server.http.app import create_app

    client = create_app(hub.registry).test_client()
    info = client.get("/api/models/sent/revision/main")
    assert info.status_code == 200 and info.headers["X-Repo-Commit"] == v.digest[:40]
    tree = client.get("/api/models/sent/tree/main?recursive=true&expand=false").get_json()
    assert {e["path"]: (e["lfs"]["oid"], e["size"]) for e in tree} == {f.path: (f.sha256, f.size) for f in v.files}
    head = client.head("/sent/resolve/main/adapter_model.safetensors")
    entry = v.file("adapter_model.safetensors")
    assert head.status_code == 200
    assert head.headers["ETag"] == f'"{entry.sha256}"' and int(head.headers["Content-Length"]) == entry.size
    assert "X-Xet-Hash" not in head.headers
    part = client.get("/sent/resolve/main/adapter_model.safetensors", headers={"Range": "bytes=100-"})
    assert part.status_code == 206 and len(part.data) == entry.size - 100
    missing = client.get("/sent/resolve/main/nothing.bin")
    assert missing.status_code == 404 and missing.headers["X-Error-Code"] == "EntryNotFound"
    assert missing.headers["X-Repo-Commit"] == v.digest[:40]


def test_resolve_streams_ranges_and_cuts_a_corrupted_object_short(hub, make_lora):
    """The HF client checks only sizes, so the hub re-hashes what it serves and never completes a bad body."""
    import httpx2

    v = RemoteRegistry(hub.url, token=hub.write_token).push(make_lora("x"), name="sent", task="t")
    entry = v.file("adapter_model.safetensors")
    data = hub.registry.object_path(entry.sha256).read_bytes()
    url = f"{hub.url}/sent/resolve/main/adapter_model.safetensors"
    assert httpx2.get(url).content == data
    for header, want in (("bytes=100-", data[100:]), ("bytes=-50", data[-50:]), ("bytes=10-19", data[10:20])):
        r = httpx2.get(url, headers={"Range": header})
        assert r.status_code == 206 and r.content == want
        assert r.headers["Content-Range"].endswith(f"/{entry.size}")
    assert httpx2.get(url, headers={"Range": f"bytes={entry.size + 5}-"}).status_code == 416

    obj = hub.registry.object_path(entry.sha256)
    obj.chmod(0o644)
    obj.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one flipped bit, same size
    with pytest.raises(httpx2.HTTPError):
        httpx2.get(url)  # the body stops short of its Content-Length
    head = httpx2.head(url)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == entry.size
