"""The main job on a real instruction-tuned base (SmolLM2-135M-Instruct): its two tasks, templates and adapters.

The tiny base starts from random weights, so its demo instruction-tunes it first. A real
instruct model already follows instructions, so nothing is tuned here and the two tasks show
the two sides of a prompt template:

- ``capital`` (a country's name -> ``The capital city of X is Y.``): the model knows the answer
  and says it in that sentence once asked; the template turns the bare name into the question
  ("What is the capital city of {input}?"), zero parameters. A soft prompt trained on 40 rows is
  set against it.
- ``catalogue`` (an item -> its code in an invented catalogue): no instruction can say what the
  model was never shown. The template gets the answer format and three worked examples; the
  LoRA learns the rule (one code per kind of item) from 180 rows and is measured on items it
  never saw.

The step counts are what two CPU cores allow for the whole demo to stay within ten minutes: one
step of the 135M model on 8 short rows costs about 4 s on one thread there (measured), so the
88 steps take about four minutes and the whole demo about six and a half.
"""

from __future__ import annotations

from ..datasets.demo import CATALOGUE_QUESTION, make_rows
from ..prompt_template import FewShot, PromptTemplate
from ..train.config import TrainConfig
from ..train.demo import DemoAdapter

__all__ = ["REAL_TASKS", "REAL_TEMPLATES", "REAL_ADAPTERS", "catalogue_template"]

REAL_TASKS = ("capital", "catalogue")
_SHOWN_CODES = 3  # worked examples in the catalogue template: fewer kinds than the catalogue has


def catalogue_template() -> PromptTemplate:
    """The answer format and one training item for each of the first few codes (never a held-out item)."""
    examples: dict[str, FewShot] = {}
    for row in make_rows("catalogue")[0]:
        if len(examples) < _SHOWN_CODES and row["output"] not in examples:
            examples[row["output"]] = FewShot(f"{CATALOGUE_QUESTION}\n\n{row['input']}", row["output"])
    return PromptTemplate(template="{input}", system="Answer with the item's catalogue code only.",
                          examples=tuple(examples.values()))


REAL_TEMPLATES: dict[str, tuple[str, PromptTemplate]] = {
    "capital": ("demo-capital-template", PromptTemplate(template="What is the capital city of {input}?")),
    "catalogue": ("demo-catalogue-template", catalogue_template()),
}

REAL_ADAPTERS = (
    DemoAdapter("demo-capital-prompt", "capital",
                TrainConfig(method="prompt-tuning", num_virtual_tokens=8, max_steps=24, lr=3e-2, batch_size=8,
                            max_length=64, save_steps=1000),
                "Soft prompt: answers a country's name with its capital city"),
    DemoAdapter("demo-catalogue-lora", "catalogue",
                TrainConfig(method="lora", r=16, alpha=32, target_modules=("all-linear",), max_steps=64, lr=2e-3,
                            batch_size=8, max_length=64, save_steps=1000),
                "LoRA: an item's code in an invented catalogue"),
)
