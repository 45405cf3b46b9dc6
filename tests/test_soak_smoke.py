"""The soak harness (bench/soak.py) in small: 18 s against a real ``adapterhub serve --with-hub``.

Every hostile kind runs beside the well-behaved clients; each well-behaved answer must equal its
reference, no hostile request may get a 5xx or go unanswered, and ``adapterhub verify`` must find the
registry clean afterwards. Latency and RSS bars are the full run's business (BENCHMARKS.md): timings
do not belong in a unit test.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import soak  # noqa: E402


def test_soak_smoke_good_requests_unharmed(tiny_base, tmp_path):
    fixture = soak.build_fixture(tmp_path, base=tiny_base)
    args = soak.parse_args(["--minutes", "0.3", "--clients", "2", "--threads", "16", "--settle-s", "1",
                            "--slow-sockets", "4", "--hold-s", "1", "--idle-connections", "16", "--timeout", "60"])
    result = soak.run_soak(fixture, tmp_path, args)
    bars = result["bars"]
    problems = result["hostile"]["failures"] + result["attack"]["wrong_samples"] + result["no_attack"]["wrong_samples"]
    assert bars["zero_wrong_answers"] and bars["no_hostile_failures"] and bars["server_alive"], problems
    assert bars["verify_clean"], result["verify"]
    assert result["no_attack"]["requests"] > 0 and result["attack"]["requests"] > 0
    assert set(result["hostile"]["counts"]) == set(soak.soak_hostile.KINDS), result["hostile"]["counts"]
