"""What the embedded model is given for a scenario, and the bound its run is held to.

With the cheat sheet (as the paper did for its latency runs) the prompt lists the expected calls,
the slowest first, so latency measures the system rather than the model's knowledge; without it
the model gets only the question (for accuracy). Tool latencies are fixed by the call's arguments
(`latency_by_args`): a model picks its own call ids, so a call that matches the ground truth gets
that call's drawn latency in every mode; any other call gets a latency drawn from the run's
latency profile, seeded by the scenario, the tool, the arguments and the call id. Tool timeouts
stay well above the slowest latency a profile can draw.

The bound is the paper's latency formula applied to what the model actually wrote, timed at its
own measured rates: G(f) = the tokens written since the previous call (prose included) up to the
call's [END], a trap's tokens T, the final tokens F after the last boundary, all at the run's mean
time per decoded token; I(f) = the tokens of f's result frame at the run's mean injection time per
token; E(f) = the drawn latency (or the measured execution of a call the ground truth lacks).
Tokens written after the last call while results were still coming count as a trap (written while
waiting), and a model that wrote nothing after the results is held to its last written token.

The same formula is also evaluated at the model's standalone decode rate (`per_token`: plain
llama-cpp-python decoding, no engine, measured once per bench run by webapp/bench/standalone.py):
that bound says how far the run is from what the model alone would take, engine costs included.
"""

from __future__ import annotations

import json
import statistics
from typing import Any

from engine.timeline import Timeline
from webapp.bench.bounds import BoundCall, bound_ms
from webapp.bench.plan import call_text
from webapp.bench.scenarios import MULTISTEP, Scenario, latency_profile

QUESTION_ONLY = "{question}"
CHEAT_SHEET = ("{question}\n\nCheat sheet: exactly these calls answer the question. Issue them in this order, "
               "then answer:\n{calls}")
CALL_BLOCKS = {"call_decoded", "call_error", "malformed"}  # the engine's verdicts on a block the model wrote
# Events between two tokens that mean the model was not decoding in that gap.
NOT_DECODING = {"interrupt_injected", "parked", "blocked", "trap", "resumed", "prefill", "resubmitted"}
MIN_TIMEOUT_S = 10.0


def prompt(scenario: Scenario, cheat_sheet: bool) -> str:
    if not cheat_sheet:
        return QUESTION_ONLY.format(question=scenario.question)
    calls = scenario.asked  # not the calls a person's message will add
    if scenario.dataset != MULTISTEP:  # independent calls: the slowest first, as the protocol asks
        calls = sorted(calls, key=lambda c: -c.latency_ms)
    return CHEAT_SHEET.format(question=scenario.question, calls="\n".join(call_text(c.name, c.args) for c in calls))


def args_key(args: dict[str, Any]) -> str:
    return json.dumps(args, sort_keys=True)


def drawn_latencies(scenario: Scenario) -> dict[tuple[str, str], float]:
    """(tool, arguments key) -> the drawn latency of the ground-truth call it matches."""
    return {(c.name, args_key(c.args)): c.latency_ms for c in scenario.calls}


def timeout_s(profile: str) -> float:
    """A tool's timeout: at least twice the slowest latency the profile draws (10 s for both)."""
    return max(MIN_TIMEOUT_S, 2 * float(latency_profile(profile).get("max", 0)) / 1000)


def tools(scenario: Scenario, seed: int) -> list[dict[str, Any]]:
    by_tool: dict[str, dict[str, float]] = {}
    for c in scenario.calls:
        by_tool.setdefault(c.name, {})[args_key(c.args)] = c.latency_ms
    out = []
    for spec in scenario.tools:
        config = {**spec.get("config", {}), "latency_by_args": by_tool.get(spec["name"], {}),
                  "latency_scope": f"bench|{seed}|{scenario.id}"}
        if spec.get("kind") == "simulated":  # a call off the ground truth: drawn from the same profile
            config["latency_ms"] = latency_profile(scenario.profile)
        out.append({**spec, "config": config, "timeout_s": timeout_s(scenario.profile)})
    return out


def token_ms(events: list[Any]) -> float | None:
    """The mean gap between consecutive tokens with nothing but decoding in between."""
    gaps, last = [], None
    for e in events:
        if e.kind == "token":
            if last is not None:
                gaps.append(e.t_ms - last)
            last = e.t_ms
        elif e.kind in NOT_DECODING:
            last = None
    return statistics.fmean(gaps) if gaps else None


def inject_ms(events: list[Any]) -> float:
    frames = [e.payload for e in events if e.kind == "interrupt_injected"]
    tokens = sum(f["tokens"] for f in frames)
    return sum(f["ms"] for f in frames) / tokens if tokens else 0.0


def bound(scenario: Scenario, mode: str, events: list[Any],
          per_token: float | None = None) -> tuple[float | None, float | None, float | None]:
    """(bound_ms, the ms per token it used, mean G per call) for one run of the embedded model: at
    the run's measured ms per token, or at `per_token` when given (the standalone decode rate)."""
    if per_token is None:
        per_token = token_ms(events)
    if per_token is None or not any(e.kind == "token" for e in events):
        return None, None, None
    per_injected = inject_ms(events)
    drawn = drawn_latencies(scenario)
    ran = Timeline.of(events).calls
    frame = {cid: e.payload["tokens"] / len(e.payload["calls"]) for e in events if e.kind == "interrupt_injected"
             for cid in e.payload["calls"]}
    calls: list[BoundCall] = []
    last_on_entry: dict[str, int] = {}
    traps: list[int] = []
    segment = 0
    # Tokens written after the last call but before the last result went in were written while
    # waiting (like a trap); only those after it are the final answer.
    last_call = max((i for i, e in enumerate(events) if e.kind in CALL_BLOCKS), default=-1)
    last_injection = max((i for i, e in enumerate(events) if e.kind == "interrupt_injected"), default=-1)
    for index, e in enumerate(events):
        if index == last_injection and index > last_call and segment:
            traps.append(segment)
            segment = 0
        if e.kind == "token":
            segment += 1
        elif e.kind in CALL_BLOCKS:
            # A refused or malformed block was written all the same; its error result comes at once.
            cid, name = e.payload.get("call_id", "error"), e.payload.get("name", "")
            e_ms = drawn.get((name, args_key(e.payload["args"]))) if e.kind == "call_decoded" else 0.0
            if e_ms is None:
                times = ran.get(cid)
                e_ms = (times.finished_ms - times.started_ms) if times and times.started_ms is not None \
                    and times.finished_ms is not None else 0.0
            entry = name.split(".", 1)[0] if scenario.dataset == MULTISTEP else ""
            calls.append(BoundCall(g_ms=segment * per_token, e_ms=e_ms, i_ms=frame.get(cid, 0.0) * per_injected,
                                   after=last_on_entry.get(entry) if entry else None))
            if entry:
                last_on_entry[entry] = len(calls) - 1
            segment = 0
        elif e.kind == "trap":
            traps.append(segment)
            segment = 0
    trap_ms = statistics.fmean(traps) * per_token if traps else 0.0
    total = bound_ms(mode, calls, final_ms=segment * per_token, trap_ms=trap_ms, answers=segment > 0)
    g_per_call = round(statistics.fmean(c.g_ms for c in calls), 1) if calls else None
    return round(total - per_token, 3), round(per_token, 3), g_per_call
