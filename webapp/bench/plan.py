"""What the simulated decoder is told to do for a scenario, and the bound it is held to."""

from __future__ import annotations

import json
import math
from typing import Any

from engine.backends.simulated import CHUNK
from webapp.bench.bounds import BoundCall, bound_ms
from webapp.bench.scenarios import Scenario

FINAL = "All results are in; that answers the question."
TRAP = "[TRAP][END] "


def call_id(index: int) -> str:
    return f"c{index + 1}"


def call_text(name: str, args: dict[str, Any]) -> str:
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in args.items())})"  # Python literals, as CML wants


def plan(scenario: Scenario, mode: str, token_ms: float, inject_ms: float) -> dict[str, Any]:
    return {
        "calls": [{"id": call_id(c.index), "call": call_text(c.name, c.args), "e": c.latency_ms,
                   "after": call_id(c.after) if c.after is not None else None} for c in scenario.calls],
        "final": FINAL, "token_ms": token_ms, "inject_ms": inject_ms, "wait": wait(mode),
    }


def wait(mode: str) -> str:
    """How the simulated model yields: sync_parallel ends its turn (the OpenAI/Anthropic-style
    baseline: one end-of-sequence token, no trap); async writes AsyncLM's [TRAP][END]; sync never
    waits on its own (the engine blocks at each [END])."""
    return "eos" if mode == "sync_parallel" else "trap"


def trap_tokens(mode: str) -> int:
    return 0 if wait(mode) == "eos" else tokens(TRAP)  # the end of sequence is not a generated token


def prompt(scenario: Scenario, mode: str, token_ms: float, inject_ms: float) -> str:
    return f"{scenario.question}\n[plan] {json.dumps(plan(scenario, mode, token_ms, inject_ms))}"


def tools(scenario: Scenario) -> list[dict[str, Any]]:
    """The scenario's tools, each told the drawn latency of every planned call on it."""
    by_tool: dict[str, dict[str, float]] = {}
    for c in scenario.calls:
        by_tool.setdefault(c.name, {})[call_id(c.index)] = c.latency_ms
    out = []
    for spec in scenario.tools:
        config = {**spec.get("config", {}), "latency_by_call": by_tool.get(spec["name"], {})}
        out.append({**spec, "config": config, "timeout_s": 10.0})
    return out


def tokens(text: str) -> int:
    """Tokens of `text` for the simulated decoder (chunks of CHUNK characters)."""
    return math.ceil(len(text) / CHUNK)


def injected_tokens(text: str) -> float:
    """An injected frame's share of tokens: results that arrive together are injected as one text,
    chunked as a whole, so a frame is charged len/CHUNK (never more than its share of the batch)."""
    return len(text) / CHUNK


def cml(index: int, name: str, args: dict[str, Any]) -> str:
    return f"[CALL] {call_id(index)} [HEAD] {call_text(name, args)} [END] "


def frame(cid: str, payload: str) -> str:
    return f" [INTR] {cid} [HEAD] {payload} [END]"


def g_ms_per_call(scenario: Scenario, token_ms: float) -> float | None:
    g = [tokens(cml(c.index, c.name, c.args)) * token_ms for c in scenario.calls]
    return round(sum(g) / len(g), 1) if g else None


def bound(scenario: Scenario, mode: str, token_ms: float, inject_ms: float,
          injected: dict[str, str] | None = None) -> float:
    """The paper's latency bound with the decoder's own charges (webapp/bench/bounds.py): G from
    the tokens of each call's CML, E the drawn latency, I from the injected frame (the payload the
    run injected when known, else a short result), the trap and final answer as written. Latency
    is measured first token -> last token, so the first token's step is not counted."""
    injected = injected or {}
    calls = [
        BoundCall(g_ms=tokens(cml(c.index, c.name, c.args)) * token_ms, e_ms=c.latency_ms,
                  i_ms=injected_tokens(frame(call_id(c.index), injected.get(call_id(c.index), "{}"))) * inject_ms,
                  after=c.after)
        for c in scenario.calls
    ]
    total = bound_ms(mode, calls, final_ms=tokens(FINAL) * token_ms, trap_ms=trap_tokens(mode) * token_ms)
    return round(total - token_ms, 3)
