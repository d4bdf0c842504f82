"""`manage.py bench --agents`: runs the sub-agent scenarios (webapp/bench/agents.py) through the
real service and writes agents.json, agents.md and agents.jsonl under `--out`/agents."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from webapp.bench.agents import (
    agent_scenarios,
    ensure_pack,
    markdown_agents,
    run_agent_scenario,
    setup_for_agents,
    summarize_agents,
    with_engines,
)
from webapp.bench.runner import BENCH_REDIS_DB, BenchError, Services, Setup


def parse_ks(value: str) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(v) for v in value.split(",") if v.strip()}))
    except ValueError:
        raise ValueError(f"--ks takes numbers separated by commas, not {value!r}") from None
    if not ks or not all(1 <= k <= 8 for k in ks):
        raise ValueError("--ks: each k must be from 1 to 8 (the fan-out limit)")
    return ks


def run_agents(setup: Setup, modes: list[str], ks: tuple[int, ...], limit: int, engines: int | None, out: Path,
               append: bool, commit: str, say: Callable[[str], None], redis_db: int = BENCH_REDIS_DB) -> str:
    """Returns the report's markdown. `engines` None: one engine per agent (the parent and its
    largest k children)."""
    setup = setup_for_agents(setup)
    engines = engines or max(ks) + 1
    work = agent_scenarios(setup.seed, ks, limit, setup.profile)
    out.mkdir(parents=True, exist_ok=True)
    rows, parts = _previous(out, setup.label, engines) if append else ([], [])
    ensure_pack(work)
    services = Services(out, model=setup.model, engines=engines, redis_db=redis_db)
    started = time.monotonic()
    total = len(work) * len(modes)
    try:
        services.start(say)
        say(f"{setup.label}: warming up (not measured)")
        run_agent_scenario(services, work[0], modes[0], setup)
        with (out / "agents.jsonl.partial").open("w") as lines:
            for n, (scenario, mode) in enumerate(((s, m) for s in work for m in modes), 1):
                row = with_engines(run_agent_scenario(services, scenario, mode, setup), engines)
                rows.append(row)
                lines.write(json.dumps(row) + "\n")
                lines.flush()
                say(f"[{n}/{total}, {time.monotonic() - started:.0f} s] {scenario.id} {mode}: {row['latency_ms']} ms "
                    f"(bound {row['bound_ms']}, {row['measured_over_bound']}x)"
                    + (f"; errors: {'; '.join(row['errors'])}" if row["errors"] else ""))
    finally:
        services.stop()
    parts.append({"label": setup.label, "decoder": setup.decoder, "model": setup.model, "engines": engines,
                  "ks": list(ks), "limit": limit, "modes": modes, "token_ms": setup.token_ms,
                  "inject_ms": setup.inject_ms, "seconds": round(time.monotonic() - started)})
    params = {"seed": setup.seed, "profile": setup.profile, "machine": platform.node(), "git_commit": commit,
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "parts": parts}
    results = summarize_agents(rows)
    (out / "agents.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "agents.jsonl.partial").unlink(missing_ok=True)
    (out / "agents.json").write_text(json.dumps({"params": params, "results": results}, indent=2))
    report = markdown_agents(params, results)
    (out / "agents.md").write_text(report)
    return report


def _previous(out: Path, label: str, engines: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows and parts of an earlier run kept by --append: all but those of the same decoder setup
    and engine count, which this run replaces."""
    try:
        rows = [json.loads(line) for line in (out / "agents.jsonl").read_text().splitlines() if line.strip()]
        parts = json.loads((out / "agents.json").read_text())["params"]["parts"]
    except (OSError, ValueError, KeyError) as exc:
        raise BenchError(f"no earlier agents run in {out} to add to ({exc})") from None
    same = (label, engines)
    return ([r for r in rows if (r["label"], r["engines"]) != same],
            [p for p in parts if (p["label"], p["engines"]) != same])

