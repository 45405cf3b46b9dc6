"""Refusals of the hub: missing, wrong and under-scoped tokens, path traversal, oversized and tampered uploads.
Each is refused with the right status and a JSON error, and the registry folder is left byte-for-byte as it was."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import sqlite3

import httpx2
import pytest

from adapterhub.errors import AuthError, InvalidName, PermissionDenied, RemoteError
from adapterhub.remote import RemoteRegistry
from adapterhub.tokens import TokenStore
from conftest import snapshot
from remote_helpers import start_hub
from adapterhub.server.http.auth import READ_TOKEN_REQUIRED
from adapterhub.server.http.registry_api import ALLOW_LOCAL_BASES, MAX_JSON_BYTES, MAX_OBJECT_BYTES


@pytest.fixture
def hub(tmp_path, lora):
    h = start_hub(tmp_path / "hub", config={MAX_OBJECT_BYTES: 1 << 20, MAX_JSON_BYTES: 64 << 10})
    RemoteRegistry(h.url, token=h.write_token).push(lora, name="sent", task="sentiment")
    yield h
    h.handle.close()


@pytest.fixture
def lora(make_lora):
    return make_lora("sentiment-lora")


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _refused(response: httpx2.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert err["message"] and "\n" not in err["message"]
    if code is not None:
        assert err["code"] == code
    return err


@pytest.mark.parametrize(
    "token_kind, status, cls, message",
    [
        ("none", 401, AuthError, "needs a token with write scope"),
        ("wrong", 401, AuthError, "not valid on this hub"),
        ("read", 403, PermissionDenied, "has read scope; this operation needs write"),
    ],
)
def test_push_tag_delete_without_a_write_token_are_refused(hub, lora, token_kind, status, cls, message):
    token = {"none": None, "wrong": "ahub_" + "x" * 43, "read": hub.read_token}[token_kind]
    before = snapshot(hub.registry.root)
    remote = RemoteRegistry(hub.url, token=token)
    for call in (
        lambda: remote.push(lora, name="other", task="t"),
        lambda: remote.tag("sent@1", "prod"),
        lambda: remote.remove("sent@1"),
        lambda: remote.set_metrics("sent@1", {"acc": 1.0}),
    ):
        with pytest.raises(cls, match=message) as info:
            call()
        assert info.value.status == status
    r = httpx2.put(f"{hub.url}/api/objects/sha256/{'a' * 64}", content=b"x", headers=_auth(token))
    _refused(r, status)
    if status == 401:
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert snapshot(hub.registry.root) == before


def test_revoked_token_stops_working_without_a_restart(hub, lora):
    store = TokenStore(hub.registry.root)
    token, record = store.create("write", "temp")
    assert RemoteRegistry(hub.url, token=token).tag("sent@1", "ok").version == 1
    store.revoke(record.id)
    before = snapshot(hub.registry.root)
    with pytest.raises(AuthError):
        RemoteRegistry(hub.url, token=token).tag("sent@1", "again")
    assert snapshot(hub.registry.root) == before


def test_tokens_are_stored_hashed_and_private(hub):
    path = hub.registry.root / "tokens.json"
    text = path.read_text()
    assert hub.write_token not in text and hub.read_token not in text
    assert hashlib.sha256(hub.write_token.encode()).hexdigest() in text
    assert path.stat().st_mode & 0o777 == 0o600


def test_reads_can_require_a_token(tmp_path, lora):
    h = start_hub(tmp_path / "closed", config={READ_TOKEN_REQUIRED: True})
    try:
        RemoteRegistry(h.url, token=h.write_token).push(lora, name="sent", task="t")
        for path in ("/api/versions", "/api/versions/sent", "/", "/api/models/sent/revision/main",
                     "/sent/resolve/main/adapter_config.json"):
            _refused(httpx2.get(h.url + path), 401)
            _refused(httpx2.get(h.url + path, headers=_auth("ahub_wrong")), 401)
            assert httpx2.get(h.url + path, headers=_auth(h.read_token)).status_code == 200
        assert [v.ref for v in RemoteRegistry(h.url, token=h.read_token).list()] == ["sent@1"]
    finally:
        h.handle.close()


def test_open_reads_ignore_a_foreign_token(hub):
    """The HF client may send a huggingface.co token along; open reads must still work."""
    r = httpx2.get(f"{hub.url}/api/versions", headers=_auth("hf_someoneelsestoken"))
    assert r.status_code == 200 and r.json()["versions"][0]["name"] == "sent"


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/api/objects/sha256/..%2F..%2Fregistry.json"),
        ("GET", "/api/objects/sha256/../../registry.json"),
        ("GET", "/api/objects/sha256/%2e%2e%2ftokens.json"),
        ("PUT", "/api/objects/sha256/..%2F..%2Fregistry.json"),
        ("GET", "/sent/resolve/main/..%2F..%2Fregistry.json"),
        ("GET", "/sent/resolve/main/../../tokens.json"),
        ("GET", "/..%2Fhub/resolve/main/registry.json"),
        ("POST", "/api/adapters/..%2Fevil/versions"),
        ("POST", "/api/adapters/../versions"),
        ("GET", "/api/versions/..%2F..%2Fregistry.json"),
        ("DELETE", "/api/versions/..%2Fsent@1"),
    ],
)
def test_no_request_path_reaches_outside_the_store(hub, method, path):
    before = snapshot(hub.registry.root)
    # http.client sends the path exactly as written: no client-side normalisation of '..'.
    conn = http.client.HTTPConnection(hub.url.removeprefix("http://"), timeout=10)
    conn.request(method, path, body=b'{"files": []}',
                 headers=_auth(hub.write_token) | {"Content-Type": "application/json"})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    assert r.status in (400, 404, 405), (r.status, body)
    assert json.loads(body)["error"]["message"]
    assert b"schema_version" not in body and b'"tokens"' not in body
    assert snapshot(hub.registry.root) == before


def _commit(hub, name: str, files: list[dict]) -> httpx2.Response:
    return httpx2.post(f"{hub.url}/api/adapters/{name}/versions", json={"files": files, "task": "t"},
                       headers=_auth(hub.write_token))


def test_file_paths_in_a_manifest_cannot_escape_or_add_files(hub):
    version = hub.registry.resolve("sent@1")
    files = [f.to_dict() for f in version.files]
    before = snapshot(hub.registry.root)
    for bad_path in ("../registry.json", "/etc/passwd", "sub/adapter_config.json", ".hidden", "a\x00b", ""):
        evil = files + [dict(files[0], path=bad_path)]
        _refused(_commit(hub, "evil", evil), 400, "invalid_path")
    extra = files + [dict(files[0], path="run.sh")]
    err = _refused(_commit(hub, "evil", extra), 400)
    assert "not part of a PEFT adapter folder: run.sh" in err["message"]
    _refused(_commit(hub, "evil", [dict(files[0], size=files[0]["size"] + 1)] + files[1:]), 400, "invalid_manifest")
    _refused(_commit(hub, "evil", [dict(files[0], sha256="b" * 64)] + files[1:]), 409, "objects_missing")
    _refused(_commit(hub, "../evil", files), 404)
    _refused(_commit(hub, "ev:il", files), 400)
    assert snapshot(hub.registry.root) == before


def test_oversized_uploads_are_refused(hub):
    before = snapshot(hub.registry.root)
    big = b"\0" * ((1 << 20) + 1)
    r = httpx2.put(f"{hub.url}/api/objects/sha256/{hashlib.sha256(big).hexdigest()}", content=big,
                   headers=_auth(hub.write_token))
    err = _refused(r, 413, "too_large")
    assert "over this hub's limit" in err["message"]
    r = httpx2.post(f"{hub.url}/api/objects/check", content=json.dumps({"digests": ["a" * 64] * 5000}),
                    headers=_auth(hub.write_token) | {"Content-Type": "application/json"})
    _refused(r, 413, "too_large")
    assert snapshot(hub.registry.root) == before


def test_a_body_that_does_not_match_its_digest_is_refused(hub):
    before = snapshot(hub.registry.root)
    body = b"these bytes are not what the digest says"
    claimed = hashlib.sha256(b"something else").hexdigest()
    r = httpx2.put(f"{hub.url}/api/objects/sha256/{claimed}", content=body, headers=_auth(hub.write_token))
    err = _refused(r, 400, "digest_mismatch")
    assert claimed in err["message"] and hashlib.sha256(body).hexdigest() in err["message"]
    assert not hub.registry.store.has(claimed)
    assert snapshot(hub.registry.root) == before  # no object, no temporary left behind


def test_malformed_requests_get_json_errors_not_500(hub):
    headers = _auth(hub.write_token)
    cases = [
        httpx2.post(f"{hub.url}/api/objects/check", content=b"{not json", headers=headers),
        httpx2.post(f"{hub.url}/api/objects/check", json={"digests": ["xyz"]}, headers=headers),
        httpx2.post(f"{hub.url}/api/adapters/a/versions", json={"files": "nope"}, headers=headers),
        httpx2.post(f"{hub.url}/api/adapters/a/versions", json={"files": [{"path": "x"}]}, headers=headers),
        httpx2.post(f"{hub.url}/api/tags", json={"ref": "sent@1"}, headers=headers),
        httpx2.post(f"{hub.url}/api/tags", json={"ref": "sent@1", "tag": "12"}, headers=headers),
        httpx2.get(f"{hub.url}/api/versions/sent@@1"),
        httpx2.get(f"{hub.url}/api/versions/nope"),
        httpx2.get(f"{hub.url}/api/nothing-here"),
    ]
    for r in cases:
        assert 400 <= r.status_code < 500, (r.request.url, r.status_code, r.text)
        assert r.json()["error"]["message"]


def test_token_cli_creates_lists_and_revokes(tmp_path):
    from click.testing import CliRunner

    from adapterhub.cli.main import cli

    runner = CliRunner()
    root = str(tmp_path / "reg")
    made = runner.invoke(cli, ["hub", "token", "create", "--scope", "read", "--name", "ci", "--registry", root, "--json"])
    assert made.exit_code == 0, made.output
    doc = json.loads(made.output)
    assert doc["scope"] == "read" and doc["token"].startswith("ahub_")
    assert TokenStore(root).authenticate(doc["token"]).id == doc["id"]
    listed = runner.invoke(cli, ["hub", "token", "list", "--registry", root, "--json"])
    assert json.loads(listed.output) == [{k: doc[k] for k in ("id", "name", "scope", "created")}]
    assert doc["token"] not in listed.output
    assert runner.invoke(cli, ["hub", "token", "revoke", doc["id"], "--registry", root]).exit_code == 0
    assert TokenStore(root).authenticate(doc["token"]) is None
    unknown = runner.invoke(cli, ["hub", "token", "revoke", doc["id"], "--registry", root])
    assert unknown.exit_code == 1 and "no token with id" in unknown.output
    remote = runner.invoke(cli, ["hub", "token", "list", "--registry", "http://127.0.0.1:1"])
    assert remote.exit_code == 1 and "is a URL" in remote.output


def test_a_shared_hub_refuses_bases_named_by_a_path(tmp_path, lora, tiny_base):
    """By default a push cannot make the hub read a folder of its machine as the base."""
    h = start_hub(tmp_path / "shared", config={ALLOW_LOCAL_BASES: False})
    try:
        remote = RemoteRegistry(h.url, token=h.write_token)
        before = snapshot(h.registry.root)
        for base in (None, str(tiny_base), "../../etc", "~/models/llama", "./base"):  # None: the config's path
            with pytest.raises(RemoteError, match="is a path, which means nothing on a shared hub") as info:
                remote.push(lora, name="sent", task="t", base=base)
            assert info.value.status == 400
        objects = {k for k in snapshot(h.registry.root) if k.startswith("objects/sha256")}
        assert not (set(snapshot(h.registry.root)) - set(before) - objects)  # no version; only uploaded objects
        assert h.registry.list() == []
        v = remote.push(lora, name="sent", task="t", base="example-org/tiny-llama")
        assert v.base["name"] == "example-org/tiny-llama"
    finally:
        h.handle.close()


def test_the_client_refuses_file_names_from_a_hub_that_would_escape_its_folder(hub, tmp_path):
    """A compromised hub lists '../../x' in a manifest: the pull writes nothing anywhere."""
    with contextlib.closing(sqlite3.connect(hub.registry.root / "index.sqlite")) as db, db:
        (record,) = db.execute("SELECT record FROM versions WHERE name = 'sent' AND version = 1").fetchone()
        record = json.loads(record)
        record["files"][0]["path"] = "../../escaped.json"
        db.execute("UPDATE versions SET record = ? WHERE name = 'sent' AND version = 1", (json.dumps(record),))
    out = tmp_path / "deep" / "out"
    with pytest.raises(InvalidName, match="a plain file name"):
        RemoteRegistry(hub.url).pull("sent@1", out)
    assert not out.exists() and not (tmp_path / "escaped.json").exists()


def test_errors_do_not_reveal_where_the_hub_keeps_its_files(hub):
    root = str(hub.registry.root)
    for path in ("/api/versions/nope", "/api/versions/sent@7", "/api/models/nope/revision/main",
                 "/nope/resolve/main/adapter_config.json"):
        r = httpx2.get(hub.url + path)
        assert r.status_code == 404 and root not in r.text, r.text
    assert "no adapter named 'nope' in this hub" in httpx2.get(hub.url + "/api/versions/nope").text
