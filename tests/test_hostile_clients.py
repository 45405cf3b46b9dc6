"""Clients that push at the edges of HTTP and of the request schema, against both real servers on
loopback (``adapterhub serve``'s app with the engine on the tiny base, and ``adapterhub hub
serve``'s app), through raw sockets where the framing is the point:

* a client string quoted in an error stays bounded, however long it is;
* a client that half-closes after its request still gets its answer (streams too);
* an adapter larger than the whole adapter memory bound is a 422, not a 503 to retry forever;
* a request framed ambiguously (RFC 9112) is refused and its connection closed;
* ``/health`` answers while every worker thread streams, and requests waiting for a worker are
  bounded (429 ``server_busy`` beyond);
* integers are read one way on every route (ASCII digits, canonical, bounded, no bools), and JSON
  bodies with non-finite numbers are refused naming the field.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from typing import Iterator

import pytest

from adapterhub.registry import LocalRegistry
from conftest import save_lora
from remote_helpers import Hub, start_hub
from serving_helpers import held_engine

HUGE = 1_000_000  # characters of a hostile model name (the probe used 15 MB)


@pytest.fixture(scope="module")
def serving(tiny_base, tmp_path_factory):
    """The serving app on 2 worker threads with 1 request allowed to wait, and a LoRA ``small`` in
    its registry; yields (engine, server)."""
    from adapterhub.server.engine.engine import create_engine
    from adapterhub.server.engine.model_loader import load_base_model
    from adapterhub.server.http.app import create_app
    from adapterhub.server.http.wsgi import start_in_thread

    root = tmp_path_factory.mktemp("hostile")
    registry = LocalRegistry(root / "registry")
    registry.push(save_lora(tiny_base, root / "small", seed=3), name="small", task="test", base=str(tiny_base))
    engine = create_engine(load_base_model(str(tiny_base), quantize="none", device="cpu"), registry,
                           max_batch_size=4).start()
    with start_in_thread(create_app(registry, engine=engine), threads=2, stream_tokens=True,
                         max_waiting_requests=1) as server:
        yield engine, server
    engine.stop()


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Iterator[Hub]:
    hub = start_hub(tmp_path_factory.mktemp("hostile-hub") / "hub")
    yield hub
    hub.handle.close()


def _post(port: int, path: str, body: dict | bytes, timeout: float = 30, method: str = "POST",
          token: str | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request(method, path, body if isinstance(body, bytes) else json.dumps(body),
                 {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})})
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), raw


def _get(port: int, path: str, timeout: float = 30) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("GET", path)
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    return resp.status, raw


def _error(raw: bytes) -> dict:
    return json.loads(raw)["error"]


def _request(method: str, path: str, body: bytes = b"", version: str = "1.1", headers: bytes = b"") -> bytes:
    length = b"Content-Length: %d\r\n" % len(body) if body else b""
    return (b"%s %s HTTP/%s\r\nHost: x\r\nContent-Type: application/json\r\n%s%s\r\n%s"
            % (method.encode(), path.encode(), version.encode(), length, headers, body))


def _exchange(port: int, data: bytes, *, half_close: bool = False, timeout: float = 30) -> tuple[bytes, bool]:
    """Send ``data`` on a fresh connection (then shut the sending side if ``half_close``); the bytes
    answered until the server closes or goes quiet, and whether it closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                return answer, False
            if not chunk:
                return answer, True
            answer += chunk
            if not half_close:
                sock.settimeout(2)  # after an answer: a connection kept open goes quiet


def _final(answer: bytes) -> tuple[int, bytes]:
    """The status and body of the final response in ``answer``, past any interim 1xx."""
    while answer.startswith(b"HTTP/1.1 1"):
        answer = answer.partition(b"\r\n\r\n")[2]
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


# --- 2. echoes of client strings are bounded ------------------------------------------------------


@pytest.mark.parametrize("path, extra", [("/v1/completions", {"prompt": "hi"}),
                                         ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
                                         ("/v1/adapters/load", {})])
def test_a_huge_model_name_comes_back_as_a_bounded_prefix(serving, path, extra):
    _, server = serving
    status, _, raw = _post(server.port, path, {"model": "m" * HUGE, **extra})
    assert status == 404 and len(raw) < 2000, (status, len(raw))
    assert f"…({HUGE} chars)" in _error(raw)["message"]


def test_a_huge_field_name_comes_back_as_a_bounded_prefix(serving):
    engine, server = serving
    status, _, raw = _post(server.port, "/v1/completions", {"model": engine.base_name, "prompt": "hi", "k" * HUGE: 1})
    assert status == 400 and len(raw) < 2000 and _error(raw)["code"] == "unsupported_field"


def test_the_hub_quotes_a_huge_reference_bounded(hub):
    ref = "r" * 200_000  # under waitress's 256 KB header limit
    status, raw = _get(hub.handle.port, f"/api/versions/{ref}")
    assert status == 400 and len(raw) < 2000 and "…(200000 chars)" in _error(raw)["message"]
    status, raw = _get(hub.handle.port, f"/api/{ref}/revision/main")
    assert status == 404 and len(raw) < 2000


# --- 5. a half-closed client still gets its answer ------------------------------------------------


@pytest.mark.parametrize("version", ["1.0", "1.1"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_half_closes_after_its_request_gets_the_answer(serving, version, stream):
    engine, server = serving
    body = json.dumps({"model": engine.base_name, "prompt": "half", "max_tokens": 4, "temperature": 0,
                       "stream": stream}).encode()
    answer, closed = _exchange(server.port, _request("POST", "/v1/completions", body, version), half_close=True)
    status, content = _final(answer)
    assert closed and status == 200, answer[:300]
    if stream:
        assert b"data: [DONE]" in content, content[-200:]
    else:
        assert b'"choices"' in content


def test_a_half_closed_client_of_the_hub_gets_the_answer(hub):
    answer, closed = _exchange(hub.handle.port, _request("GET", "/api/versions"), half_close=True)
    assert closed and _final(answer)[0] == 200


# --- 6. an adapter that can never fit is a 4xx ------------------------------------------------------


def test_an_adapter_larger_than_the_memory_bound_is_422(tiny_base, tmp_path):
    from adapterhub.server.engine.engine import create_engine
    from adapterhub.server.engine.model_loader import load_base_model
    from adapterhub.server.http.app import create_app
    from adapterhub.server.http.wsgi import start_in_thread

    registry = LocalRegistry(tmp_path / "registry")
    registry.push(save_lora(tiny_base, tmp_path / "big", seed=4), name="big", task="test", base=str(tiny_base))
    engine = create_engine(load_base_model(str(tiny_base), quantize="none", device="cpu"), registry,
                           max_adapter_bytes=1024).start()
    try:
        with start_in_thread(create_app(registry, engine=engine), threads=2) as server:
            for path, body in (("/v1/completions", {"model": "big", "prompt": "hi", "max_tokens": 2}),
                               ("/v1/adapters/load", {"model": "big"})):
                status, headers, raw = _post(server.port, path, body)
                error = _error(raw)
                assert status == 422 and error["code"] == "adapter_too_large" and "Retry-After" not in headers
                assert "1024-byte" in error["message"] and "bytes" in error["message"]
    finally:
        engine.stop()


# --- 8. ambiguous framing is refused and the connection closed --------------------------------------

_BODY = b'{"model": "x", "prompt": "y"}'
_FRAMINGS = {
    "content-length-and-chunked": (b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   b"%x\r\n%s\r\n0\r\n\r\n" % (len(_BODY), _BODY), 400),
    "two-content-lengths": (b"Content-Length: %d\r\nContent-Length: 4\r\n\r\n%s" % (len(_BODY), _BODY), 400),
    "gzip-coding": (b"Transfer-Encoding: gzip\r\n\r\n", 501),
    "chunked-twice": (b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
    "obs-fold": (b"X-Folded: one\r\n two\r\nContent-Length: %d\r\n\r\n%s" % (len(_BODY), _BODY), 400),
}


@pytest.mark.parametrize("case", list(_FRAMINGS))
@pytest.mark.parametrize("which", ["serve", "hub"])
def test_ambiguous_framing_is_refused_and_the_connection_closed(serving, hub, which, case):
    port, path = (serving[1].port, "/v1/completions") if which == "serve" else (hub.handle.port, "/api/versions")
    rest, expected = _FRAMINGS[case]
    head = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" % path.encode()
    # a second request follows on the same connection: it must never be answered
    answer, closed = _exchange(port, head + rest + _request("GET", "/health"))
    status, body = _final(answer)
    assert status == expected and closed, answer[:300]
    assert answer.count(b"HTTP/1.") == 1 and "error" in json.loads(body)


def test_transfer_encoding_on_http_1_0_is_refused(serving):
    data = (b"POST /v1/completions HTTP/1.0\r\nHost: x\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n%s"
            % (len(_BODY), _BODY))
    answer, closed = _exchange(serving[1].port, data)
    assert _final(answer)[0] == 400 and closed


@pytest.mark.parametrize("token", ["write", None])
def test_a_body_refused_from_its_headers_still_lets_the_client_read_the_answer(hub, token):
    """The hub answers a write over its JSON limit (or without a token) before reading the body; the
    client, still sending its 4 MB, must read that answer, not a reset (the soak's 1 MB metrics
    patch got a broken pipe): the server shuts its side, drains, then closes."""
    body = b'{"m": "' + b"x" * (4 << 20) + b'"}'
    auth = b"Authorization: Bearer %s\r\n" % hub.write_token.encode() if token else b""
    data = _request("PATCH", "/api/versions/small@1/metrics", body, headers=auth)
    answer, closed = _exchange(hub.handle.port, data)
    status, raw = _final(answer)
    assert (status, closed) == ((413 if token else 401), True), answer[:300]
    assert "error" in json.loads(raw)


# --- 9. health beside busy workers; the wait for a worker is bounded --------------------------------


def test_health_answers_while_every_worker_streams_and_waiting_is_bounded(serving):
    engine, server = serving
    stream = json.dumps({"model": engine.base_name, "prompt": "s", "max_tokens": 2, "stream": True}).encode()
    socks: list[socket.socket] = []
    try:
        with held_engine(engine, in_decode=True):
            for _ in range(2):  # both worker threads, each serving a stream that waits for the engine
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
                sock.sendall(_request("POST", "/v1/completions", stream))
                socks.append(sock)
            deadline = time.monotonic() + 20
            while engine.queued < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert engine.queued == 2
            for path in ("/health", "/metrics"):
                status, _ = _get(server.port, path, timeout=10)
                assert status == 200
            # one request may wait for a worker; of two more, one waits and one is refused at once
            waiting = []
            for _ in range(2):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
                sock.sendall(_request("GET", "/v1/models"))
                waiting.append(sock)
            answers = []
            for sock in waiting:
                try:
                    answers.append(sock.recv(65536))
                except socket.timeout:
                    answers.append(b"")
            refused = [a for a in answers if a]
            assert len(refused) == 1, answers
            status, body = _final(refused[0])
            assert status == 429 and b"Retry-After: 1" in refused[0] and _error(body)["code"] == "server_busy"
            socks += waiting
        queued = next(s for s, a in zip(waiting, answers) if not a)
        queued.settimeout(30)
        assert queued.recv(65536).startswith(b"HTTP/1.1 200")  # served once a worker was free
    finally:
        for sock in socks:
            sock.close()


# --- 10. one reading of integers; finite numbers only -----------------------------------------------


@pytest.mark.parametrize("bias", [{"١": 1}, {"²": 1}, {"01": 1, "1": 2}, {"-1": 1}, {"1" * 20: 1}])
def test_logit_bias_keys_are_canonical_ascii_token_ids(serving, bias):
    engine, server = serving
    status, _, raw = _post(server.port, "/v1/completions",
                           {"model": engine.base_name, "prompt": "hi", "max_tokens": 1, "logit_bias": bias})
    error = _error(raw)
    assert status == 400 and error["code"] == "invalid_value" and "'logit_bias'" in error["message"]
    assert "invalid literal" not in error["message"]


def test_best_of_true_is_not_taken_for_1(serving):
    engine, server = serving
    status, _, raw = _post(server.port, "/v1/completions",
                           {"model": engine.base_name, "prompt": "hi", "max_tokens": 1, "best_of": True})
    assert status == 400 and "best_of" in _error(raw)["message"]
    status, _, _ = _post(server.port, "/v1/completions",
                         {"model": engine.base_name, "prompt": "hi", "max_tokens": 1, "best_of": 1})
    assert status == 200


@pytest.mark.parametrize("field, literal, what", [
    ("max_tokens", b"1" + b"0" * 5000, b"5001 digits"),
    ("temperature", b"NaN", b"NaN"),
    ("top_p", b"Infinity", b"Infinity"),
    ("frequency_penalty", b"-1e999", b"not a finite number"),
])
def test_numbers_no_field_can_hold_are_refused_naming_the_field(serving, field, literal, what):
    engine, server = serving
    body = b'{"model": "%s", "prompt": "hi", "%s": %s}' % (engine.base_name.encode(), field.encode(), literal)
    status, _, raw = _post(server.port, "/v1/completions", body)
    error = _error(raw)
    assert status == 400 and error["code"] == "invalid_value", error
    assert f"'{field}'" in error["message"] and what.decode() in error["message"]


def test_the_hub_reads_counts_and_numbers_the_same_way(hub):
    for query in ("limit=%D9%A3", "limit=01", "offset=%C2%B2", "limit=" + "9" * 5000):
        status, raw = _get(hub.handle.port, f"/api/versions?{query}")
        assert status == 400 and _error(raw)["code"] == "invalid_field", (query, raw[:200])
    status, raw = _get(hub.handle.port, "/api/versions/x@01")
    assert status == 400 and _error(raw)["code"] == "invalid_reference"
    status, _, raw = _post(hub.handle.port, "/api/versions/any@1/metrics", b'{"accuracy": NaN}', method="PATCH",
                           token=hub.write_token)
    assert status == 400 and "'accuracy' is NaN" in _error(raw)["message"]
