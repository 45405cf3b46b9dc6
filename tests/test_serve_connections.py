"""Connections that misbehave must not cost anyone else: idle, half-sent and trickling clients, and
clients that leave before their answer. A real waitress server on loopback, the real engine."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest

from adapterhub.registry import LocalRegistry


@pytest.fixture(scope="module")
def stack(tiny_base, tmp_path_factory):
    from adapterhub.server.engine.engine import create_engine
    from adapterhub.server.engine.model_loader import load_base_model
    from adapterhub.server.http.app import create_app
    from adapterhub.server.http.wsgi import start_in_thread

    registry = LocalRegistry(tmp_path_factory.mktemp("connections") / "registry")
    engine = create_engine(load_base_model(str(tiny_base), quantize="none", device="cpu"), registry,
                           max_batch_size=4).start()
    with start_in_thread(create_app(registry, engine=engine), threads=8, stream_tokens=True) as server:
        yield engine, server
    engine.stop()


def _timed(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, float]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, None if body is None else json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status, time.perf_counter() - started


def test_110_idle_and_slow_connections_do_not_starve_real_clients(stack):
    engine, server = stack
    stop = threading.Event()
    socks: list[socket.socket] = []
    trickling: list[socket.socket] = []
    try:
        for i in range(110):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            socks.append(sock)
            if i % 3 == 1:  # headers half sent
                sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Ty")
            elif i % 3 == 2:  # headers sent, the body trickles in a byte at a time
                sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 100000\r\n\r\n{\"model\": ")
                trickling.append(sock)
            # else: connected, sends nothing

        def trickle() -> None:
            while not stop.wait(0.2):
                for sock in trickling:
                    try:
                        sock.send(b" ")
                    except OSError:
                        pass

        threading.Thread(target=trickle, daemon=True).start()
        time.sleep(0.5)  # the server has accepted and read them all
        status, took = _timed(server.port, "GET", "/health")
        assert status == 200 and took < 2, took
        status, took = _timed(server.port, "POST", "/v1/completions",
                              {"model": engine.base_name, "prompt": "still served", "max_tokens": 8})
        assert status == 200 and took < 2, took
    finally:
        stop.set()
        for sock in socks:
            sock.close()


def test_a_client_trickling_headers_is_cut_off(tmp_path, monkeypatch):
    """The receive deadline (shortened here): a request still arriving after it is closed."""
    from adapterhub.server.http import wsgi
    from adapterhub.server.http.app import create_app

    monkeypatch.setattr(wsgi, "REQUEST_HEADER_TIMEOUT_S", 1)
    with wsgi.start_in_thread(create_app(LocalRegistry(tmp_path / "reg")), cleanup_interval=1) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"GET /api/versions HTTP/1.1\r\n")
            started = time.monotonic()
            closed = False
            while time.monotonic() - started < 8:
                sock.sendall(b"X-Slow: 1\r\n")  # activity, so the idle timeout alone would never close it
                sock.settimeout(0.5)
                try:
                    closed = sock.recv(1) == b""
                except socket.timeout:
                    continue
                except OSError:
                    closed = True
                if closed:
                    break
        assert closed and time.monotonic() - started < 5


def test_a_client_leaving_a_non_streamed_request_cancels_its_answers(stack):
    engine, server = stack
    before = engine.stats.generated_tokens
    body = json.dumps({"model": engine.base_name, "prompt": "bye", "n": 4, "max_tokens": 480,
                       "temperature": 0}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        deadline = time.monotonic() + 20
        while engine.running < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.running == 4
    left = time.monotonic()  # the socket is closed: the client has gone
    while engine.running and time.monotonic() - left < 5:
        time.sleep(0.02)
    assert engine.running == 0 and time.monotonic() - left < 2
    assert engine.stats.generated_tokens - before < 4 * 480, "the engine kept decoding for a client that left"
    status, took = _timed(server.port, "POST", "/v1/completions",
                          {"model": engine.base_name, "prompt": "next", "max_tokens": 4})
    assert status == 200 and took < 2


def test_a_streamed_request_whose_client_leaves_while_queued_never_runs(stack):
    engine, server = stack
    filler = json.dumps({"model": engine.base_name, "prompt": "busy", "n": 4, "max_tokens": 480,
                         "temperature": 0}).encode()
    queued = json.dumps({"model": engine.base_name, "prompt": "later", "max_tokens": 480, "stream": True}).encode()

    def post(sock: socket.socket, body: bytes) -> None:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    def wait_for(condition, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.02)
        return condition()

    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as busy:
        post(busy, filler)
        assert wait_for(lambda: engine.running == 4, 20)  # the batch (max 4 rows) is full
        cancelled = engine.stats.cancelled
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as waiting:
            post(waiting, queued)
            assert wait_for(lambda: engine.queued == 1, 10)
        left = time.monotonic()  # the streamed request's client has gone before its first token
        assert wait_for(lambda: engine.queued == 0, 5) and time.monotonic() - left < 2
        assert engine.stats.cancelled == cancelled + 1 and engine.running == 4  # it left without running
    assert wait_for(lambda: engine.running == 0, 5)
