"""Heterogeneous-batch LoRA: generation throughput against the bare base and PEFT's mixed batch, and
adapter load time (registry -> ready) against ``PeftModel.load_adapter``, all in one process run.

Random-init Llama-shaped base (speed does not depend on weight values), adapters with random B on
all linear layers, greedy ``generate`` with a fixed number of new tokens. The three contenders run
the same ``generate`` loop: the bare base, PEFT with ``adapter_names`` (one sub-batch per distinct
adapter), and the base wrapped by ``LoraSlotBank`` with adapters loaded through ``LoraCache``.
Rounds interleave the contenders so machine noise hits them alike; each figure is the best round
(ratios of the median rounds are printed too). Ratios are against the bare base of the same rounds.

    python bench/hetero_lora_bench.py                                  # CPU: SmolLM2-135M shape, fp32, 8 requests
    python bench/hetero_lora_bench.py --device cuda --shape llama-3.2-1b --dtype bf16 \\
        --batch 32 --prompt 128 --new 128 --adapters 32 --peft-baseline ../shared/bench/peft_baseline.py

Prints JSON lines while it runs and one summary document at the end; ``--plot`` draws throughput
against the number of distinct adapters and against rank (ours, PEFT, base).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from adapterhub.registry import LocalRegistry  # noqa: E402
from adapterhub.server.engine.adapters.lora_cache import LoraCache  # noqa: E402
from adapterhub.server.engine.lora.slot_bank import LoraSlotBank  # noqa: E402
from adapterhub.server.engine.model_loader import load_base_model, resolve_dtype  # noqa: E402

SHAPES = {
    "smol135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3),
    "llama-3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0),
}


def emit(**kw) -> None:
    print(json.dumps(kw), flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_base(folder: Path, shape: str, device: torch.device, dtype: torch.dtype) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, tie_word_embeddings=True)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    model.save_pretrained(folder)
    _save_tokenizer(folder, cfg.vocab_size)


def _save_tokenizer(folder: Path, vocab: int) -> None:
    """A word-level tokenizer over the vocabulary, so the folder loads like any model (ids are random)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", pad_token="t0").save_pretrained(folder)


def make_adapters(base: Path, out: Path, counts: dict[int, int], device: torch.device,
                  dtype: torch.dtype) -> dict[int, list[Path]]:
    """``counts[r]`` rank-r adapters per rank r (alpha 2r, all linear layers, random non-zero B)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, device_map={"": str(device)})
    made: dict[int, list[Path]] = {}
    for rank, count in counts.items():
        peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear",
                                                      task_type="CAUSAL_LM"))
        made[rank] = []
        for i in range(count):
            torch.manual_seed(1000 * rank + i)
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    torch.nn.init.normal_(p, std=0.01)
            path = out / f"r{rank}-{i}"
            peft_model.save_pretrained(path)
            made[rank].append(path)
        model = peft_model.unload()
    return made


class Contenders:
    """The bare base, PEFT holding every adapter, and our slot bank under its adapter cache."""

    def __init__(self, base: Path, adapters: dict[int, list[Path]], registry: LocalRegistry, device: torch.device,
                 dtype: torch.dtype, batch: int) -> None:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        def plain():
            return AutoModelForCausalLM.from_pretrained(base, dtype=dtype, device_map={"": str(device)}).eval()

        self.device = device
        self.registry = registry
        self.bare = plain()
        first = adapters[min(adapters)][0]
        self.peft = PeftModel.from_pretrained(plain(), first, adapter_name=_peft_name(first))
        for paths in adapters.values():
            for p in paths:
                if _peft_name(p) not in self.peft.peft_config:
                    self.peft.load_adapter(p, adapter_name=_peft_name(p))
        self.peft.eval()
        self.loaded = load_base_model(str(base), quantize="none", device=str(device), dtype=dtype)
        self.bank = LoraSlotBank(self.loaded, max_slots=batch, max_rank=max(adapters))
        self.slots = LoraCache(self.bank, registry, max_loaded=batch)

    def ours_rows(self, refs: list[str]) -> list[int]:
        handles = {ref: self.slots.acquire(self.registry.resolve(ref)) for ref in dict.fromkeys(refs)}
        for h in handles.values():
            self.slots.release(h)  # resident, not pinned: the next config may evict them
        return [handles[r].slot for r in refs]


def _peft_name(path: Path) -> str:
    return path.name.replace("-", "_")


def generate(model, ids: torch.Tensor, new: int, device: torch.device, **kw) -> tuple[float, torch.Tensor]:
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                             min_new_tokens=new, do_sample=False, pad_token_id=0, **kw)
    sync(device)
    return time.perf_counter() - t0, out[:, ids.shape[1]:]


def measure_config(c: Contenders, ids: torch.Tensor, new: int, rank: int, distinct: int,
                   adapters: dict[int, list[Path]], refs: dict[Path, str], rounds: int, peft_rounds: int) -> dict:
    """Interleaved rounds of base / PEFT mixed / ours for one (rank, distinct adapters) point.

    PEFT runs in the first ``peft_rounds`` rounds only (0: not at all): on a GPU one PEFT round
    with 32 distinct adapters costs as much as fifty of the others.
    """
    batch = ids.shape[0]
    chosen = [adapters[rank][i % distinct] for i in range(batch)]
    names = [_peft_name(p) for p in chosen]
    rows = c.ours_rows([refs[p] for p in chosen])
    times: dict[str, list[float]] = {"base": [], "peft": [], "ours": []}
    tokens = {}
    for i in range(rounds):
        t, _ = generate(c.bare, ids, new, c.device)
        times["base"].append(t)
        if i < peft_rounds:
            t, tokens["peft"] = generate(c.peft, ids, new, c.device, adapter_names=names)
            times["peft"].append(t)
        with c.bank.rows(rows):
            t, tokens["ours"] = generate(c.loaded.model, ids, new, c.device)
        times["ours"].append(t)
    tps = {k: batch * new / min(v) for k, v in times.items() if v}
    median = {k: batch * new / statistics.median(v) for k, v in times.items() if v}
    point = {
        "rank": rank, "distinct_adapters": distinct,
        "base_tok_s": round(tps["base"], 2), "ours_tok_s": round(tps["ours"], 2),
        "ours_vs_base": round(tps["ours"] / tps["base"], 3),
        "median_rounds": {"ours_vs_base": round(median["ours"] / median["base"], 3)},
        "rounds_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
    }
    if "peft" in tps:
        point.update(peft_tok_s=round(tps["peft"], 2), peft_vs_base=round(tps["peft"] / tps["base"], 3),
                     ours_vs_peft=round(tps["ours"] / tps["peft"], 2),
                     greedy_tokens_equal_peft=bool(torch.equal(tokens["peft"], tokens["ours"])))
        point["median_rounds"]["peft_vs_base"] = round(median["peft"] / median["base"], 3)
    emit(what="throughput", **point)
    return point


def peft_from_baseline(point: dict, baseline: list[dict], batch: int) -> None:
    """Fill a point PEFT was not run on in-process from the baseline script's figure on the same card.

    The script measures PEFT's mixed batch at rank 16 for 8 and N_AD distinct adapters. Its ratio
    is taken against the bare base of this point's own rounds, not the script's base figure: that
    one is the script's first full-batch ``generate``, which on CUDA carries first-use costs (our
    own first base round took 4.5x the later ones on the H100).
    """
    got = {line["what"]: line["value"] for line in baseline if "what" in line and "value" in line}
    mixed = got.get(f"peft_mixed_{point['distinct_adapters']}adapters_bs{batch}_tok_s")
    measured_here = "peft_tok_s" in point and "peft_source" not in point
    if measured_here or point["rank"] != 16 or mixed is None:
        return
    point.update(peft_tok_s=mixed, peft_vs_base=round(mixed / point["base_tok_s"], 4),
                 ours_vs_peft=round(point["ours_tok_s"] / mixed, 2),
                 peft_source="peft_baseline.py on the same card, against this point's bare base")



def measure_steps(c: Contenders, ids: torch.Tensor, new: int, rank: int, distinct: int,
                  adapters: dict[int, list[Path]], refs: dict[Path, str], prefills: int, steps: int) -> dict:
    """The same comparison one forward at a time: many short interleaved samples, medians.

    A shared machine's noise comes in bursts of seconds; a whole ``generate`` round catches them,
    short samples taken in turn mostly do not. ``predicted_*_vs_base`` puts the medians back
    together as prefill + (new - 1) decode steps.
    """
    batch = ids.shape[0]
    chosen = [adapters[rank][i % distinct] for i in range(batch)]
    names = [_peft_name(p) for p in chosen]
    rows = c.ours_rows([refs[p] for p in chosen])
    runs = {
        "base": (c.bare, {}, None),
        "peft": (c.peft, {"adapter_names": names}, None),
        "ours": (c.loaded.model, {}, rows),
    }

    def forward(name: str, inputs: torch.Tensor, cache=None) -> tuple[float, object]:
        model, kw, slot_rows = runs[name]
        c.bank.set_rows(slot_rows)
        sync(c.device)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model(input_ids=inputs, past_key_values=cache, use_cache=True, logits_to_keep=1, **kw)
        sync(c.device)
        return time.perf_counter() - t0, out.past_key_values

    prefill = {k: [] for k in runs}
    step = {k: [] for k in runs}
    for _ in range(prefills):
        for k in runs:
            prefill[k].append(forward(k, ids)[0])
    _, cache = forward("base", ids)
    token = ids[:, -1:]
    for _ in range(steps):
        for k in runs:
            step[k].append(forward(k, token, cache)[0])
            cache.crop(-1)
    c.bank.set_rows(None)
    med = {k: (statistics.median(prefill[k]), statistics.median(step[k])) for k in runs}
    total = {k: p + (new - 1) * d for k, (p, d) in med.items()}
    out = {"rank": rank, "distinct_adapters": distinct, "prefill_samples": prefills, "step_samples": steps}
    for k, (p, d) in med.items():
        out[f"{k}_prefill_s_median"] = round(p, 4)
        out[f"{k}_decode_step_ms_median"] = round(1000 * d, 2)
    out["predicted_peft_vs_base"] = round(total["base"] / total["peft"], 3)
    out["predicted_ours_vs_base"] = round(total["base"] / total["ours"], 3)
    emit(what="forward_samples", **out)
    return out


def measure_loads(c: Contenders, paths: list[Path], refs: dict[Path, str], trials: int) -> dict:
    """Registry -> ready through LoraCache (miss each time), against PeftModel.load_adapter."""
    ours, peft = [], []
    for i in range(trials):
        p = paths[i % len(paths)]
        c.slots.unload(refs[p])
        sync(c.device)
        t0 = time.perf_counter()
        c.slots.release(c.slots.acquire(c.registry.resolve(refs[p])))
        sync(c.device)
        ours.append(time.perf_counter() - t0)
        name = f"probe{i}"
        sync(c.device)
        t0 = time.perf_counter()
        c.peft.load_adapter(p, adapter_name=name)
        sync(c.device)
        peft.append(time.perf_counter() - t0)
        c.peft.delete_adapter(name)
    size = (p / "adapter_model.safetensors").stat().st_size
    out = {"adapter_MB": round(size / 1e6, 2), "trials": trials,
           "ours_load_ms_p50": round(1000 * statistics.median(ours), 2),
           "peft_load_adapter_ms_p50": round(1000 * statistics.median(peft), 2)}
    out["speedup"] = round(out["peft_load_adapter_ms_p50"] / out["ours_load_ms_p50"], 1)
    emit(what="adapter_load", **out)
    return out


def run_peft_baseline(script: str, args: argparse.Namespace) -> list[dict]:
    """The shared anchor script on this same machine, so its figures and ours come from one card."""
    env = dict(os.environ, DEVICE=args.device, SHAPE="llama1b" if args.shape == "llama-3.2-1b" else "smol135m",
               BS=str(args.batch), NEW=str(args.new), N_AD=str(args.adapters))
    proc = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True)
    lines = []
    for line in proc.stdout.splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    emit(what="peft_baseline_script", returncode=proc.returncode, results=lines)
    return lines


def plot(points: list[dict], config: dict, path: Path) -> None:
    """Throughput relative to the bare base of the same rounds (ratios survive a noisy machine)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch, rank = config["batch"], config["rank"]
    full = min(batch, config.get("rank_sweep_adapters") or config["adapters"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    by_n = sorted((p for p in points if p["rank"] == rank), key=lambda p: p["distinct_adapters"])
    by_r = sorted((p for p in points if p["distinct_adapters"] == full), key=lambda p: p["rank"])
    for ax, series, key, label in ((axes[0], by_n, "distinct_adapters", "distinct adapters in the batch"),
                                   (axes[1], by_r, "rank", "LoRA rank")):
        xs = [p[key] for p in series]
        ax.axhline(1.0, color="k", linestyle="--", label="bare base")
        ax.plot(xs, [p["ours_vs_base"] for p in series], "o-", label="adapterhub gathered LoRA")
        peft = [p for p in series if "peft_vs_base" in p]
        ax.plot([p[key] for p in peft], [p["peft_vs_base"] for p in peft], "s-",
                label="PEFT mixed batch (adapter_names)")
        borrowed = [p for p in peft if "peft_source" in p]
        ax.plot([p[key] for p in borrowed], [p["peft_vs_base"] for p in borrowed], "s", color="white",
                markersize=4, label="PEFT figure from peft_baseline.py (same card)" if borrowed else None)
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel(label)
        ax.set_ylabel("throughput / bare base (same rounds)")
        ax.set_ylim(0, max([1.1] + [1.05 * p["ours_vs_base"] for p in series]))
        ax.grid(alpha=0.3)
    axes[0].set_title(f"rank {rank}, {batch} requests")
    axes[1].set_title(f"{full} distinct adapters, {batch} requests")
    axes[0].legend(loc="lower left")
    fig.suptitle(f"{config['shape']}, {config['dtype']}, {config['device']}, prompt {config['prompt']}, "
                 f"{config['new']} new tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    emit(what="plot", path=str(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shape", default="smol135m", choices=sorted(SHAPES))
    ap.add_argument("--dtype", default=None, help="fp32 | bf16 (default: fp32 on CPU, bf16 on CUDA)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--rank", type=int, default=16, help="rank of the headline and of the distinct-adapter sweep")
    ap.add_argument("--adapters", type=int, default=8, help="distinct adapters of the headline point")
    ap.add_argument("--sweep-distinct", default="1,2,8,32", help="distinct-adapter counts (those above --batch are skipped)")
    ap.add_argument("--sweep-ranks", default="8,16,64")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the headline point")
    ap.add_argument("--sweep-rounds", type=int, default=3, help="interleaved rounds of each sweep point")
    ap.add_argument("--peft-rounds", type=int, default=None,
                    help="rounds PEFT joins at each point (default: all); 0 leaves PEFT out")
    ap.add_argument("--peft-max-distinct", type=int, default=None,
                    help="run PEFT in-process only at points with at most this many distinct adapters; the "
                         "others take PEFT's figure from --peft-baseline (same card)")
    ap.add_argument("--rank-sweep-adapters", type=int, default=None,
                    help="distinct adapters in the rank sweep (default: --adapters)")
    ap.add_argument("--load-trials", type=int, default=16)
    ap.add_argument("--prefill-samples", type=int, default=5)
    ap.add_argument("--step-samples", type=int, default=20, help="0 skips the forward samples")
    ap.add_argument("--samples-only", action="store_true", help="only the interleaved forward samples of the headline")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--headline-only", action="store_true", help="skip the sweeps")
    ap.add_argument("--peft-baseline", default=None, help="path of peft_baseline.py to run first on this machine")
    ap.add_argument("--plot", default=None, help="PNG path for the throughput plot")
    ap.add_argument("--save", default=None, help="write the summary document to this JSON file")
    ap.add_argument("--replot", default=None,
                    help="draw --plot (and rewrite --save) from a saved summary instead of measuring")
    args = ap.parse_args()
    if args.replot:
        saved = json.loads(Path(args.replot).read_text())
        for point in saved["points"]:
            peft_from_baseline(point, saved.get("peft_baseline_script", []), saved["config"]["batch"])
        if args.save:
            Path(args.save).write_text(json.dumps(saved, indent=2) + "\n")
        plot(saved["points"], saved["config"], Path(args.plot))
        return

    device = torch.device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    args.dtype = str(dtype).removeprefix("torch.")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    emit(what="config", **{k: v for k, v in vars(args).items()}, torch=torch.__version__,
         device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    summary: dict = {"config": vars(args)}

    distinct = sorted({n for n in map(int, args.sweep_distinct.split(",")) if n <= args.batch} | {args.adapters})
    ranks = sorted({args.rank} | (set() if args.headline_only else set(map(int, args.sweep_ranks.split(",")))))
    rank_distinct = args.rank_sweep_adapters or args.adapters
    counts = {r: max(distinct) if r == args.rank else rank_distinct for r in ranks}

    def peft_rounds(n: int, rounds: int) -> int:
        if args.peft_max_distinct is not None and n > args.peft_max_distinct:
            return 0
        return rounds if args.peft_rounds is None else min(rounds, args.peft_rounds)

    with tempfile.TemporaryDirectory(prefix="hetero-bench-") as tmp:
        work = Path(tmp)
        base = work / "base"
        build_base(base, args.shape, device, dtype)
        adapters = make_adapters(base, work / "adapters", counts, device, dtype)
        registry = LocalRegistry(work / "registry", durable=False)
        refs = {}
        for paths in adapters.values():
            for p in paths:
                refs[p] = registry.push(p, name=p.name, task="bench", base=str(base)).ref
        c = Contenders(base, adapters, registry, device, dtype, args.batch)
        summary["base_footprint_bytes"] = c.loaded.footprint_bytes
        summary["slot_bytes"] = c.bank.slot_bytes()
        ids = torch.randint(1, SHAPES[args.shape]["vocab_size"], (args.batch, args.prompt), device=device,
                            generator=torch.Generator(device=device).manual_seed(0))
        generate(c.bare, ids[:2], 2, device)  # warm-up: allocator, kernels
        with c.bank.rows(c.ours_rows([refs[adapters[args.rank][0]]] * 2)):
            generate(c.loaded.model, ids[:2], 2, device)

        if args.step_samples:
            summary["headline_forward_samples"] = measure_steps(c, ids, args.new, args.rank, args.adapters, adapters,
                                                                refs, args.prefill_samples, args.step_samples)
        if args.samples_only:
            print(json.dumps({"what": "summary", **summary}, indent=2), flush=True)
            return
        summary["headline"] = measure_config(c, ids, args.new, args.rank, args.adapters, adapters, refs, args.rounds,
                                             peft_rounds(args.adapters, args.rounds))
        summary["adapter_load"] = measure_loads(c, adapters[args.rank], refs, args.load_trials)
        points = [summary["headline"]]
        if not args.headline_only:
            points += [measure_config(c, ids, args.new, args.rank, n, adapters, refs, args.sweep_rounds,
                                      peft_rounds(n, args.sweep_rounds))
                       for n in distinct if n != args.adapters]
            points += [measure_config(c, ids, args.new, r, rank_distinct, adapters, refs, args.sweep_rounds,
                                      peft_rounds(rank_distinct, args.sweep_rounds))
                       for r in ranks if r != args.rank]
        summary["points"] = points
        summary["slot_stats"] = c.slots.stats.to_dict()
        del c  # free the card for the baseline script
    if args.peft_baseline:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        summary["peft_baseline_script"] = run_peft_baseline(args.peft_baseline, args)
        for point in points:
            peft_from_baseline(point, summary["peft_baseline_script"], args.batch)
    if args.plot and len(points) > 1:
        plot(points, vars(args), Path(args.plot))
    if args.save:
        Path(args.save).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({"what": "summary", **summary}, indent=2), flush=True)


if __name__ == "__main__":
    main()
