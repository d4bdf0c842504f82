"""Benchmark scenarios from bfcl-eval: seeded, reproducible, the same latencies for every mode."""

from engine.tools import ToolSpec
from webapp.bench.scenarios import MULTISTEP, draw_latencies, scenarios, unusable


def test_latencies_follow_the_papers_distribution_and_are_reproducible():
    draws = draw_latencies(7, "parallel_3", 2000)
    assert draws == draw_latencies(7, "parallel_3", 2000)  # seeded: identical for every mode
    assert draws != draw_latencies(8, "parallel_3", 2000)
    assert min(draws) >= 30 and max(draws) <= 500
    assert 95 <= sum(draws) / len(draws) <= 125  # the paper: mean 110 ms
    assert len(set(draw_latencies(7, "parallel_0", 4))) == 4  # each call its own draw


def test_single_turn_scenarios_carry_bfcl_ground_truth():
    (first, *_) = scenarios("parallel", seed=0, limit=2)
    assert first.id == "parallel_0" and "Taylor Swift" in first.question
    assert [(c.name, c.args) for c in first.calls] == [
        ("spotify.play", {"artist": "Taylor Swift", "duration": 20}),
        ("spotify.play", {"artist": "Maroon 5", "duration": 15})]
    assert all(c.after is None for c in first.calls)
    tool = ToolSpec.from_dict(first.tools[0])
    for call in first.calls:
        tool.validate(call.args)


def test_optional_and_nested_arguments_take_their_first_acceptable_value():
    calls = [c for s in scenarios("live_parallel_multiple", seed=0) for c in s.calls]
    drink = next(c for c in calls if c.name == "ChaDri.change_drink")
    assert drink.args["new_preferences"]["size"] == "large"
    assert "special_instructions" not in drink.args["new_preferences"]  # "" = may be left out


def test_multistep_scenarios_join_three_entries_with_namespaced_instances():
    a = scenarios(MULTISTEP, seed=0, limit=5)
    assert [s.calls for s in a] == [s.calls for s in scenarios(MULTISTEP, seed=0, limit=5)]
    assert [s.sources for s in a] != [s.sources for s in scenarios(MULTISTEP, seed=1, limit=5)]
    scenario = a[0]
    assert len(scenario.sources) == 3
    prefixes = {c.name.split(".")[0] for c in scenario.calls}
    assert prefixes <= {"e1", "e2", "e3"}
    for call in scenario.calls:  # within an entry, each call needs the previous one's result
        if call.after is not None:
            before = scenario.calls[call.after]
            assert before.name.split(".")[0] == call.name.split(".")[0] and before.index < call.index
    by_name = {t["name"]: t for t in scenario.tools}
    for call in scenario.calls:
        tool = by_name[call.name]
        assert tool["kind"] == "bfcl" and tool["config"]["instance"].startswith(call.name.split(".")[0] + "_")


def test_entries_whose_ground_truth_breaks_the_functions_schema_are_left_out_with_the_reason():
    left = unusable("live_parallel")
    assert list(left) == ["live_parallel_15-11-0"] and "is not one of" in left["live_parallel_15-11-0"]
    ids = [s.id for s in scenarios("live_parallel", seed=0)]
    assert "live_parallel_15-11-0" not in ids and len(ids) == 15
    assert len(scenarios("parallel_multiple", seed=0, limit=30)) == 30  # the limit counts usable entries
