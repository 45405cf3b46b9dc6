"""Fuzz every HTTP route of both apps with hypothesis: no input may give a 5xx, every 4xx is JSON.

The routes are read from each Flask app's ``url_map``, so a new route is fuzzed without touching
this file. Two real servers run on loopback (waitress in a thread, as in the other HTTP tests):
the serving app (the engine on the tiny base, the OpenAI API and whatever else it mounts) and the
hub app (``adapterhub hub serve``'s app). Both registries hold PEFT-made adapters pushed with
``adapterhub push``, including a LoRA whose weights overflow fp32 (bench/soak.py builds them).

Each case is one request: a method (HEAD too on GET routes), path arguments (valid ones from the
registry, or unicode, superscript digits, lone surrogates, 6000-digit numbers, dot segments...), a
query string, headers (no token, a wrong one, read and write tokens, odd ``Range`` and
``Content-Type`` values) and a body: a valid body for the route with fields replaced by generated
JSON of any shape (nested values, lone surrogates, huge, negative and non-finite numbers, wrong
types), any JSON at all, or raw bytes. Every failure is collected (not only the first) and
reported with the request that caused it.

Examples per route: ``ADAPTERHUB_FUZZ_EXAMPLES`` (default 20, a fixed seed so CI runs the same
cases each time; set it for a longer, random exploration). Run with ``-s`` to see the counts.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import soak  # noqa: E402  (bench/soak.py: the adapter set of the reliability harness)

_ENV_EXAMPLES = os.environ.get("ADAPTERHUB_FUZZ_EXAMPLES")
FUZZ_SETTINGS = settings(
    max_examples=int(_ENV_EXAMPLES or 20),
    derandomize=_ENV_EXAMPLES is None,
    deadline=None,
    database=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=list(HealthCheck),
)
TIMEOUT_S = 60.0
API_KEY, ADMIN_KEY = "fuzz-api-key", "fuzz-admin-key"

# --- the servers ---------------------------------------------------------------------------------


@dataclass
class Target:
    """A running app: its URL, its url_map, and the real names a request can use to get deep."""

    name: str
    port: int
    app: Any
    models: list[str]
    refs: list[str]
    digests: list[str]
    files: list[dict[str, Any]]
    tokens: dict[str, str | None]  # what goes after "Bearer " (None: no Authorization header)


def _names(registry: Any) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    versions = registry.list()
    refs = sorted({v.name for v in versions} | {v.ref for v in versions} | {f"{v.name}:latest" for v in versions})
    files = [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in versions[0].files]
    return refs, sorted({f.sha256 for v in versions for f in v.files}), files


def _tokens(registry_root: Path) -> dict[str, str | None]:
    from adapterhub.tokens import TokenStore

    store = TokenStore(registry_root)
    return {"none": None, "garbage": "not-a-token", "read": store.create("read", "fuzz")[0],
            "write": store.create("write", "fuzz")[0]}


@pytest.fixture(scope="module")
def fixture_set(tiny_base, tmp_path_factory) -> soak.Fixture:
    """The adapters, and an untouched copy of their registry for the hub (the serving app's
    fuzzing may delete versions from its own)."""
    workdir = tmp_path_factory.mktemp("fuzz")
    fixture = soak.build_fixture(workdir, base=tiny_base)
    shutil.copytree(fixture.registry, workdir / "pristine")
    return fixture


@pytest.fixture(scope="module")
def serving_target(fixture_set) -> Iterator[Target]:
    """The serving port as ``adapterhub serve --with-hub --api-key K --admin-api-key A`` builds it."""
    from adapterhub.registry import LocalRegistry
    from adapterhub.server.engine.engine import create_engine
    from adapterhub.server.engine.model_loader import load_base_model
    from adapterhub.server.http.admission import AdmissionLimits
    from adapterhub.server.http.api_keys import ServingKeys
    from adapterhub.server.http.app import create_app
    from adapterhub.server.http.wsgi import start_in_thread

    registry = LocalRegistry(fixture_set.registry)
    tokens = _tokens(fixture_set.registry) | {"api": API_KEY, "admin": ADMIN_KEY}
    loaded = load_base_model(str(fixture_set.base), quantize="none", device="cpu")
    engine = create_engine(loaded, registry, max_batch_size=8, max_loaded_adapters=4).start()
    app = create_app(registry, engine=engine, limits=AdmissionLimits(),
                     keys=ServingKeys.of([API_KEY], [ADMIN_KEY]), with_hub=True)
    handle = start_in_thread(app, threads=8, stream_tokens=True)
    refs, digests, files = _names(registry)
    models = [engine.base_name, *fixture_set.adapters, fixture_set.nan_adapter]
    try:
        yield Target("serve", handle.port, app, models, refs, digests, files, tokens)
    finally:
        handle.close()
        engine.stop()


@pytest.fixture(scope="module")
def hub_target(fixture_set, tmp_path_factory) -> Iterator[Target]:
    from remote_helpers import start_hub

    root = tmp_path_factory.mktemp("fuzz-hub") / "registry"
    shutil.copytree(fixture_set.registry.parent / "pristine", root)
    hub = start_hub(root)
    refs, digests, files = _names(hub.registry)
    tokens = {"none": None, "garbage": "not-a-token", "read": hub.read_token, "write": hub.write_token}
    try:
        yield Target("hub", hub.handle.port, hub.counter.app, list(fixture_set.adapters), refs, digests, files, tokens)
    finally:
        hub.handle.close()


# --- the cases -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    rule: str
    method: str


def routes(app: Any) -> list[Route]:
    """Every (rule, method) of the app; deletes last, so earlier routes still find the adapters."""
    found = {Route(r.rule, m) for r in app.url_map.iter_rules() for m in r.methods - {"HEAD", "OPTIONS"}}
    return sorted(found, key=lambda r: (r.method == "DELETE", r.rule, r.method))


_ODD_TEXT = ["", " ", ".", "..", "%", "%00", "\x00", "²", "x@²", "¹²³", "٣", "１", "🙂", "\ud800", "a\udfff",
             "main\n", "latest\r\n", "../../etc/passwd", "a" * 300, "9" * 6000, "-1", "0", "2" + "0" * 40]
_SPECIAL_NUMBERS = [0, -1, 1, 2, 16, 10**9, 2**63, 2**64 - 1, -(2**64), 2**128, 10**400, 0.5, -0.0, 1e-45, 5e-324,
                    1e308, -1e308, float("nan"), float("inf"), float("-inf")]
# Field names the routes read (a body with them gets past the first checks).
_KNOWN_KEYS = ["model", "adapter", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature",
               "top_p", "n", "seed", "stop", "stream", "stream_options", "return_token_ids", "digests", "files",
               "base", "task", "tags", "description", "metrics", "lineage", "training", "ref", "tag", "role",
               "content"]

_any_text = st.text(st.characters(exclude_categories=()) | st.characters(categories=["Cs"]), max_size=40)
_text = _any_text | st.sampled_from(_ODD_TEXT)
_scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.sampled_from(_SPECIAL_NUMBERS) | _text)
_json = st.recursive(_scalars, lambda kids: st.lists(kids, max_size=4)
                     | st.dictionaries(st.sampled_from(_KNOWN_KEYS) | _text, kids, max_size=4), max_leaves=12)


def _templates(target: Target, model: str) -> dict[str, dict[str, Any]]:
    """A valid body per route; generated fields go over it."""
    adapter = model if model != target.models[0] else target.models[1]
    return {
        "/v1/completions": {"model": model, "prompt": "Hello", "max_tokens": 4, "temperature": 0},
        "/v1/chat/completions": {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        "/v1/adapters/load": {"model": adapter},
        "/v1/adapters/unload": {"model": adapter},
        "/api/objects/check": {"digests": target.digests[:2]},
        "/api/adapters/<name>/versions": {"files": target.files, "task": "fuzz"},
        "/api/tags": {"ref": target.refs[0], "tag": "fuzzed"},
        "/api/versions/<path:ref>/metrics": {"accuracy": 0.5},
    }


def _path_value(name: str, target: Target) -> st.SearchStrategy[str]:
    valid = {
        "repo_id": target.models, "name": target.models, "ref": target.refs, "digest": target.digests,
        "revision": ["main", "1", "latest", target.digests[0][:40]],
        "filename": [f["path"] for f in target.files], "path_in_repo": [f["path"] for f in target.files],
    }.get(name, ["x"])
    # Three in four valid, so the requests with several arguments get past the first check often.
    return st.integers(0, 3).flatmap(lambda i: st.sampled_from(valid) if i else _text | st.integers().map(str))


def _segment(value: str, path: bool) -> str:
    return quote(value.encode("utf-8", "surrogatepass"), safe="/" if path else "")


_ARG = re.compile(r"<(?:(\w+):)?(\w+)>")


@st.composite
def _url(draw: Any, rule: str, target: Target) -> str:
    parts = []
    pos = 0
    for m in _ARG.finditer(rule):
        parts.append(rule[pos:m.start()])
        parts.append(_segment(draw(_path_value(m.group(2), target)), m.group(1) == "path"))
        pos = m.end()
    parts.append(rule[pos:])
    query = draw(st.dictionaries(st.sampled_from(["base", "task", "type", "name", "all", "revision"]) | _text,
                                 _text | st.sampled_from(["1", "true", "lora"]), max_size=3))
    qs = "&".join(f"{_segment(k, False)}={_segment(v, False)}" for k, v in query.items())
    return "".join(parts) + (f"?{qs}" if qs else "")


_RAW_BODIES = [b"", b"{", b"null", b"[]", b"NaN", b'{"a": NaN}', b"[" * 50_000 + b"]" * 50_000,
               b'{"n": ' + b"9" * 5000 + b"}", b"\xff\xfe\x00", b'{"model": "\xed\xa0\x80"}', b'"\\ud800"']


def _encode(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def _body(rule: str, target: Target) -> st.SearchStrategy[bytes]:
    return st.sampled_from(target.models).flatmap(lambda model: _bodies(_templates(target, model).get(rule, {})))


def _bodies(template: dict[str, Any]) -> st.SearchStrategy[bytes]:
    keys = st.sampled_from(sorted(set(_KNOWN_KEYS) | set(template))) | _text
    mutated = st.dictionaries(keys, _json, max_size=3).map(lambda extra: _encode(template | extra))
    dropped = st.sampled_from(sorted(template) or [""]).map(
        lambda k: _encode({key: v for key, v in template.items() if key != k}))
    return st.one_of(mutated, dropped, _json.map(_encode), st.sampled_from(_RAW_BODIES), st.binary(max_size=64))


@dataclass(frozen=True)
class Case:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None

    def describe(self) -> str:
        body = "none" if self.body is None else f"{len(self.body)} bytes {self.body[:120]!r}"
        return f"{self.method} {self.url[:300]} headers={self.headers} body={body}"


def _token_choices(route: Route, target: Target) -> list[str]:
    """Mostly the credential the route takes (API or admin key under /v1, hub tokens elsewhere),
    sometimes none, a wrong one, or the other kind's."""
    wanted = ["api", "api", "api", "admin", "admin", "read"] if route.rule.startswith("/v1") else \
        ["read", "write", "write", "write", "api"]
    return ["none", "garbage"] + [name for name in wanted if name in target.tokens]


@st.composite
def cases(draw: Any, route: Route, target: Target) -> Case:
    method = route.method
    if method == "GET" and draw(st.integers(0, 4)) == 0:
        method = "HEAD"
    token = target.tokens[draw(st.sampled_from(_token_choices(route, target)))]
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    content_type = draw(st.sampled_from(["application/json", "application/json", "text/plain", None,
                                         "application/octet-stream"]))
    if content_type:
        headers["Content-Type"] = content_type
    byte_range = draw(st.sampled_from([None, None, "bytes=0-10", "bytes=-5", "bytes=999999999-", "bytes=abc",
                                       "bytes=5-1", "bytes=0-0,2-3", "bytes=-0"]))
    if byte_range:
        headers["Range"] = byte_range
    body = draw(_body(route.rule, target)) if method in ("POST", "PUT", "PATCH", "DELETE") else None
    return Case(method, draw(_url(route.rule, target)), headers, body)


@st.composite
def unrouted_cases(draw: Any, target: Target) -> Case:
    """Paths no rule (or not this method) serves: 404 and 405 must be JSON too."""
    method = draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]))
    prefix = draw(st.sampled_from(["/", "/v1/", "/api/", "/api/models/", "/static/", "/v2/"]))
    path = prefix + _segment(draw(_text), path=True)
    return Case(method, path, {"Content-Type": "application/json"}, draw(_json.map(_encode)))


# --- running them --------------------------------------------------------------------------------


def _send(target: Target, case: Case) -> tuple[int, str, bytes]:
    """(status, content type, body) of one request on its own connection."""
    conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=TIMEOUT_S)
    try:
        conn.request(case.method, case.url, case.body, case.headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


def _problem(target: Target, case: Case, statuses: Counter) -> str | None:
    """Why this answer breaks the rules, or None; counts the status."""
    try:
        status, content_type, payload = _send(target, case)
    except (OSError, http.client.HTTPException) as e:
        statuses["no answer"] += 1
        return f"no answer: {type(e).__name__}: {e}"
    statuses[status] += 1
    excerpt = payload[:200].decode(errors="replace")
    if status >= 500:
        return f"HTTP {status}: {excerpt}"
    if status >= 400 and case.method != "HEAD":
        try:
            message = json.loads(payload)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            return f"HTTP {status} without a JSON error body: {excerpt}"
        if not isinstance(message, str):
            return f"HTTP {status}: error.message is not a string: {excerpt}"
    if status == 200 and content_type.startswith("text/event-stream"):
        for line in payload.decode(errors="replace").splitlines():
            if line.startswith("data: {") and '"server_error"' in line:
                return f"server error inside the stream: {line[:200]}"
    return None


def _fuzz(strategy: st.SearchStrategy[Case], target: Target, failures: list[str], label: str) -> Counter:
    """Run hypothesis on one strategy; collect every failing case instead of stopping at the first.
    Returns how many answers had each status."""
    statuses: Counter = Counter()

    @FUZZ_SETTINGS
    @given(strategy)
    def one(case: Case) -> None:
        problem = _problem(target, case, statuses)
        if problem is not None:
            failures.append(f"{label}: {problem}\n    input: {case.describe()}")

    one()
    return statuses


def _fuzz_app(target: Target, alive: Case) -> None:
    """Fuzz every route, print the counts, then check the server still answers ``alive`` with a 200."""
    failures: list[str] = []
    counts: dict[str, Counter] = {}
    for route in routes(target.app):
        label = f"{target.name} {route.method} {route.rule}"
        counts[label] = _fuzz(cases(route, target), target, failures, label)
    label = f"{target.name} (unrouted paths)"
    counts[label] = _fuzz(unrouted_cases(target), target, failures, label)
    print(f"\nfuzz cases per route ({target.name} app, {sum(map(sum, (c.values() for c in counts.values())))} in all;"
          " answers by status):")
    for label, statuses in sorted(counts.items()):
        by_status = ", ".join(f"{k}: {n}" for k, n in sorted(statuses.items(), key=str))
        print(f"  {sum(statuses.values()):5d}  {label}  ({by_status})")
    status, _, payload = _send(target, alive)
    if status != 200:
        failures.append(f"after the fuzzing: HTTP {status} {payload[:200]!r}\n    input: {alive.describe()}")
    assert len(counts) > 1 and all(sum(c.values()) for c in counts.values())
    if failures:
        pytest.fail(f"{len(failures)} failing cases:\n" + "\n".join(failures[:50]), pytrace=False)


def test_fuzz_serving_app(serving_target):
    body = json.dumps({"model": serving_target.models[0], "prompt": "Hello", "max_tokens": 4, "temperature": 0})
    _fuzz_app(serving_target, Case("POST", "/v1/completions", {"Authorization": f"Bearer {API_KEY}",
                                                              "Content-Type": "application/json"}, body.encode()))


def test_fuzz_hub_app(hub_target):
    _fuzz_app(hub_target, Case("GET", "/api/versions", {}, None))
