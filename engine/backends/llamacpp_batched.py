"""Embedded CPU backend with continuous batching: one llama.cpp context, one sequence per task.

CPU decoding of a small model is bound by memory bandwidth: evaluating the next token of several
sequences in one `llama_decode` costs little more than one. So a sequence's `append` does not
evaluate: it queues its tokens and the sequence reports itself busy. When every runnable task of
the engine has queued its work, the scheduler calls `flush`, which evaluates one batch holding
the next token of every decoding task and chunks of prefills and interrupt frames, within a token
budget per step (decode tokens always go; prefill and frame chunks share the rest), and keeps each
sequence's next-token logits. `logits()` of a sequence with queued work flushes first, so a caller
that does not know about batching still gets correct answers.

Each task is a sequence id with its own KV cells (the context is made with `n_seq_max` streams of
`n_ctx` cells each, `kv_unified=False`: attention of one sequence never scans another's cells).
Rollback is `llama_memory_seq_rm`. A sequence that ends keeps its cells as a cache; a new task
reuses the idle sequence that shares the longest prefix with its prompt, or copies the prefix of
a live one (`llama_memory_seq_cp`) when that is longer (the system prompt and the tools are the
same across most tasks). A LoRA adapter applies to a context, so there is one batched backend per
(model, adapter), as there is one backend per catalog model.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.backends.base import BackendError, LocalBackend, Sequence
from engine.backends.llamacpp import LlamaVocab, apply_adapter, common_prefix
from engine.catalog import ModelSpec

MIN_CHUNK_SHARE = 32  # prefill and frame tokens per step even when decode tokens fill the budget
MIN_COPY_GAIN = 32  # copy a live sequence's prefix only when it beats the best idle one by this much


@dataclass(eq=False)
class Slot:
    """One sequence id of the context: its evaluated tokens (what its KV cells hold), the tokens
    queued for the next batch and the next-token logits of its last evaluated token."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    logits: np.ndarray | None = None
    error: str = ""
    in_use: bool = False
    mixed: bool = False  # its cells hold tokens evaluated in a batch with another sequence's
    work_s: float = 0.0  # seconds of the batches that held its tokens, over its whole life


class BatchedSequence(Sequence):
    def __init__(self, backend: BatchedLlamaBackend, slot: Slot) -> None:
        self._backend = backend
        self.slot = slot
        self._closed = False
        self._work_from = slot.work_s

    @property
    def n_tokens(self) -> int:
        return len(self.slot.tokens) + len(self.slot.pending)

    def append(self, ids: Seq[int]) -> None:
        if not ids:
            return
        if self.n_tokens + len(ids) > self._backend.n_ctx:
            raise BackendError(f"context full: {self.n_tokens} + {len(ids)} tokens exceed n_ctx={self._backend.n_ctx}")
        self._backend.queue(self.slot, ids)

    @property
    def batched_with_others(self) -> bool:
        return self.slot.mixed

    def work_s(self) -> float:
        return self.slot.work_s - self._work_from

    def busy_s(self) -> float:
        # Not a time: the work is done at the next flush, which the scheduler runs once every
        # runnable task has queued its own.
        return math.inf if self.slot.pending else 0.0

    def logits(self) -> np.ndarray:
        """The sequence's own copy of its last logits (made when its batch was evaluated): the
        caller may change it in place; the next append replaces it."""
        if self.slot.pending:
            self._backend.flush(everything=True)
        if self.slot.error:
            raise BackendError(self.slot.error)
        if self.slot.logits is None:
            raise BackendError("no logits before the first append")
        return self.slot.logits

    def truncate(self, n_tokens: int) -> None:
        if not 0 <= n_tokens <= self.n_tokens:
            raise BackendError(f"cannot truncate to {n_tokens} tokens (have {self.n_tokens})")
        self._backend.truncate(self.slot, n_tokens)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._backend.release(self.slot)


class BatchedLlamaBackend(LlamaVocab, LocalBackend):
    constrained_calls = True

    def __init__(self, spec: ModelSpec, path: Path, *, adapter_path: Path | None = None, n_ctx: int = 4096,
                 n_threads: int = 2, n_seq: int = 16, step_tokens: int = 128) -> None:
        """`n_seq`: the sequences (tasks held at once, waiting ones included); `step_tokens`: the
        tokens one flush evaluates at most, beyond the decode tokens of every decoding task."""
        import llama_cpp

        self.spec = spec
        self._n_ctx = n_ctx
        self.step_tokens = step_tokens
        self._llama = llama_cpp
        self._lock = threading.Lock()
        try:
            # The model (mmapped weights) and the tokenizer; its own context is tiny and unused.
            self._tokenizer = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=n_threads, verbose=False)
        except Exception as exc:  # llama.cpp raises ValueError on unreadable files
            raise BackendError(f"could not load {spec.name} from {path}: {exc}") from exc
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx * n_seq
        params.n_seq_max = n_seq
        capacity = max(step_tokens, MIN_CHUNK_SHARE) + n_seq  # the most one flush puts in a batch
        params.n_batch = params.n_ubatch = capacity
        params.n_threads = params.n_threads_batch = n_threads
        params.kv_unified = False
        # As the per-context backend (llama-cpp-python's default): the same numbers for the same tokens.
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self._ctx = llama_cpp.llama_init_from_model(self._tokenizer._model.model, params)
        if not self._ctx:
            raise BackendError(f"could not create a batched context of {n_seq} x {n_ctx} tokens for {spec.name}")
        if adapter_path is not None:
            scale = spec.adapter.scale if spec.adapter is not None else 1.0
            apply_adapter(self._tokenizer, self._ctx, str(adapter_path), scale, spec.name)
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(capacity, 0, 1)
        self._init_vocab(self._tokenizer)
        self._slots = [Slot(i) for i in range(n_seq)]
        self._dirty: dict[int, Slot] = {}  # queued work, in the order it came
        self.flushes = 0  # batches evaluated (for tests and benchmarks)

    def __del__(self) -> None:
        llama = getattr(self, "_llama", None)
        if llama is not None and getattr(self, "_ctx", None):
            llama.llama_batch_free(self._batch)
            llama.llama_free(self._ctx)
            self._ctx = None

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    # -- sequences ---------------------------------------------------------------------------
    def open_sequence(self, prompt_ids: Seq[int] = ()) -> BatchedSequence:
        """A free sequence for a new task, holding as much of `prompt_ids` as can be had without
        evaluating: an idle sequence's cached prefix, or a live one's copied (at least one prompt
        token is left to evaluate: its logits start the decode)."""
        prompt = np.asarray(prompt_ids, dtype=np.intc)
        keep_max = max(0, len(prompt) - 1)
        with self._lock:
            free = [s for s in self._slots if not s.in_use]
            if not free:
                raise BackendError(f"all {len(self._slots)} sequences of {self.spec.name} are in use")
            slot = max(free, key=lambda s: common_prefix(np.asarray(s.tokens, dtype=np.intc), prompt))
            shared = min(common_prefix(np.asarray(slot.tokens, dtype=np.intc), prompt), keep_max)
            live = [s for s in self._slots if s.in_use and s.tokens]
            donor = max(live, key=lambda s: common_prefix(np.asarray(s.tokens, dtype=np.intc), prompt), default=None)
            donated = 0 if donor is None else min(common_prefix(np.asarray(donor.tokens, dtype=np.intc), prompt),
                                                  keep_max)
            slot.in_use = True
        slot.pending, slot.logits, slot.error = [], None, ""
        if donor is not None and donated >= shared + MIN_COPY_GAIN:
            self._llama.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
            self._llama.llama_memory_seq_cp(self._mem, donor.seq_id, slot.seq_id, -1, -1)
            slot.tokens = list(donor.tokens)
            slot.mixed = donor.mixed
            shared = donated
        self._cut(slot, shared)
        return BatchedSequence(self, slot)

    def release(self, slot: Slot) -> None:
        """The task is over: its cells stay as a cache for a later prompt."""
        self._dirty.pop(slot.seq_id, None)
        slot.pending, slot.logits = [], None
        if slot.error:  # its cells may not match its tokens
            self._cut(slot, 0)
            slot.error = ""
        with self._lock:
            slot.in_use = False

    def drop_cache(self) -> None:
        """Forget what idle sequences hold, so the next task starts cold (benchmarks)."""
        for slot in self._slots:
            if not slot.in_use:
                self._cut(slot, 0)

    def queue(self, slot: Slot, ids: Seq[int]) -> None:
        if slot.error:
            raise BackendError(slot.error)
        slot.pending.extend(int(i) for i in ids)
        slot.logits = None
        self._dirty.setdefault(slot.seq_id, slot)

    def truncate(self, slot: Slot, n_tokens: int) -> None:
        evaluated = len(slot.tokens)
        if n_tokens >= evaluated:
            del slot.pending[n_tokens - evaluated:]
            if not slot.pending:
                self._dirty.pop(slot.seq_id, None)
            return
        slot.pending = []
        self._dirty.pop(slot.seq_id, None)
        self._cut(slot, n_tokens)

    def _cut(self, slot: Slot, n_tokens: int) -> None:
        if n_tokens < len(slot.tokens) or n_tokens == 0:
            self._llama.llama_memory_seq_rm(self._mem, slot.seq_id, n_tokens, -1)
        del slot.tokens[n_tokens:]
        slot.logits = None
        if not slot.tokens:
            slot.mixed = False

    # -- batches -----------------------------------------------------------------------------
    def flush(self, everything: bool = False) -> bool:
        """Evaluate one batch of the queued work (all of it with `everything`); returns whether
        there was any. Decode tokens (a sequence with one queued token) always go in; prefill and
        frame chunks share what is left of `step_tokens`, at least MIN_CHUNK_SHARE."""
        if not self._dirty:
            return False
        while True:
            self._flush_once()
            if not everything or not self._dirty:
                return True

    def _flush_once(self) -> None:
        slots = list(self._dirty.values())
        decoding = [s for s in slots if len(s.pending) == 1]
        rest = [s for s in slots if len(s.pending) > 1]
        room = max(self.step_tokens - len(decoding), MIN_CHUNK_SHARE)
        plan: list[tuple[Slot, int]] = [(s, 1) for s in decoding]
        for slot in rest:
            if room <= 0:
                break
            take = min(len(slot.pending), room)
            plan.append((slot, take))
            room -= take
        started = time.perf_counter()
        if self._decode(plan) != 0:
            # No room for the batch as a whole: each sequence alone, so one task's failure is its own.
            for slot, take in plan:
                alone = time.perf_counter()
                if self._decode([(slot, take)]) != 0:
                    self._fail(slot, "the model's context has no room left for this task's tokens")
                else:
                    self._settle([(slot, take)], alone)
            return
        self._settle(plan, started)

    def _decode(self, plan: list[tuple[Slot, int]]) -> int:
        batch = self._batch
        i = 0
        for slot, take in plan:
            base = len(slot.tokens)
            for j in range(take):
                batch.token[i] = slot.pending[j]
                batch.pos[i] = base + j
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = slot.seq_id
                batch.logits[i] = 1 if j == take - 1 and take == len(slot.pending) else 0
                i += 1
        batch.n_tokens = i
        return int(self._llama.llama_decode(self._ctx, batch))

    def _settle(self, plan: list[tuple[Slot, int]], started: float) -> None:
        if len(plan) > 1:
            for slot, _ in plan:
                slot.mixed = True
        i = 0
        for slot, take in plan:
            whole = take == len(slot.pending)
            slot.tokens.extend(slot.pending[:take])
            del slot.pending[:take]
            i += take
            if whole:
                ptr = self._llama.llama_get_logits_ith(self._ctx, i - 1)
                slot.logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()
                self._dirty.pop(slot.seq_id, None)
        took = time.perf_counter() - started
        for slot, _ in plan:
            slot.work_s += took
        self.flushes += 1

    def _fail(self, slot: Slot, reason: str) -> None:
        slot.error = reason
        slot.pending = []
        self._dirty.pop(slot.seq_id, None)

    # -- inspection (tests, benchmarks) ----------------------------------------------------------
    def cells(self, slot: Slot) -> int:
        """The KV cells the sequence holds (positions 0..max), as llama.cpp counts them."""
        return int(self._llama.llama_memory_seq_pos_max(self._mem, slot.seq_id)) + 1

