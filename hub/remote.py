"""A registry on another machine, behind ``adapterhub hub serve``: the same calls as ``LocalRegistry``.

Push hashes the folder locally, asks the hub which objects it lacks and uploads only those, then
commits the manifest (the hub validates and records it atomically). Pull downloads each object to
``.<file>.<digest>.part`` in the output folder, hashing as it goes; an interrupted pull leaves the
part file, and the next pull asks for the rest with ``Range`` and verifies the whole. Files are
renamed into place only when every one verified. The token comes from ``token=``, else
``$ADAPTERHUB_TOKEN``, else the one ``adapterhub login`` stored for the URL (``hub.credentials``),
and travels as ``Authorization: Bearer``. A refusal of the hub comes back as
the exception class the hub raised (``raise_for_status`` reads ``adapterhub.errors.ERROR_TABLE``).
A hub that answers 429/503 (busy: it did not act; the statuses of the error table's retryable rows)
is asked again, and a GET, PUT or DELETE also after a connection error, as ``retry=``
(``hub.retry.RetryPolicy``) allows.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping
from urllib.parse import quote

import httpx2

from .adapter_folder import read_adapter_folder
from .base_model import check_adapter_fits, load_base_info
from .gguf_base import is_gguf
from .blobstore import CHUNK
from .credentials import stored_token
from .echo import echo
from .errors import DigestMismatch, InvalidName, RemoteError, error_from_wire
from .pull_folder import open_pull_folder
from .record_bounds import check_metrics
from .refs import validate_name
from .registry import AdapterVersion, FileEntry, GcReport, VerifyReport, folder_entries
from .retry import DEFAULT_RETRY, HTTP_TRANSIENT, IDEMPOTENT_METHODS, RetryPolicy, send_with_retries, tries_note

__all__ = ["RemoteRegistry", "TransferStats", "ENV_TOKEN", "hub_token", "check_file_name", "raise_for_status"]

ENV_TOKEN = "ADAPTERHUB_TOKEN"
_PROGRESS_MIN_BYTES = 8 << 20
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def hub_token(url: str, token: str | None = None) -> str | None:
    """The token sent to the hub at ``url``: ``token`` when given, else ``$ADAPTERHUB_TOKEN``, else the
    one ``adapterhub login`` stored for that hub."""
    return token if token is not None else os.environ.get(ENV_TOKEN) or stored_token(url)


def check_file_name(path: object) -> str:
    """``path`` if it is a plain file name (what adapter folders hold); ``InvalidName`` otherwise.

    Both ends check: the hub before it stages a manifest, the client before it writes what a hub
    listed, so neither can be steered outside its folder.
    """
    if not isinstance(path, str) or not _FILE_NAME.match(path) or ".." in path:
        raise InvalidName(f"invalid file path {echo(str(path))}: a plain file name (no '/', no '..')")
    return path


@dataclass
class TransferStats:
    """Object bytes that crossed the network in the last push or pull, and those that did not need to."""

    sent_bytes: int = 0
    received_bytes: int = 0
    skipped_bytes: int = 0
    objects_sent: int = 0
    objects_skipped: int = 0
    resumed_bytes: int = 0


def raise_for_status(response: httpx2.Response, what: str, *, tries: int = 1) -> None:
    """Raise the exception an error answer of the hub stands for: the class its ``error.code`` names
    in ``ERROR_TABLE``, so callers catch what a local registry would raise. ``what`` names the call
    in the message when the answer carries no hub error (a proxy's page, a cut connection); after
    retries the message ends with the last status and the count (``(429 server_busy, after 5 tries)``)."""
    if response.status_code < 400:
        return
    response.read()
    try:
        err = response.json()["error"]
        message, code = str(err["message"]), err.get("code")
    except (ValueError, KeyError, TypeError, AttributeError):
        message, code = f"{what}: HTTP {response.status_code} {response.reason_phrase}", None
    code = code if isinstance(code, str) else None
    message += tries_note(tries, f"{response.status_code} {code or ''}".strip())
    raise error_from_wire(code, message, status=response.status_code)


class RemoteRegistry:
    """A hub at ``url`` (``http://host:port``); implements ``Registry``. ``retry`` bounds how often
    and how long a request the hub refused for now (or a cut idempotent one) is sent again."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        progress: bool | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self.url = url.rstrip("/")
        self.retry = retry
        token = hub_token(self.url, token)
        headers = {"User-Agent": "adapterhub"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx2.Client(base_url=self.url, headers=headers, timeout=timeout)
        self.progress = progress
        self.last_transfer = TransferStats()

    def __repr__(self) -> str:
        return f"RemoteRegistry({self.url!r})"

    @property
    def location(self) -> str:
        return self.url

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "RemoteRegistry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        what: str | None = None,
        idempotent: bool | None = None,
        body: Callable[[], Any] | None = None,
        resendable: bool = True,
        stream: bool = False,
        **kw: Any,
    ) -> httpx2.Response:
        """Send (and resend, as ``hub.retry`` decides) one request; an error answer is raised.

        ``idempotent`` defaults to what the method says; ``body`` makes the content anew for each
        try (a stream rewound to its start), ``resendable=False`` when it cannot be. A ``stream``
        answer is returned unread: the caller closes it."""

        def send() -> httpx2.Response:
            content = {"content": body()} if body is not None else {}
            return self._client.send(self._client.build_request(method, path, **content, **kw), stream=stream)

        try:
            outcome = send_with_retries(
                send, policy=self.retry, idempotent=method in IDEMPOTENT_METHODS if idempotent is None else idempotent,
                transient=HTTP_TRANSIENT, resendable=resendable)
        except httpx2.HTTPError as e:
            raise RemoteError(f"cannot reach the hub at {self.url}: {e}") from e
        if outcome.error is not None:
            raise RemoteError(f"cannot reach the hub at {self.url}: {outcome.error}{tries_note(outcome.tries)}"
                              ) from outcome.error
        response = outcome.answer
        try:
            raise_for_status(response, what or f"{method} {path}", tries=outcome.tries)
        except BaseException:
            response.close()
            raise
        return response

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        return self._request(method, path, **kw).json()

    @staticmethod
    def _ref_path(ref: str) -> str:
        return quote(ref, safe="")

    def _show_progress(self, total: int) -> bool:
        if self.progress is not None:
            return self.progress
        return total >= _PROGRESS_MIN_BYTES and sys.stderr.isatty()

    @contextmanager
    def _bar(self, total: int, desc: str) -> Iterator[Any]:
        from tqdm.auto import tqdm

        with tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not self._show_progress(total),
                  file=sys.stderr) as bar:
            yield bar

    # --- reading -------------------------------------------------------------------------------

    def resolve(self, ref: str) -> AdapterVersion:
        d = self._json("GET", f"/api/versions/{self._ref_path(ref)}")
        return AdapterVersion.from_json(d)

    def list(
        self,
        *,
        base: str | None = None,
        task: str | None = None,
        adapter_type: str | None = None,
        name: str | None = None,
        tag: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        after: str | None = None,
    ) -> list[AdapterVersion]:
        """The hub answers a page at a time (``next`` is the cursor of the following one); this
        follows the cursors until ``limit`` versions, or all of them, have come."""
        params = {k: v for k, v in {"base": base, "task": task, "type": adapter_type, "name": name,
                                    "tag": tag}.items() if v}
        out: list[AdapterVersion] = []
        while limit is None or len(out) < limit:
            page = dict(params, **({"after": after} if after else {"offset": offset} if offset else {}))
            if limit is not None:
                page["limit"] = limit - len(out)
            doc = self._json("GET", "/api/versions", params=page)
            out += [AdapterVersion.from_json(d) for d in doc["versions"]]
            after, offset = doc.get("next"), 0
            if not after:
                break
        return out

    def verify(self) -> VerifyReport:
        d = self._json("GET", "/api/verify")
        return VerifyReport(d["checked_versions"], d["checked_objects"], d["problems"], d["orphans"],
                            d["temporaries"])

    # --- push ----------------------------------------------------------------------------------

    def push(
        self,
        folder: str | os.PathLike,
        *,
        name: str,
        task: str,
        base: str | None = None,
        tags: Iterable[str] = (),
        description: str = "",
        metrics: Mapping[str, Any] | None = None,
        lineage: Iterable[Mapping[str, Any]] = (),
        training: Mapping[str, Any] | None = None,
    ) -> AdapterVersion:
        """Upload the objects the hub lacks, then commit the version (validated again by the hub)."""
        validate_name(name)
        metrics = check_metrics(metrics)  # refused here, before any object is uploaded
        adapter = read_adapter_folder(folder)
        base_name = base or adapter.base_model
        if base_name and (os.path.isdir(base_name) or is_gguf(base_name)):  # local: catch a mismatch before uploading
            info = load_base_info(base_name)
            if info is not None:
                check_adapter_fits(adapter, info)
        files = folder_entries(adapter)
        missing = set(self._json("POST", "/api/objects/check", json={"digests": [f.sha256 for f in files]},
                                 idempotent=True)["missing"])  # a read: safe to send again
        stats = TransferStats()
        to_send = {f.sha256: f for f in files if f.sha256 in missing}  # identical files go once
        for f in files:
            if f.sha256 not in missing:
                stats.skipped_bytes += f.size
                stats.objects_skipped += 1
        with self._bar(sum(f.size for f in to_send.values()), f"push {name}") as bar:
            for f in to_send.values():
                with open(adapter.path / f.path, "rb") as src:
                    self._request(
                        "PUT",
                        f"/api/objects/sha256/{f.sha256}",
                        body=lambda src=src: _rewound_chunks(src, bar),
                        resendable=src.seekable(),
                        headers={"Content-Length": str(f.size), "Content-Type": "application/octet-stream"},
                    )
                stats.sent_bytes += f.size
                stats.objects_sent += 1
        self.last_transfer = stats
        body = {
            "files": [f.to_dict() for f in files],
            "task": task,
            "base": base,
            "tags": list(tags),
            "description": description,
            "metrics": dict(metrics or {}),
            "lineage": [dict(x) for x in lineage],
            "training": dict(training) if training is not None else None,
        }
        d = self._json("POST", f"/api/adapters/{name}/versions", json=body)
        return AdapterVersion.from_json(d)

    # --- pull ----------------------------------------------------------------------------------

    def pull(self, ref: str, out_dir: str | os.PathLike, *, force: bool = False) -> AdapterVersion:
        """Download the version into ``out_dir``, resuming part files and verifying every digest."""
        target = self.resolve(ref)
        for f in target.files:
            check_file_name(f.path)
        out, created = open_pull_folder(out_dir, target.files, force=force)
        stats = TransferStats()
        parts: list[tuple[Path, Path]] = []
        try:
            with self._bar(target.total_size, f"pull {target.ref}") as bar:
                for f in target.files:
                    part = out / f".{f.path}.{f.sha256[:16]}.part"
                    self._download(f, part, bar, stats)
                    parts.append((part, out / f.path))
        except BaseException:
            if created and not any(out.iterdir()):  # nothing worth resuming: leave no trace
                out.rmdir()
            raise
        for part, final in parts:
            os.chmod(part, 0o644)
            os.replace(part, final)
        self.last_transfer = stats
        return target

    def _download(self, entry: FileEntry, part: Path, bar: Any, stats: TransferStats) -> None:
        """Complete ``part`` from where it stops, then check it hashes to the entry's digest."""
        h = hashlib.sha256()
        if part.is_symlink():  # resume only our own part file, never write through a planted link
            part.unlink()
        have = part.stat().st_size if part.is_file() else 0
        if have > entry.size:
            part.unlink()
            have = 0
        if have:
            with open(part, "rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
            stats.resumed_bytes += have
            bar.update(have)
        if have < entry.size:
            headers = {"Range": f"bytes={have}-"} if have else {}
            r = self._request("GET", f"/api/objects/sha256/{entry.sha256}", what=f"download {entry.path}",
                              headers=headers, stream=True)
            try:
                with closing(r):
                    if have and r.status_code != 206:  # the hub ignored the range: start over
                        h, have = hashlib.sha256(), 0
                    with open(part, "ab" if have else "wb") as dst:
                        for chunk in r.iter_bytes():  # as received: a cut keeps every byte that arrived
                            have += len(chunk)
                            if have > entry.size:
                                raise RemoteError(f"{self.url} sent more than the {entry.size} bytes of {entry.path}")
                            dst.write(chunk)
                            h.update(chunk)
                            stats.received_bytes += len(chunk)
                            bar.update(len(chunk))
            except httpx2.HTTPError as e:
                raise RemoteError(
                    f"download of {entry.path} from {self.url} was interrupted ({e}); pull again to resume"
                ) from e
        actual = h.hexdigest()
        if actual != entry.sha256:
            part.unlink(missing_ok=True)
            raise DigestMismatch(
                f"{entry.path} from {self.url} hashes to {actual}, expected {entry.sha256}; the partial file "
                "was removed, pull again",
                expected=entry.sha256,
                actual=actual,
            )

    # --- other writes --------------------------------------------------------------------------

    def tag(self, ref: str, tag: str) -> AdapterVersion:
        d = self._json("POST", "/api/tags", json={"ref": ref, "tag": tag})
        return AdapterVersion.from_json(d)

    def untag(self, ref: str, tag: str | None = None) -> AdapterVersion:
        d = self._json("DELETE", "/api/tags", json={"ref": ref, "tag": tag})
        return AdapterVersion.from_json(d)

    def set_metrics(self, ref: str, metrics: Mapping[str, Any]) -> AdapterVersion:
        d = self._json("PATCH", f"/api/versions/{self._ref_path(ref)}/metrics", json=check_metrics(metrics))
        return AdapterVersion.from_json(d)

    def remove(self, ref: str, *, all_versions: bool = False) -> list[AdapterVersion]:
        params = {"all": "true"} if all_versions else {}
        doc = self._json("DELETE", f"/api/versions/{self._ref_path(ref)}", params=params)
        return [AdapterVersion.from_json(d) for d in doc["removed"]]

    def gc(self) -> GcReport:
        raise RemoteError(f"gc runs where the registry folder is: on the hub's machine, not through {self.url}")

    def object_path(self, digest: str) -> None:
        """``None``: the hub's objects live on its machine, and ``pull`` brings a version here."""
        return None


def _rewound_chunks(src: BinaryIO, bar: Any) -> Iterator[bytes]:
    """The file from its start, for each try of an upload (the bar takes back a refused try's bytes)."""
    bar.update(-src.tell())
    src.seek(0)
    while chunk := src.read(CHUNK):
        bar.update(len(chunk))
        yield chunk

