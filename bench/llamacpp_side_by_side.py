"""``llama-server`` and ``adapterhub serve`` side by side on one real model: same clients, same prompts,
alternating rounds.

llama.cpp is not built here (it takes ~30 minutes on 2 cores; the recipe is in
``../shared/reference/anchors.md``); pass its ``llama-server`` binary, the model converted with its
``convert_hf_to_gguf.py`` (``--llama-model``, e.g. q8_0, and optionally ``--llama-f32``), and the
LoRAs converted with ``convert_lora_to_gguf.py`` (``--llama-loras``, in the order of ``--adapters``,
the PEFT folders they were converted from). adapterhub serves ``--base`` (the HF folder the GGUF
files came from) with its default quantization (and ``--quantize none`` against ``--llama-f32``).

Traffic: ``--clients`` threads, each sending prompts of ``--prompt`` random token ids for
``--new`` greedy tokens through ``/v1/completions``, one after another for ``--round-s`` seconds;
base only, then each client on a different adapter (llama.cpp: ``"lora": [{"id": i, "scale": 1}]``
per request; adapterhub: ``model`` = the adapter). Rounds alternate the systems so machine noise hits
both alike; each figure is the best round (all rounds printed).

    python bench/llamacpp_side_by_side.py --llama-server PATH/llama-server --llama-model smol-q8_0.gguf \\
        --llama-loras lora-*.gguf --adapters loras/r16-* --base smollm2-hf
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hetero_lora_bench import emit  # noqa: E402
from serve_load import ServerProcess  # noqa: E402

from adapterhub.registry import LocalRegistry  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """``llama-server`` in a subprocess, ``--parallel`` slots with continuous batching, LoRAs loaded
    but applied per request only."""

    def __init__(self, binary: str, model: str, loras: list[str], parallel: int, threads: int, ctx: int,
                 extra: list[str]) -> None:
        self.port = _free_port()
        cmd = [binary, "-m", model, "--port", str(self.port), "--host", "127.0.0.1", "--parallel", str(parallel),
               "--cont-batching", "-t", str(threads), "-c", str(ctx), "--no-webui", *extra]
        for lora in loras:
            cmd += ["--lora", lora]
        if loras:
            cmd.append("--lora-init-without-apply")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._local = threading.local()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        self.close()
        raise RuntimeError("llama-server did not start")

    def complete(self, adapter: int | None, ids: list[int], new: int) -> int:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        doc: dict[str, Any] = {"prompt": ids, "max_tokens": new, "temperature": 0, "cache_prompt": False}
        if adapter is not None:
            doc["lora"] = [{"id": adapter, "scale": 1.0}]
        conn.request("POST", "/v1/completions", json.dumps(doc), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        answer = json.loads(resp.read())
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {answer}")
        return answer["usage"]["completion_tokens"]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def timed_phase(send: Callable[[int, list[int]], int], clients: int, prompt: int, new: int, vocab: int,
                seconds: float, rng: random.Random) -> float:
    """Clients send request after request for ``seconds``; generated tokens per second of wall time."""
    counts = [0] * clients
    errors: list[str] = []
    prompts = [[[rng.randrange(3, vocab) for _ in range(prompt)] for _ in range(64)] for _ in range(clients)]
    deadline = time.monotonic() + seconds

    def client(c: int) -> None:
        i = 0
        while time.monotonic() < deadline:
            try:
                counts[c] += send(c, prompts[c][i % len(prompts[c])])
            except Exception as e:  # reported, never hidden
                errors.append(f"{type(e).__name__}: {e}"[:200])
                return
            i += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return sum(counts) / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-server", required=True)
    ap.add_argument("--llama-model", required=True, help="the GGUF llama.cpp serves against our default mode")
    ap.add_argument("--llama-f32", default=None, help="an f32 GGUF, served against our --quantize none")
    ap.add_argument("--llama-loras", nargs="+", required=True)
    ap.add_argument("--adapters", nargs="+", required=True, help="the PEFT folders the LoRAs were converted from")
    ap.add_argument("--base", required=True, help="the HF folder the GGUF files were converted from")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--round-s", type=float, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="llama.cpp's -t")
    ap.add_argument("--llama-args", nargs="*", default=[],
                    help="more llama-server flags, e.g. --no-repack where its AMX weight repacking never finishes")
    ap.add_argument("--save", default=None)
    args = ap.parse_args()
    if len(args.llama_loras) != len(args.adapters) or len(args.adapters) < args.clients:
        raise SystemExit("give one --llama-loras file per --adapters folder, at least --clients of them")
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(args.base).vocab_size
    ctx = args.clients * (args.prompt + args.new + 64)
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        registry = LocalRegistry(Path(tmp) / "registry")
        refs = [registry.push(Path(p), name=f"lora-{i}", task="bench", base=args.base).ref
                for i, p in enumerate(args.adapters)]
        common = ("--device", "cpu", "--max-batch-size", str(args.clients), "--max-loaded-adapters",
                  str(len(refs)), "--max-lora-rank", "64", "--threads", str(args.clients + 4))
        pairs = [("default", args.llama_model, ())]
        if args.llama_f32:
            pairs.append(("none", args.llama_f32, ("--quantize", "none")))
        rounds: dict[str, list[float]] = {}
        for label, gguf, extra in pairs:
            for r in range(args.rounds):
                for system in ("llama.cpp", "adapterhub"):
                    if system == "llama.cpp":
                        server: Any = LlamaServer(args.llama_server, gguf, args.llama_loras, args.clients,
                                                  args.threads, ctx, args.llama_args)
                        base_send = lambda c, ids: server.complete(None, ids, args.new)  # noqa: E731
                        lora_send = lambda c, ids: server.complete(c, ids, args.new)  # noqa: E731
                    else:
                        server = ServerProcess(Path(args.base), Path(tmp) / "registry", *common, *extra)
                        for ref in refs:
                            server.post("/v1/adapters/load", {"model": ref})
                        base_send = lambda c, ids: server.complete(args.base, ids, args.new)  # noqa: E731
                        lora_send = lambda c, ids: server.complete(refs[c], ids, args.new)  # noqa: E731
                    try:
                        timed_phase(base_send, args.clients, args.prompt, 4, vocab, 3, rng)  # warm-up
                        for phase, send in (("base", base_send), ("8_loras", lora_send)):
                            tps = timed_phase(send, args.clients, args.prompt, args.new, vocab, args.round_s, rng)
                            rounds.setdefault(f"{label}/{phase}/{system}", []).append(tps)
                            emit(round=r, pair=label, phase=phase, system=system, tokens_per_s=round(tps, 1))
                    finally:
                        server.close()
    best = {k: max(v) for k, v in rounds.items()}
    ratios = {}
    for label, _, _ in pairs:
        for phase in ("base", "8_loras"):
            ours, theirs = best[f"{label}/{phase}/adapterhub"], best[f"{label}/{phase}/llama.cpp"]
            ratios[f"{label}/{phase}"] = round(ours / theirs, 2)
    summary = {"config": vars(args), "tokens_per_s_best": {k: round(v, 1) for k, v in best.items()},
               "adapterhub_over_llamacpp": ratios, "rounds": {k: [round(x, 1) for x in v] for k, v in rounds.items()}}
    print(json.dumps(summary, indent=2))
    if args.save:
        Path(args.save).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
