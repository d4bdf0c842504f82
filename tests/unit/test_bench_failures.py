"""The report's failure breakdown: refused runs sorted by what the model did wrong."""

from tests.unit.test_bench_report import PARAMS, row
from webapp.bench.failures import failure_rows, failures, kind, written_twice
from webapp.bench.report import markdown, summarize

WRONG = {"valid": False, "error": "Wrong number of functions."}


def judged(scenario, needed, made, valid, **extra):
    extra.setdefault("executed", [{"name": "f", "args": {"x": k}} for k in range(made)])
    return row(scenario, "async", "paper", 1000.0, dataset="parallel_multiple", expected_calls=needed,
               checker={"valid": True, "error": ""} if valid else WRONG, **extra)


TWICE = [{"name": "f", "args": {"x": 1, "y": [2]}}, {"name": "f", "args": {"y": [2], "x": 1}}]
RUNS = [judged("pm_1", 2, 2, True), judged("pm_2", 3, 2, False), judged("pm_3", 4, 2, False),
        judged("pm_4", 4, 4, False, expected_functions=["f", "f", "f", "g"]), judged("pm_5", 3, 4, False),
        judged("pm_6", 3, 3, True), judged("pm_7", 2, 2, False, expected_functions=["f", "f"], executed=TWICE)]


def test_it_sorts_refused_runs_by_what_the_model_did():
    assert [kind(r) for r in RUNS] == [None, "too_few_calls", "too_few_calls", "wrong_value_or_function",
                                       "too_many_calls", None, "wrong_value_or_function"]
    found = failures(RUNS)
    assert (found["too_few_calls"], found["too_many_calls"], found["wrong_value_or_function"]) == (2, 1, 2)
    assert (found["wrong_function"], found["written_twice"]) == (1, 1)  # pm_4 calls f for g; pm_7 repeats f
    assert found["by_calls_needed"] == {"2": {"runs": 2, "accepted": 1, "too_few_calls": 0},
                                        "3": {"runs": 3, "accepted": 1, "too_few_calls": 1},
                                        "4": {"runs": 2, "accepted": 0, "too_few_calls": 1}}


def test_it_finds_a_call_written_twice_whatever_the_order_of_its_arguments():
    assert written_twice(RUNS[-1])
    other_function = {"name": "g", "args": {"x": 1, "y": [2]}}
    assert not written_twice(judged("pm_8", 2, 2, False, executed=[TWICE[0], other_function]))


def test_it_does_not_guess_the_wrong_functions_of_rows_measured_before_they_held_them():
    old = [{k: v for k, v in r.items() if k != "expected_functions"} for r in RUNS]
    found = failures(old)
    assert found["wrong_function"] is None and found["written_twice"] == 1
    (shown,) = failure_rows(summarize(old))
    assert shown["wrong"] == 2


def test_it_leaves_out_rows_measured_before_they_held_the_calls_needed():
    old = row("pm_1", "async", "paper", 1000.0, checker=WRONG)
    assert kind(old) is None and failures([old]) is None
    assert "## Where the answers fail" not in markdown(PARAMS, summarize([old]))


def test_it_reports_the_breakdown_beside_the_tables():
    text = markdown(PARAMS, summarize(RUNS))
    assert "## Where the answers fail" in text
    assert ("| parallel_multiple | async | 5 | 2 | 1 | 2 (1) | 1 | "
            "2: 1 / 2, 0 too few; 3: 1 / 3, 1 too few; 4: 0 / 2, 1 too few |") in text
