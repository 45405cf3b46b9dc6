"""A hostile or merely unlucky client against a real hub on loopback, and the local registry under it:
concurrent Hugging Face commits never undo each other, version metrics are finite and bounded and
every JSON out is standard, a byte range costs what it reads while corruption is still caught, and a
full disk is a 507 (a one-line "disk is full" locally) that leaves nothing half-written."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
import pytest
from click.testing import CliRunner

from adapterhub.cli.main import cli
from adapterhub.blobstore import sha256_file
from adapterhub.errors import DiskFull, InvalidAdapter, InvalidName
from adapterhub.registry import LocalRegistry
from adapterhub.remote import RemoteRegistry
from conftest import snapshot
from remote_helpers import serve_hub_process, start_hub, stop_process
from test_hf_compat import _client_env

# --- 1. concurrent Hugging Face commits -----------------------------------------------------------

RACE_CLIENT = textwrap.dedent(
    """
    import json, sys, threading, urllib.request
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    url_a, url_b, token, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    repo = "org/race"
    apis = [HfApi(endpoint=url_a, token=token), HfApi(endpoint=url_b, token=token)]

    def read(name):
        with urllib.request.urlopen(f"{url_a}/{repo}/resolve/main/{name}") as r:
            return r.read().decode()

    config = json.loads(read("adapter_config.json"))
    results = []
    for mode in ("parent", "no-parent"):
        for i in range(rounds):
            head = apis[0].model_info(repo).sha
            readme, alpha = f"{mode} round {i}\\n", 100 * (mode == "parent") + i + 1
            edits = [("README.md", readme), ("adapter_config.json", json.dumps(config | {"lora_alpha": alpha}))]
            barrier, status = threading.Barrier(2), [None, None]

            def commit(k):
                path, text = edits[k]
                barrier.wait()
                try:
                    apis[k].create_commit(repo, operations=[CommitOperationAdd(path, text.encode())],
                                          commit_message=f"{path} {mode} {i}",
                                          parent_commit=head if mode == "parent" else None)
                    status[k] = 200
                except HfHubHTTPError as e:
                    status[k] = e.response.status_code

            threads = [threading.Thread(target=commit, args=(k,)) for k in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            results.append({"mode": mode, "status": status, "readme": read("README.md"), "want_readme": readme,
                            "alpha": json.loads(read("adapter_config.json"))["lora_alpha"], "want_alpha": alpha})
    print(json.dumps(results))
    """
)


@pytest.mark.parametrize("writers", ["threads", "processes"])
def test_concurrent_hf_commits_never_undo_each_other(tmp_path, make_lora, writers):
    """Two ``create_commit`` calls from the same head, at once, many rounds: with ``parent_commit``
    one lands and the other is a 412 (the client raises); without, both land on top of each other.
    Either way no change that was answered 200 is missing from ``main`` afterwards. "processes"
    sends the second commit to another ``hub serve`` process on the same registry folder."""
    hub = start_hub(tmp_path / "hub")
    proc = None
    try:
        hub.registry.push(make_lora("race"), name="org/race", task="race")
        url_b = hub.url
        if writers == "processes":
            proc, url_b = serve_hub_process(hub.registry.root)
        run = subprocess.run([sys.executable, "-c", RACE_CLIENT, hub.url, url_b, hub.write_token, "8"],
                             env=_client_env(tmp_path, hub.url), capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        results = json.loads(run.stdout.splitlines()[-1])
    finally:
        hub.handle.close()
        if proc is not None:
            stop_process(proc)
    for r in results:
        readme_landed, alpha_landed = (s == 200 for s in r["status"])
        if r["mode"] == "parent":
            assert sorted(r["status"]) == [200, 412], r
        else:
            assert r["status"] == [200, 200], r
        assert (r["readme"] == r["want_readme"]) == readme_landed, r
        assert (r["alpha"] == r["want_alpha"]) == alpha_landed, r
    assert LocalRegistry(tmp_path / "hub").verify().ok


# --- 3. version metrics: finite, bounded, standard JSON -------------------------------------------


def _strict_json(text: str):
    """Parse as standard JSON: Python's parser would take NaN and Infinity silently."""
    def refuse(name: str):
        raise AssertionError(f"non-standard JSON: {name}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def metrics_hub(tmp_path, make_lora):
    hub = start_hub(tmp_path / "hub")
    hub.registry.push(make_lora("m"), name="m", task="t", metrics={"acc": 0.5})
    yield hub
    hub.handle.close()


def _patch(hub, body: str) -> httpx2.Response:
    return httpx2.patch(f"{hub.url}/api/versions/m@1/metrics", content=body,
                        headers={"Authorization": f"Bearer {hub.write_token}", "Content-Type": "application/json"})


@pytest.mark.parametrize("body", ['{"loss": NaN}', '{"loss": Infinity}', '{"loss": -Infinity}',
                                  '{"loss": "high"}', '{"": 1}', '{"a\\nb": 1}'])
def test_metrics_patch_refuses_non_finite_and_bad_names(metrics_hub, body):
    before = snapshot(metrics_hub.registry.root)
    r = _patch(metrics_hub, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] in ("invalid_value", "invalid_json", "invalid_name")
    assert snapshot(metrics_hub.registry.root) == before


def test_metrics_cannot_grow_a_record_without_bound(metrics_hub, tmp_path):
    """Patches of many names each pass on their own until the merged metrics pass the index bound:
    then a 400 naming it, and the record is as before."""
    from adapterhub.record_bounds import MAX_INDEX_METRICS_BYTES

    for i in range(40):
        r = _patch(metrics_hub, json.dumps({f"m{i}.{j}." + "x" * 90: j / 7 for j in range(50)}))
        if r.status_code != 200:
            break
    assert r.status_code == 400, r.text
    assert str(MAX_INDEX_METRICS_BYTES) in r.json()["error"]["message"]
    record = metrics_hub.registry.resolve("m@1")
    assert len(json.dumps(record.metrics)) <= MAX_INDEX_METRICS_BYTES
    listed = CliRunner().invoke(cli, ["list", "--json", "--registry", str(metrics_hub.registry.root)])
    assert listed.exit_code == 0 and len(listed.output) < 2 * MAX_INDEX_METRICS_BYTES
    _strict_json(listed.output)


def test_metric_errors_echo_a_bounded_prefix(tmp_path, make_lora):
    registry = LocalRegistry(tmp_path / "reg", durable=False)
    registry.push(make_lora("m"), name="m", task="t")
    with pytest.raises(InvalidName) as info:
        registry.set_metrics("m@1", {"x" * 100_000: 1.0})
    assert len(str(info.value)) < 300 and "(100000 chars)" in str(info.value)
    with pytest.raises(InvalidName) as info:
        registry.set_metrics("m@1", {"loss": "y" * 100_000})
    assert len(str(info.value)) < 300


def test_local_pushes_and_updates_refuse_nan_everywhere_in_the_record(tmp_path, make_lora):
    registry = LocalRegistry(tmp_path / "reg", durable=False)
    lora = make_lora("m")
    with pytest.raises(InvalidName, match="finite"):
        registry.push(lora, name="m", task="t", metrics={"loss": float("nan")})
    with pytest.raises(InvalidAdapter, match="NaN or Infinity"):
        registry.push(lora, name="m", task="t", training={"final_loss": float("inf")})
    registry.push(lora, name="m", task="t")
    before = snapshot(registry.root)
    with pytest.raises(InvalidName, match="finite"):
        registry.set_metrics("m@1", {"loss": float("-inf")})
    assert snapshot(registry.root) == before


def test_list_json_never_prints_nan_from_an_old_record(tmp_path, make_lora):
    """A record written before these checks (NaN stored in the index): ``list --json`` fails in one
    line instead of printing a document no standard parser reads."""
    registry = LocalRegistry(tmp_path / "reg", durable=False)
    registry.push(make_lora("m"), name="m", task="t")
    with contextlib.closing(sqlite3.connect(tmp_path / "reg" / "index.sqlite")) as db, db:
        db.execute("""UPDATE versions SET record = replace(record, '"metrics":{}', '"metrics":{"loss":Infinity}')""")
    assert registry.resolve("m@1").metrics["loss"] == float("inf")
    result = CliRunner().invoke(cli, ["list", "--json", "--registry", str(tmp_path / "reg")])
    assert result.exit_code != 0 and "Infinity" not in result.output


# --- 4. byte ranges cost what they read; integrity still holds ------------------------------------

BIG = 24 << 20


def _rchar() -> int:
    """Bytes this process has read through read(2) and friends (files and sockets alike)."""
    return int(next(line for line in Path("/proc/self/io").read_text().splitlines()
                    if line.startswith("rchar:")).split()[1])


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes | None]:
    """Status and body, ``None`` for a body that ended short of its Content-Length (a failed download)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request("GET", parts.path, headers=headers or {})
        response = conn.getresponse()
        try:
            return response.status, response.read()
        except http.client.IncompleteRead:
            return response.status, None
    finally:
        conn.close()


@pytest.fixture
def big_hub(tmp_path, make_lora):
    """A hub serving an adapter with a large README, pushed by another registry object (so the hub's
    store has not seen its bytes hashed yet)."""
    folder = make_lora("big")
    (folder / "README.md").write_bytes(os.urandom(BIG))
    LocalRegistry(tmp_path / "hub", durable=False).push(folder, name="big", task="t")
    hub = start_hub(tmp_path / "hub")
    yield hub, hub.registry.resolve("big@1").file("README.md").sha256, folder / "README.md"
    hub.handle.close()


def test_ranges_of_a_large_object_do_not_read_it_whole_each_time(big_hub):
    hub, digest, readme = big_hub
    data = readme.read_bytes()
    for url in (f"{hub.url}/big/resolve/main/README.md", f"{hub.url}/api/objects/sha256/{digest}"):
        before = _rchar()
        for i in range(20):
            offset = i * (BIG // 20)
            status, body = _get(url, {"Range": f"bytes={offset}-{offset}"})
            assert (status, body) == (206, data[offset:offset + 1])
        # at most one whole read, to learn the object is intact; before: one per range (20 x 24 MB)
        assert _rchar() - before < 2 * BIG


def _corrupt(hub, digest: str) -> None:
    path = hub.registry.object_path(digest)
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.seek(5)
        byte = f.read(1)
        f.seek(5)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_a_corrupted_object_is_never_served_whole_or_in_part(big_hub):
    """Every route that serves objects: a whole download and a range away from the damaged byte both
    end short, even after the object was served intact (its file changed since)."""
    hub, digest, _ = big_hub
    urls = (f"{hub.url}/big/resolve/main/README.md", f"{hub.url}/api/objects/sha256/{digest}")
    for url in urls:
        assert _get(url, {"Range": "bytes=100-199"})[0] == 206
    _corrupt(hub, digest)
    for url in urls:
        assert _get(url) == (200, None)
        assert _get(url, {"Range": "bytes=100-199"}) == (206, None)
    assert not hub.registry.verify().ok


# --- 7. a full disk ---------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs: a real file system that runs out of space (needs root, else skipped)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def _fill(disk: Path, name: str, leave: int = 0) -> None:
    """Write a filler file until the disk is full, then give back ``leave`` bytes."""
    block = b"\0" * (64 << 10)
    with open(disk / name, "wb") as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(block)
                f.flush()
    if leave:
        with open(disk / name, "r+b") as f:
            f.truncate(max((disk / name).stat().st_size - leave, 0))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "adapterhub"), *args], capture_output=True, text=True,
                          timeout=300)


def test_a_full_disk_is_a_507_and_a_one_line_error_and_nothing_is_half_written(small_disk, make_lora, tmp_path):
    first, spare = make_lora("first"), make_lora("second", seed=1)
    (spare / "README.md").write_bytes(os.urandom(1 << 20))
    for registry in ("reg", "other"):  # pushed by processes of their own: no connection stays open here
        assert _cli("push", str(first), "--name", "a", "--task", "t", "--registry", str(small_disk / registry)).returncode == 0
    hub = start_hub(small_disk / "reg")
    try:
        before = [v.to_json() for v in hub.registry.list()]
        _fill(small_disk, "filler", leave=256 << 10)
        readme = spare / "README.md"
        r = httpx2.put(f"{hub.url}/api/objects/sha256/{sha256_file(readme)}", content=readme.read_bytes(),
                       headers={"Authorization": f"Bearer {hub.write_token}"})
        assert r.status_code == 507 and "disk is full" in r.json()["error"]["message"], r.text
        with RemoteRegistry(hub.url, token=hub.write_token) as remote:
            with pytest.raises(DiskFull, match="disk is full"):
                remote.push(spare, name="a", task="t")
        pushed = _cli("push", str(spare), "--name", "a", "--task", "t", "--registry", hub.url,
                      "--token", hub.write_token)
        assert pushed.returncode != 0 and "disk is full" in pushed.stderr
        assert len(pushed.stderr.strip().splitlines()) == 1, pushed.stderr
        report = hub.registry.verify()
        assert report.ok and report.temporaries == [], report
        assert [v.to_json() for v in hub.registry.list()] == before
    finally:
        hub.handle.close()
    _fill(small_disk, "rest")
    other = str(small_disk / "other")
    for args in (["list"], ["verify"], ["pull", "a@1", "-o", str(tmp_path / "out")]):
        result = _cli(*args, "--registry", other)
        assert result.returncode != 0 and "disk is full" in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
