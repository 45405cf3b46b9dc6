"""The hub's tokens file under concurrent writers: no token is lost."""

from __future__ import annotations

import subprocess
import sys

from adapterhub.tokens import TokenStore


def test_concurrent_token_creates_all_land(tmp_path):
    code = "import sys; from adapterhub.tokens import TokenStore; TokenStore(sys.argv[1]).create('read', sys.argv[2])"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), f"client-{i}"]) for i in range(8)]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    store = TokenStore(tmp_path)
    assert sorted(r.name for r in store.records()) == sorted(f"client-{i}" for i in range(8))


def test_revoke_removes_only_that_token(tmp_path):
    store = TokenStore(tmp_path)
    keep, keep_record = store.create("write", "keep")
    gone, gone_record = store.create("read", "gone")
    store.revoke(gone_record.id)
    assert store.authenticate(gone) is None
    assert store.authenticate(keep) == keep_record
