"""Self-Instruct (Wang et al., 2023): new instruction rows from a few seed tasks and a model.

Each request shows the model 8 instructions (seed tasks, plus up to 2 it generated earlier, as in
the paper) and asks for more; each new instruction is then sent back to be answered with an
example input and output. A candidate is kept only if:

- the instruction is valid (``min_words``..``max_words`` words, not starting with punctuation or a
  non-ASCII character, no undecodable or control characters, none of the paper's words for
  things a text model cannot do: image, graph, file, video...);
- its ROUGE-L against every instruction kept so far (seeds included) is at most ``similarity``
  (0.7, the paper's rule; ``rouge-score``);
- its (instruction, input) pair is new and its output is non-empty.

Requests run ``concurrency`` at a time; their results are filtered in request order in one thread,
so the same endpoint answers give the same file. Every kept row is appended and flushed with its
provenance (model, endpoint, request number, the instructions shown, the most similar kept
instruction and its ROUGE-L). A run killed at any point resumes from the file: the rows in it
count, a torn last line is cut off, and the next request number follows the last one written, so
nothing is duplicated.
"""

from __future__ import annotations

import json
import os
import random
import re
import unicodedata
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import TrainingDataError
from ..rouge import max_rouge_l
from ..train.data import data_digest, read_jsonl
from .openai_client import ChatClient, EndpointError

__all__ = ["SeedTask", "SelfInstructConfig", "SelfInstructReport", "load_seed_tasks", "instruction_problem",
           "parse_instructions", "parse_instance", "run_self_instruct"]

# The paper's filter: instructions about what a text-only model cannot see or make.
_BLOCKED_WORDS = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw",
                  "plot", "go to", "video", "audio", "music", "flowchart", "diagram")
_NUMBERED = re.compile(r"^\s*\d+\s*[.)]\s*", re.MULTILINE)
_INSTANCE = re.compile(r"input\s*:(?P<input>.*?)output\s*:(?P<output>.*)", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class SeedTask:
    instruction: str
    input: str
    output: str


@dataclass(frozen=True)
class SelfInstructConfig:
    """How many rows to make and how; the defaults are the paper's where it has one."""

    rows: int
    concurrency: int = 4
    shown_instructions: int = 8
    shown_generated: int = 2
    similarity: float = 0.7
    min_words: int = 3
    max_words: int = 150
    temperature: float = 1.0
    max_tokens: int = 256
    seed: int = 0
    max_requests: int = 0  # 0: 20 per row asked for

    def __post_init__(self) -> None:
        for name in ("rows", "concurrency", "shown_instructions", "max_tokens"):
            if getattr(self, name) < 1:
                raise TrainingDataError(f"{name} must be at least 1, not {getattr(self, name)}")
        if not 0 < self.similarity <= 1:
            raise TrainingDataError(f"similarity must be in (0, 1], not {self.similarity}")
        if not 1 <= self.min_words <= self.max_words:
            raise TrainingDataError(f"need 1 <= min_words <= max_words, not {self.min_words}..{self.max_words}")


@dataclass
class SelfInstructReport:
    """What a run did: rows in the file (``resumed`` of them from before), requests sent, drops by reason."""

    rows: int = 0
    resumed: int = 0
    requests: int = 0
    dropped: Counter = field(default_factory=Counter)


def load_seed_tasks(path: str | os.PathLike) -> list[SeedTask]:
    """Seed tasks: Self-Instruct's ``{"instruction", "instances": [{"input", "output"}]}`` or Alpaca rows."""
    seeds = []
    for row, source in read_jsonl(path):
        if not isinstance(row, dict) or not isinstance(row.get("instruction"), str) or not row["instruction"].strip():
            raise TrainingDataError(f'{source}: a seed task needs a non-empty "instruction" string')
        instance = (row.get("instances") or [{}])[0] if "instances" in row else row
        if not isinstance(instance, dict):
            raise TrainingDataError(f'{source}: "instances" must be a list of objects')
        seeds.append(SeedTask(row["instruction"].strip(), str(instance.get("input") or "").strip(),
                              str(instance.get("output") or "").strip()))
    if not seeds:
        raise TrainingDataError(f"{path}: no seed tasks (the file is empty)")
    return seeds


def instruction_problem(text: str, min_words: int, max_words: int) -> str | None:
    """Why ``text`` is not a usable instruction (a short reason), or None when it is."""
    if not text:
        return "empty"
    words = len(text.split())
    if words < min_words:
        return "too short"
    if words > max_words:
        return "too long"
    if "\ufffd" in text or any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in text):
        return "undecodable characters"
    if not text[0].isascii() or unicodedata.category(text[0]).startswith("P"):
        return "starts with punctuation or a non-ASCII character"
    lowered = f" {text.lower()} "
    if any(re.search(rf"\b{re.escape(w)}\b", lowered) for w in _BLOCKED_WORDS):
        return "asks for something a text model cannot do"
    return None


def parse_instructions(text: str) -> list[str]:
    """The new instructions in a numbered (or line-per-task) answer, stripped, in order."""
    parts = _NUMBERED.split(text) if _NUMBERED.search(text) else text.splitlines()
    return [" ".join(p.split()) for p in parts if p.strip()]


def parse_instance(text: str) -> tuple[str, str]:
    """``(input, output)`` from an ``Input: ... Output: ...`` answer; a bare answer is the output."""
    match = _INSTANCE.search(text)
    if match is None:
        return "", text.strip()
    given = match["input"].strip()
    return ("" if given.lower() in ("", "none", "n/a", "<noinput>") else given), match["output"].strip()


def _generation_prompt(shown: list[str]) -> list[dict[str, str]]:
    listing = "".join(f"{i}. {s}\n" for i, s in enumerate(shown, 1))
    return [{"role": "user", "content": "Come up with a series of new tasks, one per numbered line, different from "
                                        f"these:\n{listing}{len(shown) + 1}."}]


def _instance_prompt(instruction: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Task: {instruction}\nGive one example input for this task (write None if "
                                        "it needs none) and the correct output, in this form:\nInput: ...\nOutput: ..."}]


@dataclass(frozen=True)
class _Answer:
    request: int
    shown: list[str]
    candidates: list[tuple[str, str, str]]  # (instruction, input, output)
    error: str | None = None


def _restore(out: Path) -> list[dict[str, Any]]:
    """Rows already written; a last line torn by a kill is cut off so appending continues cleanly."""
    if not out.exists():
        return []
    data = out.read_bytes()
    keep = data if data.endswith(b"\n") or not data else data[: data.rfind(b"\n") + 1]
    rows = []
    for line in keep.decode("utf-8").splitlines():
        if line.strip():
            rows.append(json.loads(line))
    if len(keep) != len(data):
        with out.open("r+b") as f:
            f.truncate(len(keep))
    return rows


def run_self_instruct(seed_file: str | os.PathLike, out_file: str | os.PathLike, client: ChatClient,
                      config: SelfInstructConfig, *,
                      on_row: Callable[[dict[str, Any]], None] | None = None) -> SelfInstructReport:
    """Append rows to ``out_file`` until it holds ``config.rows`` (or the request budget is spent)."""
    seeds = load_seed_tasks(seed_file)
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = _restore(out)
    report = SelfInstructReport(rows=len(written), resumed=len(written))
    kept = [s.instruction for s in seeds] + [r["instruction"] for r in written]
    generated = [r["instruction"] for r in written]
    pairs = {(s.instruction, s.input) for s in seeds} | {(r["instruction"], r["input"]) for r in written}
    first = max((r["request"] for r in written), default=-1) + 1
    budget = config.max_requests or 20 * config.rows
    provenance = {"source": "self-instruct", "model": client.model, "endpoint": client.base_url,
                  "seed_sha256": data_digest(seed_file)}

    def ask(request: int, shown: list[str]) -> _Answer:
        options = {"temperature": config.temperature, "max_tokens": config.max_tokens, "seed": config.seed + request}
        try:
            listed = parse_instructions(client.chat(_generation_prompt(shown), **options))
            candidates = []
            for instruction in listed:
                if instruction_problem(instruction, config.min_words, config.max_words) is None:
                    given, output = parse_instance(client.chat(_instance_prompt(instruction), **options))
                    candidates.append((instruction, given, output))
                else:
                    candidates.append((instruction, "", ""))
            return _Answer(request, shown, candidates)
        except EndpointError as e:
            return _Answer(request, shown, [], error=str(e))

    def shown_for(request: int) -> list[str]:
        rng = random.Random(f"{config.seed}:{request}")
        machine = rng.sample(generated, min(config.shown_generated, len(generated)))
        human = rng.sample([s.instruction for s in seeds], min(config.shown_instructions - len(machine), len(seeds)))
        return human + machine

    with out.open("a", encoding="utf-8") as sink, ThreadPoolExecutor(config.concurrency) as pool:
        for answer in _in_order(pool, ask, shown_for, first, first + budget, config.concurrency,
                                lambda: report.rows >= config.rows):
            report.requests += 1
            if answer.error is not None:
                report.dropped["request failed"] += 1
                if report.requests == 1 and report.rows == 0:
                    raise EndpointError(answer.error)
                continue
            for instruction, given, output in answer.candidates:
                if report.rows >= config.rows:
                    break
                reason = _drop_reason(instruction, given, output, kept, pairs, config)
                if isinstance(reason, str):
                    report.dropped[reason] += 1
                    continue
                score, similar = reason
                row = {"instruction": instruction, "input": given, "output": output, **provenance,
                       "request": answer.request, "shown": answer.shown, "most_similar": similar,
                       "rouge_l": round(score, 4)}
                sink.write(json.dumps(row, ensure_ascii=False) + "\n")
                sink.flush()
                os.fsync(sink.fileno())
                kept.append(instruction)
                generated.append(instruction)
                pairs.add((instruction, given))
                report.rows += 1
                if on_row is not None:
                    on_row(row)
    return report


def _drop_reason(instruction: str, given: str, output: str, kept: list[str], pairs: set[tuple[str, str]],
                 config: SelfInstructConfig) -> str | tuple[float, str | None]:
    """Why the candidate is dropped, or its highest ROUGE-L to a kept instruction and which one."""
    problem = instruction_problem(instruction, config.min_words, config.max_words)
    if problem is not None:
        return f"invalid instruction: {problem}"
    if (instruction, given) in pairs:
        return "duplicate"
    score, similar = max_rouge_l(instruction, kept)
    if score > config.similarity:
        return f"ROUGE-L > {config.similarity} to a kept instruction"
    if not output or "\ufffd" in output:
        return "empty or undecodable output"
    return score, similar


def _in_order(pool: ThreadPoolExecutor, ask: Callable[[int, list[str]], _Answer],
              shown_for: Callable[[int], list[str]], first: int, end: int, window: int,
              done: Callable[[], bool]) -> Iterator[_Answer]:
    """Answers in request order with up to ``window`` requests in flight; stops submitting once ``done()``."""
    pending = {}
    request = first
    while True:
        while request < end and len(pending) < window and not done():
            pending[request] = pool.submit(ask, request, shown_for(request))
            request += 1
        if not pending:
            return
        oldest = min(pending)
        yield pending.pop(oldest).result()
        if done():
            for future in pending.values():
                future.cancel()
            return
