"""Resuming a task whose engine died: its recorded history replayed into a fresh context.

The stored trace holds every token the model wrote (with its id), every frame the engine
injected (after which token, with its calls and messages) and each call's outcome as the model
saw it. A new engine rebuilds the task by running it again on a local backend with the recorded
tokens in place of sampling and the recorded frames queued where they went in: the code that
built the context the first time (CML monitor, call table, modes, call ids, framing) builds it
again, so the model goes on from one coherent context. Replay steps write no trace events (the
trace has them) and send no call to a worker: after the replay, a call whose outcome was
recorded but not yet injected gets it queued, a call whose result reached the dead engine's
inbox gets that result, and only a call with neither is dispatched again, under its own id
(stateful tools apply a call id once).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from engine.messages import CallReport, CallRequest


class ResumeError(Exception):
    """The history cannot be replayed (the reason says why); the task fails with it."""


class AlreadyEnded(ResumeError):
    """The record ends with the task's end: the engine died after recording it, before storing
    the task's final state. `event` is that end, to be stored as it was."""

    def __init__(self, event: dict[str, Any]) -> None:
        super().__init__("the task had already ended")
        self.event = event


@dataclass(frozen=True)
class RecordedFrame:
    at_token: int  # how many generated tokens preceded it
    calls: tuple[str, ...]
    messages: tuple[str, ...]


@dataclass(frozen=True)
class Outcome:
    """A call's result as the model saw it (the `call_result` event)."""

    ok: bool
    payload: str
    error: str = ""
    error_type: str = ""

    @property
    def value(self) -> Any:
        """The value a later call's future argument takes (the payload is its compact JSON)."""
        if not self.ok:
            return None
        try:
            return json.loads(self.payload)
        except ValueError:  # truncated: the text is all there is
            return self.payload


@dataclass
class History:
    """What a dead engine left of a task, read from the stored trace (and the events only Redis
    still had)."""

    engine: str  # the engine that died
    started_wall: float  # unix s when the task started: the time base of its events
    last_seq: int
    tokens: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # each token's text, as recorded
    frames: list[RecordedFrame] = field(default_factory=list)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    dispatched: set[str] = field(default_factory=set)


def history_from_events(engine: str, events: list[dict[str, Any]]) -> History:
    """The history in `events` ({"seq", "kind", "payload"}; any order, duplicates allowed)."""
    by_seq = {e["seq"]: e for e in events}
    ordered = [by_seq[s] for s in sorted(by_seq)]
    if not ordered or ordered[0]["kind"] != "status":
        raise ResumeError("the stored trace does not begin with the task's start")
    expected = list(range(1, len(ordered) + 1))
    if [e["seq"] for e in ordered] != expected:
        raise ResumeError("the stored trace has gaps (events were lost), so the context cannot be rebuilt")
    history = History(engine, float(ordered[0]["payload"].get("started_at", 0.0)), ordered[-1]["seq"])
    for e in ordered:
        kind, p = e["kind"], e["payload"]
        if kind == "token":
            history.tokens.append(int(p["id"]))
            history.texts.append(str(p.get("text", "")))
        elif kind == "interrupt_injected":
            history.frames.append(RecordedFrame(len(history.tokens), tuple(p.get("calls", ())),
                                                tuple(p.get("messages", ()))))
        elif kind == "call_result":
            history.outcomes[p["call_id"]] = Outcome(bool(p["ok"]), str(p["injected"]), str(p.get("error", "")),
                                                     str(p.get("error_type", "")))
        elif kind == "call_dispatched":
            history.dispatched.add(p["call_id"])
        elif kind == "finish":
            raise AlreadyEnded(e)
    return history


@dataclass
class Replay:
    """A task being rebuilt from its history (TaskRun.replay while it lasts)."""

    history: History
    late: dict[str, CallReport] = field(default_factory=dict)  # results found in the dead engine's inbox
    next_token: int = 0
    next_frame: int = 0
    held: list[CallRequest] = field(default_factory=list)  # dispatches held back during the replay
    injected: set[str] = field(default_factory=set)  # calls whose recorded outcome went in again

    def token(self, forced: int | None) -> int:
        """The next recorded token; `forced` is what the engine itself would write there (a call
        id), which must agree."""
        token = self.history.tokens[self.next_token]
        if forced is not None and forced != token:
            raise ResumeError(f"the replay parted from the record at token {self.next_token + 1}: the engine "
                              f"forces {forced}, the record has {token}")
        self.next_token += 1
        return token

    @property
    def tokens_left(self) -> bool:
        return self.next_token < len(self.history.tokens)

    def due_frame(self, generated: int) -> RecordedFrame | None:
        frames = self.history.frames
        if self.next_frame < len(frames) and frames[self.next_frame].at_token == generated:
            return frames[self.next_frame]
        return None

    @property
    def done(self) -> bool:
        return not self.tokens_left and self.next_frame >= len(self.history.frames)
