"""The object store: names are digests, bad bytes never get a name, own objects are not re-copied."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from hub.blobstore import BlobStore
from hub.errors import DigestMismatch


def test_put_names_by_sha256_and_stores_once(tmp_path):
    store = BlobStore(tmp_path / "objects")
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(5 * 1024 * 1024 + 7))
    first, again = store.put_file(src), store.put_file(src)
    assert first.digest == hashlib.sha256(src.read_bytes()).hexdigest() == again.digest
    assert not first.reused and again.reused
    assert store.path(first.digest).read_bytes() == src.read_bytes()
    assert list(store.iter_temporaries()) == []


def test_a_link_to_an_own_object_is_not_copied_again(tmp_path):
    store = BlobStore(tmp_path / "objects")
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 1000)
    obj = store.put_file(src)
    link = tmp_path / "link"
    link.symlink_to(store.path(obj.digest))
    assert store.put_file(link).reused


def test_stream_with_wrong_digest_is_refused_and_leaves_nothing(tmp_path):
    store = BlobStore(tmp_path / "objects")
    with pytest.raises(DigestMismatch):
        store.put_stream(io.BytesIO(b"tampered"), expected="0" * 64)
    assert list(store.iter_digests()) == [] and list(store.iter_temporaries()) == []


def test_copy_out_detects_corruption(tmp_path):
    store = BlobStore(tmp_path / "objects")
    src = tmp_path / "f.bin"
    src.write_bytes(b"y" * 4096)
    obj = store.put_file(src)
    path = store.path(obj.digest)
    path.chmod(0o644)
    path.write_bytes(b"z" + b"y" * 4095)
    with open(tmp_path / "out", "wb") as out, pytest.raises(DigestMismatch):
        store.copy_out(obj.digest, out)
    assert store.check(obj.digest) == "corrupted"
