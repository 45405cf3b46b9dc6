"""Load test: ``adapterhub serve`` against two ways of serving many adapters with plain PEFT.

Same base, same adapters, same request stream for all three:

* ``adapterhub``: the real server (``python -m adapterhub.cli serve`` in a subprocess), reached over HTTP on
  loopback by ``--clients`` client threads; one engine thread, continuous batching, LoRA and soft
  prompts in one batch.
* ``peft_set_adapter``: one request at a time behind a lock, ``set_adapter`` then ``generate``
  (one PeftModel holding the LoRAs, one holding the soft prompts). Clients call it in-process.
* ``peft_mixed_batch``: a batching thread takes every queued request, runs the LoRA rows as one
  ``generate(adapter_names=...)`` mixed batch and each soft prompt's rows as their own batch (PEFT
  cannot mix prompt-tuning adapters, or them with LoRA, in one batch), waits for the slowest row,
  answers, repeats. Clients call it in-process.

The baselines skip HTTP entirely, which favours them. Each client loops for ``--duration`` seconds:
pick the next adapter (round robin over the 8), send a ``--prompt-len``-token prompt with
``max_tokens`` drawn from {8, 16, 32}, greedy. A request started before the deadline is finished
and counted. Throughput counts generated tokens over the phase's wall time.

The base: the tiny base's byte tokenizer on a SmolLM2-135M-shaped body (576 wide, 30 layers,
GQA 9/3), random weights (speed does not depend on their values), fp32 on CPU unless ``--quantize``.
Adapters: 4 LoRAs (rank 16, alpha 32, all linear layers) and 4 soft prompts (16 virtual tokens).

    python bench/serve_load.py                      # 32 clients, 60 s per system
    python bench/serve_load.py --duration 10 --clients 8 --shape tiny   # a quick look

Prints one JSON document with per-system throughput, p50/p95 latency, errors and memory samples,
and the ratios of adapterhub to each baseline.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = {
    "smol135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                     num_key_value_heads=3, max_position_embeddings=2048),
    "tiny": {},
}
MAX_TOKENS = (8, 16, 32)


def rss_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build(workdir: Path, shape: str) -> tuple[Path, Path, dict[str, Path]]:
    """Base folder, registry folder, and name -> PEFT folder for the 8 adapters."""
    import torch
    from peft import LoraConfig, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from adapterhub.registry import LocalRegistry
    from adapterhub.tinybase import TinyBaseSpec, build_tiny_base

    base = build_tiny_base(workdir / "base", TinyBaseSpec(**SHAPES[shape]))
    registry = LocalRegistry(workdir / "registry")
    folders = {}
    for i in range(4):
        torch.manual_seed(100 + i)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
            task_type="CAUSAL_LM", r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False))
        folders[f"lora{i}"] = workdir / f"lora{i}"
        model.save_pretrained(folders[f"lora{i}"])
    for i in range(4):
        torch.manual_seed(200 + i)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), PromptTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=16))
        folders[f"prompt{i}"] = workdir / f"prompt{i}"
        model.save_pretrained(folders[f"prompt{i}"])
    for name, folder in folders.items():
        registry.push(folder, name=name, task="bench", base=str(base))
    return base, workdir / "registry", folders


def request_stream(client: int, prompt_len: int) -> Callable[[int], tuple[str, list[int], int]]:
    """The i-th request of a client: (adapter, prompt ids, max_tokens), identical for every system."""
    def nth(i: int) -> tuple[str, list[int], int]:
        rng = random.Random(client * 100_003 + i)
        k = (client + i) % 8
        adapter = f"lora{k}" if k < 4 else f"prompt{k - 4}"
        return adapter, [rng.randrange(32, 127) for _ in range(prompt_len)], rng.choice(MAX_TOKENS)
    return nth


def run_clients(client: Callable[[int], None], clients: int) -> float:
    """Run ``client(0..clients-1)`` on one thread each, all at once; the wall time until the last ends."""
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def drive(call: Callable[[str, list[int], int], int], clients: int, duration: float, prompt_len: int,
          rss: Callable[[], int]) -> dict[str, Any]:
    """Run ``clients`` threads calling ``call`` until ``duration`` s have passed; collect figures."""
    latencies: list[float] = []
    tokens = [0]
    errors: list[str] = []
    lock = threading.Lock()
    memory: list[int] = []
    start = time.monotonic()
    deadline = start + duration

    def client(c: int) -> None:
        nth = request_stream(c, prompt_len)
        i = 0
        while time.monotonic() < deadline:
            adapter, ids, max_tokens = nth(i)
            i += 1
            t = time.monotonic()
            try:
                n = call(adapter, ids, max_tokens)
            except Exception as e:  # counted, reported, never hidden
                with lock:
                    errors.append(f"{type(e).__name__}: {e}"[:200])
                continue
            with lock:
                latencies.append(time.monotonic() - t)
                tokens[0] += n

    def sample_memory() -> None:  # every second while clients run: shows whether memory levels off
        while time.monotonic() < deadline:
            memory.append(rss())
            time.sleep(1.0)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    sampler = threading.Thread(target=sample_memory, daemon=True)
    sampler.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    memory.append(rss())
    lat = sorted(latencies)
    return {
        "requests": len(lat),
        "errors": len(errors),
        "error_samples": errors[:3],
        "generated_tokens": tokens[0],
        "wall_s": round(wall, 1),
        "tokens_per_s": round(tokens[0] / wall, 2),
        "requests_per_s": round(len(lat) / wall, 3),
        "latency_p50_s": round(statistics.median(lat), 3) if lat else None,
        "latency_p95_s": round(lat[int(0.95 * (len(lat) - 1))], 3) if lat else None,
        "rss_mb_first": round(memory[0] / 1e6, 1),
        "rss_mb_max": round(max(memory) / 1e6, 1),
        "rss_mb_last": round(memory[-1] / 1e6, 1),
        "rss_mb_every_10s": [round(m / 1e6, 1) for m in memory[::10]],
    }


# --- adapterhub ----------------------------------------------------------------------------------


class ServerProcess:
    """``python -m adapterhub.cli serve`` in a subprocess, reached over HTTP on loopback; one
    keep-alive connection per client thread. Use as a context manager (the process is stopped after)."""

    def __init__(self, base: Path, registry: Path, *extra: str, log: Path | None = None) -> None:
        env = dict(os.environ, ADAPTERHUB_REGISTRY=str(registry))
        cmd = [sys.executable, "-m", "adapterhub.cli", "serve", "--base", str(base), "--port", "0", *extra]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self.url: tuple[str, int] | None = None
        self.banner = ""
        self.log = open(log, "w") if log is not None else None  # the server's stderr, kept when asked
        self._drain: threading.Thread | None = None
        for line in self.proc.stderr:
            self._keep(line)
            found = re.search(r"serving .* on http://([\d.]+):(\d+): OpenAI API", line)
            if found:
                self.url, self.banner = (found.group(1), int(found.group(2))), line.strip()
                break
        if self.url is None:
            self.close()
            raise RuntimeError("the server did not start" + (f"; see {log}" if log else ""))
        self._drain = threading.Thread(target=lambda: [self._keep(line) for line in self.proc.stderr], daemon=True)
        self._drain.start()
        self._local = threading.local()

    def post(self, path: str, doc: dict[str, Any]) -> dict[str, Any]:
        """POST ``doc`` as JSON on this thread's connection; the answer, or ``RuntimeError`` on a non-200."""
        conn = getattr(self._local, "conn", None)
        reused = conn is not None
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(*self.url, timeout=600)
        try:
            conn.request("POST", path, json.dumps(doc), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            answer = json.loads(resp.read())
        except (http.client.HTTPException, OSError) as e:
            self._local.conn = None
            stale = isinstance(e, (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected))
            if reused and stale:  # the server closed the idle keep-alive connection: once more, on a new one
                return self.post(path, doc)
            raise
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {answer}")
        return answer

    def complete(self, model: str, ids: list[int], max_tokens: int) -> int:
        """A greedy completion of prompt ``ids``; the number of tokens generated."""
        doc = self.post("/v1/completions", {"model": model, "prompt": ids, "max_tokens": max_tokens, "temperature": 0})
        return doc["usage"]["completion_tokens"]

    def get(self, path: str) -> str:
        conn = http.client.HTTPConnection(*self.url, timeout=60)
        conn.request("GET", path)
        return conn.getresponse().read().decode()

    def _keep(self, line: str) -> None:
        if self.log is not None:
            self.log.write(line)
            self.log.flush()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        if self._drain is not None:
            self._drain.join(5)
        if self.log is not None:
            self.log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_adapterhub(base: Path, registry: Path, args: argparse.Namespace) -> dict[str, Any]:
    with ServerProcess(base, registry, "--quantize", args.quantize, "--max-batch-size", str(args.clients),
                       "--max-loaded-adapters", str(args.max_loaded), "--max-lora-rank", "16",
                       "--threads", str(args.clients + 8)) as server:
        for k in range(8):  # warm-up: every adapter loaded once
            server.complete(f"lora{k}" if k < 4 else f"prompt{k - 4}", [65] * args.prompt_len, 2)
        result = drive(server.complete, args.clients, args.duration, args.prompt_len, lambda: rss_bytes(server.pid))
        health = json.loads(server.get("/health"))
        result["adapters_resident"] = len(health["loaded_adapters"])
        result["adapter_bytes"] = health["memory"]["adapter_bytes"]
        result["base_bytes"] = health["memory"]["base_bytes"]
        result["mean_decode_batch"] = _mean_batch(server.get("/metrics"))
        return result


def _mean_batch(metrics: str) -> float | None:
    total = re.search(r"^adapterhub_batch_size_sum (\S+)$", metrics, re.M)
    count = re.search(r"^adapterhub_batch_size_count (\S+)$", metrics, re.M)
    if not total or not count or float(count.group(1)) == 0:
        return None
    return round(float(total.group(1)) / float(count.group(1)), 2)


# --- PEFT baselines ------------------------------------------------------------------------------


def _peft_models(base: Path, folders: dict[str, Path], quantize: str):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if quantize == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=torch.float32)
    lora = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, **kwargs), folders["lora0"],
                                     adapter_name="lora0")
    for i in range(1, 4):
        lora.load_adapter(folders[f"lora{i}"], adapter_name=f"lora{i}")
    prompt = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, **kwargs), folders["prompt0"],
                                       adapter_name="prompt0")
    for i in range(1, 4):
        prompt.load_adapter(folders[f"prompt{i}"], adapter_name=f"prompt{i}")
    return lora.eval(), prompt.eval()


def _generate(model: Any, rows: list[list[int]], max_new: int, **kw: Any) -> list[int]:
    """Greedy generate for equal-length prompts; returns the new tokens' count per row."""
    import torch

    ids = torch.tensor(rows)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                             do_sample=False, pad_token_id=256, **kw)
    return [int(out.shape[1] - ids.shape[1])] * len(rows)


def run_set_adapter(models, args) -> dict[str, Any]:
    lora, prompt = models
    lock = threading.Lock()

    def call(adapter: str, ids: list[int], max_tokens: int) -> int:
        with lock:
            model = lora if adapter.startswith("lora") else prompt
            model.set_adapter(adapter)
            return _generate(model, [ids], max_tokens)[0]

    for k in range(4):
        call(f"lora{k}", [65] * args.prompt_len, 2)
        call(f"prompt{k}", [65] * args.prompt_len, 2)
    return drive(call, args.clients, args.duration, args.prompt_len, rss_bytes)


def run_mixed_batch(models, args) -> dict[str, Any]:
    lora, prompt = models
    inbox: queue.Queue = queue.Queue()
    stop = threading.Event()

    def batcher() -> None:
        while not stop.is_set():
            try:
                first = inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            batch = [first]
            while True:
                try:
                    batch.append(inbox.get_nowait())
                except queue.Empty:
                    break
            groups: dict[str, list] = {}
            for item in batch:
                key = "lora" if item[0].startswith("lora") else item[0]
                groups.setdefault(key, []).append(item)
            for key, items in groups.items():
                longest = max(it[2] for it in items)
                try:
                    if key == "lora":
                        _generate(lora, [it[1] for it in items], longest, adapter_names=[it[0] for it in items])
                    else:
                        prompt.set_adapter(key)
                        _generate(prompt, [it[1] for it in items], longest)
                    for it in items:
                        it[3].put(it[2])
                except Exception as e:
                    for it in items:
                        it[3].put(e)

    thread = threading.Thread(target=batcher, daemon=True)
    thread.start()

    def call(adapter: str, ids: list[int], max_tokens: int) -> int:
        box: queue.Queue = queue.Queue()
        inbox.put((adapter, ids, max_tokens, box))
        got = box.get()
        if isinstance(got, Exception):
            raise got
        return got

    for k in range(4):
        call(f"lora{k}", [65] * args.prompt_len, 2)
        call(f"prompt{k}", [65] * args.prompt_len, 2)
    try:
        return drive(call, args.clients, args.duration, args.prompt_len, rss_bytes)
    finally:
        stop.set()
        thread.join(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smol135m")
    parser.add_argument("--quantize", choices=["none", "nf4", "int8", "auto"], default="none")
    parser.add_argument("--max-loaded", type=int, default=4, help="server cache bound per adapter kind")
    parser.add_argument("--only", choices=["adapterhub", "peft_set_adapter", "peft_mixed_batch"], action="append")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        base, registry, folders = build(Path(tmp), args.shape)
        results: dict[str, Any] = {
            "config": {**vars(args), "torch_threads": torch.get_num_threads(), "adapters": sorted(folders),
                       "max_tokens_choices": list(MAX_TOKENS)},
        }
        wanted = args.only or ["adapterhub", "peft_set_adapter", "peft_mixed_batch"]
        if "adapterhub" in wanted:
            results["adapterhub"] = run_adapterhub(base, registry, args)
            print(json.dumps({"adapterhub": results["adapterhub"]}), file=sys.stderr, flush=True)
        if {"peft_set_adapter", "peft_mixed_batch"} & set(wanted):
            models = _peft_models(base, folders, args.quantize)
            if "peft_set_adapter" in wanted:
                results["peft_set_adapter"] = run_set_adapter(models, args)
                print(json.dumps({"peft_set_adapter": results["peft_set_adapter"]}), file=sys.stderr, flush=True)
            if "peft_mixed_batch" in wanted:
                results["peft_mixed_batch"] = run_mixed_batch(models, args)
        ours = results.get("adapterhub")
        if ours:
            for name in ("peft_set_adapter", "peft_mixed_batch"):
                other = results.get(name)
                if other and other["tokens_per_s"]:
                    results[f"throughput_ratio_vs_{name}"] = round(ours["tokens_per_s"] / other["tokens_per_s"], 2)
                    if other["latency_p50_s"] and ours["latency_p50_s"]:
                        results[f"p50_latency_ratio_vs_{name}"] = round(
                            ours["latency_p50_s"] / other["latency_p50_s"], 2)
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
