"""Hub and registry input hygiene (issue 12, part 5), each through the CLI or a real hub on loopback:
a relative ``--registry`` for ``hub serve``; links and special files in an adapter folder; safetensors
headers the ``safetensors`` library refuses (on push, and in ``verify`` for one already stored);
config values checked and bounded before they reach the index; writes refused from their headers
before their bodies are read; and inputs that used to answer 500."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import httpx2
import pytest
from click.testing import CliRunner

from adapterhub.cli.main import cli
from adapterhub.peft_format import TensorInfo
from adapterhub.registry import LocalRegistry
from adapterhub.remote import RemoteRegistry
from adapterhub.server.http.registry_api import MAX_JSON_BYTES, MAX_OBJECT_BYTES
from adapterhub.tokens import TokenStore
from conftest import snapshot
from remote_helpers import start_hub

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def assert_refused(result, *fragments: str) -> str:
    assert result.exit_code != 0, result.output
    lines = [line for line in result.output.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def seeded(make_lora, _private_registry):
    LocalRegistry(_private_registry).push(make_lora("seed"), name="seed", task="t")
    return _private_registry


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --- 1. a relative --registry for `hub serve` --------------------------------------------------


def _serve(cwd: Path, registry: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "adapterhub"), "hub", "serve", "--registry", registry, "--port", "0",
         "--allow-local-bases", "--max-object-bytes", str(1 << 20)],
        stderr=subprocess.PIPE, text=True, cwd=cwd,
    )
    line = proc.stderr.readline()
    assert "serving registry" in line, line
    return proc, line.split(" on ")[1].split()[0]


def test_hub_serve_with_a_relative_registry_takes_pushes(tmp_path, make_lora):
    """Staged commit files used to be relative links that dangled; a push through the real client works."""
    lora = make_lora("sentiment")
    work = tmp_path / "work"
    token, _ = TokenStore(work / "rel" / "hub").create("write")
    proc, url = _serve(work, "rel/hub")
    try:
        remote = RemoteRegistry(url, token=token)
        v = remote.push(lora, name="sent", task="sentiment")
        assert v.ref == "sent@1"
        out = tmp_path / "pulled"
        remote.pull("sent@1", out)
        for f in (CONFIG, WEIGHTS):
            assert (out / f).read_bytes() == (lora / f).read_bytes()
        # the same hub refuses an unauthenticated upload from its headers (see part 5 below)
        status, _, elapsed = _declared_but_unsent(url, f"/api/objects/sha256/{'a' * 64}", None, 300 << 20)
        assert status == 401 and elapsed < 2
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stderr.close()
    registry = LocalRegistry(work / "rel" / "hub")
    assert registry.verify().ok and [x.ref for x in registry.list()] == ["sent@1"]


# --- 2. links and special files ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["readme-to-secret", "weights-link", "config-link", "readme-fifo", "readme-folder"])
def test_links_and_special_files_are_refused_and_nothing_is_stored(seeded, make_lora, tmp_path, kind):
    folder = _copy(make_lora(), tmp_path / "adapter")
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:not for the hub\n")
    if kind == "readme-to-secret":
        (folder / "README.md").unlink(missing_ok=True)
        (folder / "README.md").symlink_to(secret)
        what = "README.md: is a symbolic link"
    elif kind in ("weights-link", "config-link"):
        name = WEIGHTS if kind == "weights-link" else CONFIG
        real = tmp_path / ("real-" + name)
        shutil.move(folder / name, real)
        (folder / name).symlink_to(real)
        what = f"{name}: is a symbolic link"
    elif kind == "readme-fifo":
        (folder / "README.md").unlink(missing_ok=True)
        os.mkfifo(folder / "README.md")  # opening it for reading would wait for a writer forever
        what = "README.md: is not a regular file"
    else:
        (folder / "README.md").unlink(missing_ok=True)
        (folder / "README.md").mkdir()
        what = "README.md: is not a regular file"
    before = snapshot(seeded)
    line = assert_refused(run("push", str(folder), "--name", "x", "--task", "t"), what,
                          "reads only regular files inside an adapter folder")
    assert "not for the hub" not in line
    assert snapshot(seeded) == before


def test_a_hub_push_refuses_a_linked_file_before_uploading(tmp_path, make_lora):
    hub = start_hub(tmp_path / "hub")
    try:
        folder = _copy(make_lora(), tmp_path / "adapter")
        secret = tmp_path / "passwd"
        secret.write_text("secret\n")
        (folder / "README.md").unlink(missing_ok=True)
        (folder / "README.md").symlink_to(secret)
        before = snapshot(hub.registry.root)
        with pytest.raises(Exception, match="is a symbolic link"):
            RemoteRegistry(hub.url, token=hub.write_token).push(folder, name="x", task="t")
        assert snapshot(hub.registry.root) == before and hub.counter.uploaded == 0
    finally:
        hub.handle.close()


# --- 3. safetensors headers the library refuses --------------------------------------------------


def _split(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _write(path: Path, header: dict, data: bytes) -> None:
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.chmod(0o644)
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def _tensors_by_offset(header: dict) -> list[str]:
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])


def _malform(path: Path, kind: str) -> None:
    """Rewrite a real PEFT-saved file so its header breaks one rule; each stays internally plausible
    (every range inside the file, every size matching dtype x shape) except for that rule."""
    header, data = _split(path)
    names = _tensors_by_offset(header)
    second = names[1]
    cut = header[second]["data_offsets"][0]
    if kind == "overlap":  # the 2nd tensor and all after it start 4 bytes early
        for k in names[1:]:
            header[k]["data_offsets"] = [x - 4 for x in header[k]["data_offsets"]]
        data = data[:-4]
    elif kind == "gap":  # 4 unused bytes before the 2nd tensor
        for k in names[1:]:
            header[k]["data_offsets"] = [x + 4 for x in header[k]["data_offsets"]]
        data = data[:cut] + bytes(4) + data[cut:]
    elif kind == "trailing":
        data = data + bytes(8)
    elif kind == "out-of-range":
        data = data[:-4]
    elif kind == "size-mismatch":
        header[names[0]]["shape"] = [d + 1 for d in header[names[0]]["shape"]]
    elif kind == "same-range-twice":
        header[second]["data_offsets"] = header[names[0]]["data_offsets"]
        header[second]["shape"], header[second]["dtype"] = header[names[0]]["shape"], header[names[0]]["dtype"]
    _write(path, header, data)


BAD_HEADERS = {
    "overlap": "overlaps the tensor before it",
    "gap": "leaving a gap",
    "trailing": "trailing bytes after the last tensor",
    "out-of-range": "run past the end of the file",
    "size-mismatch": "does not match its dtype and shape",
    "same-range-twice": "overlaps the tensor before it",
}


@pytest.mark.parametrize("kind", sorted(BAD_HEADERS))
def test_headers_the_safetensors_library_refuses_are_refused_on_push(seeded, make_lora, tmp_path, kind):
    from safetensors import safe_open

    folder = _copy(make_lora(), tmp_path / "adapter")
    _malform(folder / WEIGHTS, kind)
    with pytest.raises(Exception):  # the oracle: the library itself will not load this file
        with safe_open(str(folder / WEIGHTS), "np") as f:
            [f.get_tensor(k) for k in f.keys()]
    before = snapshot(seeded)
    assert_refused(run("push", str(folder), "--name", "x", "--task", "t"), WEIGHTS, BAD_HEADERS[kind])
    assert snapshot(seeded) == before


def _lenient_header(path) -> dict[str, TensorInfo]:
    """What adapterhub accepted before this check: each range inside the file and of the right size."""
    header, data = _split(Path(path))
    start = os.path.getsize(path) - len(data)
    return {k: TensorInfo(v["dtype"], tuple(v["shape"]), tuple(v["data_offsets"]), start)
            for k, v in header.items() if k != "__metadata__"}


def test_verify_flags_a_stored_object_with_overlapping_offsets(make_lora, tmp_path, monkeypatch, _private_registry):
    good = make_lora("good")
    assert run("push", str(good), "--name", "good", "--task", "t").exit_code == 0
    bad = _copy(make_lora(), tmp_path / "bad")
    _malform(bad / WEIGHTS, "overlap")
    # An object stored before the check existed: push it with the older, lenient header reader.
    with monkeypatch.context() as m:
        m.setattr("adapterhub.adapter_folder.read_safetensors_header", _lenient_header)
        assert run("push", str(bad), "--name", "old", "--task", "t").exit_code == 0
    digest = hashlib.sha256((bad / WEIGHTS).read_bytes()).hexdigest()
    result = run("verify")
    assert result.exit_code == 1, result.output
    problems = [line for line in result.output.splitlines() if line.startswith("problem:")]
    assert len(problems) == 1, result.output
    assert f"sha256:{digest}" in problems[0] and "overlaps the tensor before it" in problems[0]
    assert "old@1/adapter_model.safetensors" in problems[0]


# --- 4. config values ---------------------------------------------------------------------------


def _with_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / CONFIG).read_text())
    cfg.update(changes)
    (folder / CONFIG).write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"r": 1e30}, "r must be an integer from 1 to 65536 (got 1e+30)"),
        ({"r": True}, "r must be an integer"),
        ({"r": 0}, "r must be an integer"),
        ({"lora_alpha": 1e38}, "lora_alpha must be a finite number"),
        ({"lora_alpha": float("nan")}, "lora_alpha must be a finite number"),
        ({"lora_alpha": "16"}, "lora_alpha must be a finite number"),
        ({"lora_dropout": 2}, "lora_dropout must be a finite number from 0 to 1"),
        ({"bias": "some"}, "bias must be one of none, all, lora_only"),
        ({"use_rslora": "yes"}, "use_rslora must be true or false"),
        ({"target_modules": [1, 2]}, "target_modules must be"),
        ({"target_modules": {"q_proj": 1}}, "target_modules must be"),
        ({"target_modules": ["m" * 300]}, "target_modules must be"),
        ({"target_modules": [f"layers.{i}.q_proj" for i in range(5000)]}, "target_modules must be"),
        ({"rank_pattern": {"q_proj": 1e30}}, "rank_pattern must be"),
        ({"alpha_pattern": {"q_proj": float("inf")}}, "alpha_pattern must be"),
        ({"task_type": {"nested": ["x"]}}, "task_type must be"),
        ({"base_model_name_or_path": "a\nb"}, "base_model_name_or_path must be one line"),
        ({"modules_to_save": [f"module_{i}_{'x' * 200}" for i in range(400)]}, "over 65536"),
    ],
)
def test_out_of_range_lora_config_values_are_refused(seeded, make_lora, tmp_path, changes, fragment):
    folder = _copy(make_lora(), tmp_path / "adapter")
    _with_config(folder, **changes)
    before = snapshot(seeded)
    field = next(iter(changes))
    line = assert_refused(run("push", str(folder), "--name", "x", "--task", "t"), CONFIG, fragment)
    assert field in line or "over 65536" in line
    assert snapshot(seeded) == before


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"num_virtual_tokens": "abc"}, "num_virtual_tokens must be an integer"),
        ({"num_virtual_tokens": -4}, "num_virtual_tokens must be an integer"),
        ({"token_dim": 1.5}, "token_dim must be an integer"),
        ({"prompt_tuning_init_text": ["a"]}, "prompt_tuning_init_text must be a string"),
        ({"prompt_tuning_init_text": "x" * (2 << 20)}, "adapter_config.json is"),
    ],
)
def test_out_of_range_prompt_config_values_are_refused(seeded, make_prompt, tmp_path, changes, fragment):
    folder = _copy(make_prompt(), tmp_path / "adapter")
    _with_config(folder, **changes)
    before = snapshot(seeded)
    assert_refused(run("push", str(folder), "--name", "x", "--task", "t"), fragment)
    assert snapshot(seeded) == before


def test_a_long_init_text_stays_in_the_stored_config_and_the_index_keeps_a_preview(make_prompt, tmp_path,
                                                                                    _private_registry):
    folder = _copy(make_prompt(), tmp_path / "adapter")
    text = "Classify the sentiment of the review. " * 2000  # 76,000 characters
    _with_config(folder, prompt_tuning_init="TEXT", prompt_tuning_init_text=text)
    result = run("push", str(folder), "--name", "p", "--task", "t", "--json")
    assert result.exit_code == 0, result.output
    peft = LocalRegistry(_private_registry).resolve("p@1").peft
    assert peft["prompt_tuning_init_text"] == text[:200] + "…"
    assert peft["prompt_tuning_init_text_chars"] == len(text)
    out = tmp_path / "pulled"
    assert run("pull", "p@1", "--output", str(out)).exit_code == 0
    assert json.loads((out / CONFIG).read_text())["prompt_tuning_init_text"] == text


# --- 5. writes refused from their headers --------------------------------------------------------


def _declared_but_unsent(url: str, path: str, token: str | None, declared: int,
                         method: str = "PUT") -> tuple[int, dict, float]:
    """Send headers declaring ``declared`` body bytes and only 64 KiB of them, then wait for the
    answer: a server that reads the body first never answers (the call times out)."""
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
    headers = {"Content-Length": str(declared), "Content-Type": "application/octet-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    t0 = time.monotonic()
    conn.request(method, path, body=b"\0" * (64 << 10), headers=headers)
    r = conn.getresponse()
    body = json.loads(r.read())
    elapsed = time.monotonic() - t0
    conn.close()
    return r.status, body, elapsed


@pytest.fixture
def gated_hub(tmp_path, make_lora):
    hub = start_hub(tmp_path / "hub", config={MAX_OBJECT_BYTES: 1 << 20, MAX_JSON_BYTES: 64 << 10})
    RemoteRegistry(hub.url, token=hub.write_token).push(make_lora("sent"), name="sent", task="t")
    hub.counter.reset()
    yield hub
    hub.handle.close()


@pytest.mark.parametrize("who, status, fragment", [
    ("nobody", 401, "needs a token with write scope"),
    ("stranger", 401, "not valid on this hub"),
    ("reader", 403, "has read scope"),
    ("writer", 413, "over this hub's limit"),
])
def test_a_huge_upload_is_answered_from_its_headers(gated_hub, who, status, fragment):
    token = {"nobody": None, "stranger": "ahub_" + "x" * 43, "reader": gated_hub.read_token,
             "writer": gated_hub.write_token}[who]
    before = snapshot(gated_hub.registry.root)
    got, body, elapsed = _declared_but_unsent(gated_hub.url, f"/api/objects/sha256/{'a' * 64}", token, 300 << 20)
    assert got == status and fragment in body["error"]["message"], body
    assert elapsed < 2
    assert snapshot(gated_hub.registry.root) == before


def test_a_huge_json_body_without_a_token_is_answered_from_its_headers(gated_hub):
    got, body, elapsed = _declared_but_unsent(gated_hub.url, "/api/adapters/x/versions", None, 300 << 20,
                                              method="POST")
    assert got == 401 and elapsed < 2


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/api/versions", 200), ("POST", "/no-such-route", 404),
    ("GET", "/sent/resolve/main/adapter_config.json", 200),
])
def test_a_body_no_route_reads_is_not_read(gated_hub, method, path, status):
    """Reads and unknown routes take no body: one declared anyway (300 MB, no token) is not
    received and spooled up to the hub's 4 GiB object limit before the answer."""
    got, _, elapsed = _declared_but_unsent(gated_hub.url, path, None, 300 << 20, method=method)
    assert got == status and elapsed < 2


def _chunked(url: str, path: str, token: str, chunk: bytes, chunks: int) -> bytes:
    """A chunked body sent chunk by chunk and never finished; returns what the server answers."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                  "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        for _ in range(chunks):
            try:
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                break  # the server answered and closed: stop sending
        answer = b""
        while b"\r\n\r\n" not in answer:
            got = s.recv(65536)
            if not got:
                break
            answer += got
    return answer


def test_a_chunked_body_is_cut_off_at_the_routes_limit(gated_hub):
    """64 KiB is the JSON limit here; 16 x 8 KiB are sent and the terminating chunk never is."""
    answer = _chunked(gated_hub.url, "/api/objects/check", gated_hub.write_token, b" " * (8 << 10), 16)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_chunked_object_upload_is_refused_from_its_headers(gated_hub):
    host, port = gated_hub.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"PUT /api/objects/sha256/{'a' * 64} HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Bearer {gated_hub.write_token}\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "10000\r\n".encode() + b"\0" * 1000)
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 411"), answer[:200]


def test_ordinary_writes_still_work_through_the_gate(gated_hub, make_lora):
    remote = RemoteRegistry(gated_hub.url, token=gated_hub.write_token)
    assert remote.push(make_lora("other"), name="other", task="t").ref == "other@1"
    assert remote.tag("other@1", "prod").tags == ("latest", "prod")


# --- 6. inputs that used to answer 500 ------------------------------------------------------------


def test_each_bad_input_gets_its_4xx_and_no_server_path(gated_hub):
    url, root = gated_hub.url, str(gated_hub.registry.root)
    auth = {"Authorization": f"Bearer {gated_hub.write_token}", "Content-Type": "application/json"}
    files = [f.to_dict() for f in gated_hub.registry.resolve("sent@1").files]
    surrogate_tag = b'{"ref": "sent@1", "tag": "\\ud800"}'
    surrogate_description = json.dumps({"files": files, "task": "t"})[:-1].encode() + b', "description": "\\ud800"}'
    cases = [
        # (method, path, body, expected status)
        ("POST", "/api/tags", {"ref": {"a": [1, {"b": 2}]}, "tag": "x"}, 400),
        ("POST", "/api/tags", {"ref": "sent@1", "tag": ["x"]}, 400),
        ("POST", "/api/tags", surrogate_tag, 400),
        ("POST", "/api/objects/check", {"digests": [{"nested": True}]}, 400),
        ("POST", "/api/adapters/x/versions", {"files": files, "task": "t", "tags": [{"a": 1}]}, 400),
        ("POST", "/api/adapters/x/versions", {"files": files, "task": {"a": 1}}, 400),
        ("POST", "/api/adapters/x/versions", {"files": files, "task": "t", "metrics": {"acc": {"a": 1}}}, 400),
        ("POST", "/api/adapters/x/versions", surrogate_description, 400),
        ("PATCH", "/api/versions/sent@1/metrics", {"acc": [1]}, 400),
        ("GET", "/api/versions/" + quote("x@²"), None, 400),
        ("GET", "/api/versions/sent@" + "9" * 5000, None, 400),
        ("DELETE", "/api/versions/" + quote("sent@²"), None, 400),
        ("GET", "/api/models/sent/revision/" + quote("²"), None, 404),
        ("GET", "/api/models/sent/revision/" + "9" * 5000, None, 404),
        ("GET", "/api/models/sent/tree/" + quote("²"), None, 404),
        ("GET", "/sent/resolve/" + quote("²") + "/adapter_config.json", None, 404),
        ("GET", "/sent/resolve/" + "1" * 5000 + "/adapter_config.json", None, 404),
        ("GET", "/api/versions/nope", None, 404),
        ("GET", "/api/versions/sent@7", None, 404),
        ("GET", "/nope/resolve/main/adapter_config.json", None, 404),
    ]
    before = snapshot(gated_hub.registry.root)
    for method, path, body, status in cases:
        content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        r = httpx2.request(method, url + path, content=content, headers=auth)
        assert r.status_code == status, (method, path[:80], r.status_code, r.text[:300])
        message = r.json()["error"]["message"]
        assert message and "\n" not in message and root not in message, message
    assert snapshot(gated_hub.registry.root) == before


def test_commit_errors_do_not_name_the_hubs_temporary_folder(gated_hub, tmp_path, make_lora):
    bad = _copy(make_lora(), tmp_path / "bad")
    _malform(bad / WEIGHTS, "trailing")
    digests = {}
    for name in (CONFIG, WEIGHTS):
        data = (bad / name).read_bytes()
        digests[name] = hashlib.sha256(data).hexdigest()
        r = httpx2.put(f"{gated_hub.url}/api/objects/sha256/{digests[name]}", content=data,
                       headers={"Authorization": f"Bearer {gated_hub.write_token}"})
        assert r.status_code in (200, 201), r.text
    files = [{"path": n, "sha256": d, "size": (bad / n).stat().st_size} for n, d in digests.items()]
    r = httpx2.post(f"{gated_hub.url}/api/adapters/bad/versions", json={"files": files, "task": "t"},
                    headers={"Authorization": f"Bearer {gated_hub.write_token}"})
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert message.startswith("the pushed adapter/adapter_model.safetensors: 8 trailing bytes"), message
    assert "/" + "staging" not in message and str(gated_hub.registry.root) not in message
