"""Hugging Face commits: ``preupload`` then ``commit``, as ``create_commit`` / ``upload_folder`` /
``push_to_hub`` send them. Each commit becomes one new registry version, through ``push_folder``:
the registry API's commit path, so it is validated exactly like ``adapterhub push``.

A commit applies its operations (``file``: bytes inline, base64; ``lfsFile``: an object uploaded
through ``hf_lfs``; ``deletedFile`` / ``deletedFolder``) to the files of the repo's newest version
(none for a repo created empty), in order. The result must be a PEFT adapter folder, flat, that fits
its base; anything else is a 4xx with the reason and nothing is recorded. Inline files are written
to a temporary folder in the object store's staging area as the body is read, one line at a time,
and reach the store only through the push. A commit that changes no file records nothing and
answers the current head, as the Hub answers an empty upload.

Upload modes: ``preupload`` answers ``regular`` (inline) for files up to ``HF_INLINE_MAX_BYTES`` and
``lfs`` above. The Hub client (``huggingface_hub`` 2.x, as installed here) sends ``lfs`` files
through Xet whenever the ``hf_xet`` package is installed, whatever the server says (no field of the
preupload or LFS batch answers changes that); this hub speaks LFS only,
so inline covers adapters of ordinary size with any client, and larger files need the client's
``HF_HUB_DISABLE_XET=1``. The Xet token route says exactly that instead of a bare 404.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from flask import Blueprint, current_app, jsonify, request

from adapterhub import error_codes as codes
from adapterhub.echo import echo
from adapterhub.errors import ConcurrentModification, InvalidAdapter, InvalidName, ParentMoved
from adapterhub.refs import validate_name
from adapterhub.registry import AdapterVersion, LocalRegistry
from adapterhub.remote import check_file_name

from .auth import WRITE, authorize
from .errors import ApiError
from .hf_compat import commit_id
from .hf_errors import add_error_header
from .hf_repo_id import DEFAULT_BRANCH, hf_not_found, hub_url, repo_not_found, repo_route
from .hf_repos import empty_repos, repo_exists
from .json_body import parse_json_object
from .registry_api import DEFAULT_MAX_COMMIT, MAX_COMMIT_BYTES, MAX_FILES, is_digest, json_body, push_folder
from .state import app_state

__all__ = ["bp", "HF_INLINE_MAX_BYTES"]

bp = Blueprint("hf_commit", __name__)
add_error_header(bp)

HF_INLINE_MAX_BYTES = "HF_INLINE_MAX_BYTES"  # app.config key: largest file a commit may carry inline
_DEFAULT_INLINE_MAX = 32 << 20
_B64_CHUNK = 1 << 20  # a multiple of 4: base64 decodes piece by piece on these boundaries


def _inline_max() -> int:
    return current_app.config.get(HF_INLINE_MAX_BYTES, _DEFAULT_INLINE_MAX)


def _registry() -> LocalRegistry:
    return app_state()["registry"]


def _writable_repo(repo_id: str, revision: str) -> AdapterVersion | None:
    """The head of a repo a write may go to (``None`` when empty): it must exist, and the
    revision must be ``main``, the one branch here (tags are moved with ``adapterhub tag``)."""
    authorize(WRITE)
    validate_name(repo_id)
    if revision != DEFAULT_BRANCH:
        raise ApiError(codes.UNSUPPORTED_REVISION,
                       f"commits go to {DEFAULT_BRANCH} on this hub, not {echo(revision)}; "
                       "tag versions with `adapterhub tag`")
    if request.args.get("create_pr") not in (None, "", "0", "false"):
        raise ApiError(codes.UNSUPPORTED_PULL_REQUEST, "this hub has no pull requests: commit to main")
    registry = _registry()
    if not repo_exists(registry, repo_id):
        raise repo_not_found(repo_id)
    return _head(registry, repo_id)


def _head(registry: LocalRegistry, repo_id: str) -> AdapterVersion | None:
    """The version ``main`` (``latest``) points at now; ``None`` for a repo created empty."""
    found = registry.list(name=repo_id, tag="latest", limit=1)
    return found[0] if found else None


def _git_blob_id(registry: LocalRegistry, sha256: str) -> str:
    """git's id of a file (sha1 of "blob <size>\\0" + bytes): the oid the client compares for regular files."""
    path = registry.object_path(sha256)
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@repo_route(bp, "/api/models/{repo}/preupload/<revision>", methods=["POST"])
def preupload(repo_id: str, revision: str):
    head = _writable_repo(repo_id, revision)
    files = json_body().get("files")
    if not isinstance(files, list) or not 1 <= len(files) <= 256:
        raise ApiError(codes.INVALID_FIELD, "'files' lists 1 to 256 files")
    current = {f.path: f for f in head.files} if head is not None else {}
    registry, inline_max = _registry(), _inline_max()
    answer = []
    for item in files:
        if not isinstance(item, dict) or isinstance(item.get("size"), bool) or not isinstance(item.get("size"), int):
            raise ApiError(codes.INVALID_FIELD, "each file is {path, size, sample}")
        path = _file_name(item.get("path"))
        mode = "regular" if item["size"] <= inline_max else "lfs"
        known = current.get(path)
        oid = None
        if known is not None:
            oid = known.sha256 if mode == "lfs" else _git_blob_id(registry, known.sha256)
        answer.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
    return jsonify({"files": answer, "commitOid": commit_id(head) if head is not None else None})


def _file_name(path: Any) -> str:
    try:
        return check_file_name(path)
    except InvalidName:
        raise ApiError(codes.INVALID_PATH,
                       f"invalid file path {echo(str(path))}: an adapter repo holds plain files at its top "
                       "(adapter_config.json, adapter_model.safetensors, README.md)") from None


# One commit operation: (key, path, the file it writes or None); paths and files checked as read.
_Operation = tuple[str, str, "tuple[str, int, Path | None] | None"]
_Files = dict[str, tuple[str, int, Path | None]]  # path -> (sha256, size, inline temporary or None)
_ATTEMPTS = 16  # a commit without parentCommit re-applies its operations when another commit lands first


@dataclass
class _Body:
    """A commit as sent, before it meets the head: read once, applied to whatever the head is then."""

    summary: str = ""
    parent: str | None = None
    operations: list[_Operation] = field(default_factory=list)


def _lines(stream: BinaryIO, limit: int) -> Iterator[dict[str, Any]]:
    """The ndjson body, one ``{"key", "value"}`` object at a time; a line is at most ``limit`` bytes."""
    while line := stream.readline(limit + 1):
        if len(line) > limit:
            raise ApiError(codes.TOO_LARGE, f"a commit line is over this hub's limit of {limit} bytes")
        if not line.strip():
            continue
        item = parse_json_object(line, "each line of a commit body (JSON lines: one {key, value} object per line)")
        if not isinstance(item.get("key"), str) or not isinstance(item.get("value"), dict):
            raise ApiError(codes.INVALID_JSON, "each commit line is {key, value}")
        yield item


def _write_inline(folder: Path, value: dict[str, Any]) -> tuple[str, int, Path]:
    """Decode one inline file into ``folder``, hashing it; its size is capped by the inline limit."""
    if value.get("encoding", "base64") != "base64" or not isinstance(value.get("content"), str):
        raise ApiError(codes.INVALID_FIELD, "inline files are base64 'content'")
    content, limit = value["content"], _inline_max()
    if len(content) > (limit + 2) // 3 * 4:
        raise ApiError(codes.TOO_LARGE, f"inline file over this hub's limit of {limit} bytes: send it through LFS")
    fd, tmp = tempfile.mkstemp(dir=folder)
    h, size = hashlib.sha256(), 0
    with os.fdopen(fd, "wb") as out:
        for start in range(0, len(content), _B64_CHUNK):
            try:
                chunk = base64.b64decode(content[start:start + _B64_CHUNK], validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(codes.INVALID_FIELD, "an inline file's content is not valid base64") from None
            h.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return h.hexdigest(), size, Path(tmp)


def _lfs_object(registry: LocalRegistry, value: dict[str, Any]) -> tuple[str, int]:
    oid, size = value.get("oid"), value.get("size")
    if value.get("algo", "sha256") != "sha256" or not is_digest(oid):
        raise ApiError(codes.INVALID_FIELD, "an lfsFile names its object by sha256 'oid'")
    if not registry.store.has(oid):
        raise ApiError(codes.OBJECTS_MISSING, f"upload object {oid} first (LFS batch API)")
    stored = registry.object_path(oid).stat().st_size
    if size is not None and size != stored:
        raise ApiError(codes.INVALID_MANIFEST, f"object {oid} has {stored} bytes, the commit says {size}")
    return oid, stored


def _read_body(folder: Path) -> _Body:
    """Read the commit body, decoding its inline files into ``folder``; nothing is applied yet."""
    registry = _registry()
    limit = current_app.config.get(MAX_COMMIT_BYTES, DEFAULT_MAX_COMMIT)
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(codes.TOO_LARGE,
                       f"commit body over this hub's limit of {limit} bytes: send large files through LFS")
    lines = _lines(request.stream, limit)
    first = next(lines, None)
    if first is None or first["key"] != "header":
        raise ApiError(codes.INVALID_JSON, "a commit starts with its header line")
    summary, parent = first["value"].get("summary", ""), first["value"].get("parentCommit")
    body = _Body(summary if isinstance(summary, str) else "", parent if isinstance(parent, str) else None)
    for item in lines:
        key, value = item["key"], item["value"]
        if key == "deletedFolder":
            body.operations.append((key, str(value.get("path", "")).strip("/"), None))
            continue
        path = _file_name(value.get("path"))
        if key == "file":
            body.operations.append((key, path, _write_inline(folder, value)))
        elif key == "lfsFile":
            body.operations.append((key, path, (*_lfs_object(registry, value), None)))
        elif key == "deletedFile":
            body.operations.append((key, path, None))
        else:
            raise ApiError(codes.INVALID_FIELD, f"unknown commit operation {echo(key)}")
    return body


def _apply(head: AdapterVersion | None, operations: list[_Operation]) -> _Files:
    """The head's files after the operations, in order."""
    files: _Files = {f.path: (f.sha256, f.size, None) for f in head.files} if head is not None else {}
    for key, path, written in operations:
        if key == "deletedFolder":
            files = {p: f for p, f in files.items() if path and not p.startswith(path + "/")}
        elif key == "deletedFile":
            if files.pop(path, None) is None:
                raise hf_not_found(codes.ENTRY_NOT_FOUND, f"cannot delete {echo(path)}: no such file in the repo")
        else:
            assert written is not None
            files[path] = written
        if len(files) > MAX_FILES:
            raise ApiError(codes.INVALID_MANIFEST, f"an adapter repo holds at most {MAX_FILES} files")
    return files


def _check_parent(head: AdapterVersion | None, parent: str | None) -> None:
    """``parentCommit`` guards against a concurrent writer: it must name the current head."""
    if parent is None:
        return
    if head is None or len(parent) < 6 or not commit_id(head).startswith(parent.lower()):
        raise ParentMoved(f"parent commit {parent[:40]} is not the head of {DEFAULT_BRANCH}: fetch and retry")


@repo_route(bp, "/api/models/{repo}/commit/<revision>", methods=["POST"])
def commit(repo_id: str, revision: str):
    """Apply the operations to the head and record the result, as one check-and-set: the version
    lands only while the head is still the one they were applied to (``LocalRegistry.push``'s
    ``on_latest``, checked in the index's write transaction, so across threads and processes).
    A commit naming ``parentCommit`` that lost the race is a 412, as on the Hub; one without is
    applied again to the new head, so neither commit undoes the other."""
    _writable_repo(repo_id, revision)
    registry = _registry()
    staging = registry.store.root / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hf-commit-", dir=staging) as tmp:
        body = _read_body(Path(tmp))
        for _ in range(_ATTEMPTS):
            head = _head(registry, repo_id)
            _check_parent(head, body.parent)
            try:
                version = _record(registry, repo_id, head, _apply(head, body.operations))
                break
            except ParentMoved:
                if body.parent is not None:
                    raise
        else:
            raise ConcurrentModification(f"{repo_id} kept changing under this commit ({_ATTEMPTS} tries): retry")
    empty_repos().discard(repo_id)
    return _commit_answer(repo_id, version)


def _record(registry: LocalRegistry, repo_id: str, head: AdapterVersion | None, files: _Files) -> AdapterVersion:
    """The new version holding ``files``, recorded only if ``head`` is still the head (the head
    itself when nothing changes). Inline files are linked, not moved, so a retry still has them."""
    if not files:
        raise InvalidAdapter("the commit leaves the repo empty: an adapter needs adapter_config.json and its weights")
    if head is not None and {p: sha for p, (sha, _, _) in files.items()} == {f.path: f.sha256 for f in head.files}:
        return head
    objects = {p: sha for p, (sha, _, inline) in files.items() if inline is None}
    with registry.store.staged(objects) as folder:
        for p, (_, _, inline) in files.items():
            if inline is not None:
                os.link(inline, folder / p)
        return push_folder(
            registry, folder, name=repo_id, base=None,
            task=head.task if head is not None else "",
            description=head.description if head is not None else "",
            on_latest=head.version if head is not None else None,
        )


def _commit_answer(repo_id: str, v: AdapterVersion):
    cid = commit_id(v)
    return jsonify({"success": True, "commitOid": cid, "commitUrl": f"{hub_url()}/{repo_id}/commit/{cid}",
                    "pullRequestUrl": None, "version": v.ref})


@bp.post("/api/validate-yaml")
def validate_yaml():
    """The model card's YAML header, checked before an upload (``upload_folder`` asks when it sends a
    README.md): 400 with the parser's reason when it does not parse or is not a mapping."""
    import yaml  # only uploads with a model card pay for it

    authorize(WRITE)
    content = json_body().get("content")
    if not isinstance(content, str):
        raise ApiError(codes.INVALID_FIELD, "give the README's text as 'content'")
    lines = content.splitlines()
    if not lines or lines[0].strip() != "---" or "---" not in (line.strip() for line in lines[1:]):
        return jsonify({"errors": [], "warnings": []})
    header = "\n".join(lines[1:1 + [line.strip() for line in lines[1:]].index("---")])
    try:
        meta = yaml.safe_load(header)
    except yaml.YAMLError as e:
        problem = " ".join(str(e).split())[:300]
        return jsonify({"errors": [{"message": f"the YAML header does not parse: {problem}"}]}), 400
    if meta is not None and not isinstance(meta, dict):
        return jsonify({"errors": [{"message": "the YAML header must be a mapping"}]}), 400
    return jsonify({"errors": [], "warnings": []})


@repo_route(bp, "/api/models/{repo}/xet-write-token/<revision>", methods=["GET"])
@repo_route(bp, "/api/models/{repo}/xet-read-token/<revision>", methods=["GET"])
def xet_token(repo_id: str, revision: str):
    raise ApiError(codes.XET_UNSUPPORTED,
                   f"this hub speaks Git LFS, not Xet: files up to {_inline_max()} bytes upload inline with any "
                   "client; for larger ones set HF_HUB_DISABLE_XET=1")
