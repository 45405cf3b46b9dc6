"""Check a merged model against PEFT itself: same prompts, logits of both, the largest difference.

The reference is the base with the adapter(s) applied by PEFT, unmerged: one adapter through
``PeftModel.from_pretrained``; a combination through PEFT's own ``add_weighted_adapter`` where it
computes the same thing as ours (``cat`` for our ``linear``/``cat``, ``ties_svd`` at full rank for
``ties``). DARE has no reproducible PEFT reference (PEFT draws its random mask from the global
generator in module order), so it is refused up front.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import MergeError
from .lora_delta import AdapterTensors
from .sources import AdapterSource

if TYPE_CHECKING:
    import torch

__all__ = ["VerifyReport", "check_verifiable", "verify_merged", "DEFAULT_PROMPTS", "FP32_TOLERANCE"]

# Of the largest reference logit (at least 1e-4 absolute): float32 rounding grows with the logits'
# size, and a trained LoRA on SmolLM2-135M (logits up to ~30) merged to 1.2e-4 off PEFT's unmerged
# result while a wrong scale or a transposed delta is off by whole units.
FP32_TOLERANCE = 1e-4
DEFAULT_PROMPTS = (
    "Hello, world!",
    "The capital of France is",
    "def add(a, b):\n    return a + b",
    "### user:\nWhat is 2 + 2?\n### assistant:\n",
    "Les sanglots longs des violons de l'automne",
)
_PEFT_COMBINATION = {"linear": "cat", "cat": "cat", "ties": "ties_svd"}


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of a logits comparison; ``passed`` is False only when a tolerance applied and was exceeded."""

    max_abs_diff: float
    reference: str
    prompts: int
    tolerance: float | None
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _alone(sources: Sequence[AdapterSource], weights: Sequence[float], method: str) -> bool:
    return len(sources) == 1 and weights[0] == 1.0 and method in ("linear", "cat")


def check_verifiable(sources: Sequence[AdapterSource], adapters: Sequence[AdapterTensors],
                     weights: Sequence[float], method: str) -> None:
    """Raise ``MergeError`` before any work when PEFT offers no reference for this merge."""
    if _alone(sources, weights, method):
        return
    if method not in _PEFT_COMBINATION:
        raise MergeError(
            f"--verify: no PEFT reference for {method} (PEFT draws DARE's random mask from its global generator "
            "in module order); verify linear, cat or ties merges"
        )
    for src, t in zip(sources, adapters):
        if t.saved or t.uses_dora or any(m.bias is not None for m in t.loras):
            raise MergeError(
                f"--verify: PEFT's add_weighted_adapter ignores the modules_to_save, DoRA or LoRA bias of "
                f"{src.label}, so it is no reference for this combination"
            )


def _reference(base_dir: Path, sources: Sequence[AdapterSource], weights: Sequence[float], method: str,
               density: float | None) -> tuple["torch.nn.Module", str]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if _alone(sources, weights, method):
        return PeftModel.from_pretrained(base, str(sources[0].folder.path)).eval(), "PEFT, adapter applied unmerged"
    model = PeftModel.from_pretrained(base, str(sources[0].folder.path), adapter_name="a0")
    for i, src in enumerate(sources[1:], start=1):
        model.load_adapter(str(src.folder.path), adapter_name=f"a{i}")
    names = [f"a{i}" for i in range(len(sources))]
    combination = _PEFT_COMBINATION[method]
    kwargs: dict[str, Any] = {}
    if combination == "ties_svd":
        # Full rank and thin SVD: PEFT's SVD step then reconstructs its TIES delta exactly.
        full = max(max(p.shape) for n, p in model.named_parameters() if "lora_" in n)
        kwargs = {"density": density, "svd_rank": full, "svd_full_matrices": False}
    model.add_weighted_adapter(names, list(weights), "merged", combination_type=combination, **kwargs)
    model.set_adapter("merged")
    return model.eval(), f"PEFT add_weighted_adapter({combination})"


def _prompt_ids(base_dir: Path, prompts: Sequence[str]) -> list["torch.Tensor"]:
    import torch
    from transformers import AutoConfig, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(base_dir)
        ids = [tok(p)["input_ids"] for p in prompts]
    except (OSError, ValueError):  # a base without tokenizer files: fixed pseudo-random token ids
        ids = []
    if not ids or not all(ids):
        generator = torch.Generator().manual_seed(0)
        vocab = AutoConfig.from_pretrained(base_dir).vocab_size
        return [torch.randint(0, vocab, (1, 8 + 3 * i), generator=generator) for i in range(len(prompts))]
    return [torch.tensor([i]) for i in ids]


def verify_merged(merged_dir: Path, base_dir: Path, sources: Sequence[AdapterSource], weights: Sequence[float],
                  method: str, density: float | None, *, fp32: bool,
                  prompts: Sequence[str] = DEFAULT_PROMPTS) -> VerifyReport:
    """Compare logits of the merged folder with PEFT's reference on ``prompts`` (both run in float32).

    The tolerance, ``FP32_TOLERANCE`` times the largest reference logit's magnitude (at least 1),
    applies when the merged weights are float32 (``fp32``); a bf16/fp16 export is reported, not judged.
    """
    import torch
    from transformers import AutoModelForCausalLM

    reference, description = _reference(base_dir, sources, weights, method, density)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    worst, largest = 0.0, 1.0
    with torch.no_grad():
        for ids in _prompt_ids(base_dir, prompts):
            want = reference(input_ids=ids).logits
            worst = max(worst, (merged(ids).logits - want).abs().max().item())
            largest = max(largest, want.abs().max().item())
    tolerance = FP32_TOLERANCE * largest if fp32 else None
    passed = tolerance is None or worst <= tolerance
    return VerifyReport(worst, description, len(prompts), tolerance, passed)
