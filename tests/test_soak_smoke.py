"""The soak harness (bench/soak.py) in small: 8 clients, 8 s per run, against a real ``adapterhub serve``.

Every bad kind runs next to the good clients; each good answer must equal its idle-server tokens,
with no 5xx and none lost. Throughput and RSS are the full run's business (BENCHMARKS.md): timings
do not belong in a unit test.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import soak  # noqa: E402


def test_soak_smoke_good_requests_unharmed(tiny_base, tmp_path):
    fixture = soak.build_fixture(tmp_path, base=tiny_base)
    args = soak.parse_args(["--clients", "8", "--duration", "8", "--slow-sockets", "8", "--slow-hold", "2",
                            "--settle", "0.5", "--timeout", "30"])
    result = soak.run_soak(fixture, tmp_path, args)
    mixed = result["mixed"]
    problems = mixed["problem_samples"] + result["clean"]["problem_samples"]
    assert result["checks"]["no_wrong_answers"], problems
    assert result["checks"]["no_5xx_for_good_requests"], problems
    assert result["checks"]["no_good_request_lost"], problems
    assert result["checks"]["server_alive_and_healthy"]
    assert mixed["good_requests_ok"] > 0 and result["clean"]["good_requests_ok"] > 0
    assert set(mixed["bad_by_kind"]) == set(soak.BAD_KINDS), mixed["bad_outcomes"]
