"""Remote backends (SGLang): the server samples, so the engine streams its tokens, checks each one
(the [INTR] ban, CML, budgets) and takes an interrupt by aborting the running request and
submitting the context again with the frame appended (the server's prefix cache keeps that
cheap). Tokens the engine did not use (after a sync call, a trap or an abort) are cut from the
context when the request's stream ends; a waiting task holds no request on the server.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.backends.base import RemoteBackend, RemoteSequence, StreamEnd
from engine.ban import IntrBan, forbidden, forbidden_trap
from engine.calltable import CallTable
from engine.grammar import call_structural_tag
from engine.interrupts import injected, no_room, take_frame
from engine.messages import TraceEvent
from engine.output import end_of_turn, on_token
from engine.state import FINAL, RUNNABLE, Status, TaskRun


class RemoteDriver:
    silent_steps_work = False  # a poll that brought nothing did no work

    def __init__(self, table: CallTable) -> None:
        self._table = table
        self._draining: set[int] = set()  # tasks waiting (parked, blocked) whose last request still ends

    @property
    def draining(self) -> bool:
        return bool(self._draining)

    def open(self, run: TaskRun) -> None:
        assert isinstance(run.backend, RemoteBackend)
        run.seq = run.backend.open_sequence(run.prompt_ids)
        run.prefilled = run.reused_tokens = run.seq.n_tokens

    def drain(self, runs: Mapping[int, TaskRun]) -> list[TraceEvent]:
        """Read the ends of requests of tasks that stopped to wait: their extra tokens are dropped
        and the context cut back, so the server holds no request while a task waits."""
        events: list[TraceEvent] = []
        for task_id in list(self._draining):
            run = runs.get(task_id)
            if run is None or run.status in RUNNABLE or run.seq is None or not _seq(run).streaming:
                self._draining.discard(task_id)
                continue
            for item in _seq(run).poll():
                if isinstance(item, StreamEnd):
                    events += self._end(run, item)
                    self._draining.discard(task_id)
        return events

    def step(self, run: TaskRun) -> list[TraceEvent]:
        seq = _seq(run)
        if run.status is Status.PREFILL:
            run.status = Status.DECODING
            seq.submit(run.prompt_ids, _params(run), "prompt")
            return []
        events: list[TraceEvent] = []
        for item in seq.poll():
            events += _report(run)
            if isinstance(item, StreamEnd):
                events += self._end(run, item)
            elif run.remote.keep_tokens is None and run.status is Status.DECODING:
                events += self._token(run, *item)
            if run.status in FINAL:
                return events
        if run.status is not Status.DECODING and seq.streaming:
            self._draining.add(run.task_id)
        elif run.status is Status.DECODING and not seq.streaming and run.remote.keep_tokens is None:
            events += self._resume(run)
        elif run.interrupts and not run.monitor.critical and seq.streaming and not run.remote.abort_asked:
            run.remote.abort_asked = True
            seq.abort()  # the results go in at the end of this request's stream
        return events

    def _token(self, run: TaskRun, token: int, piece: str) -> list[TraceEvent]:
        assert run.backend is not None
        remote = run.remote
        if token in run.backend.stop_ids():
            _cut(run)
            return end_of_turn(self._table, run)
        if run.tools and not run.monitor.in_block:
            tail = run.tail + "".join(p for _, p in remote.held)
            if forbidden(tail, piece):
                # The model began an [INTR] spelling: drop this token, ban it, continue without it.
                remote.banned_ids.add(token)
                _cut(run, extra=len(remote.held))
                return [run.event("banned_token", {"id": token, "text": piece})]
            if not _may_trap(run) and forbidden_trap(tail, piece):
                # A trap with nothing to wait for: banned for as long as no call is pending (the
                # ban is recomputed for every request, so a later, legitimate trap is not).
                remote.trap_banned_ids.add(token)
                _cut(run, extra=len(remote.held))
                return [run.event("banned_token", {"id": token, "text": piece, "why": "trap"})]
            if IntrBan.open_bracket(tail + piece):
                remote.held.append((token, piece))  # the next token decides what the marker becomes
                return []
        held, remote.held = [*remote.held, (token, piece)], []
        events: list[TraceEvent] = []
        for tid, text in held:
            events += on_token(self._table, run, tid, text)
            if run.status is not Status.DECODING:
                # A sync call, a trap, the end of the turn or the budget: the rest of this request
                # must not count (the server may have generated more).
                _cut(run)
                break
        return events

    def _end(self, run: TaskRun, end: StreamEnd) -> list[TraceEvent]:
        seq = _seq(run)
        remote = run.remote
        asked, remote.abort_asked = remote.abort_asked, False
        if remote.keep_tokens is not None:
            seq.truncate(min(remote.keep_tokens, seq.n_tokens))
            remote.keep_tokens = None
        if run.status in FINAL:
            return []
        if run.status is not Status.DECODING and asked:
            return []  # a waiting task's request ended as asked; nothing stays open on the server
        if end.finish == "error":
            return run.finish(Status.FAILED, f"SGLang server: {end.message}")
        if end.finish == "abort" and not asked:
            return run.finish(Status.FAILED, f"the SGLang server aborted the request: {end.message}")
        if run.status is not Status.DECODING:
            return []  # parked or blocked: no request stays open while the task waits
        if end.finish == "stop" and not asked:
            return end_of_turn(self._table, run)  # the stop token itself was not streamed
        if end.finish == "length" and not asked:
            return run.finish(Status.FINISHED, "the server's length limit", finish_reason="length")
        return self._resume(run)

    def _resume(self, run: TaskRun) -> list[TraceEvent]:
        """Submit again: with the queued interrupts when outside a critical section, else just
        to go on (after a ban, or when an aborted request's last tokens opened a block)."""
        if run.interrupts and not run.monitor.critical:
            return self._inject(run)
        _seq(run).submit([], _params(run), "continue")
        return []

    def _inject(self, run: TaskRun) -> list[TraceEvent]:
        assert run.backend is not None
        seq = _seq(run)
        frame = take_frame(run)
        ended = no_room(run, frame, run.backend.n_ctx - run.context_len - 1)
        if ended:
            return ended
        position = run.context_len
        began_ms = run.ms
        seq.submit(frame.ids, _params(run, extra=len(frame.ids)), "interrupt")
        return [injected(run, frame, position=position, began_ms=began_ms, ms=0.0, rid=seq.submissions[-1].rid)]


def _seq(run: TaskRun) -> RemoteSequence:
    assert isinstance(run.seq, RemoteSequence)
    return run.seq


def _cut(run: TaskRun, extra: int = 0) -> None:
    """Keep the context as the engine has used it (plus `extra` held tokens); end the request."""
    if run.seq is None:
        return  # finished: closing the sequence aborted its request
    seq = _seq(run)
    run.remote.keep_tokens = run.context_len + extra
    if seq.streaming and not run.remote.abort_asked:
        run.remote.abort_asked = True
        seq.abort()


def _params(run: TaskRun, extra: int = 0) -> dict[str, Any]:
    """Sampling parameters for the next request; `extra` tokens are about to join the context."""
    backend = run.backend
    assert isinstance(backend, RemoteBackend)
    sampling = run.sub.sampling
    budget = min(run.sub.max_tokens - len(run.generated), backend.n_ctx - run.context_len - extra - 1)
    params = backend.sampling_params(
        max_new_tokens=max(1, budget),
        temperature=sampling.temperature, top_p=sampling.top_p, seed=sampling.seed,
        structural_tag=call_structural_tag(list(run.tools), open_block=run.monitor.open_call) if run.tools else None,
    )
    banned = run.remote.banned_ids | (set() if _may_trap(run) else run.remote.trap_banned_ids)
    if banned:
        params["logit_bias"] = {str(i): -100.0 for i in sorted(banned)}
    return params


def _may_trap(run: TaskRun) -> bool:
    """A trap waits for something: a pending call or a queued result (as on local backends)."""
    return bool(run.pending() or run.interrupts)


def _report(run: TaskRun) -> list[TraceEvent]:
    """Each submission's prompt and cached tokens, once its first chunk arrived."""
    remote = run.remote
    events: list[TraceEvent] = []
    for sub in _seq(run).submissions[remote.reported_submissions:]:
        if sub.prompt_tokens is None:
            break
        remote.reported_submissions += 1
        cached = sub.cached_tokens or 0
        if sub.reason == "prompt":
            run.reused_tokens = cached  # the server's prefix cache held these of the prompt
            run.prefill_ms = round((run.clock() - run.t0) * 1000, 1)
            events.append(run.event("prefill", {
                "prompt_tokens": sub.prompt_tokens, "reused_tokens": cached, "ms": run.prefill_ms, "rid": sub.rid}))
            continue
        remote.cache_expected += sub.expected_cached
        remote.cache_hit += min(cached, sub.expected_cached)
        events.append(run.event("resubmitted", {
            "rid": sub.rid, "reason": sub.reason, "prompt_tokens": sub.prompt_tokens, "cached_tokens": cached,
            "expected_cached": sub.expected_cached, "abort_to_first_token_ms": sub.abort_to_first_token_ms}))
        if cached < 0.95 * sub.expected_cached - 1:
            events.append(run.event("warning", {
                "message": f"prefix cache miss: the server had {cached} of the {sub.expected_cached} tokens "
                           f"already in this context cached (request {sub.rid})"}))
    return events
