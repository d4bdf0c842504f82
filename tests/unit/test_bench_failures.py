"""The report's failure breakdown: refused runs sorted by what the model did wrong."""

from tests.unit.test_bench_report import PARAMS, row
from webapp.bench.failures import failures, kind
from webapp.bench.report import markdown, summarize

WRONG = {"valid": False, "error": "Wrong number of functions."}


def judged(scenario, needed, made, valid, **extra):
    return row(scenario, "async", "paper", 1000.0, dataset="parallel_multiple", expected_calls=needed,
               executed=[{"name": "f", "args": {"x": k}} for k in range(made)],
               checker={"valid": True, "error": ""} if valid else WRONG, **extra)


RUNS = [judged("pm_1", 2, 2, True), judged("pm_2", 3, 2, False), judged("pm_3", 4, 2, False),
        judged("pm_4", 4, 4, False), judged("pm_5", 3, 4, False), judged("pm_6", 3, 3, True)]


def test_it_sorts_refused_runs_by_what_the_model_did():
    assert [kind(r) for r in RUNS] == [None, "too_few_calls", "too_few_calls", "wrong_value_or_function",
                                       "too_many_calls", None]
    found = failures(RUNS)
    assert (found["too_few_calls"], found["too_many_calls"], found["wrong_value_or_function"]) == (2, 1, 1)
    assert found["by_calls_needed"] == {"2": {"runs": 1, "accepted": 1, "too_few_calls": 0},
                                        "3": {"runs": 3, "accepted": 1, "too_few_calls": 1},
                                        "4": {"runs": 2, "accepted": 0, "too_few_calls": 1}}


def test_it_leaves_out_rows_measured_before_they_held_the_calls_needed():
    old = row("pm_1", "async", "paper", 1000.0, checker=WRONG)
    assert kind(old) is None and failures([old]) is None
    assert "## Where the answers fail" not in markdown(PARAMS, summarize([old]))


def test_it_reports_the_breakdown_beside_the_tables():
    text = markdown(PARAMS, summarize(RUNS))
    assert "## Where the answers fail" in text
    assert ("| parallel_multiple | async | 4 | 2 | 1 | 1 | "
            "2: 1 / 1, 0 too few; 3: 1 / 3, 1 too few; 4: 0 / 2, 1 too few |") in text
