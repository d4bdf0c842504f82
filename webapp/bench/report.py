"""From per-scenario measurements to bench.json and bench.md."""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np

from webapp.bench.failures import failure_lines, failures
from webapp.bench.goals import goal_lines
from webapp.bench.scenarios import DEFAULT_PROFILE, HUMAN_MESSAGE, PROFILE_TEXT
from webapp.bench.tables import cut_cell, section_head

PAPER = {  # the paper's speedups over sync (Llama-3.2-3B on an RTX 4090), for reference
    "parallel": {"async": "1.6x", "sync_parallel": "1.3x"},
    "multistep_parallel": {"async": "up to 5.4x", "sync_parallel": "up to 3.2x"},
}
MODE_ORDER = {"sync": 0, "sync_parallel": 1, "async": 2}


def percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1)


def _mean(values: list[float], digits: int = 1) -> float | None:
    return round(statistics.fmean(values), digits) if values else None


def _label(row: dict[str, Any]) -> str:
    return row.get("label") or row["decoder"]


def profile_of(row: dict[str, Any]) -> str:
    """A row's tool-latency profile (rows from before profiles existed used the paper's)."""
    return row.get("profile") or DEFAULT_PROFILE


def _split(heldout: Any) -> str:
    return {True: "held-out entries", False: "all entries"}.get(heldout, "entries not recorded")


def _messages(group: list[dict[str, Any]]) -> dict[str, int] | None:
    """human_message: in how many runs the engine took the person's message and the extra call ran."""
    if not any("message" in r for r in group):
        return None
    return {"runs": len(group), "delivered": sum(bool(r.get("message", {}).get("delivered")) for r in group),
            "extra_call_made": sum(bool(r.get("message", {}).get("extra_call_made")) for r in group)}


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One result per (dataset, decoder setup, latency profile, mode); speedups against sync on
    the same scenarios."""
    sync = {(r["dataset"], _label(r), profile_of(r), r["scenario"]): r for r in rows if r["mode"] == "sync"
            and r["latency_ms"] and not r["errors"]}
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], _label(r), profile_of(r), r["mode"]), []).append(r)
    results = []
    for (dataset, label, profile, mode), group in groups.items():
        ok = [r for r in group if r["latency_ms"] and not r["errors"]]
        latencies = [r["latency_ms"] for r in ok]
        pairs = [(sync[(dataset, label, profile, r["scenario"])], r) for r in ok
                 if (dataset, label, profile, r["scenario"]) in sync]
        speedups = [s["latency_ms"] / r["latency_ms"] for s, r in pairs]
        bound_speedups = [s["bound_ms"] / r["bound_ms"] for s, r in pairs if s["bound_ms"] and r["bound_ms"]]
        judged = [r for r in group if r.get("checker")]
        first = group[0]
        results.append({
            "dataset": dataset, "decoder": first["decoder"], "label": label, "model": first.get("model"),
            "cheat_sheet": first.get("cheat_sheet"), "profile": profile, "heldout": first.get("heldout"),
            "mode": mode, "n": len(ok),
            "latency_ms": {"p10": percentile(latencies, 10), "p50": percentile(latencies, 50),
                           "p90": percentile(latencies, 90), "mean": _mean(latencies)} if latencies else None,
            "speedup_vs_sync": {"mean": round(statistics.fmean(speedups), 3),
                                "median": round(statistics.median(speedups), 3)} if speedups else None,
            "bound_speedup_vs_sync": _mean(bound_speedups, 3),
            "bound_ms": _mean([r["bound_ms"] for r in ok if r["bound_ms"]]),
            "measured_over_bound": _mean([r["measured_over_bound"] for r in ok if r["measured_over_bound"]], 4),
            # The same formula at the model's standalone decode rate (embedded only).
            "bound_standalone_ms": _mean([r["bound_standalone_ms"] for r in ok if r.get("bound_standalone_ms")]),
            "measured_over_bound_standalone": _mean([r["measured_over_bound_standalone"] for r in ok
                                                     if r.get("measured_over_bound_standalone")], 4),
            "extra_tokens_vs_sync": _mean([r["tokens"] - s["tokens"] for s, r in pairs]),
            # Every scenario counts: one that failed to run is one the checker did not accept.
            "accuracy": round(sum(r["checker"]["valid"] for r in judged) / len(group), 4) if judged else None,
            "token_ms": _mean([r["token_ms"] for r in ok if r.get("token_ms")], 2),
            "dispatch_ms": _mean([r["dispatch_ms"] for r in ok if r.get("dispatch_ms") is not None], 2),
            # Decoding while a call ran (rows measured before this figure existed have none).
            "overlap_ms": _mean([r["overlap_ms"] for r in ok if r.get("overlap_ms") is not None]),
            "calls_per_scenario": _mean([len(r["calls"]) for r in ok], 2),
            "g_ms_per_call": _mean([r["g_ms_per_call"] for r in ok if r.get("g_ms_per_call") is not None]),
            "e_ms_per_call": _mean([c["drawn_latency_ms"] for r in ok for c in r["calls"]
                                    if c["drawn_latency_ms"] is not None]),
            "errors": len(group) - len(ok),
            "runs_with_model_errors": sum(bool(r.get("model_errors")) for r in group),
            "runs_at_token_limit": sum(r.get("finish_reason") == "length" for r in group),
            # Of those, the runs cut while answering with every result in (none for older rows).
            "runs_cut_in_answer": sum(bool(r.get("cut_in_answer")) for r in group)
            if any("cut_in_answer" in r for r in group) else None,
            # Rows measured before this figure existed have none.
            "repeated_calls": sum(r.get("repeated_calls") or 0 for r in group)
            if any("repeated_calls" in r for r in group) else None,
            # Runs that began the answer with a result still out (none for older rows).
            "runs_answered_early": sum(bool(r.get("answered_early")) for r in group)
            if any("answered_early" in r for r in group) else None,
            "messages": _messages(group),
            "failures": failures(group),
        })
    return sorted(results, key=lambda r: (r["label"] != "simulated", r["label"], r["profile"] != DEFAULT_PROFILE,
                                          r["profile"], r["dataset"], MODE_ORDER.get(r["mode"], 9)))


def overhead(rows: list[dict[str, Any]], results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the system adds, per decoder setup: each call's time from its [END] to its start on a
    worker over every call of the run (a per-call median, not a mean of the rows' means), and the
    rows' measured/bound with the worst row named."""
    found = []
    for label in dict.fromkeys(_label(r) for r in rows):
        dispatch = [c["dispatch_ms"] for r in rows if _label(r) == label and not r["errors"]
                    for c in r["calls"] if c.get("dispatch_ms") is not None]
        rated = [r for r in results if r["label"] == label and r["measured_over_bound"]]
        worst = max(rated, key=lambda r: r["measured_over_bound"], default=None)
        found.append({
            "label": label, "calls": len(dispatch),
            "dispatch_ms": {"p50": percentile(dispatch, 50), "p90": percentile(dispatch, 90),
                            "p99": percentile(dispatch, 99), "mean": _mean(dispatch, 2)} if dispatch else None,
            "measured_over_bound_mean": _mean([r["measured_over_bound"] for r in rated], 4),
            "worst_row": {"dataset": worst["dataset"], "mode": worst["mode"], "profile": worst["profile"],
                          "measured_over_bound": worst["measured_over_bound"]} if worst else None,
            "token_ms": _mean([r["token_ms"] for r in results if r["label"] == label and r["token_ms"]], 3),
        })
    return found


def overhead_lines(found: list[dict[str, Any]]) -> list[str]:
    if not any(o["dispatch_ms"] or o["worst_row"] for o in found):
        return []
    lines = ["", "## What the system adds", "",
             "Dispatch: a call's [END] decoded -> the tool starting on a worker, over every call of the run.", "",
             "| decoder | calls | dispatch p50 / p90 / p99 ms | measured/bound, mean of the rows | worst row | "
             "ms/token measured |", "|---|---|---|---|---|---|"]
    for o in found:
        d, w = o["dispatch_ms"] or {}, o["worst_row"]
        worst = f"{w['measured_over_bound']} ({w['dataset']}, {w['mode']}, {w['profile']})" if w else "–"
        lines.append(f"| {o['label']} | {o['calls']} | {d.get('p50', '–')} / {d.get('p90', '–')} / "
                     f"{d.get('p99', '–')} | {o['measured_over_bound_mean'] or '–'} | {worst} | "
                     f"{o['token_ms'] or '–'} |")
    return lines


def section(label: str, profile: str) -> str:
    """A report section's title: the decoder setup and the tool-latency profile."""
    return f"{label}; {profile} tool latencies"


def _part_line(part: dict[str, Any]) -> str:
    if part["decoder"] == "simulated":
        how = (f"**simulated decoder** ({part['token_ms']:g} ms per generated token, {part['inject_ms']:g} ms per "
               f"injected token; every figure in this table is simulated)")
    else:
        sheet = "**with** the cheat sheet (expected calls in the prompt)" if part["cheat_sheet"] else \
            "**without** a cheat sheet"
        how = f"**embedded model {part['model']}** on this machine's CPU, {sheet}"
        if part.get("standalone_ms_per_token"):
            how += f", standalone decode {part['standalone_ms_per_token']:g} ms/token"
    profile = part.get("profile") or DEFAULT_PROFILE
    line = (f"{how}: {PROFILE_TEXT.get(profile, profile)}; datasets {', '.join(part['datasets'])}; modes "
            f"{', '.join(part['modes'])}; up to {part['limit']} scenarios per dataset; {part.get('seconds', '?')} s.")
    split = part.get("split")
    if split:
        line += f" Scenarios from {_split(split['heldout'])}"
        if split["heldout"]:
            line += (f" of the adaptation step's split ({split['file']}, digest {split['digest'][:12]}): "
                     + "; ".join(f"{d}: {how_many}" for d, how_many in split["datasets"].items()))
        line += "."
    return line


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
        line = (f"- {section(r['label'], r['profile'])}, {r['dataset']}, {r['mode']}: measured "
                f"{r['speedup_vs_sync']['mean']}x (paper {paper}); the bound for the same scenarios gives "
                f"{r['bound_speedup_vs_sync']}x. Per scenario "
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


def markdown(params: dict[str, Any], results: list[dict[str, Any]],
             costs: list[dict[str, Any]] | None = None, goals: list[dict[str, Any]] | None = None) -> str:
    lines = [
        "# Benchmark: task latency by mode on BFCL",
        "",
        f"Tool latencies drawn from each part's profile (paper: the paper's distribution, 30-500 ms, mean 110; "
        f"web: web-API calls, 200-5000 ms, mean 1100) with seed {params['seed']}; scenarios run one at a time. "
        f"Commit {params['git_commit']}, {params['date']}, machine {params['machine']}.",
        "",
        *(f"- {_part_line(p)}" for p in params["parts"]),
        "",
        *_left_out(params),
        "Latency is first generated token -> last, from the engine's trace. The bound is the paper's latency "
        "formula with the decoder's own token charges (simulated: its configured charges; embedded: its measured "
        "ms per token, webapp/bench/embedded.py); measured/bound above 1 is what the system itself costs. For the "
        "embedded model the same formula is also given at its standalone decode rate (plain llama-cpp-python "
        "decoding, no engine, measured once per run: webapp/bench/standalone.py); measured/that bound is what the "
        "whole system adds to the model's own decoding. "
        "Accuracy is the share of scenarios BFCL's own checker (bfcl-eval's ast_checker / multi_turn_checker) "
        "accepts, on the calls the run executed.",
    ]
    for label, profile in dict.fromkeys((r["label"], r["profile"]) for r in results):
        lines += [
            "", f"## {section(label, profile)}", "",
            "| dataset | mode | profile | split | n | p50 ms | mean ms | p10-p90 ms | speedup vs sync (mean / median) "
            "| paper | bound ms | bound speedup | measured/bound | bound at standalone rate ms | "
            "measured/bound at standalone rate | ms/token measured | dispatch ms | overlap ms | extra tokens vs sync | "
            "accuracy | errors | runs with model mistakes | runs cut at the token limit | calls repeated after "
            "their result | answers begun with a result out |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in results if r["label"] == label and r["profile"] == profile):
            cut = cut_cell(r["runs_at_token_limit"], r.get("runs_cut_in_answer"))
            lat = r["latency_ms"] or {}
            speed = r["speedup_vs_sync"] or {}
            accuracy = f"{r['accuracy']:.0%}" if r["accuracy"] is not None else "–"
            lines.append(
                f"| {r['dataset']} | {r['mode']} | {r['profile']} | {_split(r.get('heldout'))} | {r['n']} | "
                f"{lat.get('p50', '–')} | {lat.get('mean', '–')} | "
                f"{lat.get('p10', '–')}-{lat.get('p90', '–')} | "
                f"{speed.get('mean', '–')} / {speed.get('median', '–')} | "
                f"{PAPER.get(r['dataset'], {}).get(r['mode'], '')} | {r['bound_ms']} | "
                f"{r['bound_speedup_vs_sync'] or '–'} | {r['measured_over_bound']} | "
                f"{r.get('bound_standalone_ms') or '–'} | {r.get('measured_over_bound_standalone') or '–'} | "
                f"{r['token_ms']} | {r['dispatch_ms'] if r['dispatch_ms'] is not None else '–'} | "
                f"{r.get('overlap_ms') if r.get('overlap_ms') is not None else '–'} | "
                f"{r['extra_tokens_vs_sync']} | {accuracy} | {r['errors']} | {r['runs_with_model_errors']} | "
                f"{cut} | {r['repeated_calls'] if r.get('repeated_calls') is not None else '–'} | "
                f"{r['runs_answered_early'] if r.get('runs_answered_early') is not None else '–'} |")
    lines += overhead_lines(costs or [])
    lines += goal_lines(goals or [])
    lines += failure_lines(results)
    lines += human_messages(results)
    why = explanation(results)
    if why:
        lines += ["", "## Beside the paper", "", *why]
    return "\n".join(lines) + "\n"


def human_messages(results: list[dict[str, Any]]) -> list[str]:
    """The human_message scenario set: did the model take up a person's message mid-task?"""
    found = [r for r in results if r["dataset"] == HUMAN_MESSAGE and r.get("messages")]
    if not found:
        return []
    lines = section_head(
        "Human messages",
        "Demo-pack questions (held-out cities and symbols) with a person's message asking for one more call, "
        "sent through the engine's human-message path once the task's first call is dispatched "
        "(webapp/bench/human.py). Success: the extra call (same function, same arguments) was executed.",
        ["decoder", "profile", "mode", "runs", "message taken by the engine", "extra call made"])
    for r in found:
        m = r["messages"]
        lines.append(f"| {r['label']} | {r['profile']} | {r['mode']} | {m['runs']} | {m['delivered']} | "
                     f"{m['extra_call_made']} of {m['runs']} |")
    lines.append("")
    lines += [f"- {r['label']}, {r['profile']} tool latencies, {r['mode']}: extra call made in "
              f"{r['messages']['extra_call_made']} of {r['messages']['runs']} runs." for r in found]
    return lines
