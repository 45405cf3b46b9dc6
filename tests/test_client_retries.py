"""Both hand-written HTTP clients, the hub's ``RemoteRegistry`` and the data tools' ``ChatClient``,
retry what ``hub.retry`` allows, against real servers on loopback: a scripted ``http.server`` that
answers 429/503 (or cuts the connection) a few times and counts the requests, the hub app behind
waitress with one worker thread and no waiting room (its own 429 ``server_busy``), and
``adapterhub serve``'s engine with a queue of one (its 429 ``queue_full``)."""

from __future__ import annotations

import email.utils
import http.server
import json
import socket
import struct
import threading
import time
import urllib.request
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

import pytest

from adapterhub.data.openai_client import ChatClient
from adapterhub.errors import ConcurrentModification, EndpointError, RemoteError
from adapterhub.remote import RemoteRegistry

RESET = "reset"  # a step of the script: close the connection without an answer
VERSIONS_PAGE = {"versions": [], "next": None}
CHAT_ANSWER = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}}]}


class ScriptedServer:
    """``http.server`` on loopback answering each request with the next step of ``script`` (a status
    and its headers, or ``RESET``), then 200 with ``ok_body``; ``requests`` lists (method, path)."""

    def __init__(self, script: Iterable[tuple[int, dict[str, str]] | str], ok_body: dict[str, Any]) -> None:
        self.script = list(script)
        self.ok_body = ok_body
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _next(self, method: str, path: str) -> tuple[int, dict[str, str]] | str:
        with self.lock:
            self.requests.append((method, path))
            return self.script.pop(0) if self.script else (200, {})

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                step = server._next(self.command, self.path)
                if step == RESET:  # SO_LINGER 0: the close sends a reset, as a crashing server does
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    return
                status, headers = step
                body = json.dumps(server.ok_body if status == 200 else
                                  {"error": {"message": f"scripted {status}", "code": f"scripted_{status}"}}).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> "ScriptedServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _busy(status: int, retry_after: str = "0") -> tuple[int, dict[str, str]]:
    return status, {"Retry-After": retry_after}


# --- the hub client, against a scripted server --------------------------------------------------


def test_a_hub_read_is_retried_past_429_and_503_then_succeeds():
    with ScriptedServer([_busy(429), _busy(503), _busy(429)], VERSIONS_PAGE) as server:
        assert RemoteRegistry(server.url).list() == []
    assert server.requests == [("GET", "/api/versions")] * 4


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_retry_after_is_waited_in_both_forms(form):
    retry_after = "1" if form == "seconds" else email.utils.formatdate(time.time() + 2, usegmt=True)
    with ScriptedServer([_busy(429, retry_after)], VERSIONS_PAGE) as server:
        started = time.monotonic()
        RemoteRegistry(server.url).list()
        waited = time.monotonic() - started
    assert len(server.requests) == 2 and waited >= 1.0


def test_a_cut_idempotent_request_is_retried():
    with ScriptedServer([RESET, RESET], VERSIONS_PAGE) as server:
        assert RemoteRegistry(server.url).list() == []
    assert len(server.requests) == 3


@pytest.mark.parametrize("step", [(500, {}), RESET], ids=["500", "reset"])
def test_a_post_is_not_retried_on_a_500_or_a_reset(step):
    with ScriptedServer([step], {}) as server:
        with pytest.raises(RemoteError) as failed:
            RemoteRegistry(server.url).tag("a@1", "prod")
    assert server.requests == [("POST", "/api/tags")]
    assert "\n" not in str(failed.value) and "after" not in str(failed.value)


def test_a_post_is_retried_on_429_and_503():
    tagged = {"name": "a", "version": 1, "digest": "0" * 64, "adapter_type": "lora", "files": [], "tags": ["prod"]}
    with ScriptedServer([_busy(429), _busy(503)], tagged) as server:
        assert RemoteRegistry(server.url).tag("a@1", "prod").tags == ("prod",)
    assert server.requests == [("POST", "/api/tags")] * 3


def test_giving_up_is_bounded_by_tries_with_a_clear_error():
    from adapterhub.retry import RetryPolicy

    with ScriptedServer([_busy(429)] * 10, VERSIONS_PAGE) as server:
        with pytest.raises(RemoteError) as failed:
            RemoteRegistry(server.url).list()
        assert len(server.requests) == 5  # the default
        assert str(failed.value) == "scripted 429 (429 scripted_429, after 5 tries)"
        server.requests.clear()
        with pytest.raises(RemoteError, match=r"after 2 tries\)$"):
            RemoteRegistry(server.url, retry=RetryPolicy(tries=2)).list()
        assert len(server.requests) == 2


def test_giving_up_is_bounded_by_the_time_budget():
    """Waits of 1 s in a budget of 2.5 s: tries at 0, 1 and 2 s; a fourth would start past it."""
    from adapterhub.retry import RetryPolicy

    with ScriptedServer([_busy(503, "1")] * 10, VERSIONS_PAGE) as server:
        with pytest.raises(RemoteError, match=r"after 3 tries"):
            RemoteRegistry(server.url, retry=RetryPolicy(tries=10, budget_s=2.5)).list()
    assert len(server.requests) == 3


def test_an_unreachable_hub_is_one_line_after_its_tries():
    from adapterhub.retry import RetryPolicy

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(RemoteError) as failed:
        RemoteRegistry(url, retry=RetryPolicy(tries=3, base_wait_s=0.01)).list()
    message = str(failed.value)
    assert message.startswith(f"cannot reach the hub at {url}") and message.endswith("(after 3 tries)")


# --- the hub client, against the hub app -------------------------------------------------------


class Interference:
    """WSGI middleware around the hub app: holds a request to ``/hold`` until ``release`` (so one
    worker thread is taken), and answers the first ``refuse_puts`` object uploads 503 ``busy`` after
    reading their bodies (as the hub does when its lock is taken)."""

    def __init__(self, app: Callable) -> None:
        from adapterhub.server.http.header_gate import gate_of

        self.app = app
        self.header_gate = gate_of(app)
        self.held, self.release = threading.Event(), threading.Event()
        self.refuse_puts = 0
        self.puts = 0

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/hold":
            self.held.set()
            self.release.wait(30)
            start_response("204 No Content", [])
            return [b""]
        if environ["REQUEST_METHOD"] == "PUT" and environ["PATH_INFO"].startswith("/api/objects/"):
            self.puts += 1
            if self.puts <= self.refuse_puts:
                environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
                body = json.dumps({"error": {"message": "this hub is busy", "code": "busy"}}).encode()
                start_response("503 Service Unavailable", [("Content-Type", "application/json"),
                                                          ("Retry-After", "0"), ("Content-Length", str(len(body)))])
                return [body]
        return self.app(environ, start_response)


@contextmanager
def one_worker_hub(tmp_path) -> Iterator[tuple[str, str, Interference, Any]]:
    """The hub app with one worker thread and no request allowed to wait for it; (url, write token,
    the middleware, the registry)."""
    from adapterhub.registry import LocalRegistry
    from adapterhub.server.http.app import create_app
    from adapterhub.server.http.registry_api import ALLOW_LOCAL_BASES
    from adapterhub.server.http.wsgi import start_in_thread
    from adapterhub.tokens import TokenStore

    registry = LocalRegistry(tmp_path / "hub", durable=False)
    token, _ = TokenStore(tmp_path / "hub").create("write", "tests")
    middleware = Interference(create_app(registry, config={ALLOW_LOCAL_BASES: True}))
    with start_in_thread(middleware, threads=1, max_waiting_requests=0) as handle:
        try:
            yield handle.url, token, middleware, registry
        finally:
            middleware.release.set()


def _hold_the_worker(url: str, middleware: Interference) -> threading.Thread:
    holder = threading.Thread(target=lambda: urllib.request.urlopen(url + "/hold", timeout=30).read())
    holder.start()
    assert middleware.held.wait(10)
    return holder


def test_the_hubs_own_server_busy_is_waited_out(tmp_path):
    with one_worker_hub(tmp_path) as (url, token, middleware, _):
        holder = _hold_the_worker(url, middleware)
        threading.Timer(0.3, middleware.release.set).start()  # the worker frees during the Retry-After
        started = time.monotonic()
        assert RemoteRegistry(url, token=token).list() == []
        assert time.monotonic() - started >= 1.0  # server_busy asks for 1 s
        holder.join(10)


def test_the_hubs_server_busy_gives_up_with_its_code(tmp_path):
    from adapterhub.retry import RetryPolicy

    with one_worker_hub(tmp_path) as (url, token, middleware, _):
        holder = _hold_the_worker(url, middleware)
        with pytest.raises(RemoteError, match=r"\(429 server_busy, after 2 tries\)$"):
            RemoteRegistry(url, token=token, retry=RetryPolicy(tries=2)).list()
        middleware.release.set()
        holder.join(10)


def test_a_refused_upload_is_sent_again_from_the_start(tmp_path, make_lora):
    lora = make_lora()
    with one_worker_hub(tmp_path) as (url, token, middleware, registry):
        middleware.refuse_puts = 2
        remote = RemoteRegistry(url, token=token)
        version = remote.push(lora, name="sent", task="t")  # the hub checks every object's digest
        assert middleware.puts == remote.last_transfer.objects_sent + 2
        out = remote.pull("sent", tmp_path / "out")
        assert out.ref == version.ref
        for f in version.files:
            assert (tmp_path / "out" / f.path).read_bytes() == (lora / f.path).read_bytes()
        assert [v.ref for v in registry.list()] == [version.ref]


def test_a_refused_upload_gives_up_as_the_hubs_error(tmp_path, make_lora):
    from adapterhub.retry import RetryPolicy

    lora = make_lora()
    with one_worker_hub(tmp_path) as (url, token, middleware, registry):
        middleware.refuse_puts = 100
        with pytest.raises(ConcurrentModification, match=r"this hub is busy \(503 busy, after 3 tries\)"):
            RemoteRegistry(url, token=token, retry=RetryPolicy(tries=3)).push(lora, name="sent", task="t")
        assert middleware.puts == 3 and registry.list() == []


# --- the data tools' OpenAI client --------------------------------------------------------------


MESSAGES = [{"role": "user", "content": "hi"}]


def test_the_chat_client_retries_429_and_503_then_succeeds():
    with ScriptedServer([_busy(429), _busy(503, "1")], CHAT_ANSWER) as server:
        started = time.monotonic()
        assert ChatClient(server.url + "/v1", "m").chat(MESSAGES) == "hello"
        assert time.monotonic() - started >= 1.0
    assert server.requests == [("POST", "/v1/chat/completions")] * 3


@pytest.mark.parametrize("step", [(500, {}), RESET], ids=["500", "reset"])
def test_the_chat_client_does_not_retry_a_500_or_a_reset(step):
    with ScriptedServer([step], CHAT_ANSWER) as server:
        with pytest.raises(EndpointError) as failed:
            ChatClient(server.url + "/v1", "m").chat(MESSAGES)
    assert len(server.requests) == 1 and "\n" not in str(failed.value)


def test_the_chat_client_gives_up_with_a_clear_error():
    with ScriptedServer([_busy(429)] * 10, CHAT_ANSWER) as server:
        with pytest.raises(EndpointError) as failed:
            ChatClient(server.url + "/v1", "m").chat(MESSAGES)
    assert len(server.requests) == 5
    assert str(failed.value) == f"{server.url}/v1/chat/completions: HTTP 429 scripted 429 (after 5 tries)"


def _queue_full_refusals(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        lines = resp.read().decode().splitlines()
    return float(next(line for line in lines if line.startswith("adapterhub_queue_full_rejections_total ")).split()[1])


def test_the_chat_client_waits_out_a_full_queue_of_adapterhub_serve(tiny_base, tmp_path):
    """A batch of one held in its forward pass and a queue of one filled: the client's first try is
    answered 429 ``queue_full``; the hold ends while it waits, and its retry is answered."""
    from adapterhub.registry import LocalRegistry
    from adapterhub.retry import RetryPolicy
    from adapterhub.server.engine.engine import create_engine
    from adapterhub.server.engine.model_loader import load_base_model
    from adapterhub.server.http.app import create_app
    from adapterhub.server.http.wsgi import start_in_thread
    from serving_helpers import held_engine

    registry = LocalRegistry(tmp_path / "registry")
    engine = create_engine(load_base_model(str(tiny_base), quantize="none", device="cpu"), registry,
                           max_batch_size=1, max_queued_requests=1).start()
    answers: dict[str, str] = {}
    try:
        with start_in_thread(create_app(registry, engine=engine)) as server:
            def chat(key: str, retry: RetryPolicy) -> None:
                client = ChatClient(server.url + "/v1", engine.base_name, retry=retry)
                answers[key] = client.chat(MESSAGES, max_tokens=2, temperature=0)

            with held_engine(engine):
                filler = threading.Thread(target=chat, args=("filler", RetryPolicy(tries=1)))
                filler.start()
                deadline = time.monotonic() + 30
                while engine.queued < 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
                retrying = threading.Thread(target=chat, args=("retrying", RetryPolicy()))
                retrying.start()
                while _queue_full_refusals(server.url) < 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
            filler.join(60)
            retrying.join(60)
            assert _queue_full_refusals(server.url) >= 1
    finally:
        engine.stop()
    assert isinstance(answers.get("filler"), str) and isinstance(answers.get("retrying"), str)
