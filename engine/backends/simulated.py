"""A simulated decoder for systems measurements (benchmarks only; everything it produces is
labelled simulated). It sits behind the same Backend interface as the embedded model and runs in
wall-clock time, but instead of a language model it follows a plan carried in the task's prompt:

    [plan] {"calls": [{"id": "c1", "call": "f(x=1)", "e": 120.5, "after": null}, ...],
            "final": "Done.", "token_ms": 10, "inject_ms": 1, "wait": "trap"}

It writes the ready calls as CML in LPT order (longest expected latency `e` first; a call whose
`after` names another is ready once that call's result was injected), yields when nothing is
ready and results are pending, and ends with the final answer once every result is in. It yields
with `[TRAP][END]` (AsyncLM's trap), or with `"wait": "eos"` by ending its turn (one end-of-sequence
token, as a model trained for OpenAI-style parallel calls does; the engine treats both as the
yield of sync_parallel).
So it reacts to the real interrupts the engine injects. Each generated token costs `token_ms`,
each injected token `inject_ms`; the prompt is free (latency is measured from the first token).
The cost is not slept: the sequence is busy for that long (`busy_s`), and the engine loop steps
other tasks meanwhile and waits for the earliest one only when nothing else is ready. Like a GPU
beside its host, the decoder works while the engine does its bookkeeping: the engine charges a
sampled token at once (`defers_work`) and publishes, dispatches and reads results while it is
busy, so what the engine adds per token is only what it does between a token's readiness and
the next sample.

A sub-agent's prompt is its agent tool's fixed instruction plus the task its parent wrote. So that
a parent's call stays as short as a real one, the instruction may carry several plans by key,
`[plans] {"q1": {...}, "q2": {...}}`, and the task names one, `plan:q2`: the decoder follows the
plan whose key the prompt names after the `[plans]` line.

Tokens are chunks of up to four characters of text (about what a real tokenizer gives for code).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence as Seq
from typing import Any

import numpy as np

from engine.backends.base import BackendError, LocalBackend, Sequence
from engine.catalog import ModelSpec

EOS = 0
VOCAB = 1 << 16
CHUNK = 4
PLAN = re.compile(r"\[plan\] (\{.*\})\s*(?:\n|<\|im_end\|>)")  # complete once its line ends
PLANS = re.compile(r"\[plans\] (\{.*\})\s*(?:\n|<\|im_end\|>)")
PLAN_KEY = re.compile(r"\bplan:([A-Za-z0-9_-]{1,64})(?=[^A-Za-z0-9_-])")  # whole: the prompt comes in chunks
INJECTED = re.compile(r"\[INTR\]\s*([A-Za-z_][A-Za-z0-9_]*)\s*\[HEAD\]")
# The plan comes from a prompt: its charges are capped, so no step holds the engine loop long.
LIMITS_MS = {"token_ms": 200.0, "inject_ms": 50.0}
MAX_STEP_MS = 2000.0


class SimulatedSequence(Sequence):
    defers_work = True  # a device's step: charged, not run, so it overlaps the engine's bookkeeping

    def __init__(self, backend: SimulatedBackend) -> None:
        self.backend = backend
        self.ids: list[int] = []
        self.plan: dict[str, Any] | None = None
        self.written: set[str] = set()
        self.injected: set[str] = set()
        self.queue: list[int] = []  # the chunks still to write of the current piece
        self.own: int | None = None  # the last token it produced, not yet appended
        self.answering = False  # writing the final answer: the end of sequence follows it
        self.prompt_text = ""  # the prompt arrives in chunks: the plan may span two
        self.busy_until = 0.0  # time.monotonic() when the charged work is done
        self.frame_tail = ""  # the end of the injected text so far
        self._logits: np.ndarray | None = None
        self._hot: int | None = None  # the entry of `_logits` set to the last token

    @property
    def n_tokens(self) -> int:
        return len(self.ids)

    def append(self, ids: Seq[int]) -> None:
        ids = list(ids)
        if len(self.ids) + len(ids) > self.backend.n_ctx:
            raise BackendError("context full")
        own = 1 if ids and self.own is not None and ids[0] == self.own else 0
        self.own = None
        foreign = ids[own:]
        text = self.backend.detokenize(foreign)
        if self.plan is None:
            self.prompt_text += text
            self.plan = _plan_in(self.prompt_text)
        else:
            # A long frame arrives in chunks: a marker may straddle two of them.
            window = self.frame_tail + text
            self.injected |= set(INJECTED.findall(window))
            self.frame_tail = window[-64:]
        self.ids.extend(ids)
        plan = self.plan or {}
        cost_ms = own * plan.get("token_ms", 0) + (len(foreign) * plan.get("inject_ms", 0) if self.written else 0)
        if cost_ms:
            self.busy_until = max(time.monotonic(), self.busy_until) + min(cost_ms, MAX_STEP_MS) / 1000

    def busy_s(self) -> float:
        return max(0.0, self.busy_until - time.monotonic())

    def logits(self) -> np.ndarray:
        if self.plan is None:
            raise BackendError("the simulated decoder needs a [plan] line in the prompt (or a [plans] line "
                               "and a plan:KEY naming one of them)")
        if not self.queue:
            self.queue = self.backend.tokenize(self._next_piece()) or [EOS]
        token = self.queue.pop(0)
        if token != EOS and not self.queue and self.answering:
            self.queue = [EOS]
        self.own = token
        # One buffer per sequence, one entry changed per token: the engine masks the logits in
        # place (bans only lower entries), and a fresh 256 KB array per token was host time charged
        # to the engine for what a device computes.
        if self._logits is None:
            self._logits = np.full(VOCAB, -1e9, dtype=np.float32)
        elif self._hot is not None:
            self._logits[self._hot] = -1e9
        self._logits[token], self._hot = 0.0, token
        return self._logits

    def _next_piece(self) -> str:
        assert self.plan is not None
        calls = self.plan["calls"]
        ready = [c for c in calls if c["id"] not in self.written and (c.get("after") in self.injected or
                                                                      c.get("after") is None)]
        if ready:
            call = max(ready, key=lambda c: c.get("e", 0))  # LPT: the slowest ready call first
            self.written.add(call["id"])
            return f"[CALL] {call['id']} [HEAD] {call['call']} [END] "
        if any(c["id"] not in self.injected for c in calls):
            return "" if self.plan.get("wait") == "eos" else "[TRAP][END] "  # "" is written as EOS
        self.answering = True
        return str(self.plan.get("final", "Done."))

    def truncate(self, n_tokens: int) -> None:
        del self.ids[n_tokens:]

    def close(self) -> None:
        pass


class SimulatedBackend(LocalBackend):
    stable_token_ids = False  # pieces are numbered as they are met, per process
    def __init__(self, spec: ModelSpec, n_ctx: int = 32768) -> None:
        self.spec = spec
        self.n_vocab = VOCAB
        self._n_ctx = n_ctx
        self._ids: dict[str, int] = {}
        self._texts: list[str] = ["<eos>"]

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        out = []
        for i in range(0, len(text), CHUNK):
            piece = text[i:i + CHUNK]
            tid = self._ids.get(piece)
            if tid is None:
                if len(self._texts) >= VOCAB:
                    raise BackendError("the simulated vocabulary is full")
                tid = self._ids[piece] = len(self._texts)
                self._texts.append(piece)
            out.append(tid)
        return out

    def detokenize(self, ids: Seq[int]) -> str:
        return "".join(self._texts[i] for i in ids if 0 < i < len(self._texts))

    def token_bytes(self, token_id: int) -> bytes:
        return self._texts[token_id].encode() if 0 < token_id < len(self._texts) else b""

    def vocab_texts(self) -> list[str]:
        return self._texts + [""] * (VOCAB - len(self._texts))

    def stop_ids(self) -> frozenset[int]:
        return frozenset({EOS})

    def open_sequence(self, prompt_ids: Seq[int] = ()) -> SimulatedSequence:
        return SimulatedSequence(self)


def _plan_in(prompt: str) -> dict[str, Any] | None:
    """The plan the prompt holds so far: a whole `[plan]` line, or the plan of a `[plans]` line
    that a later `plan:KEY` names (None until one is complete)."""
    match = PLAN.search(prompt)
    if match:
        return _checked(_json(match.group(1), "[plan]"))
    match = PLANS.search(prompt)
    if not match:
        return None
    plans = _json(match.group(1), "[plans]")
    if not isinstance(plans, dict):
        raise BackendError("the [plans] line must map keys to plans")
    for key in PLAN_KEY.findall(prompt[match.end():]):
        if key in plans:
            return _checked(plans[key])
    return None


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BackendError(f"the {what} line is not valid JSON: {exc}") from None


def _checked(plan: Any) -> dict[str, Any]:
    """The plan, if its shape and charges are within bounds; BackendError says what is not."""
    if not isinstance(plan, dict) or not isinstance(plan.get("calls", []), list):
        raise BackendError("the [plan] must be an object with a list of calls")
    for key, limit in LIMITS_MS.items():
        value = plan.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= limit:
            raise BackendError(f"the [plan]'s {key} must be a number from 0 to {limit:g}")
    return plan

