"""Continuous batching: one thread owns the model and decodes every running request in one loop.

Between two decode steps the loop admits queued requests while the batch has room, round-robin
across the groups they belong to (the answers of one HTTP request are one group), so no caller's
many answers take the batch while another's wait (``_take_fair_share``); it runs their
prompts through the model in one prefill pass and joins their key/value cache to the running
batch's (``kv_cache``). Each decode step feeds every row its last token; rows that finish leave at
once, so a short request never waits for a long one.

One batch mixes adapters freely: before each forward the LoRA slot bank is told which slot each row
uses (``lora.slot_bank``), and a soft-prompt row has its virtual tokens prepended at prefill, after
which it is an ordinary row whose cache starts with those tokens.

A request held to a grammar (``structured``: a JSON schema, a regex, choices) brings its compiled
grammar; its row gets a matcher of its own when it is prefilled. Each time the rows' tokens are
chosen, the constrained rows' token masks are filled and applied to a copy of the logits
(``sample``), and the constrained rows' matchers then accept their tokens; a row whose grammar is
complete can only choose a stop token, and finishes with ``stop``. Free rows share the batch
unchanged.

Log-probabilities (``logprobs``) are computed only for the rows that ask for them. A prefill keeps
only its last position's logits, except for requests that ask for their prompt's log-probabilities
(``echo``): each is prefilled alone with every position's logits kept (a prompt's positions times
the vocabulary, not a batch's), so the others never pay for them.

Rows fail alone. A row whose logits are NaN or infinite (an adapter that overflows), whose draw
fails or whose text cannot be decoded ends with its own error event (an ``ErrorCode``) and leaves
the batch; the others never see it, since every operation of the forward pass is per row (given
finite adapter weights: the side-by-side LoRA update multiplies other rows' zeros by them). A prefill
that raises is retried request by request, so only the request that breaks it fails. Only a decode
step that raises, a fault of the shared forward pass that no single row explains (and that may
have left the batch's cache half-written), still ends every running row, with ``internal_error``.

The queue of requests waiting for a slot in the batch is bounded (``enqueue`` answers ``FULL``);
cancelled requests leave the queue and the batch before the next step, releasing their adapters.
"""

from __future__ import annotations

import enum
import functools
import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import torch

from .detokenizer import StopText
from .kv_cache import BatchCache, left_pad_prompts, place_prefixes
from .logprobs import chosen_logprobs, prompt_logprobs
from .lora.row_plan import BASE_ROW
from .prefix_cache import PrefixCache, PrefixHit, sequence_items
from .request import ErrorCode, GenerationRequest, RowFailure, TokenEvent, TokenLogprob
from .sampler import new_generator, sample
from .structured.constraint import RowConstraint, StepMasks

if TYPE_CHECKING:
    from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
    from transformers.cache_utils import Cache

__all__ = ["Scheduler", "EngineStats", "Enqueued"]

log = logging.getLogger(__name__)

_STOP = object()
_SHUTTING_DOWN = RowFailure(ErrorCode.SHUTTING_DOWN, "the server is shutting down")
_OFF_GRAMMAR = RowFailure(ErrorCode.SAMPLING_FAILED, "sampled a token its grammar does not allow")


class Enqueued(enum.Enum):
    """What ``Scheduler.enqueue`` did with a request."""

    QUEUED = "queued"
    FULL = "full"  # the queue holds ``max_queued`` requests already
    STOPPED = "stopped"  # the loop is not running


@dataclass
class EngineStats:
    """What the loop did, for ``/metrics``: decode steps by batch size (bounded: one count per size),
    requests that failed by ``ErrorCode`` (bounded: one count per code), cancelled, and refused
    because the queue was full."""

    steps: int = 0
    prefills: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)
    generated_tokens: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    cancelled: int = 0
    rejected_queue_full: int = 0

    def observe_step(self, size: int) -> None:
        self.steps += 1
        self.batch_sizes[size] = self.batch_sizes.get(size, 0) + 1

    def observe_failure(self, code: ErrorCode) -> None:
        self.failed[code.value] = self.failed.get(code.value, 0) + 1


@dataclass
class _Row:
    """A request while it is in the batch."""

    request: GenerationRequest
    text: StopText
    generator: torch.Generator | None
    joined_at: float = field(default_factory=time.monotonic)
    next_position: int = 0
    last_token: int = -1
    generated: list[int] = field(default_factory=list)
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None  # sent with the first token, then dropped
    constraint: RowConstraint | None = None  # the row's place in its grammar, when it has one
    failed: bool = False  # ended with an error: nothing it computed is kept for reuse
    # what its cached prefixes are keyed under, fixed at its prefill (a finished row's adapter is
    # unpinned before its answer's KV is kept)
    prefix_root: bytes | None = None
    prompt_items: list[int] = field(default_factory=list)  # ``prefix_cache.sequence_items`` of its prompt

    @property
    def slot(self) -> int:
        handle = self.request.lora
        return BASE_ROW if handle is None else handle.slot


@dataclass
class _Prefilled:
    """Rows whose prompts went through the model, with their cache and first logits, not yet in the batch."""

    rows: list[_Row]
    cache: DynamicCache
    mask: torch.Tensor
    logits: torch.Tensor


class Scheduler:
    """The engine thread: admission, prefill, decode steps, and rows leaving the batch.

    Args:
        model, tokenizer: the base model (its linear layers possibly wrapped by a LoRA slot bank).
        max_batch_size: most rows decoded together.
        max_queued: most requests waiting for a place in the batch.
        set_rows: tells the LoRA slot bank which slot each row of the next forward uses; ``None``
            when the model serves no LoRA.
        release: unpins a finished request's adapter.
        prefix_cache: where prefilled prefixes are kept and found (``prefix_cache``); ``None``
            prefills every prompt whole.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, max_batch_size: int,
                 max_queued: int, set_rows: Callable[[Sequence[int]], None] | None,
                 release: Callable[[GenerationRequest], None], prefix_cache: PrefixCache | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_queued = max_queued
        self._set_rows = set_rows
        self._release = release
        self.prefix_cache = prefix_cache
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
        self._queued = 0  # requests in _queue or _waiting; changed under _lock
        self._mean_request_s = 1.0  # moving average of a request's time in the batch

    # --- any thread ----------------------------------------------------------------------------

    @property
    def running(self) -> int:
        return len(self._rows)

    @property
    def queued(self) -> int:
        """Requests waiting for a place in the batch."""
        return self._queued

    def retry_after_s(self) -> float:
        """About how long until the queue has room: the batches ahead of a new request, each
        taking a typical request's time."""
        batches_ahead = self._queued / self.max_batch_size
        return max(1.0, batches_ahead * self._mean_request_s)

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

    def has_room(self) -> bool:
        return self._queued < self.max_queued

    def is_alive(self) -> bool:
        """Whether the loop's thread runs (false before ``start``, after ``stop``, or if it died)."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def count_refusal(self) -> None:
        """Record a request refused because the queue was full (HTTP threads race here)."""
        with self._lock:
            self.stats.rejected_queue_full += 1

    def enqueue(self, request: GenerationRequest) -> Enqueued:
        """Queue ``request`` for the loop, unless the loop is not running or the queue is full."""
        with self._lock:
            if self._thread is None:
                return Enqueued.STOPPED
            if self._queued >= self.max_queued:
                return Enqueued.FULL
            self._queued += 1
            self._queue.put(request)
        return Enqueued.QUEUED

    # --- the engine thread -----------------------------------------------------------------------

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                if not self._take_new(block=not self._rows and not self._waiting):
                    break
                try:
                    self._drop_cancelled()
                    self._admit()
                    if self._rows:
                        self._decode_step()
                except Exception as e:  # a bug in the shared step must not kill the loop: keep serving
                    log.exception("engine step failed")
                    self._fail_all(RowFailure(ErrorCode.INTERNAL_ERROR, f"internal error: {type(e).__name__}: {e}"))
        self._fail_all(_SHUTTING_DOWN)
        for request in self._drain():
            self._fail_request(request, _SHUTTING_DOWN)

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
        self._dequeued(len(waiting))
        yield from waiting
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                self._dequeued(1)
                yield item

    def _dequeued(self, n: int) -> None:
        with self._lock:
            self._queued -= n

    def _drop_cancelled(self) -> None:
        """Let cancelled requests go now, queued or running, rather than when their turn comes."""
        still: list[GenerationRequest] = []
        for request in self._waiting:
            if request.stream.cancelled:
                self._cancel(request, 0)
            else:
                still.append(request)
        if len(still) < len(self._waiting):
            self._dequeued(len(self._waiting) - len(still))
            self._waiting = still
        gone = {i for i, row in enumerate(self._rows) if row.request.stream.cancelled}
        for i in gone:
            self._cancel(self._rows[i].request, len(self._rows[i].generated))
        if gone:
            self._remove(gone)

    def _admit(self) -> None:
        """Prefill as many waiting requests as the batch has room for and join them to it; when the
        prefill raises, prefill them one by one, so only the request that breaks it fails."""
        joining = self._take_fair_share(self.max_batch_size - len(self._rows))
        self._dequeued(len(joining))
        plain = [r for r in joining if r.params.prompt_logprobs is None]
        echoing = [r for r in joining if r.params.prompt_logprobs is not None]
        groups = ([plain] if plain else []) + [[r] for r in echoing]
        self._join([p for group in groups for p in self._prefill_group(group)])

    def _take_fair_share(self, room: int) -> list[GenerationRequest]:
        """Up to ``room`` waiting requests, round-robin across groups (``GenerationRequest.group``):
        a request's turn is the number of rows its group already runs plus those of its group
        waiting ahead of it, ties going to the earlier arrival. First come, first served by row let
        one request with ``n`` answers (or a burst of them) fill the batch while a one-row request
        behind it waited for all of them to finish; this way every group gets a row before any
        gets a second. (vLLM and SGLang admit first come, first served, but with hundreds of rows
        per batch; with 16, one caller's answers are the whole batch.)"""
        if room <= 0 or not self._waiting:
            return []
        turns = Counter(row.request.share_key for row in self._rows)
        ranked = []
        for arrival, request in enumerate(self._waiting):
            ranked.append((turns[request.share_key], arrival))
            turns[request.share_key] += 1
        chosen = {arrival for _, arrival in sorted(ranked)[:room]}
        joining = [r for i, r in enumerate(self._waiting) if i in chosen]
        self._waiting = [r for i, r in enumerate(self._waiting) if i not in chosen]
        return joining

    def _prefill_group(self, joining: list[GenerationRequest]) -> list[_Prefilled]:
        try:
            return [self._prefill(joining)]
        except Exception as e:
            if len(joining) == 1:
                self._fail_prefill(joining[0], e)
                return []
            log.warning("prefill of %d requests failed (%s); retrying them one by one", len(joining), e)
            return [p for p in map(self._prefill_alone, joining) if p is not None]

    def _prefill_alone(self, request: GenerationRequest) -> _Prefilled | None:
        try:
            return self._prefill([request])
        except Exception as e:
            self._fail_prefill(request, e)
            return None

    def _fail_prefill(self, request: GenerationRequest, e: Exception) -> None:
        log.exception("prefill of %s failed", request.id)
        self._fail_request(request, RowFailure(ErrorCode.INTERNAL_ERROR, f"internal error: {type(e).__name__}: {e}"))

    def _prefill(self, joining: list[GenerationRequest]) -> _Prefilled:
        """Run the prompts of ``joining`` through the model, touching nothing the batch holds: a
        failure here is retried without harm. A row whose prompt begins with a cached prefix
        (``prefix_cache``) runs only the rest, after the prefix's keys and values."""
        rows = [_Row(r, StopText(self.tokenizer, r.params.stop), new_generator(r.params, self._device),
                     constraint=None if r.grammar is None else RowConstraint(r.grammar))
                for r in joining]
        pieces = [self._prompt_embeddings(r.request) for r in rows]
        hits = [self._cached_prefix(r) for r in rows]
        reused = [0 if hit is None else hit.items for hit in hits]
        pad = self._embed(torch.tensor([self._pad_id], device=self._device))[0]
        embeds, mask, positions = left_pad_prompts([p[n:] for p, n in zip(pieces, reused)], pad)
        for row, piece in zip(rows, pieces):
            row.next_position = piece.shape[0]
        cache = BatchCache.empty()
        if any(reused):
            positions = positions + torch.tensor(reused, device=self._device).unsqueeze(1)
            mask = torch.cat([place_prefixes(cache, hits), mask], 1)
        echo = any(r.request.params.prompt_logprobs is not None for r in rows)
        logits = self._forward(embeds, mask, positions, cache, [r.slot for r in rows], all_positions=echo)
        self.stats.prefills += 1
        if echo:
            for i, row in enumerate(rows):
                row.prompt_logprobs = self._prompt_logprobs(row, logits[i])
        return _Prefilled(rows, cache, mask, logits[:, -1, :].float())

    def _cached_prefix(self, row: _Row) -> PrefixHit | None:
        """The longest cached prefix of the row's prompt (and the key it is kept under); none for a
        request that wants every prompt position's scores (``echo``: they come from the prefill)."""
        if self.prefix_cache is None:
            return None
        request = row.request
        digests = [x.digest for x in (request.lora, request.soft_prompt) if x is not None]
        row.prefix_root = self.prefix_cache.root("+".join(digests) if digests else None)
        prompt = request.soft_prompt
        row.prompt_items = sequence_items(request.prompt_ids, 0 if prompt is None else prompt.num_virtual_tokens)
        if request.params.prompt_logprobs is not None:
            return None
        return self.prefix_cache.lookup(row.prefix_root, row.prompt_items)

    def _keep_prefixes(self, rows: Sequence[_Row], cache: Cache, mask: torch.Tensor, batch_rows: Sequence[int],
                       answered: bool) -> None:
        """Keep what ``rows`` computed (their prompts, and with ``answered`` the tokens they
        generated and fed back) for later prompts; ``batch_rows`` are their rows in ``cache``."""
        if self.prefix_cache is None:
            return
        for row, b in zip(rows, batch_rows):
            if row.failed or row.prefix_root is None:
                continue
            items = row.prompt_items + (row.generated[:-1] if answered else [])
            columns = mask[b].nonzero().squeeze(1)
            if columns.numel() != len(items):
                continue  # not a layout this store understands: keep nothing rather than a wrong prefix
            self.prefix_cache.store(row.prefix_root, items, functools.partial(_gather, cache, b, columns))

    @staticmethod
    def _prompt_logprobs(row: _Row, logits: torch.Tensor) -> tuple[TokenLogprob | None, ...] | None:
        """The prompt tokens' log-probabilities from the row's (left-padded) logits at every
        position; a soft prompt's virtual tokens are not tokens, so they get none."""
        top_k = row.request.params.prompt_logprobs
        if top_k is None:
            return None
        prompt = row.request.prompt_ids
        end = logits.shape[0] - 1  # the last position predicts the first generated token
        return prompt_logprobs(logits[end - (len(prompt) - 1):end], prompt, top_k)

    def _join(self, prefilled: list[_Prefilled]) -> None:
        """Join prefilled rows to the batch and take their first tokens. The rows enter ``_rows``
        before anything can fail, so a failure from here on (the batch's, not a request's) reaches
        each of them once through the loop's ``_fail_all``, and none is prefilled twice."""
        if not prefilled:
            return
        offset = len(self._rows)
        self._rows = self._rows + [row for p in prefilled for row in p.rows]
        for p in prefilled:
            self._batch.join(p.cache, p.mask)
        self._advance(torch.cat([p.logits for p in prefilled]), offset)
        for p in prefilled:
            self._keep_prefixes(p.rows, p.cache, p.mask, range(len(p.rows)), answered=False)

    def _decode_step(self) -> None:
        tokens = torch.tensor([[r.last_token] for r in self._rows], device=self._device)
        mask = self._batch.step_mask()
        positions = torch.tensor([[r.next_position] for r in self._rows], device=self._device)
        self.stats.observe_step(len(self._rows))
        logits = self._forward(self._embed(tokens), mask, positions, self._batch.cache,
                               [r.slot for r in self._rows])[:, -1, :].float()
        self._batch.mask = mask
        for r in self._rows:
            r.next_position += 1
        self._advance(logits, 0)

    def _forward(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: DynamicCache,
                 slots: list[int], all_positions: bool = False) -> torch.Tensor:
        """One pass of the model over ``embeds``, appending to ``cache``; the logits
        (``[rows, positions, vocab]``) of the last position only, or of every position."""
        if self._set_rows is not None:
            # Same rows as the previous step: the slot bank keeps the weights it gathered for them.
            self._set_rows(slots)
        out = self.model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=0 if all_positions else 1,
        )
        return out.logits

    def _prompt_embeddings(self, request: GenerationRequest) -> torch.Tensor:
        ids = torch.tensor(request.prompt_ids, device=self._device)
        embeds = self._embed(ids)
        prompt = request.soft_prompt
        if prompt is not None:
            embeds = torch.cat([prompt.embeddings.to(embeds.dtype), embeds], 0)
        return embeds

    def _advance(self, logits: torch.Tensor, offset: int) -> None:
        """Pick the next token of rows ``offset:`` (whose ``logits`` these are), emit it, and let
        finished and failed rows leave the batch."""
        rows = self._rows[offset:]
        masks = StepMasks.of([row.constraint for row in rows], logits.shape[-1], logits.device)
        tokens = sample(logits, [(row.request.params, row.generator) for row in rows], [row.generated for row in rows],
                        masks)
        refused = set() if masks is None else masks.accept(tokens)
        logprobs = chosen_logprobs(logits, [(row.request.params.logprobs, None if isinstance(token, RowFailure) else token)
                                            for row, token in zip(rows, tokens)])
        done = set()
        for i, (row, token, logprob) in enumerate(zip(rows, tokens, logprobs)):
            if isinstance(token, RowFailure):
                self._fail_row(row, token)
                done.add(offset + i)
            elif i in refused:
                self._fail_row(row, _OFF_GRAMMAR)
                done.add(offset + i)
            elif self._emit(row, token, logprob):
                done.add(offset + i)
        if done:
            # an answer of one token fed nothing back: its prompt is kept by _join, once
            finished = sorted(i for i in done if not self._rows[i].failed and len(self._rows[i].generated) > 1)
            self._keep_prefixes([self._rows[i] for i in finished], self._batch.cache, self._batch.mask, finished,
                                answered=True)
            self._remove(done)

    def _emit(self, row: _Row, token: int, logprob: TokenLogprob | None = None) -> bool:
        """Send ``token`` (with its log-probability when asked) to the row's client; True once the row is done."""
        request = row.request
        if request.stream.cancelled:
            self._cancel(request, len(row.generated))
            return True
        row.generated.append(token)
        row.last_token = token
        self.stats.generated_tokens += 1
        try:
            text, reason = self._next_text(row, token)
        except Exception as e:  # a tokenizer that cannot decode this row's tokens fails this row only
            log.warning("detokenizing %s failed: %s: %s", request.id, type(e).__name__, e)
            self._fail_row(row, RowFailure(ErrorCode.DETOKENIZE_FAILED,
                                           f"failed to detokenize the answer: {type(e).__name__}: {e}"))
            return True
        prompt_scores, row.prompt_logprobs = row.prompt_logprobs, None
        if reason is None:
            request.stream.put(TokenEvent(token, text, logprob=logprob, prompt_logprobs=prompt_scores))
            return False
        self._finish_row(row, token, text, reason, logprob, prompt_scores)
        return True

    def _next_text(self, row: _Row, token: int) -> tuple[str, str | None]:
        """The text ``token`` releases, and the finish reason when it ends the answer."""
        if token in self.eos_ids:
            return row.text.finish(), "stop"
        text, stopped = row.text.add(token)
        if stopped:
            return text, "stop"
        if row.constraint is not None and row.constraint.terminated:  # its grammar is complete (a base without eos)
            return text + row.text.finish(), "stop"
        if len(row.generated) >= row.request.params.max_tokens:
            return text + row.text.finish(), "length"
        return text, None

    def _finish_row(self, row: _Row, token: int | None, text: str, reason: str, logprob: TokenLogprob | None = None,
                    prompt_scores: tuple[TokenLogprob | None, ...] | None = None) -> None:
        elapsed = time.monotonic() - row.joined_at
        self._mean_request_s += 0.1 * (elapsed - self._mean_request_s)
        self._finish_request(
            row.request,
            TokenEvent(token, text, reason, prompt_tokens=len(row.request.prompt_ids),
                       completion_tokens=len(row.generated), logprob=logprob, prompt_logprobs=prompt_scores),
        )

    def _fail_row(self, row: _Row, failure: RowFailure) -> None:
        """End the row with ``failure``, its message naming the model the row ran."""
        row.failed = True
        version = row.request.adapter
        subject = "the base model" if version is None else f"adapter {version.ref}"
        self._fail_request(row.request, RowFailure(failure.code, f"{subject} {failure.message}"),
                           completion_tokens=len(row.generated))

    def _fail_request(self, request: GenerationRequest, failure: RowFailure, completion_tokens: int = 0) -> None:
        self.stats.observe_failure(failure.code)
        self._finish_request(request, TokenEvent(None, "", "error", prompt_tokens=len(request.prompt_ids),
                                                 completion_tokens=completion_tokens, error=failure.message,
                                                 error_code=failure.code))

    def _cancel(self, request: GenerationRequest, completion_tokens: int) -> None:
        self.stats.cancelled += 1
        self._finish_request(request, TokenEvent(None, "", "cancelled", prompt_tokens=len(request.prompt_ids),
                                                 completion_tokens=completion_tokens))

    def _finish_request(self, request: GenerationRequest, event: TokenEvent) -> None:
        self._release(request)
        request.stream.put(event)

    def _remove(self, gone: set[int]) -> None:
        """Let rows ``gone`` leave the batch: each place they free below the new end takes one of
        the last rows, so the cache moves one row per row that leaves, not every row after it."""
        end = len(self._rows) - len(gone)
        tail = [i for i in range(end, len(self._rows)) if i not in gone]
        order = [tail.pop() if i in gone else i for i in range(end)]
        self._rows = [self._rows[i] for i in order]
        self._batch.keep(order)

    def _fail_all(self, failure: RowFailure) -> None:
        for row in self._rows:
            self._fail_request(row.request, failure, completion_tokens=len(row.generated))
        self._remove(set(range(len(self._rows))))


def _gather(cache: Cache, row: int, columns: torch.Tensor, lo: int, hi: int
            ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Row ``row``'s keys and values at its items ``lo:hi`` (``columns`` maps items to cache columns)."""
    picked = columns[lo:hi]
    return ([layer.keys[row][:, picked] for layer in cache.layers],
            [layer.values[row][:, picked] for layer in cache.layers])


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids: set[int] = set()
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids
