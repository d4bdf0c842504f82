"""Local backends (llama.cpp, the simulated decoder): the engine holds the KV cache and samples.

One step is one unit of work: a prefill chunk, a chunk of an interrupt frame appended on top of
the live cache (no re-prefill; a frame longer than a chunk goes in over several steps), or one
sampled token (after the bans and the call guard have shaped the logits). Chunks are sized to the
backend's measured speed so that one step stays within a time budget (engine/drivers/chunks.py).
"""

from __future__ import annotations

from engine.backends.base import LocalBackend, Sequence
from engine.ban import IntrBan
from engine.calltable import CallTable
from engine.drivers.chunks import ChunkSizer
from engine.interrupts import injected, no_room, take_frame
from engine.messages import TraceEvent
from engine.modes import MODES
from engine.output import end_of_turn, on_token
from engine.sampling import sample
from engine.state import FINAL, Injecting, Status, TaskRun


class LocalDriver:
    silent_steps_work = True  # a prefill chunk is work without events

    def __init__(self, table: CallTable, chunks: ChunkSizer) -> None:
        self._table = table
        self.chunks = chunks
        self._bans: dict[int, IntrBan] = {}
        self._backends: dict[int, LocalBackend] = {}

    def open(self, run: TaskRun) -> None:
        assert isinstance(run.backend, LocalBackend)
        self._backends[id(run.backend)] = run.backend
        run.seq = run.backend.open_sequence(run.prompt_ids)
        run.prefilled = run.reused_tokens = run.seq.n_tokens

    def warm(self, backend: LocalBackend) -> IntrBan:
        """The backend's [INTR] ban tables (built once per backend, on first use)."""
        ban = self._bans.get(id(backend))
        if ban is None:
            ban = self._bans[id(backend)] = IntrBan(backend.vocab_texts())
        return ban

    def flush(self) -> bool:
        """Evaluate what batching backends have queued (one batch each); whether any had work."""
        return any([backend.flush() for backend in self._backends.values()])

    def busy_s(self, run: TaskRun) -> float:
        """How long the task's sequence is still busy with its last append (0: it can step)."""
        return run.seq.busy_s() if isinstance(run.seq, Sequence) else 0.0

    def step(self, run: TaskRun) -> list[TraceEvent]:
        if run.status is Status.PREFILL:
            return self._prefill(run)
        if run.injecting is not None:
            return self._inject_more(run, [])
        if run.interrupts and not run.monitor.critical:
            return self._inject(run)
        return self._decode(run)

    def _seq(self, run: TaskRun) -> Sequence:
        assert isinstance(run.seq, Sequence)
        return run.seq

    def _prefill(self, run: TaskRun) -> list[TraceEvent]:
        seq = self._seq(run)
        if run.prefilled < len(run.prompt_ids):
            chunk = run.prompt_ids[run.prefilled : run.prefilled + self.chunks.size(id(run.backend))]
            run.prefill_ms += self._append(run, chunk) * 1000
            run.prefilled += len(chunk)
            if run.prefilled < len(run.prompt_ids) or self._queued(seq):
                return []
        # A batching backend evaluated the prompt in the batches since the sequence opened.
        run.prefill_ms += (seq.work_s() or 0.0) * 1000
        run.status = Status.DECODING
        payload = {"prompt_tokens": len(run.prompt_ids), "reused_tokens": run.reused_tokens,
                   "ms": round(run.prefill_ms, 2)}
        return [run.event("prefill", payload)]

    def _append(self, run: TaskRun, ids: list[int]) -> float:
        """Evaluate `ids` on the task's sequence; returns the seconds it took (and learns from them)."""
        start = run.clock()
        self._seq(run).append(ids)
        seconds = run.clock() - start
        self.chunks.observe(id(run.backend), len(ids), seconds)
        return seconds

    def _inject(self, run: TaskRun) -> list[TraceEvent]:
        assert run.backend is not None
        seq = self._seq(run)
        frame = take_frame(run)
        ended = no_room(run, frame, run.backend.n_ctx - seq.n_tokens - len(run.unevaluated) - 1)
        if ended:
            return ended
        run.injecting = Injecting(frame, seq.n_tokens + len(run.unevaluated), run.ms, list(frame.ids),
                                  work_at=seq.work_s())
        # The last sampled token and the frame go in one evaluation: the frame reaches the backend
        # at once instead of after a separate forward pass for that token.
        head, run.unevaluated = run.unevaluated, []
        return self._inject_more(run, head)

    def _inject_more(self, run: TaskRun, head: list[int]) -> list[TraceEvent]:
        part = run.injecting
        assert part is not None
        seq = self._seq(run)
        if part.left:
            size = self.chunks.size(id(run.backend))
            chunk, part.left = part.left[:size], part.left[size:]
            part.ms += self._append(run, head + chunk) * 1000
            if part.left or self._queued(seq):
                return []
        if part.work_at is not None:
            part.ms += ((seq.work_s() or 0.0) - part.work_at) * 1000
        run.injecting = None
        return [injected(run, part.frame, position=part.position, began_ms=part.began_ms, ms=part.ms)]

    @staticmethod
    def _queued(seq: Sequence) -> bool:
        """Whether a batching backend still holds the sequence's appended tokens for its next
        batch: the prefill or frame is reported once evaluated, with the time that took."""
        return seq.work_s() is not None and seq.busy_s() > 0

    def _decode(self, run: TaskRun) -> list[TraceEvent]:
        backend = run.backend
        assert isinstance(backend, LocalBackend)
        seq = self._seq(run)
        if run.sub.forced_text and not run.forced and (run.replay is None or not run.replay.tokens_left):
            # The script is used up: its stop token parked the task until the results came, and
            # they are in. What the model would write after them is not the script, and is not
            # bounded: a small model copying the script's call block got an error frame for each
            # copy, over and over, till its token budget.
            return end_of_turn(self._table, run)
        if run.unevaluated:
            seq.append(run.unevaluated)
            run.unevaluated = []
            if seq.busy_s() > 0:
                return []  # the logits come once the sequence is ready; other tasks step meanwhile
        logits = seq.logits()
        if run.replay is not None and run.replay.tokens_left:
            token = run.replay.token(run.forced.popleft() if run.forced else None)
            return self._emit(run, seq, token)
        if run.tools and not run.monitor.in_block:
            logits = self.warm(backend).apply(logits, run.tail, trap=bool(run.pending() or run.interrupts))
        if run.guard is not None:
            logits = run.guard.mask(logits, run.tail, run.sub.sampling.temperature)
        token = sample(logits, run.sub.sampling, run.rng)
        if run.forced:
            token = run.forced.popleft()
        if token in backend.stop_ids():
            instead = MODES[run.mode].instead_of_end(run) if run.tools else ""
            if not instead:
                return end_of_turn(self._table, run)
            run.forced.extend(backend.tokenize(instead))
            token = run.forced.popleft()
        return self._emit(run, seq, token)

    def _emit(self, run: TaskRun, seq: Sequence, token: int) -> list[TraceEvent]:
        """The chosen token goes into the context and through the CML monitor. Where the sequence
        only records its work (a device beside its host), the token goes in first: the next
        token's work runs while the engine parses, dispatches and publishes, as GPU servers launch
        the next forward pass before their bookkeeping. Nothing the monitor does touches the
        sequence in this step. Otherwise the token waits for the next step, after this token's
        events have left (or goes in with an interrupt frame), and not at all once the task ended."""
        assert run.backend is not None
        if seq.defers_work:
            seq.append([token])
        events = on_token(self._table, run, token, run.utf8.decode(run.backend.token_bytes(token)))
        if not seq.defers_work and run.status not in FINAL:
            run.unevaluated = [token]
        return events
