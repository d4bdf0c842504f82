"""Benchmark scenarios from bfcl-eval: seeded, reproducible, the same latencies for every mode."""

import json
import statistics

import pytest

from engine.tools import ToolSpec
from finetune.split import HELDOUT_FILE
from webapp.bench.scenarios import (
    MULTISTEP,
    draw_latencies,
    heldout_ids,
    scenarios,
    single_turn,
    single_turn_entry,
    unusable,
)
from webapp.tools.bfcl import dataset


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


def test_minimal_calls_leave_out_only_optional_arguments_the_question_does_not_state():
    entries = {e["id"]: e for e in dataset("parallel")}
    full, _ = single_turn_entry("parallel", entries["parallel_31"], 0)
    minimal, _ = single_turn_entry("parallel", entries["parallel_31"], 0, minimal=True)
    assert full.calls[0].args == {"event": "Treaty of Paris", "depth": "detailed", "year": 0}
    assert minimal.calls[0].args == {"event": "Treaty of Paris"}  # nothing in the question says "detailed"
    kept, _ = single_turn_entry("parallel", entries["parallel_44"], 0, minimal=True)
    assert kept.calls[0].args["amenities"] == ["Parking"]  # "... only in those with available parking"
    assert [c.latency_ms for c in minimal.calls] == [c.latency_ms for c in full.calls]


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


def test_it_takes_parallel_scenarios_only_from_the_heldout_entries():
    held = json.loads(HELDOUT_FILE.read_text())["heldout"]["parallel"]
    found = scenarios("parallel", seed=0, heldout=True)
    assert found and {s.id for s in found} <= set(held)
    assert len(found) == len([i for i in held if i not in unusable("parallel")])
    first = scenarios("parallel", seed=0, limit=5, heldout=True)  # the limit counts held-out scenarios
    assert [s.id for s in first] == [s.id for s in found[:5]]
    assert [s.id for s in single_turn("parallel", 0, only={"parallel_6", "parallel_1"})] == ["parallel_1", "parallel_6"]


def test_it_takes_multistep_entries_only_from_the_heldout_multi_turn_entries():
    held = set(json.loads(HELDOUT_FILE.read_text())["heldout"]["multi_turn_base"])
    found = scenarios(MULTISTEP, seed=0, heldout=True)
    assert len(found) == len(held) // 3
    assert all(set(s.sources) <= held for s in found)


def test_it_keeps_every_entry_of_a_dataset_the_adaptation_step_never_trained_on():
    assert heldout_ids("live_parallel") is None
    assert [s.id for s in scenarios("live_parallel", seed=0, heldout=True)] == [
        s.id for s in scenarios("live_parallel", seed=0)]


def test_it_draws_the_web_profiles_latencies_between_200_and_5000_ms_with_a_mean_near_1100():
    draws = draw_latencies(7, "parallel_3", 4000, "web")
    assert draws == draw_latencies(7, "parallel_3", 4000, "web")
    assert min(draws) >= 200 and max(draws) <= 5000
    assert 1000 <= statistics.fmean(draws) <= 1200
    assert statistics.median(draws) < statistics.fmean(draws)  # lognormal: a long tail of slow calls
    assert draw_latencies(7, "parallel_3", 5) == draw_latencies(7, "parallel_3", 5, "paper")


def test_it_gives_every_call_of_a_scenario_the_chosen_profiles_latency():
    (paper,) = scenarios("parallel", seed=0, limit=1)
    (web,) = scenarios("parallel", seed=0, limit=1, profile="web")
    assert paper.profile == "paper" and web.profile == "web" and paper.calls[0].args == web.calls[0].args
    assert all(200 <= c.latency_ms <= 5000 for c in web.calls)
    assert [c.latency_ms for c in web.calls] != [c.latency_ms for c in paper.calls]
    with pytest.raises(ValueError, match="unknown latency profile"):
        scenarios("parallel", seed=0, profile="satellite")
