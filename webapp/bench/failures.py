"""Where a model's answers fail: the runs BFCL's checker refused, sorted by what the model did wrong
(too few calls, too many, or the right number with a wrong value or function), and split by how
many calls the question needs. A model that stops early on questions of three or four calls needs
other training than one that writes wrong values.

Two finer counts, where the rows hold what they need: of the runs with the right number of calls,
those that called another function than the question asks (rows with `expected_functions`), and
refused runs that wrote one call (same function, same arguments) twice."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from webapp.bench.tables import section_head

KINDS = ("too_few_calls", "too_many_calls", "wrong_value_or_function")
FAILURES_TEXT = ("Runs BFCL's checker refused, by what the model did: fewer calls than the question needs, more, "
                 "or the right number with a wrong value or function (in brackets: of those, a function the "
                 "question does not ask for). Written twice: refused runs with one call (same function, same "
                 "arguments) made twice. Per calls needed: accepted of runs, and the runs that stopped early.")


def kind(row: dict[str, Any]) -> str | None:
    """What went wrong in one run the checker refused; None for an accepted run, for a run not
    judged, or for a row measured before rows held the number of calls the question needs."""
    needed = row.get("expected_calls")
    if not row.get("checker") or row["checker"]["valid"] or needed is None:
        return None
    made = len(row["executed"])
    if made < needed:
        return "too_few_calls"
    return "too_many_calls" if made > needed else "wrong_value_or_function"


def wrong_function(row: dict[str, Any]) -> bool:
    """A run with the right number of calls whose functions are not the ones the question asks for
    (False where the row does not hold them)."""
    expected = row.get("expected_functions")
    if expected is None or kind(row) != "wrong_value_or_function":
        return False
    return Counter(c["name"] for c in row["executed"]) != Counter(expected)


def written_twice(row: dict[str, Any]) -> bool:
    """One call, same function and arguments, executed twice in the run."""
    seen = Counter(json.dumps([c["name"], c["args"]], sort_keys=True) for c in row["executed"])
    return any(n > 1 for n in seen.values())


def failures(group: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The refused runs of one (dataset, setup, profile, mode) group by kind, and per number of
    calls needed: runs, accepted, stopped early."""
    judged = [r for r in group if r.get("checker") and r.get("expected_calls") is not None]
    if not judged:
        return None
    kinds = [kind(r) for r in judged]
    by_needed: dict[str, dict[str, int]] = {}
    for r, k in zip(judged, kinds, strict=True):
        slot = by_needed.setdefault(str(r["expected_calls"]), {"runs": 0, "accepted": 0, "too_few_calls": 0})
        slot["runs"] += 1
        slot["accepted"] += bool(r["checker"]["valid"])
        slot["too_few_calls"] += k == "too_few_calls"
    refused = [r for r, k in zip(judged, kinds, strict=True) if k]
    return {**{name: kinds.count(name) for name in KINDS},
            "wrong_function": sum(map(wrong_function, refused)) if any("expected_functions" in r for r in judged)
            else None,
            "written_twice": sum(map(written_twice, refused)),
            "by_calls_needed": dict(sorted(by_needed.items(), key=lambda item: int(item[0])))}


def failure_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per real-model result that holds a breakdown, for the report and the run's page."""
    rows = []
    for r in results:
        f = r.get("failures")
        if r["decoder"] == "simulated" or not f or r.get("accuracy") is None:
            continue
        needed = "; ".join(f"{n}: {s['accepted']} / {s['runs']}, {s['too_few_calls']} too few"
                           for n, s in f["by_calls_needed"].items())
        wrong = f["wrong_value_or_function"]
        if f.get("wrong_function") is not None:
            wrong = f"{wrong} ({f['wrong_function']})"
        rows.append({"label": r["label"], "profile": r["profile"], "dataset": r["dataset"], "mode": r["mode"],
                     "refused": sum(f[name] for name in KINDS), **{name: f[name] for name in KINDS},
                     "wrong": wrong, "written_twice": f.get("written_twice", "–"), "by_calls_needed": needed})
    return rows


def failure_lines(results: list[dict[str, Any]]) -> list[str]:
    rows = failure_rows(results)
    if not rows:
        return []
    lines = section_head("Where the answers fail", FAILURES_TEXT, [
        "model", "profile", "dataset", "mode", "refused", "too few calls", "too many calls",
        "right number, wrong value or function (wrong function)", "written twice",
        "by calls needed (accepted / runs, too few)"])
    lines += [f"| {r['label']} | {r['profile']} | {r['dataset']} | {r['mode']} | {r['refused']} | "
              f"{r['too_few_calls']} | {r['too_many_calls']} | {r['wrong']} | {r['written_twice']} | "
              f"{r['by_calls_needed']} |" for r in rows]
    return lines
