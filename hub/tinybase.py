"""The embedded default base model: a tiny Llama built locally, so nothing is ever downloaded.

Tests, the demo and ``adapterhub serve`` without ``--base`` all use it. It is written in plain
Hugging Face format (``config.json``, ``model.safetensors``, ``tokenizer.json``), so every code path
that handles it is the same one that handles a real model folder or Hub id.

The tokenizer is byte-level (256 byte tokens plus a few specials): it needs no training data, can
encode any text, and keeps the embedding tiny.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .atomic_file import staged_folder

__all__ = ["TinyBaseSpec", "build_tiny_base", "DEFAULT_TINY_BASE_NAME", "CHAT_TEMPLATE"]

DEFAULT_TINY_BASE_NAME = "adapterhub/tiny-llama"

SPECIAL_TOKENS = ("<|pad|>", "<|bos|>", "<|eos|>")

# A plain, documented template: role headers in text, messages joined by a newline, the assistant
# turn closed by <|eos|>. The {% generation %} markers change nothing in the text; they tell TRL
# (``assistant_only_loss``) which tokens are the assistant's, so every assistant turn of a
# conversation is learned, end token included. A conversation ends on the assistant's <|eos|>, so a
# training row is exactly prompt + response + <|eos|>.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if not loop.first %}{{ '\n' }}{% endif %}"
    "{{ '### ' + message['role'] + ':\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}{{ message['content'] }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '\n### assistant:\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TinyBaseSpec:
    """Shape of the tiny base. The defaults give ~0.9 M parameters: small enough for a 2-core CI,
    big enough to learn the demo tasks.

    Args:
        hidden_size: width of the residual stream.
        intermediate_size: width of the MLP.
        num_hidden_layers: number of decoder layers.
        num_attention_heads: query heads.
        num_key_value_heads: key/value heads (fewer than query heads: grouped-query attention, as in
            current Llamas, so adapters see non-square k/v projections).
        max_position_embeddings: longest sequence the model accepts.
        seed: torch seed for the random initialisation; same seed, same bytes.
    """

    hidden_size: int = field(default=128, metadata={"help": "residual width"})
    intermediate_size: int = field(default=256, metadata={"help": "MLP width"})
    num_hidden_layers: int = field(default=4, metadata={"help": "decoder layers"})
    num_attention_heads: int = field(default=4, metadata={"help": "query heads"})
    num_key_value_heads: int = field(default=2, metadata={"help": "key/value heads"})
    max_position_embeddings: int = field(default=512, metadata={"help": "context length"})
    seed: int = field(default=0, metadata={"help": "initialisation seed"})


def _byte_level_tokenizer():
    """A fast tokenizer whose vocabulary is exactly the 256 bytes (GPT-2's byte-to-char map)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    # Token id == byte value for ids < 256, so a person can read token ids.
    vocab = {_gpt2_byte_char(b): b for b in range(256)}
    for i, tok in enumerate(SPECIAL_TOKENS):
        vocab[tok] = 256 + i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def _gpt2_byte_char(b: int) -> str:
    """GPT-2's reversible byte -> printable character map (what ``ByteLevel`` uses)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    if b in printable:
        return chr(b)
    shift = sum(1 for x in range(b) if x not in printable)
    return chr(256 + shift)


def build_tiny_base(out_dir: str | os.PathLike, spec: TinyBaseSpec | None = None, *, force: bool = False) -> Path:
    """Write the tiny base model to ``out_dir`` and return its path.

    The folder is written beside the target and renamed into place, so an interrupted build never
    leaves a half model that later loads with missing weights.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    spec = spec or TinyBaseSpec()
    out = Path(out_dir)
    if out.exists():
        if not force and any(out.iterdir()):
            raise FileExistsError(f"{out} exists and is not empty (use --force to replace it)")

    n_vocab = 256 + len(SPECIAL_TOKENS)
    config = LlamaConfig(
        vocab_size=n_vocab,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        pad_token_id=256,
        bos_token_id=257,
        eos_token_id=258,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
    )
    config.name_or_path = DEFAULT_TINY_BASE_NAME
    with torch.random.fork_rng():
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = 256
    model.generation_config.bos_token_id = 257
    model.generation_config.eos_token_id = 258

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_byte_level_tokenizer(),
        pad_token="<|pad|>",
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        model_max_length=spec.max_position_embeddings,
    )
    tokenizer.chat_template = CHAT_TEMPLATE

    with staged_folder(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "adapterhub_tiny_base.json").write_text(json.dumps(asdict(spec), indent=2, sort_keys=True) + "\n")
    return out

