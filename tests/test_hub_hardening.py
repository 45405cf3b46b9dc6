"""A hostile or merely unlucky client against a real hub on loopback, and the local registry under it:
concurrent Hugging Face commits never undo each other, version metrics are finite and bounded and
every JSON out is standard, a byte range costs what it reads while corruption is still caught, and a
full disk is a 507 (a one-line "disk is full" locally) that leaves nothing half-written."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from adapterhub.registry import LocalRegistry
from remote_helpers import serve_hub_process, start_hub, stop_process
from test_hf_compat import _client_env

# --- 1. concurrent Hugging Face commits -----------------------------------------------------------

RACE_CLIENT = textwrap.dedent(
    """
    import json, sys, threading, urllib.request
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    url_a, url_b, token, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    repo = "org/race"
    apis = [HfApi(endpoint=url_a, token=token), HfApi(endpoint=url_b, token=token)]

    def read(name):
        with urllib.request.urlopen(f"{url_a}/{repo}/resolve/main/{name}") as r:
            return r.read().decode()

    config = json.loads(read("adapter_config.json"))
    results = []
    for mode in ("parent", "no-parent"):
        for i in range(rounds):
            head = apis[0].model_info(repo).sha
            readme, alpha = f"{mode} round {i}\\n", 100 * (mode == "parent") + i + 1
            edits = [("README.md", readme), ("adapter_config.json", json.dumps(config | {"lora_alpha": alpha}))]
            barrier, status = threading.Barrier(2), [None, None]

            def commit(k):
                path, text = edits[k]
                barrier.wait()
                try:
                    apis[k].create_commit(repo, operations=[CommitOperationAdd(path, text.encode())],
                                          commit_message=f"{path} {mode} {i}",
                                          parent_commit=head if mode == "parent" else None)
                    status[k] = 200
                except HfHubHTTPError as e:
                    status[k] = e.response.status_code

            threads = [threading.Thread(target=commit, args=(k,)) for k in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            results.append({"mode": mode, "status": status, "readme": read("README.md"), "want_readme": readme,
                            "alpha": json.loads(read("adapter_config.json"))["lora_alpha"], "want_alpha": alpha})
    print(json.dumps(results))
    """
)


@pytest.mark.parametrize("writers", ["threads", "processes"])
def test_concurrent_hf_commits_never_undo_each_other(tmp_path, make_lora, writers):
    """Two ``create_commit`` calls from the same head, at once, many rounds: with ``parent_commit``
    one lands and the other is a 412 (the client raises); without, both land on top of each other.
    Either way no change that was answered 200 is missing from ``main`` afterwards. "processes"
    sends the second commit to another ``hub serve`` process on the same registry folder."""
    hub = start_hub(tmp_path / "hub")
    proc = None
    try:
        hub.registry.push(make_lora("race"), name="org/race", task="race")
        url_b = hub.url
        if writers == "processes":
            proc, url_b = serve_hub_process(hub.registry.root)
        run = subprocess.run([sys.executable, "-c", RACE_CLIENT, hub.url, url_b, hub.write_token, "8"],
                             env=_client_env(tmp_path, hub.url), capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        results = json.loads(run.stdout.splitlines()[-1])
    finally:
        hub.handle.close()
        if proc is not None:
            stop_process(proc)
    for r in results:
        readme_landed, alpha_landed = (s == 200 for s in r["status"])
        if r["mode"] == "parent":
            assert sorted(r["status"]) == [200, 412], r
        else:
            assert r["status"] == [200, 200], r
        assert (r["readme"] == r["want_readme"]) == readme_landed, r
        assert (r["alpha"] == r["want_alpha"]) == alpha_landed, r
    assert LocalRegistry(tmp_path / "hub").verify().ok
