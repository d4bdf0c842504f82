"""Simulated tools: sleep for a latency drawn from the tool's distribution, return a result
derived deterministically from the arguments (the paper's experiments use 30-500 ms, mean 110)."""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from typing import Any

from engine.tools import ToolSpec
from workers.executors.base import CallContext, Executor, ToolError, planned_latency_ms

DISTS = ("fixed", "uniform", "normal", "lognormal")


def draw_latency_ms(spec: dict[str, Any], rng: random.Random) -> float:
    dist = spec.get("dist", "fixed")
    if dist == "fixed":
        value = float(spec.get("value", 100))
    elif dist == "uniform":
        value = rng.uniform(float(spec["low"]), float(spec["high"]))
    elif dist == "normal":
        value = rng.gauss(float(spec["mean"]), float(spec["sd"]))
    elif dist == "lognormal":
        # Parameterised by its mean, so "mean 110 ms" is written as it is said.
        sigma = float(spec.get("sigma", 0.8))
        mu = math.log(float(spec["mean"])) - sigma**2 / 2
        value = rng.lognormvariate(mu, sigma)
    else:
        raise ToolError(f"unknown latency distribution {dist!r} (use one of {', '.join(DISTS)})")
    return min(max(value, float(spec.get("min", 0))), float(spec.get("max", math.inf)))


def _derived(field: str, rule: Any, args: dict[str, Any], seed_text: str) -> Any:
    if not isinstance(rule, str) or ":" not in rule:
        return rule
    kind, _, spec = rule.partition(":")
    digest = int(hashlib.sha256(f"{seed_text}|{field}".encode()).hexdigest()[:12], 16)
    if kind == "int":
        low, high = (int(x) for x in spec.split(":"))
        return low + digest % (high - low + 1)
    if kind == "float":
        low, high = (float(x) for x in spec.split(":"))
        return round(low + (digest % 10_000) / 10_000 * (high - low), 2)
    if kind == "choice":
        options = spec.split("|")
        return options[digest % len(options)]
    if kind == "arg":
        return args.get(spec)
    return rule


class SimulatedExecutor(Executor):
    kind = "simulated"

    def check_config(self, config: dict[str, Any]) -> None:
        latency = config.get("latency_ms", {"dist": "fixed", "value": 100})
        try:
            draw_latency_ms(latency, random.Random(0))
        except (KeyError, ValueError, TypeError) as exc:
            raise ToolError(f"bad latency_ms {latency!r}: {exc}") from exc

    def run(self, tool: ToolSpec, args: dict[str, Any], ctx: CallContext) -> Any:
        config = tool.config
        seed_text = f"{config.get('seed', 0)}|{tool.name}|{json.dumps(args, sort_keys=True)}"
        # A comparison's tasks share a scope, so every mode faces the same latencies.
        rng = random.Random(f"{seed_text}|{config.get('latency_scope', ctx.task_id)}|{ctx.call_id}")
        planned = planned_latency_ms(config, ctx.call_id, args)
        if planned is None:
            planned = draw_latency_ms(config.get("latency_ms", {"dist": "fixed", "value": tool.est_latency_ms}), rng)
        time.sleep(planned / 1000)
        if "error" in config:
            raise ToolError(str(config["error"]))
        return simulated_result(tool.name, config.get("returns"), args, seed_text)


def simulated_result(name: str, returns: Any, args: dict[str, Any], seed_text: str) -> Any:
    """What a simulated tool returns: its `returns` rules applied to the arguments (the same
    arguments and seed give the same result), or the call echoed when it has none."""
    if returns is None:
        return {"tool": name, "args": args}
    if isinstance(returns, dict):
        return {field: _derived(field, rule, args, seed_text) for field, rule in returns.items()}
    return _derived("value", returns, args, seed_text)
