"""Loss and perplexity of each adapter on the same rows, through PEFT itself (the project's oracle).

The rows are tokenized and masked once by TRL, exactly as ``adapterhub train`` would; each
adapter is pulled from the registry, attached to the one full-precision base with
``PeftModel.from_pretrained``, measured, and detached again before the next.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any, Sequence

from ..train.config import TrainConfig
from ..train.data import Example
from ..train.evaluate import response_loss
from ..train.sft import prepared_rows, with_run_template
from ..train.trainer import load_tokenizer, training_device

__all__ = ["adapter_losses"]


def adapter_losses(base: str, registry: Any, versions: Sequence[Any], examples: Sequence[Example], *,
                   max_length: int = 512, batch_size: int = 16) -> list[float]:
    """Mean loss per trained token for each of ``versions`` (None: the bare base), in order."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tokenizer = with_run_template(load_tokenizer(base), TrainConfig())
    model = AutoModelForCausalLM.from_pretrained(base).to(training_device())
    model.eval()
    rows = prepared_rows(model, tokenizer, examples, max_length)
    pad_id = tokenizer.pad_token_id
    losses = []
    with torch.no_grad():
        for version in versions:
            if version is None:
                losses.append(response_loss(model, rows, pad_id, batch_size) if rows else math.nan)
                continue
            with tempfile.TemporaryDirectory(prefix="adapterhub-eval-") as tmp:
                registry.pull(version.ref, Path(tmp) / "adapter")
                adapted = PeftModel.from_pretrained(model, Path(tmp) / "adapter")
            adapted.eval()
            losses.append(response_loss(adapted, rows, pad_id, batch_size) if rows else math.nan)
            model = adapted.get_base_model() if adapted.active_peft_config.is_prompt_learning else adapted.unload()
    return losses
