"""From per-scenario measurements to bench.json and bench.md."""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np

PAPER = {  # the paper's speedups over sync (Llama-3.2-3B on an RTX 4090), for reference
    "parallel": {"async": "1.6x", "sync_parallel": "1.3x"},
    "multistep_parallel": {"async": "up to 5.4x", "sync_parallel": "up to 3.2x"},
}
MODE_ORDER = {"sync": 0, "sync_parallel": 1, "async": 2}


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1)


def _mean(values: list[float], digits: int = 1) -> float | None:
    return round(statistics.fmean(values), digits) if values else None


def _label(row: dict[str, Any]) -> str:
    return row.get("label") or row["decoder"]


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One result per (dataset, decoder setup, mode); speedups against sync on the same scenarios."""
    sync = {(r["dataset"], _label(r), r["scenario"]): r for r in rows if r["mode"] == "sync"
            and r["latency_ms"] and not r["errors"]}
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], _label(r), r["mode"]), []).append(r)
    results = []
    for (dataset, label, mode), group in groups.items():
        ok = [r for r in group if r["latency_ms"] and not r["errors"]]
        latencies = [r["latency_ms"] for r in ok]
        pairs = [(sync[(dataset, label, r["scenario"])], r) for r in ok if (dataset, label, r["scenario"]) in sync]
        speedups = [s["latency_ms"] / r["latency_ms"] for s, r in pairs]
        bound_speedups = [s["bound_ms"] / r["bound_ms"] for s, r in pairs if s["bound_ms"] and r["bound_ms"]]
        judged = [r for r in group if r.get("checker")]
        first = group[0]
        results.append({
            "dataset": dataset, "decoder": first["decoder"], "label": label, "model": first.get("model"),
            "cheat_sheet": first.get("cheat_sheet"), "mode": mode, "n": len(ok),
            "latency_ms": {"p10": _pct(latencies, 10), "p50": _pct(latencies, 50), "p90": _pct(latencies, 90),
                           "mean": _mean(latencies)} if latencies else None,
            "speedup_vs_sync": {"mean": round(statistics.fmean(speedups), 3),
                                "median": round(statistics.median(speedups), 3)} if speedups else None,
            "bound_speedup_vs_sync": _mean(bound_speedups, 3),
            "bound_ms": _mean([r["bound_ms"] for r in ok if r["bound_ms"]]),
            "measured_over_bound": _mean([r["measured_over_bound"] for r in ok if r["measured_over_bound"]], 4),
            "extra_tokens_vs_sync": _mean([r["tokens"] - s["tokens"] for s, r in pairs]),
            # Every scenario counts: one that failed to run is one the checker did not accept.
            "accuracy": round(sum(r["checker"]["valid"] for r in judged) / len(group), 4) if judged else None,
            "token_ms": _mean([r["token_ms"] for r in ok if r.get("token_ms")], 2),
            "dispatch_ms": _mean([r["dispatch_ms"] for r in ok if r.get("dispatch_ms") is not None], 2),
            "calls_per_scenario": _mean([len(r["calls"]) for r in ok], 2),
            "g_ms_per_call": _mean([r["g_ms_per_call"] for r in ok if r.get("g_ms_per_call") is not None]),
            "e_ms_per_call": _mean([c["drawn_latency_ms"] for r in ok for c in r["calls"]
                                    if c["drawn_latency_ms"] is not None]),
            "errors": len(group) - len(ok),
            "runs_with_model_errors": sum(bool(r.get("model_errors")) for r in group),
            "runs_at_token_limit": sum(r.get("finish_reason") == "length" for r in group),
        })
    return sorted(results, key=lambda r: (r["label"] != "simulated", r["label"], r["dataset"],
                                          MODE_ORDER.get(r["mode"], 9)))


def _part_line(part: dict[str, Any]) -> str:
    if part["decoder"] == "simulated":
        how = (f"**simulated decoder** ({part['token_ms']:g} ms per generated token, {part['inject_ms']:g} ms per "
               f"injected token; every figure in this table is simulated)")
    else:
        sheet = "**with** the cheat sheet (expected calls in the prompt)" if part["cheat_sheet"] else \
            "**without** a cheat sheet"
        how = f"**embedded model {part['model']}** on this machine's CPU, {sheet}"
    return (f"{how}: datasets {', '.join(part['datasets'])}; modes {', '.join(part['modes'])}; up to {part['limit']} "
            f"scenarios per dataset; {part.get('seconds', '?')} s.")


def _left_out(params: dict[str, Any]) -> list[str]:
    left = {}
    for part in params["parts"]:
        for dataset, entries in part.get("left_out", {}).items():
            left.setdefault(dataset, {}).update(entries)
    if not left:
        return []
    lines = ["Left out: BFCL entries whose own ground truth violates the function's schema (the engine would "
             "refuse the call before it runs):"]
    lines += [f"- {entry_id}: {why}" for entries in left.values() for entry_id, why in entries.items()]
    return [*lines, ""]


def explanation(results: list[dict[str, Any]]) -> list[str]:
    """Our speedups beside the paper's, each difference read off the bound formulas."""
    lines = []
    for r in results:
        paper = PAPER.get(r["dataset"], {}).get(r["mode"])
        if not paper or not r["speedup_vs_sync"] or not r["g_ms_per_call"] or not r["e_ms_per_call"]:
            continue
        g, e, k = r["g_ms_per_call"], r["e_ms_per_call"], r["calls_per_scenario"]
        target = float(paper.split()[-1].rstrip("x"))
        line = (f"- {r['label']}, {r['dataset']}, {r['mode']}: measured {r['speedup_vs_sync']['mean']}x (paper "
                f"{paper}); the bound for the same scenarios gives {r['bound_speedup_vs_sync']}x. Per scenario "
                f"{k} calls, G = {g} ms to write a call, E = {e} ms mean tool latency (E/G = {e / g:.2f}). ")
        if r["mode"] == "async":
            line += (f"async hides tool time behind generation but cannot beat writing every token, so "
                     f"L_sync/L_async <= 1 + E/G = {1 + e / g:.2f}, and less with few calls (the last call's E and "
                     f"the final answer are never hidden). {paper} needs E/G >= {target - 1:.1f}, i.e. "
                     f"G <= {e / (target - 1):.0f} ms per call at this E.")
        else:
            line += (f"sync_parallel saves the tool time of all but the slowest call of a round: with one round, "
                     f"L_sync/L_sync_parallel <= 1 + (k-1)E/(kG+E) = {1 + (k - 1) * e / (k * g + e):.2f} "
                     f"(multi-step scenarios need a round per step, so less).")
        lines.append(line)
    if lines:
        lines.append("- The paper's larger speedups need E/G well above ours: tool latencies long relative to the "
                     "time to write a call (short calls, a fast decoder), and for multi-step parallel, many "
                     "independent chains whose latencies add up in sync but overlap in async.")
    return lines


def markdown(params: dict[str, Any], results: list[dict[str, Any]]) -> str:
    lines = [
        "# Benchmark: task latency by mode on BFCL",
        "",
        f"Tool latencies drawn from the paper's distribution (30-500 ms, mean 110) with seed {params['seed']}; "
        f"scenarios run one at a time. Commit {params['git_commit']}, {params['date']}, machine {params['machine']}.",
        "",
        *(f"- {_part_line(p)}" for p in params["parts"]),
        "",
        *_left_out(params),
        "Latency is first generated token -> last, from the engine's trace. The bound is DESIGN.md section 3's "
        "formula with the decoder's own token charges (simulated: its configured charges; embedded: its measured "
        "ms per token, webapp/bench/embedded.py); measured/bound above 1 is what the system itself costs. "
        "Accuracy is the share of scenarios BFCL's own checker (bfcl-eval's ast_checker / multi_turn_checker) "
        "accepts, on the calls the run executed.",
    ]
    for label in dict.fromkeys(r["label"] for r in results):
        lines += [
            "", f"## {label}", "",
            "| dataset | mode | n | p50 ms | mean ms | p10-p90 ms | speedup vs sync (mean / median) | paper | "
            "bound ms | bound speedup | measured/bound | ms/token measured | dispatch ms | extra tokens vs sync | "
            "accuracy | errors | "
            "runs with model mistakes | runs cut at the token limit |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in results if r["label"] == label):
            lat = r["latency_ms"] or {}
            speed = r["speedup_vs_sync"] or {}
            accuracy = f"{r['accuracy']:.0%}" if r["accuracy"] is not None else "–"
            lines.append(
                f"| {r['dataset']} | {r['mode']} | {r['n']} | {lat.get('p50', '–')} | {lat.get('mean', '–')} | "
                f"{lat.get('p10', '–')}-{lat.get('p90', '–')} | "
                f"{speed.get('mean', '–')} / {speed.get('median', '–')} | "
                f"{PAPER.get(r['dataset'], {}).get(r['mode'], '')} | {r['bound_ms']} | "
                f"{r['bound_speedup_vs_sync'] or '–'} | {r['measured_over_bound']} | {r['token_ms']} | "
                f"{r['dispatch_ms'] if r['dispatch_ms'] is not None else '–'} | "
                f"{r['extra_tokens_vs_sync']} | {accuracy} | {r['errors']} | {r['runs_with_model_errors']} | "
                f"{r['runs_at_token_limit']} |")
    why = explanation(results)
    if why:
        lines += ["", "## Beside the paper", "", *why]
    return "\n".join(lines) + "\n"
