"""Token ids -> the text a client may see, with stop strings.

``StopText`` holds back whatever could still turn into a stop string or an incomplete UTF-8
character, so a streaming client never sees text that a later token takes back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["StopText"]


class StopText:
    """Incremental detokenization with stop strings.

    Decoding the whole answer at every step (answers are at most the context length) keeps
    multi-byte characters and tokenizer clean-ups right; only the released prefix is ever sent.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: tuple[str, ...] = ()) -> None:
        self._tokenizer = tokenizer
        self._stop = stop
        self._ids: list[int] = []
        self._released = 0
        self.text = ""

    def add(self, token_id: int) -> tuple[str, bool]:
        """Append a token; return (newly released text, whether a stop string was hit)."""
        self._ids.append(token_id)
        full = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        hit = self._find_stop(full)
        if hit is not None:
            return self._release(full[:hit], len(full[:hit])), True
        if full.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next byte
            return "", False
        return self._release(full, len(full) - self._pending_stop_prefix(full)), False

    def finish(self) -> str:
        """Release what was held back when the answer ends without a stop string."""
        full = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        return self._release(full, len(full))

    def _release(self, full: str, upto: int) -> str:
        upto = max(upto, self._released)
        out = full[self._released:upto]
        self._released = upto
        self.text = full[:upto]
        return out

    def _find_stop(self, full: str) -> int | None:
        start = max(0, self._released - max((len(s) for s in self._stop), default=0))
        hits = [i for i in (full.find(s, start) for s in self._stop) if i >= 0]
        return min(hits) if hits else None

    def _pending_stop_prefix(self, full: str) -> int:
        """Length of the longest suffix of ``full`` that begins some stop string."""
        best = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(full)), best, -1):
                if full.endswith(s[:k]):
                    best = k
                    break
        return best
