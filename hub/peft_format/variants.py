"""Every LoRA variant or setting PEFT can save, once, with whether adapterhub can merge it and serve it.

The merger folds weights, so it takes anything whose effect is a change of base tensors; the
batched server adds one gathered ``scale * B @ A`` per wrapped linear layer to a base shared by
every request, so it takes only plain LoRA. Anything the two cannot compute exactly is refused
with the variant named, never silently ignored. A variant is recognised by its ``LoraConfig``
setting and, where the config may not say so, by the tensors it leaves in the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..errors import UnsupportedAdapter
from .adapter_config import AdapterConfig
from .keys import LORA_PAIRS, GroupedTensors

__all__ = ["LoraVariant", "LORA_VARIANTS", "variants_in_use", "check_mergeable", "check_servable"]

# What a variant left in an adapter, said for a person ("use_dora is set", "tensor x.lora_A"), or None.
Detector = Callable[[Mapping[str, Any], GroupedTensors[Any]], "str | None"]


@dataclass(frozen=True)
class LoraVariant:
    """One row of the table: ``merge``/``serve`` say whether each component computes it exactly,
    the notes say how, or why not."""

    name: str
    merge: bool
    serve: bool
    merge_note: str
    serve_note: str
    detect: Detector


def _setting(*keys: str, off: tuple[Any, ...] = ()) -> Detector:
    def detect(config: Mapping[str, Any], tensors: GroupedTensors[Any]) -> str | None:
        for key in keys:
            value = config.get(key)
            if value and value not in off:
                return f"{key}={value!r}" if off else f"{key} is set"
        return None

    return detect


def _slot(*slots: str) -> Detector:
    def detect(config: Mapping[str, Any], tensors: GroupedTensors[Any]) -> str | None:
        for module, parts in tensors.lora.items():
            found = next((s for s in parts if s in slots), None)
            if found is not None:
                return f"tensor {module}.{found}"
        return None

    return detect


def _either(first: Detector, second: Detector) -> Detector:
    return lambda config, tensors: first(config, tensors) or second(config, tensors)


def _embedding_dora(config: Mapping[str, Any], tensors: GroupedTensors[Any]) -> str | None:
    return next((f"module {m}" for m, p in tensors.lora.items()
                 if LORA_PAIRS[1][0] in p and "lora_magnitude_vector" in p), None)


def _saved_whole(config: Mapping[str, Any], tensors: GroupedTensors[Any]) -> str | None:
    return next((f"tensor {name}" for name in tensors.saved), None)


_NOT_IMPLEMENTED = "not implemented by adapterhub"

# Checked in this order, so an adapter is refused for the setting that explains the most first.
LORA_VARIANTS: tuple[LoraVariant, ...] = (
    LoraVariant("rank_pattern / alpha_pattern", True, True,
                "per-module rank and alpha, matched as PEFT's get_pattern_key (lora_scale)",
                "per-module rank and alpha, folded into each slot's B (lora_scale)",
                _setting("rank_pattern", "alpha_pattern")),
    LoraVariant("rsLoRA (use_rslora)", True, True, "scale alpha / sqrt(r) (lora_scale)",
                "scale alpha / sqrt(r) (lora_scale)", _setting("use_rslora")),
    LoraVariant("DoRA on an embedding", False, False,
                "PEFT's DoRA embedding merge is not implemented by adapterhub's merger",
                "neither embedding LoRA nor DoRA is served", _embedding_dora),
    LoraVariant("DoRA (use_dora)", True, False,
                "folded as PEFT merges it, m / ||W + dW||_row * (W + dW); alone only, a combination of DoRA "
                "adapters has no defined meaning",
                "rescales each output feature by a norm of the adapted weight, which a gathered scale * B @ A "
                "update does not compute",
                _either(_setting("use_dora"), _slot("lora_magnitude_vector"))),
    LoraVariant("fan_in_fan_out (Conv1D-style weights)", True, False,
                "the pair is folded transposed, into the checkpoint's in x out layout (GPT-2's Conv1D)",
                "the server wraps torch Linear layers (out x in) only",
                _setting("fan_in_fan_out")),
    LoraVariant("LoRA bias (lora_bias)", True, False,
                "scale * lora_B.bias is added to the base layer's bias, which must exist",
                "the gathered update has no bias term",
                _either(_setting("lora_bias"), _slot("lora_A.bias", "lora_B.bias"))),
    LoraVariant("trained biases (bias)", True, False,
                "the saved biases replace the base's",
                "saved biases would replace those of a base every request shares",
                _setting("bias", off=("none",))),
    LoraVariant("modules_to_save", True, False,
                "the saved modules replace the base's tensors",
                "whole replaced modules cannot live in a LoRA slot over a shared base",
                _setting("modules_to_save")),
    LoraVariant("megatron_config", True, False,
                "Megatron's parallel linears add the same scale * B @ A; shapes are checked against the base",
                "LoRA for Megatron-LM parallel layers; the server wraps torch Linear layers only",
                _setting("megatron_config")),
    LoraVariant("ensure_weight_tying", False, True,
                "adapters tied across input and output embeddings are " + _NOT_IMPLEMENTED + "'s merger",
                "it only ties embedding LoRA or saved embeddings, which are refused on their own",
                _setting("ensure_weight_tying")),
    LoraVariant("layer_replication", False, False,
                "layer replication changes the architecture", "layer replication changes the architecture",
                _setting("layer_replication")),
    LoraVariant("trainable_token_indices", False, False,
                "trainable token rows are " + _NOT_IMPLEMENTED, "trainable token rows are " + _NOT_IMPLEMENTED,
                _setting("trainable_token_indices")),
    LoraVariant("target_parameters (LoRA on raw parameters)", False, False,
                "LoRA on raw parameters is " + _NOT_IMPLEMENTED, "LoRA on raw parameters is " + _NOT_IMPLEMENTED,
                _setting("target_parameters")),
    LoraVariant("aLoRA (alora_invocation_tokens)", False, False,
                "activated LoRA only applies after its invocation tokens: not a change of weights",
                "activated LoRA only applies after its invocation tokens; a slot applies to every token",
                _setting("alora_invocation_tokens")),
    LoraVariant("QALoRA (use_qalora)", False, False,
                "QA-LoRA pools its input and only folds into quantized group parameters",
                "QA-LoRA pools its input before A", _setting("use_qalora")),
    LoraVariant("block-diagonal LoRA (use_bdlora)", False, False, _NOT_IMPLEMENTED, _NOT_IMPLEMENTED,
                _setting("use_bdlora")),
    LoraVariant("MonteCLoRA (monteclora_config)", False, False, _NOT_IMPLEMENTED, _NOT_IMPLEMENTED,
                _setting("monteclora_config")),
    LoraVariant("VeLoRA (velora_config)", False, False, _NOT_IMPLEMENTED, _NOT_IMPLEMENTED,
                _setting("velora_config")),
    LoraVariant("KaSA (kasa_config)", False, False, _NOT_IMPLEMENTED, _NOT_IMPLEMENTED, _setting("kasa_config")),
    LoraVariant("Arrow routing (arrow_config)", False, False,
                "Arrow picks adapters per token and has no single merged weight",
                "Arrow picks adapters per token; a slot holds one adapter", _setting("arrow_config")),
    LoraVariant("embedding LoRA", True, False,
                "folded transposed into the embedding matrix",
                "the server wraps linear layers only, not embeddings",
                _slot(*LORA_PAIRS[1])),
    LoraVariant("tensors saved whole (modules_to_save, biases, embedding base layers)", True, False,
                "each replaces the base tensor of the same name",
                "a LoRA slot holds lora_A / lora_B weights only", _saved_whole),
)


def variants_in_use(config: AdapterConfig, tensors: GroupedTensors[Any]) -> list[tuple[LoraVariant, str]]:
    """The table's rows this adapter uses, each with what gave it away (a setting of the file, read
    from ``config.raw``: most are settings adapterhub never computes with, or a tensor)."""
    found = []
    for variant in LORA_VARIANTS:
        evidence = variant.detect(config.raw, tensors)
        if evidence is not None:
            found.append((variant, evidence))
    return found


def check_mergeable(config: AdapterConfig, tensors: GroupedTensors[Any], where: str) -> None:
    """Raise ``UnsupportedAdapter`` for the first variant the merger cannot fold exactly."""
    for variant, evidence in variants_in_use(config, tensors):
        if not variant.merge:
            raise UnsupportedAdapter(f"{where}: cannot merge {variant.name}, {evidence}: {variant.merge_note}")


def check_servable(config: AdapterConfig, tensors: GroupedTensors[Any], where: str) -> None:
    """Raise ``UnsupportedAdapter`` for the first variant the batched LoRA server cannot compute exactly."""
    for variant, evidence in variants_in_use(config, tensors):
        if not variant.serve:
            raise UnsupportedAdapter(
                f"{where}: {variant.name} is not supported by the batched LoRA server ({evidence}): {variant.serve_note}"
            )
