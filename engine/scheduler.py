"""The pure engine core: per-task state machine, CML handling, interrupts and interleaving.

No I/O here. `Scheduler.step()` does one unit of work (a prefill chunk, one interrupt injection or
one decoded token) for the next runnable task, round-robin, and returns the trace events it
produced. Calls to run are collected in an outbox (`take_dispatches`); results come back through
`deliver`. A task that is parked on [TRAP] or waiting in sync mode is not runnable, so it costs
no decode steps. Time comes from injected clocks so tests are deterministic.

Modes:
- async: dispatch at [END], keep decoding, inject results at the next token boundary outside a
  critical section, park on [TRAP] while calls are pending;
- sync: at each [END] stop until that call's result is injected;
- sync_parallel: collect calls until [TRAP] or end of turn, run them together, inject all results
  in one go.
"""

from __future__ import annotations

import codecs
import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.backends.base import Backend, BackendError, RemoteSequence, Sequence, StreamEnd
from engine.ban import IntrBan, forbidden
from engine.cml import CallComplete, Future, Malformed, Monitor, Trap
from engine.constrain import CallGuard, call_guard
from engine.grammar import call_structural_tag
from engine.messages import CallRequest, TaskSubmission, TraceEvent
from engine.profiles import compact, profile_for
from engine.sampling import sample
from engine.tools import ToolSpec

CALL_GRACE_S = 2.0  # beyond a tool's timeout before the engine gives up on its result


class Status(enum.Enum):
    PREFILL = "prefill"
    DECODING = "decoding"
    PARKED = "parked"  # [TRAP] or end of sequence with calls pending (async)
    BLOCKED = "blocked"  # sync / sync_parallel: waiting for specific results
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL = frozenset({Status.FINISHED, Status.FAILED, Status.CANCELLED})
RUNNABLE = frozenset({Status.PREFILL, Status.DECODING})


class CallStatus(enum.Enum):
    WAITING_DEPS = "waiting_deps"  # a future argument's call has not finished
    HELD = "held"  # sync_parallel: collected, not yet dispatched
    DISPATCHED = "dispatched"
    DONE = "done"
    ERROR = "error"


@dataclass
class Call:
    call_id: str
    tool: ToolSpec
    args: dict[str, Any]
    deps: set[str]
    position: int  # context position (tokens) where its [END] was decoded
    status: CallStatus = CallStatus.DISPATCHED
    deadline: float | None = None
    value: Any = None
    order: int = 0  # index among the task's calls, in the model's order
    after: set[str] = field(default_factory=set)  # earlier call on the same stateful instance


@dataclass
class TaskRun:
    sub: TaskSubmission
    backend: Backend
    t0: float  # monotonic, when the engine took the task
    started_wall: float
    status: Status = Status.PREFILL
    seq: Sequence | None = None
    prompt_ids: list[int] = field(default_factory=list)
    prefilled: int = 0
    reused_tokens: int = 0  # prompt prefix found in a reused KV cache
    prefill_ms: float = 0.0
    generated: list[int] = field(default_factory=list)
    # Sampled but not yet evaluated into the KV cache: evaluating it starts the next step, so a
    # token's event leaves the engine before the ~40 ms decode of its successor.
    unevaluated: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)  # generated and injected text, in context order
    tail: str = ""  # the last characters of the context's text, for the [INTR] ban
    first_token_at: float | None = None
    last_token_at: float | None = None
    next_seq: int = 1
    tools: dict[str, ToolSpec] = field(default_factory=dict)
    monitor: Monitor = field(default_factory=Monitor)
    calls: dict[str, Call] = field(default_factory=dict)
    last_on_instance: dict[str, str] = field(default_factory=dict)  # instance -> its latest call id
    # To inject: (call id, payload) for a call's result, (None, text) for a person's message.
    interrupts: list[tuple[str | None, str]] = field(default_factory=list)
    waiting_for: set[str] = field(default_factory=set)  # BLOCKED until these calls resolve
    at_eos: bool = False
    forced: deque[int] = field(default_factory=deque)
    guard: CallGuard | None = None  # constrained call blocks (engine/constrain.py), local backends only
    injected_tokens: int = 0
    injections: int = 0
    # Remote backends (the server samples): tokens held while they may begin an [INTR] spelling,
    # token ids banned after they tried to, the context length to cut back to when the rest of a
    # request must not count, and whether we asked for the running request's abort.
    held: list[tuple[int, str]] = field(default_factory=list)
    banned_ids: set[int] = field(default_factory=set)
    keep_tokens: int | None = None
    abort_asked: bool = False
    reported_submissions: int = 0
    cache_expected: int = 0
    cache_hit: int = 0
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    utf8: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )

    @property
    def task_id(self) -> int:
        return self.sub.task_id

    @property
    def mode(self) -> str:
        return self.sub.mode

    @property
    def context_len(self) -> int:
        return len(self.prompt_ids) + self.injected_tokens + len(self.generated)

    def pending(self) -> list[Call]:
        return [c for c in self.calls.values() if c.status not in (CallStatus.DONE, CallStatus.ERROR)]


class Scheduler:
    def __init__(
        self,
        get_backend: Callable[[str], Backend],
        *,
        engine_id: str = "engine",
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        prefill_chunk: int = 128,
    ) -> None:
        self._get_backend = get_backend
        self.engine_id = engine_id
        self._clock = clock
        self._wall = wall
        self._prefill_chunk = prefill_chunk
        self._runs: dict[int, TaskRun] = {}
        self._ready: deque[int] = deque()
        self._outbox: list[CallRequest] = []
        self._bans: dict[int, IntrBan] = {}
        self._draining: set[int] = set()  # remote tasks waiting (parked, blocked) whose last request still ends
        self.worked = False  # the last step did a unit of work (a prefill chunk has no events)

    # -- queries ---------------------------------------------------------------------------
    @property
    def active(self) -> int:
        return len(self._runs)

    def has_work(self) -> bool:
        return bool(self._ready or self._draining)

    def run(self, task_id: int) -> TaskRun | None:
        return self._runs.get(task_id)

    def take_dispatches(self) -> list[CallRequest]:
        out, self._outbox = self._outbox, []
        return out

    # -- commands --------------------------------------------------------------------------
    def submit(self, sub: TaskSubmission) -> list[TraceEvent]:
        """Take a task; returns its first events (running, or failed with the reason)."""
        if sub.task_id in self._runs:
            return []
        now = self._clock()
        try:
            backend = self._get_backend(sub.model)
        except Exception as exc:  # unknown model, bad file hash, load failure: the task says why
            run = TaskRun(sub=sub, backend=None, t0=now, started_wall=self._wall())  # type: ignore[arg-type]
            self._runs[sub.task_id] = run
            return self._finish(run, Status.FAILED, f"model {sub.model!r} unavailable: {exc}")
        run = TaskRun(
            sub=sub, backend=backend, t0=now, started_wall=self._wall(), rng=np.random.default_rng(sub.sampling.seed)
        )
        run.tools = {t["name"]: ToolSpec.from_dict(t) for t in sub.tools}
        run.guard = None if sub.forced_text else call_guard(backend, run.tools)
        self._runs[sub.task_id] = run
        # started_at (unix s) anchors t_ms, so other processes can place events on the wall clock.
        events = [
            self._event(
                run,
                "status",
                {"status": "running", "model": sub.model, "mode": sub.mode, "started_at": run.started_wall,
                 "adapter": backend.spec.adapter_ref()},
            )
        ]
        profile = profile_for(backend.spec)
        try:
            run.prompt_ids = profile.prompt_ids(backend, sub.prompt, list(run.tools.values()), sub.mode)
            if sub.forced_text:
                run.forced = deque(backend.tokenize(sub.forced_text) + sorted(backend.stop_ids())[:1])
        except BackendError as exc:  # a remote tokenizer that does not answer
            return events + self._finish(run, Status.FAILED, str(exc))
        if len(run.prompt_ids) >= backend.n_ctx:
            events += self._finish(
                run,
                Status.FAILED,
                f"the prompt is {len(run.prompt_ids)} tokens, which does not fit the model's context "
                f"of {backend.n_ctx} tokens",
            )
            return events
        if len(run.prompt_ids) + sub.max_tokens > backend.n_ctx:
            events.append(
                self._event(
                    run,
                    "warning",
                    {
                        "message": f"max_tokens lowered to {backend.n_ctx - len(run.prompt_ids)} to fit the "
                        f"context of {backend.n_ctx} tokens",
                    },
                )
            )
        run.seq = backend.open_sequence(run.prompt_ids)
        run.prefilled = run.reused_tokens = run.seq.n_tokens
        self._ready.append(sub.task_id)
        return events

    def cancel(self, task_id: int, reason: str = "cancelled") -> list[TraceEvent]:
        run = self._runs.get(task_id)
        if run is None or run.status in FINAL:
            return []
        return self._finish(run, Status.CANCELLED, reason)

    def human_message(self, task_id: int, text: str) -> list[TraceEvent]:
        """A person's message for a running task: injected like a result, at the next token
        boundary outside a critical section; it wakes a parked task."""
        run = self._runs.get(task_id)
        if run is None or run.status in FINAL:
            return []
        events = [self._event(run, "human_message", {"text": text, "critical": run.monitor.critical})]
        return events + self._queue(run, None, text)

    def deliver(
        self, task_id: int, call_id: str, *, ok: bool, value: Any = None, error: str = "", error_type: str = "error"
    ) -> list[TraceEvent]:
        """A call's result or error arrived. Exactly one interrupt per call: repeats are dropped."""
        run = self._runs.get(task_id)
        if run is None:
            return []
        call = run.calls.get(call_id)
        if call is None or call.status in (CallStatus.DONE, CallStatus.ERROR):
            return [self._event(run, "late_result", {"call_id": call_id, "ok": ok})]
        return self._resolve(run, call, ok, value, error, error_type)

    def expire(self) -> list[TraceEvent]:
        """Time out calls past their deadline and tasks past their wall-time budget."""
        now = self._clock()
        events: list[TraceEvent] = []
        for run in list(self._runs.values()):
            if now - run.t0 > run.sub.budgets.max_wall_s:
                events += self._finish(
                    run,
                    Status.FINISHED,
                    f"wall-time budget of {run.sub.budgets.max_wall_s:g} s exhausted",
                    finish_reason="time_limit",
                )
                continue
            for call in list(run.calls.values()):
                if call.status is CallStatus.DISPATCHED and call.deadline is not None and now > call.deadline:
                    events += self._resolve(
                        run, call, False, None, f"no result within the {call.tool.timeout_s:g} s timeout", "timeout"
                    )
        return events

    def step(self) -> list[TraceEvent]:
        """One unit of work for the next runnable task, round-robin. [] when idle (`worked` then
        says whether a unit without events, such as a prefill chunk, was done)."""
        tried = 0
        self.worked = False
        drained = self._drain()
        while self._ready:
            task_id = self._ready.popleft()
            run = self._runs.get(task_id)
            if run is None or run.status not in RUNNABLE:
                continue
            try:
                if run.backend.remote:
                    events = self._remote_step(run)
                elif run.status is Status.PREFILL:
                    events = self._prefill(run)
                elif run.interrupts and not run.monitor.critical:
                    events = self._inject(run)
                else:
                    events = self._decode(run)
            except Exception as exc:  # a backend failure ends this task, never the engine
                return self._finish(run, Status.FAILED, f"backend error: {exc}")
            if run.status in RUNNABLE:
                self._ready.append(task_id)
            if events or not run.backend.remote:
                self.worked = True
                return events
            tried += 1
            if tried >= len(self._ready):
                return drained  # only remote tasks waiting for their servers
        return drained

    def _drain(self) -> list[TraceEvent]:
        """Read the ends of requests of remote tasks that stopped to wait: their extra tokens are
        dropped and the context cut back, so the server holds no request while a task waits."""
        events: list[TraceEvent] = []
        for task_id in list(self._draining):
            run = self._runs.get(task_id)
            if run is None or run.status in RUNNABLE or not run.seq.streaming:
                self._draining.discard(task_id)
                continue
            for item in run.seq.poll():
                if isinstance(item, StreamEnd):
                    events += self._remote_end(run, item)
                    self._draining.discard(task_id)
        return events

    # -- work units ------------------------------------------------------------------------
    def _prefill(self, run: TaskRun) -> list[TraceEvent]:
        assert run.seq is not None
        start = self._clock()
        chunk = run.prompt_ids[run.prefilled : run.prefilled + self._prefill_chunk]
        run.seq.append(chunk)
        run.prefilled += len(chunk)
        run.prefill_ms += (self._clock() - start) * 1000
        if run.prefilled < len(run.prompt_ids):
            return []
        run.status = Status.DECODING
        return [
            self._event(
                run,
                "prefill",
                {
                    "prompt_tokens": len(run.prompt_ids),
                    "reused_tokens": run.reused_tokens,
                    "ms": round(run.prefill_ms, 2),
                },
            )
        ]

    def _flush_unevaluated(self, run: TaskRun) -> None:
        if run.unevaluated:
            assert run.seq is not None
            run.seq.append(run.unevaluated)
            run.unevaluated = []

    def _inject(self, run: TaskRun) -> list[TraceEvent]:
        """Evaluate the queued interrupts' frame on top of the live KV cache (no re-prefill)."""
        assert run.seq is not None
        text, ids, results, messages = self._frame(run)
        room = run.backend.n_ctx - run.seq.n_tokens - len(run.unevaluated) - 1
        if len(ids) > room:
            return self._finish(
                run, Status.FINISHED, "the context is full: no room for the results", finish_reason="context_full"
            )
        # The last sampled token and the frame go in one evaluation: the frame reaches the backend
        # at once instead of after a separate forward pass for that token.
        position = run.seq.n_tokens + len(run.unevaluated)
        began_ms = round((self._clock() - run.t0) * 1000, 3)
        start = self._clock()
        run.seq.append(run.unevaluated + ids)
        run.unevaluated = []
        ms = (self._clock() - start) * 1000
        run.injected_tokens += len(ids)
        run.injections += 1
        run.text.append(text)
        run.tail = (run.tail + text)[-32:]
        run.at_eos = False
        return [
            self._event(
                run,
                "interrupt_injected",
                {
                    "calls": [cid for cid, _ in results],
                    "messages": messages,
                    "began_ms": began_ms,
                    "position": position,
                    "tokens": len(ids),
                    "ms": round(ms, 2),
                    "text": text,
                },
            )
        ]

    def _frame(self, run: TaskRun) -> tuple[str, list[int], list[tuple[str, str]], list[str]]:
        """The queued interrupts as one frame: text, token ids, the results and the messages."""
        batch, run.interrupts = run.interrupts, []
        profile = profile_for(run.backend.spec)
        results = [(cid, payload) for cid, payload in batch if cid is not None]
        messages = [payload for cid, payload in batch if cid is None]
        text = profile.frame_results(results) if results else ""
        ids = run.backend.tokenize(text) if text else []
        for message in messages:
            frame, frame_ids = profile.frame_user_message(run.backend, message)
            text, ids = text + frame, ids + frame_ids
        return text, ids, results, messages

    def _decode(self, run: TaskRun) -> list[TraceEvent]:
        assert run.seq is not None
        self._flush_unevaluated(run)
        logits = run.seq.logits()
        if run.tools and not run.monitor.in_block:
            logits = self._ban(run.backend).apply(logits, run.tail, trap=bool(run.pending() or run.interrupts))
        if run.guard is not None:
            logits = run.guard.mask(logits, run.tail, run.sub.sampling.temperature)
        token = sample(logits, run.sub.sampling, run.rng)
        if run.forced:
            token = run.forced.popleft()
        if token in run.backend.stop_ids():
            return self._end_of_sequence(run)
        events = self._on_token(run, token, run.utf8.decode(run.backend.token_bytes(token)))
        if run.status not in FINAL:
            run.unevaluated = [token]
        return events

    def _on_token(self, run: TaskRun, token: int, piece: str) -> list[TraceEvent]:
        """A generated token, whoever sampled it: text, CML, budgets."""
        now = self._clock()
        run.generated.append(token)
        if run.first_token_at is None:
            run.first_token_at = now
        run.last_token_at = now
        run.text.append(piece)
        run.tail = (run.tail + piece)[-32:]
        events = [self._event(run, "token", {"i": len(run.generated), "id": token, "text": piece})]
        if run.tools:
            cml = run.monitor.feed(piece)
            events += self._on_cml(run, cml)
            if run.guard is not None:  # after _on_cml: a call completed by this token holds its id
                run.forced.extend(run.guard.observe(piece, cml, run.calls))
        if run.status in FINAL:
            return events
        limit = min(run.sub.max_tokens, run.backend.n_ctx - run.context_len)
        if len(run.generated) >= run.sub.max_tokens or limit <= 0:
            return events + self._finish(run, Status.FINISHED, "", finish_reason="length")
        return events

    def _end_of_sequence(self, run: TaskRun) -> list[TraceEvent]:
        events = self._on_cml(run, run.monitor.close()) if run.tools else []
        if run.status in FINAL:
            return events
        if run.mode == "sync_parallel" and self._held(run):
            return events + self._release_batch(run, "end_of_turn")
        if run.interrupts:
            return events  # injected at the next step, then decoding goes on
        if run.pending():
            # The model must see every result: wait for them, then continue the turn.
            run.at_eos = True
            run.status = Status.PARKED if run.mode == "async" else Status.BLOCKED
            run.waiting_for = {c.call_id for c in run.pending()} if run.status is Status.BLOCKED else set()
            return events + [
                self._event(
                    run, "parked", {"reason": "end_of_sequence", "pending": sorted(c.call_id for c in run.pending())}
                )
            ]
        return events + self._finish(run, Status.FINISHED, "", finish_reason="stop")

    # -- CML --------------------------------------------------------------------------------
    def _on_cml(self, run: TaskRun, cml_events: list) -> list[TraceEvent]:
        events: list[TraceEvent] = []
        for item in cml_events:
            if isinstance(item, CallComplete):
                events += self._on_call(run, item)
            elif isinstance(item, Trap):
                events += self._on_trap(run)
            elif isinstance(item, Malformed):
                events.append(self._event(run, "malformed", {"raw": item.raw[-500:], "reason": item.reason}))
                events += self._queue(run, "error", error_payload("malformed", item.reason))
        return events

    def _call_problem(self, run: TaskRun, item: CallComplete) -> str:
        if item.call_id in run.calls:
            return f"duplicate call id {item.call_id!r}"
        if len(run.calls) >= run.sub.budgets.max_calls:
            return f"call budget exhausted (at most {run.sub.budgets.max_calls} calls)"
        tool = run.tools.get(item.name)
        if tool is None:
            return f"unknown function {item.name!r}; available: {', '.join(sorted(run.tools))}"
        unknown = [f for f in item.futures if f not in run.calls]
        if unknown:
            return f"{', '.join(unknown)} is not the id of an earlier call"
        return ""

    def _on_call(self, run: TaskRun, item: CallComplete) -> list[TraceEvent]:
        position = run.context_len
        problem = self._call_problem(run, item)
        if not problem:
            tool = run.tools[item.name]
            try:
                args = tool.bind(item.positional, item.keywords)
                # Futures are checked once their values are known; validate the literal part now.
                literal = {k: v for k, v in args.items() if not isinstance(v, Future)}
                tool.validate({**literal, **{k: _placeholder(tool, k) for k in args if k not in literal}})
            except ValueError as exc:
                problem = str(exc)
        if problem:
            # The id is burnt either way, so a retry must use a new one and results stay unambiguous.
            if item.call_id not in run.calls:
                run.calls[item.call_id] = Call(
                    item.call_id, ToolSpec(item.name, "", {}), {}, set(), position, status=CallStatus.ERROR
                )
            events = [
                self._event(
                    run,
                    "call_error",
                    {"call_id": item.call_id, "name": item.name, "error": problem, "raw": item.raw[-500:]},
                )
            ]
            return events + self._queue(run, item.call_id, error_payload("invalid_call", problem))
        deps = set(item.futures)
        call = Call(item.call_id, tool, args, deps, position, order=len(run.calls))
        if tool.instance:
            # Calls on one stateful instance run one at a time, in the order the model issued them.
            previous = run.last_on_instance.get(tool.instance)
            if previous is not None:
                call.after = {previous}
            run.last_on_instance[tool.instance] = call.call_id
        run.calls[item.call_id] = call
        events = [
            self._event(
                run,
                "call_decoded",
                {
                    "call_id": call.call_id,
                    "name": tool.name,
                    "args": _jsonable(args),
                    "position": position,
                    "depends_on": sorted(deps),
                },
            )
        ]
        if run.mode == "sync_parallel":
            call.status = CallStatus.HELD
            return events
        events += self._dispatch_or_wait(run, call)
        if run.mode == "sync" and call.status is not CallStatus.ERROR:
            run.status = Status.BLOCKED
            run.waiting_for = {call.call_id}
            events.append(self._event(run, "blocked", {"waiting_for": [call.call_id]}))
        return events

    def _on_trap(self, run: TaskRun) -> list[TraceEvent]:
        if run.mode == "sync_parallel" and self._held(run):
            return self._release_batch(run, "trap")
        if run.mode == "async" and run.pending() and not run.interrupts:
            run.status = Status.PARKED
            return [self._event(run, "trap", {"action": "parked", "pending": sorted(c.call_id for c in run.pending())})]
        return [self._event(run, "trap", {"action": "noop"})]

    def _held(self, run: TaskRun) -> list[Call]:
        return [c for c in run.calls.values() if c.status is CallStatus.HELD]

    def _release_batch(self, run: TaskRun, why: str) -> list[TraceEvent]:
        batch = self._held(run)
        events: list[TraceEvent] = []
        for call in batch:
            events += self._dispatch_or_wait(run, call)
        waiting = {c.call_id for c in batch if c.status not in (CallStatus.DONE, CallStatus.ERROR)}
        if waiting:
            run.status = Status.BLOCKED
            run.waiting_for = waiting
            events.append(self._event(run, "blocked", {"waiting_for": sorted(waiting), "why": why}))
        return events

    # -- calls and results ----------------------------------------------------------------------
    def _dispatch_or_wait(self, run: TaskRun, call: Call) -> list[TraceEvent]:
        unresolved = [d for d in call.deps if run.calls[d].status is not CallStatus.DONE]
        failed = [d for d in call.deps if run.calls[d].status is CallStatus.ERROR]
        if failed:
            return self._resolve(run, call, False, None, f"depends on failed call {failed[0]}", "dependency_failed")
        ahead = [d for d in call.after if run.calls[d].status not in (CallStatus.DONE, CallStatus.ERROR)]
        if unresolved or ahead:
            call.status = CallStatus.WAITING_DEPS
            return [self._event(run, "call_waiting", {"call_id": call.call_id, "on": sorted(unresolved + ahead)})]
        args = {k: run.calls[v.call_id].value if isinstance(v, Future) else v for k, v in call.args.items()}
        if call.deps:
            try:
                call.tool.validate(args)
            except ValueError as exc:
                return self._resolve(run, call, False, None, str(exc), "invalid_arguments")
        call.args = args
        call.status = CallStatus.DISPATCHED
        call.deadline = self._clock() + call.tool.timeout_s + CALL_GRACE_S
        self._outbox.append(
            CallRequest(
                run.task_id, call.call_id, self.engine_id, call.tool.to_dict(), args, dispatched_at=self._wall(),
                order=call.order,
            )
        )
        return [
            self._event(
                run, "call_dispatched", {"call_id": call.call_id, "name": call.tool.name, "args": _jsonable(args)}
            )
        ]

    def _resolve(
        self, run: TaskRun, call: Call, ok: bool, value: Any, error: str, error_type: str = "error"
    ) -> list[TraceEvent]:
        call.status = CallStatus.DONE if ok else CallStatus.ERROR
        call.value = value if ok else None
        payload = compact(value) if ok else error_payload(error_type, error)
        limit = run.sub.budgets.max_result_chars
        events: list[TraceEvent] = []
        if len(payload) > limit:
            events.append(
                self._event(run, "truncated", {"call_id": call.call_id, "chars": len(payload), "limit": limit})
            )
            payload = payload[:limit] + f"…[truncated {len(payload) - limit} chars]"
        # `injected` is exactly what the model will see (after truncation), never the raw result.
        events.append(
            self._event(
                run,
                "call_result",
                {
                    "call_id": call.call_id,
                    "ok": ok,
                    "error": error,
                    "error_type": "" if ok else error_type,
                    "injected": payload,
                },
            )
        )
        events += self._queue(run, call.call_id, payload)
        # Dependent calls start now, with this value substituted: no round trip through the model.
        for other in run.calls.values():
            if other.status is CallStatus.WAITING_DEPS and call.call_id in other.deps | other.after:
                events += self._dispatch_or_wait(run, other)
        return events

    def _queue(self, run: TaskRun, call_id: str | None, payload: str) -> list[TraceEvent]:
        run.interrupts.append((call_id, payload))
        events = []
        if call_id is not None:
            events.append(self._event(run, "interrupt_queued", {"call_id": call_id, "critical": run.monitor.critical}))
            run.waiting_for.discard(call_id)
        wake = (run.status is Status.PARKED) or (run.status is Status.BLOCKED and not run.waiting_for)
        if wake:
            events.append(self._event(run, "resumed", {"from": run.status.value}))
            run.status = Status.DECODING
            if run.task_id not in self._ready:
                self._ready.append(run.task_id)
        return events

    def _ban(self, backend: Backend) -> IntrBan:
        ban = self._bans.get(id(backend))
        if ban is None:
            ban = self._bans[id(backend)] = IntrBan(backend.vocab_texts())
        return ban

    # -- helpers ---------------------------------------------------------------------------
    def _event(self, run: TaskRun, kind: str, payload: dict) -> TraceEvent:
        event = TraceEvent(
            task_id=run.task_id,
            seq=run.next_seq,
            t_ms=round((self._clock() - run.t0) * 1000, 3),
            kind=kind,
            payload=payload,
        )
        run.next_seq += 1
        return event

    def t_ms(self, task_id: int, wall: float) -> float:
        run = self._runs.get(task_id)
        return round((wall - run.started_wall) * 1000, 3) if run else 0.0

    def event(self, task_id: int, kind: str, payload: dict) -> TraceEvent | None:
        """An event reported by another process (a worker), numbered in this task's sequence."""
        run = self._runs.get(task_id)
        return self._event(run, kind, payload) if run else None

    def metrics(self, run: TaskRun) -> dict:
        tokens = len(run.generated)
        latency_ms = (
            (run.last_token_at - run.first_token_at) * 1000
            if run.first_token_at is not None and run.last_token_at is not None
            else None
        )
        return {
            "queue_wait_ms": round(max(0.0, run.started_wall - run.sub.submitted_at) * 1000, 1),
            "prompt_tokens": len(run.prompt_ids),
            "prefill_ms": round(run.prefill_ms, 1),
            "reused_prompt_tokens": run.reused_tokens,
            "ttft_ms": round((run.first_token_at - run.t0) * 1000, 1) if run.first_token_at else None,
            "tokens": tokens,
            "latency_ms": round(latency_ms, 1) if latency_ms is not None else None,
            # Decode rate between the first and last token (the first token's wait is the TTFT).
            "tokens_per_s": round((tokens - 1) / (latency_ms / 1000), 2) if latency_ms and tokens > 1 else None,
            "total_ms": round((self._clock() - run.t0) * 1000, 1),
            "calls": len(run.calls),
            "injections": run.injections,
            "injected_tokens": run.injected_tokens,
            **self._remote_metrics(run),
        }

    def _finish(self, run: TaskRun, status: Status, reason: str, *, finish_reason: str = "") -> list[TraceEvent]:
        run.status = status
        tail = run.utf8.decode(b"", final=True)
        if tail:
            run.text.append(tail)
        if run.seq is not None:
            run.seq.close()
            run.seq = None
        payload = {
            "status": status.value,
            "reason": reason,
            "finish_reason": finish_reason or status.value,
            "text": "".join(run.text),
            "metrics": self.metrics(run),
            "pending_calls": sorted(c.call_id for c in run.pending()),
        }
        event = self._event(run, "finish", payload)
        del self._runs[run.task_id]
        if run.task_id in self._ready:
            self._ready.remove(run.task_id)
        return [event]


    # -- remote backends (SGLang): the server samples; interrupts by abort and resubmit --------
    def _remote_step(self, run: TaskRun) -> list[TraceEvent]:
        seq = run.seq
        assert isinstance(seq, RemoteSequence)
        if run.status is Status.PREFILL:
            run.status = Status.DECODING
            seq.submit(run.prompt_ids, self._remote_params(run), "prompt")
            return []
        events: list[TraceEvent] = []
        for item in seq.poll():
            events += self._remote_report(run)
            if isinstance(item, StreamEnd):
                events += self._remote_end(run, item)
            elif run.keep_tokens is None and run.status is Status.DECODING:
                events += self._remote_token(run, *item)
            if run.status in FINAL:
                return events
        if run.status is not Status.DECODING and seq.streaming:
            self._draining.add(run.task_id)
        elif run.status is Status.DECODING and not seq.streaming and run.keep_tokens is None:
            events += self._remote_resume(run)
        elif run.interrupts and not run.monitor.critical and seq.streaming and not run.abort_asked:
            run.abort_asked = True
            seq.abort()  # the results go in at the end of this request's stream
        return events

    def _remote_token(self, run: TaskRun, token: int, piece: str) -> list[TraceEvent]:
        if token in run.backend.stop_ids():
            self._remote_cut(run)
            return self._end_of_sequence(run)
        if run.tools and not run.monitor.in_block:
            tail = run.tail + "".join(p for _, p in run.held)
            if forbidden(tail, piece):
                # The model began an [INTR] spelling: drop this token, ban it, continue without it.
                run.banned_ids.add(token)
                self._remote_cut(run, extra=len(run.held))
                return [self._event(run, "banned_token", {"id": token, "text": piece})]
            if IntrBan.open_bracket(tail + piece):
                run.held.append((token, piece))  # the next token decides what the marker becomes
                return []
        held, run.held = [*run.held, (token, piece)], []
        events: list[TraceEvent] = []
        for tid, text in held:
            events += self._on_token(run, tid, text)
            if run.status is not Status.DECODING:
                # A sync call, a trap, the end of the turn or the budget: the rest of this request
                # must not count (the server may have generated more).
                self._remote_cut(run)
                break
        return events

    def _remote_cut(self, run: TaskRun, extra: int = 0) -> None:
        """Keep the context as the engine has used it (plus `extra` held tokens); end the request."""
        if run.seq is None:
            return  # finished: closing the sequence aborted its request
        run.keep_tokens = run.context_len + extra
        if run.seq.streaming and not run.abort_asked:
            run.abort_asked = True
            run.seq.abort()

    def _remote_end(self, run: TaskRun, end: StreamEnd) -> list[TraceEvent]:
        seq = run.seq
        asked, run.abort_asked = run.abort_asked, False
        if run.keep_tokens is not None:
            seq.truncate(min(run.keep_tokens, seq.n_tokens))
            run.keep_tokens = None
        if run.status in FINAL:
            return []
        if run.status is not Status.DECODING and asked:
            return []  # a waiting task's request ended as asked; nothing stays open on the server
        if end.finish == "error":
            return self._finish(run, Status.FAILED, f"SGLang server: {end.message}")
        if end.finish == "abort" and not asked:
            return self._finish(run, Status.FAILED, f"the SGLang server aborted the request: {end.message}")
        if run.status is not Status.DECODING:
            return []  # parked or blocked: no request stays open while the task waits
        if end.finish == "stop" and not asked:
            return self._end_of_sequence(run)  # the stop token itself was not streamed
        if end.finish == "length" and not asked:
            return self._finish(run, Status.FINISHED, "the server's length limit", finish_reason="length")
        return self._remote_resume(run)

    def _remote_resume(self, run: TaskRun) -> list[TraceEvent]:
        """Submit again: with the queued interrupts when outside a critical section, else just
        to go on (after a ban, or when an aborted request's last tokens opened a block)."""
        if run.interrupts and not run.monitor.critical:
            return self._remote_inject(run)
        run.seq.submit([], self._remote_params(run), "continue")
        return []

    def _remote_inject(self, run: TaskRun) -> list[TraceEvent]:
        text, ids, results, messages = self._frame(run)
        if len(ids) > run.backend.n_ctx - run.context_len - 1:
            return self._finish(
                run, Status.FINISHED, "the context is full: no room for the results", finish_reason="context_full"
            )
        position = run.context_len
        began_ms = round((self._clock() - run.t0) * 1000, 3)
        run.injected_tokens += len(ids)
        run.injections += 1
        run.text.append(text)
        run.tail = (run.tail + text)[-32:]
        run.at_eos = False
        run.seq.submit(ids, self._remote_params(run), "interrupt")
        return [self._event(run, "interrupt_injected", {
            "calls": [cid for cid, _ in results], "messages": messages, "began_ms": began_ms,
            "position": position, "tokens": len(ids), "ms": 0.0, "text": text, "rid": run.seq.submissions[-1].rid,
        })]

    def _remote_params(self, run: TaskRun) -> dict[str, Any]:
        sampling = run.sub.sampling
        budget = min(run.sub.max_tokens - len(run.generated), run.backend.n_ctx - run.context_len - 1)
        params = run.backend.sampling_params(
            max_new_tokens=max(1, budget),
            temperature=sampling.temperature, top_p=sampling.top_p, seed=sampling.seed,
            structural_tag=call_structural_tag(list(run.tools)) if run.tools else None,
        )
        if run.banned_ids:
            params["logit_bias"] = {str(i): -100.0 for i in sorted(run.banned_ids)}
        return params

    def _remote_report(self, run: TaskRun) -> list[TraceEvent]:
        """Each submission's prompt and cached tokens, once its first chunk arrived."""
        events: list[TraceEvent] = []
        for sub in run.seq.submissions[run.reported_submissions:]:
            if sub.prompt_tokens is None:
                break
            run.reported_submissions += 1
            cached = sub.cached_tokens or 0
            if sub.reason == "prompt":
                run.prefill_ms = round((self._clock() - run.t0) * 1000, 1)
                events.append(self._event(run, "prefill", {
                    "prompt_tokens": sub.prompt_tokens, "reused_tokens": cached, "ms": run.prefill_ms,
                    "rid": sub.rid}))
                continue
            run.cache_expected += sub.expected_cached
            run.cache_hit += min(cached, sub.expected_cached)
            events.append(self._event(run, "resubmitted", {
                "rid": sub.rid, "reason": sub.reason, "prompt_tokens": sub.prompt_tokens, "cached_tokens": cached,
                "expected_cached": sub.expected_cached, "abort_to_first_token_ms": sub.abort_to_first_token_ms}))
            if cached < 0.95 * sub.expected_cached - 1:
                events.append(self._event(run, "warning", {
                    "message": f"prefix cache miss: the server had {cached} of the {sub.expected_cached} tokens "
                               f"already in this context cached (request {sub.rid})"}))
        return events

    def _remote_metrics(self, run: TaskRun) -> dict[str, Any]:
        if run.backend is None or not run.backend.remote or not run.cache_expected:
            return {}
        return {"resubmissions": run.reported_submissions - 1, "cached_tokens": run.cache_hit,
                "cache_hit_ratio": round(run.cache_hit / run.cache_expected, 4)}


def error_payload(kind: str, message: str) -> str:
    """What the model sees for a failed call: short and structured, never a traceback."""
    return compact({"error": {"type": kind, "message": message[:500]}})


def _placeholder(tool: ToolSpec, name: str) -> Any:
    """Stand-in for a future's value during the early check: anything its schema allows."""
    schema = tool.parameters.get("properties", {}).get(name, {})
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    return {"string": "", "integer": 0, "number": 0, "boolean": False, "array": [], "object": {}}.get(kind, None)


def _jsonable(args: dict[str, Any]) -> dict[str, Any]:
    return {k: ({"$future": v.call_id} if isinstance(v, Future) else v) for k, v in args.items()}
