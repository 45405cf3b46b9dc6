"""``adapterhub data curate``: exact and near duplicates, length bounds, per-source quotas, a seeded sample."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from adapterhub.cli.main import cli


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_curate_drops_and_says_why(tmp_path):
    rows = [
        {"instruction": "Name one primary color that painters use to mix other colors.", "output": "Red is one.",
         "source": "web"},
        {"instruction": "name one primary color that painters use to mix other  colors.", "output": "red is one.",
         "source": "web"},  # exact duplicate
        {"instruction": "Name one primary color that painters use to mix all other colors.", "output": "Blue is one.",
         "source": "web"},  # near duplicate: ROUGE-L 22/23
        {"instruction": "Say nothing.", "output": "Ok", "source": "web"},  # too short (< 2 words)
        {"messages": [{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": "It is 5."}],
         "source": "math"},
        {"instruction": "Add 4 and 4.", "output": "The sum is 8.", "source": "math"},
        {"instruction": "Add 9 and 1.", "output": "The sum is 10.", "source": "math"},  # over the quota of 2
    ]
    src = _write(tmp_path / "rows.jsonl", rows)
    result = CliRunner().invoke(cli, ["data", "curate", str(src), "--min-words", "2", "--per-source", "2",
                                      "--out", str(tmp_path / "kept.jsonl"), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    kept = [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert kept == [rows[0], rows[4], rows[5]]
    assert doc["read"] == 7 and doc["kept"] == 3
    assert doc["dropped"] == {"exact duplicate": 1, "near duplicate (prompt ROUGE-L > 0.9)": 1,
                              "response length out of bounds": 1, "over the quota of 2 for source math": 1}
    assert doc["first_dropped"]["exact duplicate"] == f"{src}:2"


def test_a_seeded_sample_is_reproducible_and_in_file_order(tmp_path):
    rows = [{"instruction": f"Task number {i} about topic {i * 7}.", "output": f"Answer {i}."} for i in range(30)]
    src = _write(tmp_path / "rows.jsonl", rows)
    outs = []
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        result = CliRunner().invoke(cli, ["data", "curate", str(src), "--sample", "10", "--seed", seed,
                                          "--near-duplicate", "1.0", "--out", str(tmp_path / f"{name}.jsonl")])
        assert result.exit_code == 0, result.output
        assert "dropped 20: not in the sample of 10" in result.output
        outs.append([json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()])
    assert outs[0] == outs[1] and outs[0] != outs[2] and len(outs[0]) == 10
    assert outs[0] == sorted(outs[0], key=rows.index)
