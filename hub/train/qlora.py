"""QLoRA's base: the model loaded with 4-bit nf4 weights (bitsandbytes) and made ready for k-bit training.

bitsandbytes runs nf4 on CPU as well as CUDA, so the same path is used everywhere. The linear
layers of the decoder are quantized (with double quantization of the scales); the embeddings and
``lm_head`` stay in full precision, as in the QLoRA paper. ``prepare_model_for_kbit_training``
freezes the base, casts the remaining non-quantized parameters to fp32 for stable gradients and
enables input gradients so gradients flow to the LoRA weights through the frozen 4-bit layers.
"""

from __future__ import annotations

from typing import Any

__all__ = ["compute_dtype", "load_4bit_base", "quantization_summary"]


def compute_dtype(device: str):
    """bf16 where CUDA supports it, else fp32 (bitsandbytes on CPU computes in fp32)."""
    import torch

    return torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32


def quantization_summary(device: str) -> dict[str, Any]:
    """How the base was quantized, for the registry's training record."""
    return {"load_in_4bit": True, "quant_type": "nf4", "double_quant": True,
            "compute_dtype": str(compute_dtype(device)).removeprefix("torch.")}


def load_4bit_base(base: str, device: str, *, gradient_checkpointing: bool = False) -> Any:
    """Load ``base`` with nf4 weights on ``device`` and prepare it for training adapters on top."""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(device),
    )
    model = AutoModelForCausalLM.from_pretrained(base, quantization_config=quant, device_map={"": device})
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    if device == "cpu":
        _return_freed_memory()
    return model


def _return_freed_memory() -> None:
    """Give the full-precision weights freed by quantization back to the OS.

    On CPU the checkpoint is read in full precision and quantized tensor by tensor; glibc keeps the
    freed buffers in its arenas, so without a trim the process stays as large as an unquantized
    load and QLoRA's memory saving never shows. Elsewhere (no glibc) this does nothing.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name:
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):
            pass
