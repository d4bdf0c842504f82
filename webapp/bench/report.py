"""From per-scenario measurements to bench.json and bench.md."""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np

PAPER = {  # the paper's speedups over sync (Llama-3.2-3B on an RTX 4090), for reference
    "parallel": {"async": "1.6x", "sync_parallel": "1.3x"},
    "multistep_parallel": {"async": "up to 5.4x", "sync_parallel": "up to 3.2x"},
}


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One result per (dataset, decoder, mode); speedups against sync on the same scenarios."""
    sync = {(r["dataset"], r["decoder"], r["scenario"]): r for r in rows if r["mode"] == "sync"}
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["decoder"], r["mode"]), []).append(r)
    results = []
    for (dataset, decoder, mode), group in groups.items():
        ok = [r for r in group if r["latency_ms"] and not r["errors"]]
        latencies = [r["latency_ms"] for r in ok]
        pairs = [(sync[(dataset, decoder, r["scenario"])], r) for r in ok
                 if (dataset, decoder, r["scenario"]) in sync and sync[(dataset, decoder, r["scenario"])]["latency_ms"]
                 and not sync[(dataset, decoder, r["scenario"])]["errors"]]
        speedups = [s["latency_ms"] / r["latency_ms"] for s, r in pairs]
        results.append({
            "dataset": dataset, "decoder": decoder, "mode": mode, "n": len(ok),
            "latency_ms": {"p10": _pct(latencies, 10), "p50": _pct(latencies, 50), "p90": _pct(latencies, 90),
                           "mean": round(statistics.fmean(latencies), 1)} if latencies else None,
            "speedup_vs_sync": {"mean": round(statistics.fmean(speedups), 3),
                                "median": round(statistics.median(speedups), 3)} if speedups else None,
            "bound_ms": round(statistics.fmean(r["bound_ms"] for r in ok), 1) if ok else None,
            "measured_over_bound": round(statistics.fmean(r["measured_over_bound"] for r in ok), 4) if ok else None,
            "extra_tokens_vs_sync": round(statistics.fmean(r["tokens"] - s["tokens"] for s, r in pairs), 1)
            if pairs else None,
            "accuracy": None,  # BFCL's checker is not wired in yet
            "errors": len(group) - len(ok),
        })
    order = {"sync": 0, "sync_parallel": 1, "async": 2}
    return sorted(results, key=lambda r: (r["dataset"], r["decoder"], order.get(r["mode"], 9)))


def markdown(params: dict[str, Any], results: list[dict[str, Any]]) -> str:
    lines = [
        "# Benchmark: task latency by mode on BFCL",
        "",
        f"Decoder: **{params['decoder']}** ({params['token_ms']} ms per generated token, {params['inject_ms']} ms "
        f"per injected token); tool latencies drawn from the paper's distribution (30-500 ms, mean 110) with "
        f"seed {params['seed']}; {params['limit']} scenarios per dataset; run one at a time. "
        f"Commit {params['git_commit']}, {params['date']}, machine {params['machine']}.",
        "",
        "Latency is first generated token -> last, from the engine's trace. The bound is DESIGN.md section 3's "
        "formula with the decoder's own token charges (webapp/bench/bounds.py); measured/bound above 1 is what "
        "the system itself costs. Accuracy: BFCL's checker is not wired in yet.",
        "",
        "| dataset | mode | n | p50 ms | mean ms | p10-p90 ms | speedup vs sync (mean) | paper | bound ms | "
        "measured/bound | extra tokens vs sync | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lat = r["latency_ms"] or {}
        speed = r["speedup_vs_sync"] or {}
        lines.append(
            f"| {r['dataset']} | {r['mode']} | {r['n']} | {lat.get('p50', '–')} | {lat.get('mean', '–')} | "
            f"{lat.get('p10', '–')}-{lat.get('p90', '–')} | {speed.get('mean', '–')} | "
            f"{PAPER.get(r['dataset'], {}).get(r['mode'], '')} | {r['bound_ms']} | {r['measured_over_bound']} | "
            f"{r['extra_tokens_vs_sync']} | {r['errors']} |")
    return "\n".join(lines) + "\n"
