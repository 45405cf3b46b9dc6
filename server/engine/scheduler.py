"""Continuous batching: one thread owns the model and decodes every running request in one loop.

Between two decode steps the loop admits queued requests while the batch has room: it runs their
prompts through the model in one prefill pass and joins their key/value cache to the running
batch's (``kv_cache``). Each decode step feeds every row its last token; rows that finish leave at
once, so a short request never waits for a long one.

One batch mixes adapters freely: before each forward the LoRA slot bank is told which slot each row
uses (``lora.slot_bank``), and a soft-prompt row has its virtual tokens prepended at prefill, after
which it is an ordinary row whose cache starts with those tokens.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import torch

from .detokenizer import StopText
from .kv_cache import BatchCache, left_pad_prompts
from .lora.row_plan import BASE_ROW
from .request import GenerationRequest, TokenEvent
from .sampler import new_generator, sample

if TYPE_CHECKING:
    from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["Scheduler", "EngineStats"]

log = logging.getLogger(__name__)

_STOP = object()


@dataclass
class EngineStats:
    """What the loop did, for ``/metrics``: decode steps by batch size (bounded: one count per size)."""

    steps: int = 0
    prefills: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)
    generated_tokens: int = 0

    def observe_step(self, size: int) -> None:
        self.steps += 1
        self.batch_sizes[size] = self.batch_sizes.get(size, 0) + 1


@dataclass
class _Row:
    """A request while it is in the batch."""

    request: GenerationRequest
    text: StopText
    generator: torch.Generator | None
    next_position: int = 0
    last_token: int = -1
    generated: list[int] = field(default_factory=list)

    @property
    def slot(self) -> int:
        handle = self.request.lora
        return BASE_ROW if handle is None else handle.slot


class Scheduler:
    """The engine thread: admission, prefill, decode steps, and rows leaving the batch.

    Args:
        model, tokenizer: the base model (its linear layers possibly wrapped by a LoRA slot bank).
        max_batch_size: most rows decoded together.
        set_rows: tells the LoRA slot bank which slot each row of the next forward uses; ``None``
            when the model serves no LoRA.
        release: unpins a finished request's adapter.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, max_batch_size: int,
                 set_rows: Callable[[Sequence[int]], None] | None,
                 release: Callable[[GenerationRequest], None]) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self._set_rows = set_rows
        self._release = release
        self._embed = model.get_input_embeddings()
        self._device = self._embed.weight.device
        self.eos_ids = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else min(self.eos_ids, default=0)
        self.stats = EngineStats()
        self._queue: queue.Queue[GenerationRequest | object] = queue.Queue()
        self._waiting: list[GenerationRequest] = []
        self._rows: list[_Row] = []
        self._batch = BatchCache(self._device)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # --- any thread ----------------------------------------------------------------------------

    @property
    def running(self) -> int:
        return len(self._rows)

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="adapterhub-engine", daemon=True)
                self._thread.start()

    def stop(self, timeout: float) -> None:
        """Finish the loop; requests still queued or running end with finish reason ``error``."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout)

    def enqueue(self, request: GenerationRequest) -> bool:
        """Queue ``request`` for the loop; False when the loop is not running."""
        if self._thread is None:
            return False
        self._queue.put(request)
        return True

    # --- the engine thread -----------------------------------------------------------------------

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                if not self._take_new(block=not self._rows and not self._waiting):
                    break
                try:
                    self._admit()
                    if self._rows:
                        self._decode_step()
                except Exception as e:  # a bug must not kill the loop: fail the batch, keep serving
                    log.exception("engine step failed")
                    self._fail_all(f"internal error: {type(e).__name__}: {e}")
        self._fail_all("the server is shutting down")
        for request in self._drain():
            self._finish_request(request, TokenEvent(None, "", "error", error="the server is shutting down"))

    def _take_new(self, block: bool) -> bool:
        """Move queued requests into ``_waiting``; False once ``stop`` was called."""
        try:
            item = self._queue.get(block=block)
        except queue.Empty:
            return True
        while True:
            if item is _STOP:
                return False
            self._waiting.append(item)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return True

    def _drain(self) -> Iterable[GenerationRequest]:
        waiting, self._waiting = self._waiting, []
        yield from waiting
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                yield item

    def _admit(self) -> None:
        """Prefill as many waiting requests as the batch has room for and join them to it."""
        room = self.max_batch_size - len(self._rows)
        joining: list[GenerationRequest] = []
        while self._waiting and len(joining) < room:
            request = self._waiting.pop(0)
            if request.stream.cancelled:
                self._finish_request(request, TokenEvent(None, "", "cancelled"))
            else:
                joining.append(request)
        if not joining:
            return
        try:
            rows = [_Row(r, StopText(self.tokenizer, r.params.stop), new_generator(r.params, self._device))
                    for r in joining]
            pieces = [self._prompt_embeddings(r.request) for r in rows]
            pad = self._embed(torch.tensor([self._pad_id], device=self._device))[0]
            embeds, mask, positions = left_pad_prompts(pieces, pad)
            for row, piece in zip(rows, pieces):
                row.next_position = piece.shape[0]
            cache = BatchCache.empty()
            logits = self._forward(embeds, mask, positions, cache, [r.slot for r in rows])
        except Exception as e:  # not in the batch yet, so _fail_all would not reach them
            for request in joining:
                self._finish_request(request, TokenEvent(None, "", "error", error=f"{type(e).__name__}: {e}"))
            raise
        self.stats.prefills += 1
        offset = len(self._rows)
        self._batch.join(cache, mask)
        self._rows = self._rows + rows
        self._advance(logits, offset)

    def _decode_step(self) -> None:
        tokens = torch.tensor([[r.last_token] for r in self._rows], device=self._device)
        mask = self._batch.step_mask()
        positions = torch.tensor([[r.next_position] for r in self._rows], device=self._device)
        self.stats.observe_step(len(self._rows))
        logits = self._forward(self._embed(tokens), mask, positions, self._batch.cache, [r.slot for r in self._rows])
        self._batch.mask = mask
        for r in self._rows:
            r.next_position += 1
        self._advance(logits, 0)

    def _forward(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: DynamicCache,
                 slots: list[int]) -> torch.Tensor:
        """One pass of the model over ``embeds``, appending to ``cache``; the last position's logits."""
        if self._set_rows is not None:
            # Same rows as the previous step: the slot bank keeps the weights it gathered for them.
            self._set_rows(slots)
        out = self.model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :].float()

    def _prompt_embeddings(self, request: GenerationRequest) -> torch.Tensor:
        ids = torch.tensor(request.prompt_ids, device=self._device)
        embeds = self._embed(ids)
        prompt = request.soft_prompt
        if prompt is not None:
            embeds = torch.cat([prompt.embeddings.to(embeds.dtype), embeds], 0)
        return embeds

    def _advance(self, logits: torch.Tensor, offset: int) -> None:
        """Pick the next token of rows ``offset:`` (whose ``logits`` these are), emit it, and let
        finished rows leave the batch."""
        rows = self._rows[offset:]
        tokens = sample(logits, [(row.request.params, row.generator) for row in rows])
        done = {offset + i for i, (row, token) in enumerate(zip(rows, tokens)) if self._emit(row, token) is not None}
        if done:
            self._keep([i for i in range(len(self._rows)) if i not in done])

    def _emit(self, row: _Row, token: int) -> str | None:
        """Send ``token`` to the row's client; return the finish reason once the row is done."""
        request = row.request
        if request.stream.cancelled:
            self._finish_row(row, None, "", "cancelled")
            return "cancelled"
        row.generated.append(token)
        row.last_token = token
        self.stats.generated_tokens += 1
        if token in self.eos_ids:
            self._finish_row(row, token, row.text.finish(), "stop")
            return "stop"
        text, stopped = row.text.add(token)
        if stopped:
            self._finish_row(row, token, text, "stop")
            return "stop"
        if len(row.generated) >= request.params.max_tokens:
            self._finish_row(row, token, text + row.text.finish(), "length")
            return "length"
        request.stream.put(TokenEvent(token, text))
        return None

    def _finish_row(self, row: _Row, token: int | None, text: str, reason: str) -> None:
        self._finish_request(
            row.request,
            TokenEvent(token, text, reason, prompt_tokens=len(row.request.prompt_ids),
                       completion_tokens=len(row.generated)),
        )

    def _finish_request(self, request: GenerationRequest, event: TokenEvent) -> None:
        self._release(request)
        request.stream.put(event)

    def _keep(self, indices: list[int]) -> None:
        self._rows = [self._rows[i] for i in indices]
        self._batch.keep(indices)

    def _fail_all(self, message: str) -> None:
        for row in self._rows:
            self._finish_request(row.request, TokenEvent(None, "", "error", error=message))
        self._keep([])


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids: set[int] = set()
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids
