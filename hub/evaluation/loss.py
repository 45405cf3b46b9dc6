"""Loss and perplexity of each adapter on the same rows, through PEFT itself (the project's oracle).

The rows are tokenized and masked once by TRL, exactly as ``adapterhub train`` would; each
adapter is pulled from the registry, attached to the one full-precision base with
``PeftModel.from_pretrained``, measured, and detached again before the next. A prompt template
attaches nothing: the bare base is measured on the rows as the template rewrites them
(``templated``).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any, Sequence

from ..adapter_folder import PROMPT_TEMPLATE
from ..prompt_template import PROMPT_TEMPLATE_FILE, load_prompt_template
from ..train.config import TrainConfig
from ..train.data import Example
from ..train.evaluate import response_loss
from ..train.sft import prepared_rows, with_run_template
from ..train.trainer import load_base_model, load_tokenizer, training_device
from .templated import templated_examples

__all__ = ["adapter_losses"]


def adapter_losses(base: str, registry: Any, versions: Sequence[Any], examples: Sequence[Example], *,
                   max_length: int = 512, batch_size: int = 16) -> list[float]:
    """Mean loss per trained token for each of ``versions`` (None: the bare base), in order."""
    import torch
    from peft import PeftModel

    tokenizer = with_run_template(load_tokenizer(base), TrainConfig())
    model = load_base_model(base, "lora", training_device())
    model.eval()
    rows = prepared_rows(model, tokenizer, examples, max_length)
    pad_id = tokenizer.pad_token_id

    def measure(on: Any, measured: list[dict[str, Any]]) -> float:
        return response_loss(on, measured, pad_id, batch_size) if measured else math.nan

    losses = []
    with torch.no_grad():
        for version in versions:
            if version is None:
                losses.append(measure(model, rows))
                continue
            with tempfile.TemporaryDirectory(prefix="adapterhub-eval-") as tmp:
                folder = Path(tmp) / "adapter"
                registry.pull(version.ref, folder)
                if version.adapter_type == PROMPT_TEMPLATE:  # the bare base, on the rows as the template writes them
                    template = load_prompt_template(folder / PROMPT_TEMPLATE_FILE)
                    losses.append(measure(model, prepared_rows(model, tokenizer, templated_examples(template, examples),
                                                               max_length)))
                    continue
                adapted = PeftModel.from_pretrained(model, folder)
            adapted.eval()
            losses.append(measure(adapted, rows))
            model = adapted.get_base_model() if adapted.active_peft_config.is_prompt_learning else adapted.unload()
    return losses
