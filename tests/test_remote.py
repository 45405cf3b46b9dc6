"""The registry over HTTP against a real hub on loopback: round trips, deduplicated pushes, resumed pulls,
concurrent clients, a hub killed mid-upload, and the CLI with a URL as its registry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

from adapterhub.cli.main import cli
from adapterhub.errors import DigestMismatch, RemoteError
from adapterhub.registry import LocalRegistry
from adapterhub.remote import RemoteRegistry

FILES = ("adapter_config.json", "adapter_model.safetensors")


@pytest.fixture
def lora(make_lora):
    return make_lora("sentiment-lora")


def _logits(base: Path, adapter: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    with torch.no_grad():
        return model(torch.tensor([[257, 72, 105, 33, 10, 65]])).logits


def test_push_and_pull_round_trip_gives_identical_logits(hub, lora, tiny_base, tmp_path):
    import torch

    remote = RemoteRegistry(hub.url, token=hub.write_token)
    pushed = remote.push(lora, name="sent", task="sentiment", tags=["prod"], metrics={"acc": 0.91})
    assert pushed.ref == "sent@1" and set(pushed.tags) == {"latest", "prod"}
    assert hub.registry.resolve("sent:prod").digest == pushed.digest  # it landed in the hub's folder

    reader = RemoteRegistry(hub.url)  # reads are open by default
    got = reader.pull("sent:prod", tmp_path / "out")
    assert got.digest == pushed.digest and got.metrics == {"acc": 0.91}
    for name in FILES:
        assert (tmp_path / "out" / name).read_bytes() == (lora / name).read_bytes()
    assert not list((tmp_path / "out").glob(".*.part"))
    assert torch.equal(_logits(tiny_base, lora), _logits(tiny_base, tmp_path / "out"))


def test_list_show_tag_metrics_remove(hub, lora, make_prompt):
    remote = RemoteRegistry(hub.url, token=hub.write_token)
    remote.push(lora, name="a", task="sentiment")
    remote.push(make_prompt(), name="p", task="summary")
    remote.push(lora, name="a", task="sentiment")
    assert [v.ref for v in remote.list()] == ["a@1", "a@2", "p@1"]
    assert [v.ref for v in remote.list(adapter_type="prompt_tuning")] == ["p@1"]
    assert [v.ref for v in remote.list(task="sentiment", name="a")] == ["a@1", "a@2"]
    base_fp = hub.registry.resolve("a@1").base["fingerprint"]
    assert len(remote.list(base=base_fp[:15])) == 3
    assert remote.tag("a@1", "stable").tags == ("stable",)
    assert remote.resolve("a:stable").version == 1
    assert remote.set_metrics("a@2", {"f1": 0.5}).metrics == {"f1": 0.5}
    assert [v.ref for v in remote.remove("a@1")] == ["a@1"]
    assert [v.ref for v in remote.list(name="a")] == ["a@2"]
    assert remote.verify().ok
    with pytest.raises(KeyError, match="no version 1"):
        remote.resolve("a@1")


def test_push_of_objects_already_on_the_hub_sends_no_object_bytes(hub, lora):
    remote = RemoteRegistry(hub.url, token=hub.write_token)
    remote.push(lora, name="first", task="t")
    size = sum((lora / f).stat().st_size for f in os.listdir(lora))
    assert hub.counter.uploaded == size

    hub.counter.reset()
    again = remote.push(lora, name="second", task="t")  # same files, another name
    assert hub.counter.uploaded == 0  # measured by the server's WSGI layer
    assert remote.last_transfer.sent_bytes == 0 and remote.last_transfer.skipped_bytes == size
    assert again.digest == hub.registry.resolve("first@1").digest
    assert LocalRegistry(hub.registry.root).verify().ok


def test_download_cut_halfway_resumes_and_verifies(hub, make_lora, tmp_path):
    big = make_lora("big", r=64, lora_alpha=64, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"])
    RemoteRegistry(hub.url, token=hub.write_token).push(big, name="big", task="t")
    version = hub.registry.resolve("big@1")
    weights = version.file("adapter_model.safetensors")
    assert weights.size > 1 << 20
    out = tmp_path / "out"
    reader = RemoteRegistry(hub.url)
    original_download = reader._download

    def cut_the_weights(entry, part, bar, stats):
        if entry.path == "adapter_model.safetensors":
            hub.counter.cut_after = weights.size // 2  # the hub drops the connection there
        return original_download(entry, part, bar, stats)

    reader._download = cut_the_weights
    with pytest.raises(RemoteError, match="interrupted.*pull again to resume"):
        reader.pull("big@1", out)
    part = out / f".adapter_model.safetensors.{weights.sha256[:16]}.part"
    have = part.stat().st_size
    assert 0 < have <= weights.size // 2
    assert not (out / "adapter_model.safetensors").exists()  # nothing renamed into place

    kept = sum(p.stat().st_size for p in out.glob(".*.part"))  # the cut file's half and any whole files
    hub.counter.reset()
    reader = RemoteRegistry(hub.url)
    reader.pull("big@1", out)
    assert reader.last_transfer.resumed_bytes == kept
    assert hub.counter.downloaded == version.total_size - kept  # the hub sent only the rest
    assert (out / "adapter_model.safetensors").read_bytes() == (big / "adapter_model.safetensors").read_bytes()
    assert not part.exists()


def test_corrupted_partial_download_is_refused_and_removed(hub, lora, tmp_path):
    RemoteRegistry(hub.url, token=hub.write_token).push(lora, name="sent", task="t")
    weights = hub.registry.resolve("sent@1").file("adapter_model.safetensors")
    out = tmp_path / "out"
    out.mkdir()
    part = out / f".adapter_model.safetensors.{weights.sha256[:16]}.part"
    part.write_bytes(b"\0" * 100)  # not the first 100 bytes of the file
    with pytest.raises(DigestMismatch, match="pull again"):
        RemoteRegistry(hub.url).pull("sent@1", out)
    assert not part.exists() and not (out / "adapter_model.safetensors").exists()
    RemoteRegistry(hub.url).pull("sent@1", out)  # a clean retry works
    assert load_file(out / "adapter_model.safetensors").keys() == load_file(lora / "adapter_model.safetensors").keys()


def test_eight_concurrent_pushes_all_land(hub, make_lora):
    folders = [make_lora(f"l{i}", seed=i) for i in range(2)]
    errors: list[BaseException] = []
    results = []

    def push(i: int) -> None:
        try:
            with RemoteRegistry(hub.url, token=hub.write_token) as remote:
                results.append(remote.push(folders[i % 2], name="shared", task="t", tags=[f"client{i}"]))
                results.append(remote.push(folders[i % 2], name=f"own{i}", task="t"))
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=push, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    versions = hub.registry.list(name="shared")
    assert sorted(v.version for v in versions) == list(range(1, 9))
    for i in range(8):
        assert hub.registry.resolve(f"shared:client{i}").digest == hub.registry.resolve(f"own{i}@1").digest
    report = LocalRegistry(hub.registry.root).verify()
    assert report.ok and not report.orphans


def _serve_subprocess(root: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "adapterhub"), "hub", "serve", "--registry", str(root), "--port", "0",
         "--allow-local-bases"],
        stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent,
    )
    line = proc.stderr.readline()
    assert "serving registry" in line, line
    return proc, line.split(" on ")[1].split()[0]


@pytest.mark.parametrize("moment", ["mid-body", "body-sent"])
def test_hub_killed_during_an_upload_leaves_a_registry_that_verifies(tmp_path, lora, moment):
    """SIGKILL while the body is half sent (the hub is receiving it) or right after the last byte
    (the hub is hashing and storing it): the registry verifies and the restarted hub takes pushes."""
    import hashlib

    import httpx2

    from adapterhub.tokens import TokenStore

    root = tmp_path / "hub"
    token, _ = TokenStore(root).create("write")
    proc, url = _serve_subprocess(root)
    payload = os.urandom(32 << 20)
    digest = hashlib.sha256(payload).hexdigest()
    reached, killed = threading.Event(), threading.Event()

    def body():
        step = 1 << 20
        for i in range(0, len(payload), step):
            if moment == "mid-body" and i == len(payload) // 2:
                reached.set()
                killed.wait(30)
            yield payload[i : i + step]
        reached.set()

    def upload():
        try:
            httpx2.put(f"{url}/api/objects/sha256/{digest}", content=body(), timeout=30,
                       headers={"Authorization": f"Bearer {token}", "Content-Length": str(len(payload))})
        except httpx2.HTTPError:
            pass  # the hub died under it: expected

    try:
        RemoteRegistry(url, token=token).push(lora, name="before", task="t")
        t = threading.Thread(target=upload)
        t.start()
        assert reached.wait(30)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed.set()
        t.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()

    report = LocalRegistry(root).verify()
    assert report.ok, report.problems
    assert [v.ref for v in LocalRegistry(root).list()] == ["before@1"]
    proc, url = _serve_subprocess(root)
    try:
        assert RemoteRegistry(url, token=token).push(lora, name="after", task="t").ref == "after@1"
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stderr.close()
    assert LocalRegistry(root).verify().ok


def test_cli_push_pull_list_with_a_url(hub, lora, tmp_path, monkeypatch):
    runner = CliRunner()
    monkeypatch.setenv("ADAPTERHUB_TOKEN", hub.write_token)
    r = runner.invoke(cli, ["push", str(lora), "--name", "sent", "--task", "sentiment", "--registry", hub.url, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["version"] == 1
    r = runner.invoke(cli, ["list", "--registry", hub.url, "--json"])
    assert r.exit_code == 0, r.output
    assert [(d["name"], d["version"]) for d in json.loads(r.output)] == [("sent", 1)]
    r = runner.invoke(cli, ["pull", "sent", "-o", str(tmp_path / "out"), "--registry", hub.url])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out" / "adapter_model.safetensors").read_bytes() == (lora / "adapter_model.safetensors").read_bytes()

    monkeypatch.delenv("ADAPTERHUB_TOKEN")
    before = hub.registry.list()
    r = runner.invoke(cli, ["push", str(lora), "--name", "x", "--task", "t", "--registry", hub.url])
    assert r.exit_code == 1
    assert r.output.count("\n") == 1 and "needs a token with write scope" in r.output
    r = runner.invoke(cli, ["tag", "sent@1", "prod", "--registry", hub.url, "--token", hub.read_token])
    assert r.exit_code == 1 and "has read scope; this operation needs write" in r.output
    assert hub.registry.list() == before
    r = runner.invoke(cli, ["tag", "sent@1", "prod", "--registry", hub.url, "--token", hub.write_token])
    assert r.exit_code == 0, r.output
    assert hub.registry.resolve("sent:prod").version == 1
    assert "ADAPTERHUB_TOKEN" not in os.environ  # --token lasts for its command only


def test_cli_reports_an_unreachable_hub_in_one_line(tmp_path):
    r = CliRunner().invoke(cli, ["list", "--registry", "http://127.0.0.1:9"])
    assert r.exit_code == 1 and "cannot reach the hub at http://127.0.0.1:9" in r.output
    assert r.output.count("\n") == 1


def test_remote_gc_is_refused_with_a_clear_message(hub):
    with pytest.raises(RemoteError, match="on the hub's machine"):
        RemoteRegistry(hub.url, token=hub.write_token).gc()


def test_progress_bar_reports_large_transfers(hub, lora, tmp_path, capsys):
    remote = RemoteRegistry(hub.url, token=hub.write_token, progress=True)
    v = remote.push(lora, name="sent", task="t")
    remote.pull("sent", tmp_path / "out")
    err = capsys.readouterr().err
    assert "push sent" in err and f"pull {v.ref}" in err and "100%" in err
    quiet = RemoteRegistry(hub.url)  # default: only for transfers of 8 MB and more, on a terminal
    quiet.pull("sent", tmp_path / "out2")
    assert capsys.readouterr().err == ""


def test_failed_pull_into_a_new_folder_leaves_nothing(hub, lora, tmp_path):
    RemoteRegistry(hub.url, token=hub.write_token).push(lora, name="sent", task="t")
    config = hub.registry.resolve("sent@1").files[0]
    assert config.path == "adapter_config.json"  # the first file pulled
    obj = hub.registry.object_path(config.sha256)
    obj.chmod(0o644)
    obj.write_bytes(b"{}")  # the hub's copy went bad: the hub's check cuts the download short
    out = tmp_path / "new"
    with pytest.raises(RemoteError, match="adapter_config.json .* was interrupted"):
        RemoteRegistry(hub.url).pull("sent@1", out)
    assert not (out / "adapter_config.json").exists()  # only a resumable part file, never the bad bytes


def test_an_app_in_front_of_a_remote_hub_does_not_re_serve_it(hub):
    """`adapterhub serve --registry http://hub` builds its app on a RemoteRegistry: no hub routes there."""
    from adapterhub.server.http.app import create_app

    client = create_app(RemoteRegistry(hub.url)).test_client()
    assert client.get("/api/versions").status_code == 404
    assert client.get("/").status_code == 404
