"""The latency bound of a scenario: the paper's formulas, with every token charged.

For independent calls f with generation time G(f) (writing the call's CML), execution time E(f)
and injection time I(f) (evaluating its result frame), a final answer taking F and a trap
taking T:

    sync           L = sum_f (G(f) + E(f) + I(f)) + F
    sync_parallel  L = sum_f G(f) + T + max_f E(f) + sum_f I(f) + F
    async          calls in LPT order (longest E first), call k dispatched at d_k = sum_{j<=k} G(f_j)
                   and back at r_k = d_k + E(f_k); L = max(sum_f G(f), max_k r_k) + F when I = T = 0,
                   which is the paper's max_f (E(f) + sum_{g: E(g) >= E(f)} G(g)) + F.

With I and T the async bound is computed by walking that schedule: a result that arrives while a
call is being written is injected at the next call boundary (a call block is a critical section),
each injection takes its I; when nothing is left to write and results are pending the model
writes a trap (T) and waits for the earliest result.

Dependent calls (multi-step scenarios: `after` names the call whose result is needed first) extend
this along the critical path: a call is ready once its prerequisite's result has been injected.
async writes the ready calls in LPT order and traps only when none is ready; sync_parallel runs in
rounds (all ready calls, a trap, max E of the round, their injections); sync takes the calls in
order. The bound is what an ideal system with no dispatch, queueing or scheduling cost would
achieve; measured latency minus the bound is what the system itself costs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BoundCall:
    g_ms: float  # writing the call
    e_ms: float  # the tool's latency
    i_ms: float = 0.0  # injecting its result
    after: int | None = None  # index of the call whose result it needs first


def bound_ms(mode: str, calls: list[BoundCall], *, final_ms: float = 0.0, trap_ms: float = 0.0,
             answers: bool = True) -> float:
    """Latency is measured to the last generated token. `answers=False` is a model that ended its
    turn once the results were in, writing nothing after them: the results' wait and injection
    after its last token do not count, so the bound is the time that token was written."""
    if mode == "sync":
        end, last_write = 0.0, 0.0
        for c in calls:
            last_write = end + c.g_ms
            end = last_write + c.e_ms + c.i_ms
    elif mode == "sync_parallel":
        end, last_write = _rounds(calls, trap_ms)
    elif mode == "async":
        end, last_write = _async(calls, trap_ms)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return end + final_ms if answers else last_write


def _ready(calls: list[BoundCall], written: set[int], injected: set[int]) -> list[int]:
    return [i for i, c in enumerate(calls)
            if i not in written and (c.after is None or c.after in injected)]


def _rounds(calls: list[BoundCall], trap_ms: float) -> tuple[float, float]:
    t, last_write, written, injected = 0.0, 0.0, set(), set()
    while len(injected) < len(calls):
        batch = _ready(calls, written, injected)
        if not batch:
            raise ValueError("calls depend on each other in a cycle")
        t += sum(calls[i].g_ms for i in batch) + trap_ms
        last_write = t
        t += max(calls[i].e_ms for i in batch) + sum(calls[i].i_ms for i in batch)
        written |= set(batch)
        injected |= set(batch)
    return t, last_write


def _async(calls: list[BoundCall], trap_ms: float) -> tuple[float, float]:
    t, last_write, written, injected = 0.0, 0.0, set(), set()
    back: dict[int, float] = {}  # dispatched call -> when its result arrives

    def inject_arrived() -> None:
        nonlocal t
        for i in sorted((i for i in back if i not in injected and back[i] <= t), key=back.__getitem__):
            t += calls[i].i_ms
            injected.add(i)

    while len(injected) < len(calls):
        ready = sorted(_ready(calls, written, injected), key=lambda i: -calls[i].e_ms)  # LPT
        if ready:
            k = ready[0]
            t += calls[k].g_ms
            last_write = t
            written.add(k)
            back[k] = t + calls[k].e_ms
            inject_arrived()
            continue
        waiting = [i for i in back if i not in injected]
        if not waiting:
            raise ValueError("calls depend on each other in a cycle")
        t += trap_ms
        last_write = t
        t = max(t, min(back[i] for i in waiting))
        inject_arrived()
    return t, last_write
