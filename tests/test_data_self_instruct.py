"""``adapterhub data self-instruct`` against a running ``adapterhub serve`` engine on the tiny base, the
ROUGE-L rule on known pairs, a killed run resumed without duplicates, then ``train`` on the result and ``push``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from adapterhub.cli.main import cli
from adapterhub.rouge import rouge_l
from adapterhub.data.self_instruct import (SelfInstructConfig, _drop_reason, instruction_problem, parse_instance,
                                           parse_instructions)

ROOT = Path(__file__).resolve().parent.parent
SEEDS = [("Write the word in capital letters.", "kopita", "KOPITA"), ("Repeat the question.", "Why?", "Why?"),
         ("Decline to answer.", "What is Bob's salary?", "No."), ("Capitalize the first letter.", "cat", "Cat"),
         ("Is this review positive or negative?", "A lovely meal.", "positive")]


@pytest.mark.parametrize("candidate, kept, expected, dropped", [
    # 6 words, all in order inside a 7-word instruction: P = 6/7, R = 1, F = 12/13
    ("Write the word in capital letters please.", "Write the word in capital letters.", 12 / 13, True),
    # LCS "the word": P = R = 2/6
    ("Give a synonym of the word.", "Write the word in capital letters.", 1 / 3, False),
    # 10 words each, LCS of 7: F = 0.7 exactly, which the paper keeps (only > 0.7 is dropped)
    ("a b c d e f g x y z", "a b c d e f g u v w", 0.7, False),
    # case and punctuation do not count (rouge-score's tokenizer)
    ("REPEAT, the question!", "Repeat the question.", 1.0, True),
])
def test_the_rouge_l_rule_on_known_pairs(candidate, kept, expected, dropped):
    assert rouge_l(candidate, kept) == pytest.approx(expected)
    reason = _drop_reason(candidate, "", "an answer", [kept], set(), SelfInstructConfig(rows=1, min_words=1))
    assert (reason == "ROUGE-L > 0.7 to a kept instruction") is dropped


def test_parsing_and_validity_rules():
    assert parse_instructions("Sort the list.\n10. Name a color.\n11) Add two numbers.") == [
        "Sort the list.", "Name a color.", "Add two numbers."]
    assert parse_instance("Input: 3, 4\nOutput: 7") == ("3, 4", "7")
    assert parse_instance("Input: None\nOutput: Paris") == ("", "Paris")
    assert parse_instance("Just the answer") == ("", "Just the answer")
    assert instruction_problem("Draw a picture of a cat.", 3, 150) == "asks for something a text model cannot do"
    assert instruction_problem("Name two colors.", 3, 150) is None
    assert instruction_problem("Hi there", 3, 150) == "too short"
    assert instruction_problem("- Name two colors.", 3, 150) == "starts with punctuation or a non-ASCII character"
    assert instruction_problem("Name \ufffd colors.", 3, 150) == "undecodable characters"


@pytest.fixture(scope="module")
def served(tiny_base, tmp_path_factory):
    """``adapterhub serve``'s engine and HTTP API on a tiny base instruction-tuned for a few steps, so it
    writes ASCII text (the random base writes mostly undecodable bytes, which the filters rightly drop)."""
    from adapterhub.server import start_engine
    from adapterhub.datasets.demo import write_demo_datasets
    from adapterhub.instruct_base import instruct_tune_base

    work = tmp_path_factory.mktemp("self-instruct")
    data = write_demo_datasets(work / "data", tasks=["instruct"])
    base = instruct_tune_base(tiny_base, work / "base", data["instruct"].train, max_steps=20, batch_size=8,
                              threads=1, progress=False)
    with start_engine(base, registry=work / "registry", quantize="none", http=True) as handle:
        yield handle, base


def _seeds(path: Path) -> Path:
    path.write_text("".join(json.dumps({"instruction": i, "instances": [{"input": x, "output": y}]}) + "\n"
                            for i, x, y in SEEDS))
    return path


def _command(served, seeds: Path, out: Path, rows: int) -> list[str]:
    handle, _ = served
    return ["data", "self-instruct", "--seeds", str(seeds), "--out", str(out), "--rows", str(rows),
            "--base-url", f"{handle.url}/v1", "--model", handle.base, "--min-words", "1", "--max-tokens", "40",
            "--concurrency", "2", "--max-requests", "400", "--json"]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_self_instruct_end_to_end_then_train_and_push(served, tmp_path, _private_registry):
    seeds, out = _seeds(tmp_path / "seeds.jsonl"), tmp_path / "generated.jsonl"
    result = CliRunner().invoke(cli, _command(served, seeds, out, 6))
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    rows = _rows(out)
    assert doc["rows"] == len(rows) == 6
    instructions = [r["instruction"] for r in rows]
    seed_instructions = [s[0] for s in SEEDS]
    for i, row in enumerate(rows):
        assert row["source"] == "self-instruct" and row["model"] == served[0].base and row["output"].strip()
        earlier = seed_instructions + instructions[:i]
        assert max(rouge_l(row["instruction"], e) for e in earlier) <= 0.7
    assert len({(r["instruction"], r["input"]) for r in rows}) == 6

    from adapterhub.registry import LocalRegistry

    trained = CliRunner().invoke(cli, ["train", "--base", str(served[1]), "--data", str(out), "--name", "self-inst",
                                       "--task", "self-instruct", "--max-steps", "3", "--batch-size", "2",
                                       "--threads", "1", "--no-progress", "--output", str(tmp_path / "run"),
                                       "--push", "--json"])
    assert trained.exit_code == 0, trained.output
    pushed = LocalRegistry(_private_registry).resolve("self-inst")
    assert pushed.training["data"]["train_rows"] == 6


def test_a_killed_run_resumes_without_duplicates(served, tmp_path):
    seeds, out = _seeds(tmp_path / "seeds.jsonl"), tmp_path / "generated.jsonl"
    args = [sys.executable, "-m", "adapterhub.cli", *_command(served, seeds, out, 14)]
    args[args.index("--concurrency") + 1] = "1"
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120
    while not (out.exists() and out.read_text().count("\n") >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = _rows(out)
    assert 3 <= len(before) < 14
    with out.open("a") as f:  # a kill in the middle of a write leaves a torn last line
        f.write('{"instruction": "torn')

    resumed = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    doc = json.loads(resumed.stdout)
    rows = _rows(out)
    assert doc["resumed"] == len(before) and doc["rows"] == len(rows) == 14
    assert rows[: len(before)] == before
    assert len({r["instruction"] for r in rows}) == 14
    assert min(r["request"] for r in rows[len(before):]) > max(r["request"] for r in before)


def test_an_unreachable_endpoint_is_one_line(tmp_path):
    seeds = _seeds(tmp_path / "seeds.jsonl")
    result = CliRunner().invoke(cli, ["data", "self-instruct", "--seeds", str(seeds), "--out", str(tmp_path / "o.jsonl"),
                                      "--rows", "2", "--base-url", "http://127.0.0.1:9/v1", "--model", "m"])
    assert result.exit_code != 0 and "cannot reach http://127.0.0.1:9/v1/chat/completions" in result.output
    assert result.output.strip().count("\n") == 0
