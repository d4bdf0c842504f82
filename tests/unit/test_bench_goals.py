"""The tuned model's accuracy goals read off a run's rows (webapp/bench/goals.py)."""

from webapp.bench.goals import accuracy_goals, goal_lines
from webapp.bench.report import summarize

TUNED, BASE = "qwen2.5-coder-0.5b-cml", "qwen2.5-coder-0.5b"
BASE_OF = {TUNED: BASE}


def row(n, mode, model, valid, *, dataset="parallel", tokens=40, cheat_sheet=False, profile="paper", **extra):
    sheet = "with" if cheat_sheet else "without"
    return {"scenario": f"{dataset}_{n}", "dataset": dataset, "decoder": "embedded",
            "label": f"embedded {model}, {sheet} cheat sheet",
            "model": model, "cheat_sheet": cheat_sheet, "profile": profile, "heldout": True, "mode": mode,
            "task_id": 1, "latency_ms": 1000.0, "bound_ms": 990.0, "token_ms": 30.0, "dispatch_ms": 5.0,
            "g_ms_per_call": 600.0, "measured_over_bound": 1.01, "tokens": tokens, "finish_reason": "stop",
            "calls": [{"call_id": f"c{i}", "name": "f", "drawn_latency_ms": 100.0, "started_ms": 1.0,
                       "finished_ms": 2.0} for i in (1, 2)],
            "checker": {"valid": valid, "error": ""}, "executed": [], "errors": [], "model_errors": [],
            "repeated_calls": 0, **extra}


def runs(mode, model, accepted, total=10, **extra):
    return [row(i, mode, model, i < accepted, **extra) for i in range(total)]


def test_it_rates_each_goal_of_a_tuned_model_against_its_base():
    rows = (runs("sync", TUNED, 7) + runs("async", TUNED, 6, tokens=44) + runs("async", BASE, 4)
            # Rows the goals are not read from: with the cheat sheet, the web profile.
            + runs("async", TUNED, 10, cheat_sheet=True) + runs("async", BASE, 0, profile="web"))
    rows[15]["finish_reason"] = "length"
    rows[16]["repeated_calls"] = 1
    (found,) = accuracy_goals(summarize(rows), BASE_OF)
    assert (found["async"], found["sync"], found["base_async"]) == (0.6, 0.7, 0.4)
    assert found["cut"] == 1 and found["repeated_calls"] == 1 and found["extra_tokens_per_call"] == 2.0
    assert found["met"] == {"async": True, "async_vs_sync": False, "over_base": False, "no_repeats": False,
                            "extra_tokens": True}
    text = "\n".join(goal_lines([found]))
    assert "| 60% (met) | 70%, -10 (**missed**) | 40% of 10, +20 (**missed**) |" in text
    assert "1 of 10 async runs cut at the token limit (10%; **missed**)" in text


def test_it_tells_runs_cut_in_the_answer_from_the_others():
    rows = runs("async", TUNED, 6, cut_in_answer=False)
    for i, in_answer in ((1, True), (2, True), (3, False)):
        rows[i].update(finish_reason="length", cut_in_answer=in_answer)
    (found,) = accuracy_goals(summarize(rows), BASE_OF)
    assert (found["cut"], found["cut_in_answer"]) == (3, 2)
    text = "\n".join(goal_lines([found]))
    assert "| 3 (2 in the answer) |" in text
    assert "3 of 10 async runs cut at the token limit (30%; **missed**). Of them, 2 were writing the answer" in text


def test_rows_from_before_the_answer_was_told_apart_show_only_the_cut_runs():
    rows = runs("async", TUNED, 6)
    rows[1]["finish_reason"] = "length"
    (found,) = accuracy_goals(summarize(rows), BASE_OF)
    assert found["cut_in_answer"] is None
    assert "| 1 |" in "\n".join(goal_lines([found])) and "in the answer" not in "\n".join(goal_lines([found]))


def test_a_goal_whose_rows_did_not_run_is_not_rated():
    rows = runs("async", TUNED, 8, dataset="parallel_multiple") + runs("sync", BASE, 1)
    (found,) = accuracy_goals(summarize(rows), BASE_OF)
    assert found["dataset"] == "parallel_multiple" and found["met"]["async"] is True
    assert found["met"]["async_vs_sync"] is None and found["met"]["over_base"] is None
    assert "| 80% (met) | –, – (not run) | –, – (not run) |" in "\n".join(goal_lines([found]))


def test_a_run_without_a_tuned_model_has_no_goals_section():
    found = accuracy_goals(summarize(runs("async", BASE, 3)), BASE_OF)
    assert found == [] and goal_lines(found) == []
