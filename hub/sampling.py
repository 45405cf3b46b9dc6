"""How one request decodes: ``SamplingParams``, every field checked against a numerically safe range.

A value the library hands the engine (``adapterhub.server``'s ``Engine.submit`` takes it; so does
anything written against the engine's protocol, such as ``evaluation.generate``), so it lives here
and the server imports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

from .echo import echo

__all__ = ["SamplingParams", "MIN_TEMPERATURE", "MAX_TEMPERATURE", "MAX_STOP_STRINGS", "MAX_STOP_CHARS",
           "MAX_LOGPROBS", "MAX_PENALTY", "MAX_LOGIT_BIAS", "MAX_LOGIT_BIAS_TOKENS"]

# Below 0.01, logits / temperature overflows float32 for ordinary logits (1e-45 turned every
# probability into NaN); vLLM draws the line at the same place. 2 is OpenAI's documented maximum.
MIN_TEMPERATURE = 1e-2
MAX_TEMPERATURE = 2.0
# Every decode step searches each stop string in the answer's tail: bound the work one request adds.
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
# Alternatives reported per token: OpenAI's chat maximum (and vLLM's default ``max_logprobs``).
MAX_LOGPROBS = 20
# OpenAI's documented ranges for presence/frequency penalties and logit biases.
MAX_PENALTY = 2.0
MAX_LOGIT_BIAS = 100.0
# Biased tokens are added to the row's logits at every step: bound the work one request adds.
MAX_LOGIT_BIAS_TOKENS = 1024
_SEED_BOUND = 1 << 128
_SEED_MODULUS = 1 << 64


@dataclass(frozen=True)
class SamplingParams:
    """How one request decodes.

    Args:
        max_tokens: most tokens to generate (at least 1).
        temperature: 0 decodes greedily (argmax); above 0 samples from softmax(logits / temperature).
        top_p: nucleus sampling: sample only from the smallest set of tokens whose probability
            reaches ``top_p`` (1 keeps every token).
        seed: seeds the request's own random generator, so a sampled answer is reproducible
            whatever else shares the batch. Any integer below 2**128 in absolute value, stored
            reduced modulo 2**64 (the generator's seed space), so callers may offset it freely.
        stop: strings that end the answer; the matched string is not returned.
        logprobs: report each generated token's log-probability with this many top alternatives
            (0 to ``MAX_LOGPROBS``); ``None`` reports none.
        prompt_logprobs: the same for every prompt token after the first (``echo``); ``None``
            keeps the prefill cheap (only its last position's logits are computed).
        presence_penalty, frequency_penalty: OpenAI's penalties on tokens already generated:
            ``logit[t] -= frequency_penalty * count[t] + presence_penalty * (count[t] > 0)``.
        logit_bias: ``(token id, bias)`` pairs added to the row's logits before every choice
            (a mapping is accepted and stored as sorted pairs).

    Log-probabilities are those of the raw model: log-softmax of its logits in float32, before
    penalties, biases, temperature and top_p (vLLM's default ``logprobs_mode``, ``raw_logprobs``).

    Every field is checked against a numerically safe range; a bad one raises ``ValueError`` naming it.
    """

    max_tokens: int = field(default=16, metadata={"help": "most tokens to generate"})
    temperature: float = field(default=1.0, metadata={"help": "0 = greedy"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus mass, (0, 1]"})
    seed: int | None = field(default=None, metadata={"help": "per-request random seed"})
    stop: tuple[str, ...] = field(default=(), metadata={"help": "stop strings"})
    logprobs: int | None = field(default=None, metadata={"help": "top alternatives per generated token"})
    prompt_logprobs: int | None = field(default=None, metadata={"help": "top alternatives per prompt token"})
    presence_penalty: float = field(default=0.0, metadata={"help": "[-2, 2]"})
    frequency_penalty: float = field(default=0.0, metadata={"help": "[-2, 2]"})
    logit_bias: tuple[tuple[int, float], ...] = field(default=(), metadata={"help": "token id -> [-100, 100]"})

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {echo(self.max_tokens)}")
        if not _finite(self.temperature) or not (
                self.temperature == 0 or MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE):
            raise ValueError(f"temperature must be 0 (greedy) or a number between {MIN_TEMPERATURE:g} and "
                             f"{MAX_TEMPERATURE:g}, got {echo(self.temperature)}")
        if not _finite(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be a number in (0, 1], got {echo(self.top_p)}")
        if self.seed is not None:
            if isinstance(self.seed, bool) or not isinstance(self.seed, int) or abs(self.seed) >= _SEED_BOUND:
                raise ValueError(f"seed must be an integer with absolute value below 2**128, got {echo(self.seed)}")
            object.__setattr__(self, "seed", self.seed % _SEED_MODULUS)
        if not isinstance(self.stop, (tuple, list)):
            raise ValueError(f"stop must be a list of strings, got {type(self.stop).__name__}")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise ValueError(f"stop takes at most {MAX_STOP_STRINGS} strings, got {len(self.stop)}")
        if not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in self.stop):
            raise ValueError(f"stop must be non-empty strings of at most {MAX_STOP_CHARS} characters")
        object.__setattr__(self, "stop", tuple(self.stop))
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and (not _integer(value) or not 0 <= value <= MAX_LOGPROBS):
                raise ValueError(f"{name} must be an integer between 0 and {MAX_LOGPROBS}, got {echo(value)}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _finite(value) or not -MAX_PENALTY <= value <= MAX_PENALTY:
                raise ValueError(f"{name} must be a number between {-MAX_PENALTY:g} and {MAX_PENALTY:g}, "
                                 f"got {echo(value)}")
        object.__setattr__(self, "logit_bias", _logit_bias(self.logit_bias))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def adjusts_logits(self) -> bool:
        """Whether the row's logits change before its token is chosen (penalties or biases)."""
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias)


def _integer(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _logit_bias(bias: object) -> tuple[tuple[int, float], ...]:
    pairs = list(bias.items()) if isinstance(bias, Mapping) else bias
    if not isinstance(pairs, (tuple, list)) or not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in pairs):
        raise ValueError("logit_bias must map token ids to numbers")
    if len(pairs) > MAX_LOGIT_BIAS_TOKENS:
        raise ValueError(f"logit_bias takes at most {MAX_LOGIT_BIAS_TOKENS} tokens, got {len(pairs)}")
    for token, value in pairs:
        if not _integer(token) or token < 0:
            raise ValueError(f"logit_bias keys must be token ids (non-negative integers), got {echo(token)}")
        if not _finite(value) or not -MAX_LOGIT_BIAS <= value <= MAX_LOGIT_BIAS:
            raise ValueError(f"logit_bias values must be numbers between {-MAX_LOGIT_BIAS:g} and "
                             f"{MAX_LOGIT_BIAS:g}, got {echo(value)}")
    if len({token for token, _ in pairs}) < len(pairs):
        raise ValueError("logit_bias names a token twice")
    return tuple(sorted((int(t), float(v)) for t, v in pairs))


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
