"""The tuned model's accuracy goals, read off a run's rows: for each tuned model whose rows the run
holds (and its base model's, where it ran), on the held-out `parallel` and `parallel_multiple`
entries without the cheat sheet and with the paper's tool latencies, as the adaptation step's
evaluation measures them (scripts/eval-finetune.sh)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webapp.bench.scenarios import DEFAULT_PROFILE
from webapp.bench.tables import cut_cell, section_head

DATASETS = ("parallel", "parallel_multiple")
MIN_ASYNC = 0.60  # tuned async accuracy
MAX_BELOW_SYNC = 0.02  # async may trail sync by this much (the paper: async keeps sync's accuracy)
MIN_OVER_BASE = 0.30  # tuned async over the base model's async, both with the call grammar
MAX_CUT = 0.05  # share of the tuned model's async runs cut at the token limit
MAX_EXTRA_PER_CALL = 6.0  # extra tokens against sync, per call
VERDICTS = {True: "met", False: "missed", None: "not run"}  # None: a row the goal needs did not run

GOALS_TEXT = (
    "Held-out entries, no cheat sheet, the paper's tool latencies; accuracy by BFCL's checker. Goals: "
    f"async >= {MIN_ASYNC:.0%}; async >= sync - {MAX_BELOW_SYNC * 100:.0f} points; async >= the base model's async "
    f"(with the call grammar) + {MIN_OVER_BASE * 100:.0f} points; no call repeated after its result; "
    f"<= {MAX_EXTRA_PER_CALL:g} extra tokens per call against sync; runs cut at the token limit <= {MAX_CUT:.0%} "
    "of the async runs. With fewer than 50 runs a row, one run moves its accuracy by more than 2 points.")


def _row(results: list[dict[str, Any]], model: str, dataset: str, mode: str) -> dict[str, Any] | None:
    return next((r for r in results if r.get("model") == model and r["dataset"] == dataset and r["mode"] == mode
                 and r.get("cheat_sheet") is False and r["profile"] == DEFAULT_PROFILE
                 and r.get("accuracy") is not None), None)


def _runs(row: dict[str, Any]) -> int:
    return int(row["n"]) + int(row["errors"])


def accuracy_goals(results: list[dict[str, Any]], base_of: Mapping[str, str]) -> list[dict[str, Any]]:
    """One entry per tuned model and dataset with an async row; each goal is True (met), False
    (missed) or None (a row it needs was not run)."""
    found = []
    for model in dict.fromkeys(r.get("model") for r in results):
        if model not in base_of:
            continue
        for dataset in DATASETS:
            tuned = _row(results, model, dataset, "async")
            if tuned is None:
                continue
            sync = _row(results, model, dataset, "sync")
            base = _row(results, base_of[model], dataset, "async")
            extra = tuned.get("extra_tokens_vs_sync")
            per_call = (round(extra / tuned["calls_per_scenario"], 1)
                        if extra is not None and tuned.get("calls_per_scenario") else None)
            found.append({
                "model": model, "base": base_of[model], "dataset": dataset, "runs": _runs(tuned),
                "async": tuned["accuracy"], "sync": sync["accuracy"] if sync else None,
                "base_async": base["accuracy"] if base else None, "base_runs": _runs(base) if base else None,
                "cut": tuned["runs_at_token_limit"], "cut_in_answer": tuned.get("runs_cut_in_answer"),
                "repeated_calls": tuned.get("repeated_calls"),
                "extra_tokens_per_call": per_call,
                "met": {
                    "async": tuned["accuracy"] >= MIN_ASYNC,
                    "async_vs_sync": tuned["accuracy"] >= sync["accuracy"] - MAX_BELOW_SYNC - 1e-9 if sync else None,
                    "over_base": tuned["accuracy"] >= base["accuracy"] + MIN_OVER_BASE - 1e-9 if base else None,
                    "no_repeats": tuned["repeated_calls"] == 0 if tuned.get("repeated_calls") is not None else None,
                    "extra_tokens": per_call <= MAX_EXTRA_PER_CALL if per_call is not None else None,
                },
            })
    return found


def _pct(share: float | None) -> str:
    return "–" if share is None else f"{share:.0%}"


def with_verdicts(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries with each goal's verdict in words (the dashboard's run page shows them)."""
    return [{**g, "verdicts": {goal: VERDICTS[met] for goal, met in g["met"].items()}} for g in found]


def _verdict(met: bool | None) -> str:
    return "**missed**" if met is False else VERDICTS[met]


def _base(g: dict[str, Any]) -> str:
    """The base model's accuracy with its own number of runs: it may have run on fewer entries."""
    return "–" if g["base_async"] is None else f"{g['base_async']:.0%} of {g['base_runs']}"


def _points(a: float | None, b: float | None) -> str:
    return "–" if a is None or b is None else f"{round((a - b) * 100):+d}"


def goal_lines(found: list[dict[str, Any]]) -> list[str]:
    if not found:
        return []
    lines = section_head("The tuned model's accuracy goals", GOALS_TEXT, [
        "tuned model", "dataset", "runs", "async", "sync, async - sync (points)",
        "base async (of runs), async - base (points)", "calls repeated after their result", "extra tokens per call",
        "runs cut"])
    for g in found:
        met = g["met"]
        lines.append(
            f"| {g['model']} | {g['dataset']} | {g['runs']} | {_pct(g['async'])} ({_verdict(met['async'])}) | "
            f"{_pct(g['sync'])}, {_points(g['async'], g['sync'])} ({_verdict(met['async_vs_sync'])}) | "
            f"{_base(g)}, {_points(g['async'], g['base_async'])} ({_verdict(met['over_base'])}) | "
            f"{'–' if g['repeated_calls'] is None else g['repeated_calls']} ({_verdict(met['no_repeats'])}) | "
            f"{'–' if g['extra_tokens_per_call'] is None else g['extra_tokens_per_call']} "
            f"({_verdict(met['extra_tokens'])}) | {cut_cell(g['cut'], g.get('cut_in_answer'))} |")
    for model in dict.fromkeys(g["model"] for g in found):
        cut = sum(g["cut"] for g in found if g["model"] == model)
        runs = sum(g["runs"] for g in found if g["model"] == model)
        lines.append("")
        in_answer = [g.get("cut_in_answer") for g in found if g["model"] == model]
        known = bool(cut) and None not in in_answer
        why = f" Of them, {sum(n or 0 for n in in_answer)} were writing the answer, every result in." if known else ""
        lines.append(f"- {model}: {cut} of {runs} async runs cut at the token limit ({cut / runs:.0%}; "
                     f"{_verdict(cut / runs <= MAX_CUT)}).{why}")
    return lines
