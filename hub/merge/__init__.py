"""Fold LoRA adapters into base weights, streaming, exactly as PEFT computes them; or combine
adapters into a new one. See ``docs/merge.md``."""

from .methods import METHODS, get_method
from .pipeline import MergeResult, merge_adapter, merge_model, resolve_base
from .plan import DTYPES, MergeOptions, plan_merge
from .verify import VerifyReport

__all__ = ["METHODS", "DTYPES", "MergeOptions", "MergeResult", "VerifyReport", "get_method", "merge_adapter",
           "merge_model", "plan_merge", "resolve_base"]
