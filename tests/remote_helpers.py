"""A real hub on a loopback port for tests: waitress in a thread, a byte-counting WSGI layer around it."""

from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from adapterhub.registry import LocalRegistry
from adapterhub.tokens import TokenStore
from adapterhub.server.http.app import create_app
from adapterhub.server.http.header_gate import gate_of
from adapterhub.server.http.registry_api import ALLOW_LOCAL_BASES
from adapterhub.server.http.wsgi import ServerHandle, start_in_thread


class ByteCounter:
    """WSGI middleware counting object bytes that cross the wire (request bodies of uploads,
    response bodies of downloads): what the server itself saw, not what the client says."""

    def __init__(self, app: Callable) -> None:
        self.app = app
        self.header_gate = gate_of(app)  # the server asks the app's gate before reading a body
        self.lock = threading.Lock()
        self.uploaded = 0
        self.downloaded = 0
        self.cut_after: int | None = None  # make the next object download fail after this many bytes

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        is_object = path.startswith("/api/objects/sha256/")
        if is_object and environ["REQUEST_METHOD"] == "PUT":
            with self.lock:
                self.uploaded += int(environ.get("CONTENT_LENGTH") or 0)
        body = self.app(environ, start_response)
        if not (is_object and environ["REQUEST_METHOD"] == "GET"):
            return body
        return self._counting(body)

    def _counting(self, body: Iterable[bytes]) -> Iterable[bytes]:
        cut, self.cut_after = self.cut_after, None
        sent = 0
        try:
            for chunk in body:
                if cut is not None and sent + len(chunk) > cut:
                    # End the body short of its Content-Length: waitress sends what it has, then
                    # closes the connection, as when a network link drops mid-transfer.
                    self._add(cut - sent)
                    yield chunk[: cut - sent]
                    return
                sent += len(chunk)
                self._add(len(chunk))
                yield chunk
        finally:
            if hasattr(body, "close"):
                body.close()

    def _add(self, n: int) -> None:
        with self.lock:
            self.downloaded += n

    def reset(self) -> None:
        with self.lock:
            self.uploaded = self.downloaded = 0


@dataclass
class Hub:
    url: str
    registry: LocalRegistry
    counter: ByteCounter
    write_token: str
    read_token: str
    handle: ServerHandle = field(repr=False)


def start_hub(root: Path, config: dict[str, Any] | None = None) -> Hub:
    """A hub on one machine with its clients: the tiny base is a local folder both can read."""
    config = {ALLOW_LOCAL_BASES: True} | (config or {})
    registry = LocalRegistry(root, durable=False)
    store = TokenStore(root)
    write_token, _ = store.create("write", "tests")
    read_token, _ = store.create("read", "tests")
    counter = ByteCounter(create_app(registry, config=config))
    handle = start_in_thread(counter, threads=8)
    return Hub(handle.url, registry, counter, write_token, read_token, handle)


def serve_hub_process(root: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """``adapterhub hub serve`` on ``root`` in a process of its own (another writer than the test's
    hubs: locks held in this process mean nothing to it); its URL once it listens."""
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "adapterhub"), "hub", "serve", "--registry", str(root), "--port", "0",
         "--allow-local-bases", *args],
        stderr=subprocess.PIPE, text=True,
    )
    line = proc.stderr.readline()
    assert "serving registry" in line, line
    return proc, line.split(" on ")[1].split()[0]


def stop_process(proc: subprocess.Popen) -> str:
    """Stop a hub process started by ``serve_hub_process``; what it wrote to stderr after starting."""
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err or ""
