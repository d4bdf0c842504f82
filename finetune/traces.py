"""CML training traces: what the engine's context would hold after a run, token for token.

A `Plan` is what should happen in a task: the question, the tools, the calls with their results
(or errors) and execution times, an optional message from a person, and the final answer.
`simulate` plays it out on a simulated clock for one mode, as the engine would: the model writes
calls in LPT order at `token_ms` per token; a call is dispatched at its `[END]`; its result is
injected at the first token boundary outside a call block after it arrives (and what arrives while
a frame is being evaluated goes in right after it, before the model writes again); the model writes
`[TRAP][END]` when it cannot go on without results; a dependent call is written only after the
result it needs was injected. The outcome is a list of segments (model text, engine-forced call
heads, injected frames). `render` turns them into token ids with the engine's own prompt profile,
framing and call-id forcing, and a loss mask that covers only what the model writes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from engine.backends.base import Backend
from engine.constrain import head_text, next_call_id
from engine.interrupts import error_payload
from engine.profiles import TUNED_PROFILE, Profile, compact
from engine.tools import ToolSpec
from webapp.bench.plan import call_text

MODES = ("sync", "sync_parallel", "async")
# An injected token costs this share of a decoded one: one batched forward pass over the frame
# (`bench_engine` here: a 28-token frame in ~150 ms against ~19 ms per decoded token).
INJECT_FACTOR = 0.25
DISPATCH_MS = 3.0  # [END] decoded -> the tool starts (measured engine + Celery dispatch, rounded)

# Segment kinds. Only MODEL segments are trained on.
MODEL, MISTAKE, FORCED, FRAME = "model", "mistake", "forced", "frame"


@dataclass(frozen=True)
class PlanCall:
    name: str
    args: dict[str, Any]
    latency_ms: float
    result: Any = None
    error: tuple[str, str] | None = None  # (type, message) when the tool fails or times out
    deps: tuple[int, ...] = ()  # calls whose result must be injected before this one is written
    mistake: dict[str, Any] | None = None  # arguments of a first attempt the engine refuses

    @property
    def payload(self) -> str:
        return error_payload(*self.error) if self.error else compact(self.result)


@dataclass(frozen=True)
class Message:
    """A person's message arriving `at_ms` after the first token, asking for more calls."""

    at_ms: float
    text: str
    calls: tuple[PlanCall, ...]


@dataclass(frozen=True)
class Plan:
    source: str  # BFCL entry id, or a synthetic scenario's id
    dataset: str
    question: str
    tools: tuple[ToolSpec, ...]
    calls: tuple[PlanCall, ...]
    answer: str
    message: Message | None = None
    entries: tuple[tuple[str, str], ...] = ()  # the BFCL (dataset, entry id) pairs it was made from


@dataclass
class Segment:
    kind: str
    text: str
    ids: list[int] = field(default_factory=list)
    at_ms: float = 0.0  # simulated time when the segment ends
    # A frame's contents, in frame order: results the tools delivered (id, call) and messages.
    delivered: list[tuple[str, PlanCall]] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


@dataclass
class Trace:
    plan: Plan
    mode: str
    token_ms: float
    segments: list[Segment]

    @property
    def frames(self) -> list[Segment]:
        return [s for s in self.segments if s.kind == FRAME]

    @property
    def waits(self) -> int:
        """How often the model parks ([TRAP][END]) for results it cannot go on without."""
        return sum(1 for s in self.segments if s.kind == MODEL and s.text.strip() == "[TRAP][END]")


# Training traces are rendered for the tuned model, which gets no in-context examples.
TUNED = TUNED_PROFILE


class _Run:
    """The simulated engine + model for one trace."""

    def __init__(self, plan: Plan, mode: str, token_ms: float, backend: Backend, profile: Profile) -> None:
        self.plan, self.mode, self.token_ms = plan, mode, token_ms
        self.backend, self.profile = backend, profile
        self.calls: list[PlanCall] = list(plan.calls)
        self.t = 0.0
        self.segments: list[Segment] = []
        self.ids: dict[int, str] = {}  # call index -> its id
        self.used_ids: list[str] = []
        # (time, what): a call's index, a refused block's id, or None for the person's message.
        self.arrivals: list[tuple[float, int | str | None]] = []
        self.queued: list[int | str | None] = []
        self.refusals: dict[str, str] = {}
        self.injected: set[int] = set()
        self.message_done = plan.message is None
        if plan.message is not None:
            self.arrivals.append((plan.message.at_ms, None))
        self.after_frame = True  # the assistant's text starts fresh: no separating space
        self.after_results = False  # the context ends with a frame of results (the engine's run.after_frame)

    # -- the clock and the context ---------------------------------------------------------
    def _emit(self, kind: str, text: str) -> None:
        ids = self.backend.tokenize(text)
        self.t += len(ids) * self.token_ms
        self.segments.append(Segment(kind, text, ids, self.t))
        self.after_frame = self.after_results = False

    def _collect(self) -> None:
        for when, key in sorted(self.arrivals, key=lambda a: a[0]):
            if when <= self.t:
                self.arrivals.remove((when, key))
                self.queued.append(key)

    def _due(self) -> bool:
        self._collect()
        return bool(self.queued)

    def _inject(self) -> None:
        """One frame with everything queued: results in the order they arrived, then a person's
        message (the engine's order). What arrived while it was evaluated follows at once, as
        the next frame, before the model writes anything (the engine injects before it decodes)."""
        self._inject_one()
        while self._due():
            self._inject_one()

    def _inject_one(self) -> None:
        results = [self._result(key) for key in self.queued if key is not None]
        messages = [self.plan.message.text for key in self.queued if key is None and self.plan.message]
        text = self.profile.frame_results(results) if results else ""
        if self.after_results and text.startswith(" "):
            text = text[1:]  # right after another frame of results: they read as one frame
        ids = self.backend.tokenize(text) if text else []
        for message in messages:
            frame, frame_ids = self.profile.frame_user_message(self.backend, message)
            text, ids = text + frame, ids + frame_ids
        self.t += len(ids) * self.token_ms * INJECT_FACTOR
        delivered = [(self.ids[key], self.calls[key]) for key in self.queued if isinstance(key, int)]
        self.segments.append(Segment(FRAME, text, ids, self.t, delivered, messages))
        for key in self.queued:
            if key is None:
                self._take_message()
            elif isinstance(key, int):
                self.injected.add(key)
        self.queued = []
        self.after_frame = True
        self.after_results = bool(results) and not messages

    def _result(self, key: int | str) -> tuple[str, str]:
        if isinstance(key, str):  # a refused block: its id and the engine's error
            return key, self.refusals[key]
        return self.ids[key], self.calls[key].payload

    def _take_message(self) -> None:
        assert self.plan.message is not None
        self.message_done = True
        base = len(self.calls)
        for call in self.plan.message.calls:
            deps = tuple(base + d for d in call.deps)
            self.calls.append(PlanCall(call.name, call.args, call.latency_ms, call.result, call.error, deps,
                                       call.mistake))

    # -- what the model writes --------------------------------------------------------------
    def _sep(self) -> str:
        return "" if self.after_frame else " "

    def _write_call(self, index: int) -> None:
        call = self.calls[index]
        if call.mistake is not None:
            # The engine refuses it at its [END]; the error goes in at the next token boundary.
            refused = self._block(call.name, call.mistake, MISTAKE)
            problem = _validation_error(self._tool(call.name), call.mistake)
            self.refusals[refused] = error_payload("invalid_call", problem)
            self.arrivals.append((self.t, refused))
            self._collect()
            self._inject()
        cid = self._block(call.name, call.args, MODEL)
        self.ids[index] = cid
        if self.mode != "sync_parallel":
            self.arrivals.append((self.t + DISPATCH_MS + call.latency_ms, index))

    def _block(self, name: str, args: dict[str, Any], kind: str) -> str:
        cid = next_call_id(self.used_ids)
        self.used_ids.append(cid)
        self._emit(kind, self._sep() + "[CALL]")
        self._emit(FORCED, head_text(cid))
        self._emit(kind, f" {call_text(name, args)} [END]")
        return cid

    def _tool(self, name: str) -> ToolSpec:
        return next(t for t in self.plan.tools if t.name == name)

    def _ready(self) -> list[int]:
        written = set(self.ids)
        ready = [i for i, c in enumerate(self.calls) if i not in written and all(d in self.injected for d in c.deps)]
        if self.mode == "async":  # the longest-running first (LPT), as the protocol asks
            ready.sort(key=lambda i: (-self._tool(self.calls[i].name).est_latency_ms, i))
        return ready

    def _all_done(self) -> bool:
        return self.message_done and len(self.injected) == len(self.calls)

    def _wait_for_next(self) -> None:
        """Parked (or blocked): time jumps to the next arrival; what arrived by then goes in."""
        self.t = max(self.t, min(when for when, _ in self.arrivals))
        self._collect()
        self._inject()

    # -- the modes ----------------------------------------------------------------------------
    def play(self) -> list[Segment]:
        while not self._all_done():
            ready = self._ready()
            if ready:
                if self.mode == "sync_parallel":
                    self._batch(ready)
                else:
                    self._write_call(ready[0])
                    if self.mode == "sync":
                        self._block_until(ready[0])
                    elif self._due():
                        self._inject()
                continue
            if not self.arrivals:
                raise ValueError(f"{self.plan.source}: a call waits for a result that never comes")
            if all(key is None for _, key in self.arrivals):
                # Only the message is still to come: it arrives now, before the model answers (a
                # message that comes later is a new task's business, not this trace's).
                self.arrivals = [(self.t, None)]
            elif self.mode == "async":
                self._emit(MODEL, self._sep() + "[TRAP][END]")
            self._wait_for_next()
        self._emit(MODEL, self._sep() + self.plan.answer)
        return self.segments

    def _block_until(self, index: int) -> None:
        """sync: the task waits for this call; a message that came meanwhile goes in with it."""
        while index not in self.injected:
            pending = [when for when, i in self.arrivals if i == index]
            self.t = max(self.t, pending[0])
            self._collect()
            self._inject()

    def _batch(self, ready: list[int]) -> None:
        for index in ready:
            self._write_call(index)
        self._emit(MODEL, self._sep() + "[TRAP][END]")
        start = self.t
        for index in ready:
            self.arrivals.append((start + DISPATCH_MS + self.calls[index].latency_ms, index))
        self.t = max(when for when, i in self.arrivals if i in ready)
        self._collect()
        self._inject()


def _validation_error(tool: ToolSpec, args: dict[str, Any]) -> str:
    try:
        tool.validate(tool.bind([], args))
    except ValueError as exc:
        return str(exc)
    raise ValueError(f"the mistaken call to {tool.name} is valid: {args!r}")


def simulate(plan: Plan, mode: str, token_ms: float, backend: Backend, profile: Profile | None = None) -> Trace:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    profile = profile or TUNED
    return Trace(plan, mode, token_ms, _Run(plan, mode, token_ms, backend, profile).play())


@dataclass(frozen=True)
class Rendered:
    ids: list[int]
    mask: list[int]  # 1 where the model wrote the token and it is trained on
    prompt_tokens: int


def render(trace: Trace, backend: Backend, profile: Profile | None = None) -> Rendered:
    """The engine's context for this run plus the model's end-of-turn token (which the engine
    samples but does not keep)."""
    profile = profile or TUNED
    prompt = profile.prompt_ids(backend, trace.plan.question, list(trace.plan.tools), trace.mode)
    ids, mask = list(prompt), [0] * len(prompt)
    for seg in trace.segments:
        ids += seg.ids
        mask += [1 if seg.kind == MODEL else 0] * len(seg.ids)
    stop = backend.tokenize("<|im_end|>", special=True)
    return Rendered(ids + stop, mask + [1] * len(stop), len(prompt))


def draw_times(rng: random.Random, n: int) -> list[float]:
    """Tool execution times, 1 ms - 1 s, log-uniform (the paper's adaptation step)."""
    return [round(10 ** rng.uniform(0, 3), 1) for _ in range(n)]


def draw_token_ms(rng: random.Random) -> float:
    return round(rng.uniform(5, 30), 1)
