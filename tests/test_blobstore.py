"""The object store: names are digests, bad bytes never get a name, own objects are not re-copied."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import threading
import time

import pytest

from adapterhub.blobstore import BlobStore
from adapterhub.errors import DigestMismatch, InvalidAdapter


def test_put_names_by_sha256_and_stores_once(tmp_path):
    store = BlobStore(tmp_path / "objects")
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(5 * 1024 * 1024 + 7))
    first, again = store.put_file(src), store.put_file(src)
    assert first.digest == hashlib.sha256(src.read_bytes()).hexdigest() == again.digest
    assert not first.reused and again.reused
    assert store.path(first.digest).read_bytes() == src.read_bytes()
    assert list(store.iter_temporaries()) == []


def test_a_staged_link_to_an_own_object_is_not_copied_again(tmp_path):
    store = BlobStore(tmp_path / "objects")
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 1000)
    obj = store.put_file(src)
    with store.staged({"adapter_model.safetensors": obj.digest}) as folder:
        staged = folder / "adapter_model.safetensors"
        assert staged.is_file() and not staged.is_symlink()
        assert store.put_file(staged).reused
        assert list(store.iter_temporaries()) == []  # nothing was copied
    assert not folder.exists()


def test_a_registry_push_of_its_own_staged_objects_copies_nothing(tmp_path, make_lora, tiny_base):
    """The hub's commits stage the stored objects and push the folder: the push must see the links
    its own store made (one store per registry), not copy and re-hash every file again."""
    from adapterhub.registry import LocalRegistry

    registry = LocalRegistry(tmp_path / "registry")
    first = registry.push(make_lora(seed=1), name="a", task="t", base=str(tiny_base))
    files = {f.path: f.sha256 for f in first.files}
    with registry.store.staged(files) as folder:
        again = registry.push(folder, name="b", task="t", base=str(tiny_base))
        assert all(registry.store.put_file(folder / name).reused for name in files)
    assert again.digest == first.digest and registry.store is registry.store


def test_a_symbolic_link_is_never_stored_even_to_an_own_object(tmp_path):
    store = BlobStore(tmp_path / "objects")
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 1000)
    obj = store.put_file(src)
    for target in (store.path(obj.digest), src):
        link = tmp_path / "link"
        link.unlink(missing_ok=True)
        link.symlink_to(target)
        with pytest.raises(InvalidAdapter, match="is a symbolic link"):
            store.put_file(link)
    assert list(store.iter_digests()) == [obj.digest]


def test_a_relative_root_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = BlobStore("rel/objects")
    assert store.root == tmp_path / "rel" / "objects" and store.path("ab" * 32).is_absolute()


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


def _source(tmp_path, megabytes: int = 20):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(megabytes * 1024 * 1024))
    return src


def _leftovers(store: BlobStore) -> list:
    tmp = store.root / "tmp"
    return list(tmp.iterdir()) if tmp.is_dir() else []


def test_a_failed_background_flush_fails_the_durable_store(tmp_path, monkeypatch):
    """The kernel reports a writeback error once: the flush that met it must fail the copy,
    or the final fsync would succeed over pages that never reached the disk."""
    def eio(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", eio)
    store = BlobStore(tmp_path / "store", durable=True)
    with pytest.raises(OSError, match="Input/output"):
        store.put_file(_source(tmp_path))
    assert not _leftovers(store) and not list(store.iter_digests())


def test_a_flusher_that_cannot_start_fails_the_copy_without_hanging(tmp_path, monkeypatch):
    import adapterhub.blobstore as blobstore

    def cannot_start(self, fd):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(blobstore._FlushBehind, "__init__", cannot_start)
    store = BlobStore(tmp_path / "store", durable=True)
    outcome: dict = {}

    def push():
        try:
            store.put_file(_source(tmp_path))
        except RuntimeError as e:
            outcome["error"] = str(e)

    worker = threading.Thread(target=push, daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "put_file hung"
    assert outcome == {"error": "can't start new thread"} and not _leftovers(store)


def test_a_write_failing_midway_leaves_no_object_and_no_temporary(tmp_path, monkeypatch):
    real, calls = os.pwrite, []

    def full_disk(fd, data, offset):
        calls.append(offset)
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full_disk)
    store = BlobStore(tmp_path / "store", durable=False)
    with pytest.raises(OSError, match="No space"):
        store.put_file(_source(tmp_path))
    assert not _leftovers(store) and not list(store.iter_digests())
    assert {t.name for t in threading.enumerate()} & {"copy", "flush"} == set()


def test_a_second_ctrl_c_still_waits_for_the_copy_thread(tmp_path, monkeypatch):
    """The caller closes the files once the copy thread is done; a Ctrl-C that lands while it
    waits for the thread (after a first one stopped the hashing) must not let it close descriptors
    the thread still reads and writes through."""
    import adapterhub.blobstore as blobstore

    real_sha256 = hashlib.sha256

    class InterruptedHash:
        def __init__(self):
            self.h, self.calls = real_sha256(), 0

        def update(self, data):
            self.calls += 1
            if self.calls == 3:
                raise KeyboardInterrupt  # the first Ctrl-C, in the middle of the copy
            self.h.update(data)

    real_join, alive_when_interrupted = threading.Thread.join, []

    def join(self, timeout=None):
        if self.name == "copy" and not alive_when_interrupted:
            alive_when_interrupted.append(self.is_alive())
            raise KeyboardInterrupt  # the second one, while waiting for the thread
        return real_join(self, timeout)

    real_pwrite = os.pwrite

    def slow_pwrite(fd, data, offset):  # keeps the copy thread busy after the hashing stops
        time.sleep(0.02)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(blobstore.hashlib, "sha256", InterruptedHash)
    monkeypatch.setattr(threading.Thread, "join", join)
    monkeypatch.setattr(os, "pwrite", slow_pwrite)
    store = BlobStore(tmp_path / "store", durable=False)
    with pytest.raises(KeyboardInterrupt):
        store.put_file(_source(tmp_path, megabytes=50))
    assert alive_when_interrupted == [True]
    assert "copy" not in {t.name for t in threading.enumerate()}
    assert not _leftovers(store) and not list(store.iter_digests())
