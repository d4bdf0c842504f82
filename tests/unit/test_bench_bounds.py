"""The latency bounds against hand-computed cases."""

import pytest

from webapp.bench.bounds import BoundCall, bound_ms

# Three independent calls: writing each takes 10 ms; they run 100, 300 and 50 ms.
CALLS = [BoundCall(10, 100), BoundCall(10, 300), BoundCall(10, 50)]


def test_the_papers_formulas_without_injection_costs():
    assert bound_ms("sync", CALLS, final_ms=20) == 30 + 450 + 20
    assert bound_ms("sync_parallel", CALLS, final_ms=20) == 30 + 300 + 20
    # LPT: 300 ms at 10, 100 ms at 20, 50 ms at 30 -> back at 310, 120, 80: max(30, 310) + 20.
    assert bound_ms("async", CALLS, final_ms=20) == 310 + 20
    # The paper's form: max_f (E(f) + sum_{g: E(g) >= E(f)} G(g)).
    paper = max(c.e_ms + sum(g.g_ms for g in CALLS if g.e_ms >= c.e_ms) for c in CALLS)
    assert bound_ms("async", CALLS) == paper


def test_injections_and_traps_are_charged():
    calls = [BoundCall(10, 100, i_ms=4), BoundCall(10, 300, i_ms=4), BoundCall(10, 50, i_ms=4)]
    assert bound_ms("sync", calls, final_ms=20) == 30 + 450 + 12 + 20
    assert bound_ms("sync_parallel", calls, final_ms=20, trap_ms=2) == 30 + 2 + 300 + 12 + 20
    # async: written by 30; before each wait a trap (+2): 32 -> 80 +4, 86 -> 120 +4, 126 -> 310 +4.
    assert bound_ms("async", calls, final_ms=20, trap_ms=2) == 314 + 20


def test_a_result_that_arrives_while_a_call_is_written_waits_for_its_end():
    # The first call (LPT: 20 ms) is back at 30, in the middle of writing the second (10..60).
    calls = [BoundCall(10, 20, i_ms=5), BoundCall(50, 10, i_ms=5)]
    # 10: a dispatched; 60: b written, a injected -> 65; b back at 70: trap to 66, wait, inject -> 75.
    assert bound_ms("async", calls, trap_ms=1) == 75


def test_dependent_calls_follow_the_critical_path():
    # Entry 1: a (100 ms) then b (100 ms, needs a); entry 2: c (250 ms). Writing any call: 10 ms.
    calls = [BoundCall(10, 100), BoundCall(10, 100, after=0), BoundCall(10, 250)]
    assert bound_ms("sync", calls) == 30 + 450
    # Rounds: {a, c}: 20 + 250; then {b}: 10 + 100.
    assert bound_ms("sync_parallel", calls) == 270 + 110
    # async: c at 10 (back 260), a at 20 (back 120); trap, a injected at 120; b written by 130,
    # back at 230; c back at 260: the end.
    assert bound_ms("async", calls) == 260
    # The dependency is what async cannot hide: without it, the bound is c's.
    assert bound_ms("async", [BoundCall(10, 100), BoundCall(10, 100), BoundCall(10, 250)]) == 260
    assert bound_ms("async", [BoundCall(10, 200), BoundCall(10, 200, after=0)]) == 10 + 200 + 10 + 200


def test_bad_input():
    with pytest.raises(ValueError, match="unknown mode"):
        bound_ms("turbo", CALLS)
    with pytest.raises(ValueError, match="cycle"):
        bound_ms("async", [BoundCall(1, 1, after=1), BoundCall(1, 1, after=0)])


def test_the_plans_bound_charges_sync_parallel_no_trap_and_batched_frames_their_share():
    from webapp.bench import plan
    from webapp.bench.scenarios import PlannedCall, Scenario

    calls = [PlannedCall(0, "f", {"x": 1}, 200.0), PlannedCall(1, "f", {"x": 2}, 100.0)]
    scenario = Scenario("s", "parallel", "q", [], calls)
    g = sum(plan.tokens(plan.cml(c.index, c.name, c.args)) for c in calls) * 10
    i = sum(len(f" [INTR] c{k} [HEAD] {{}} [END]") for k in (1, 2)) / 4 * 1
    final = plan.tokens(plan.FINAL) * 10
    assert plan.bound(scenario, "sync_parallel", 10, 1) == pytest.approx(g + 200 + i + final - 10)
    assert plan.bound(scenario, "sync", 10, 1) == pytest.approx(g + 300 + i + final - 10)
    assert plan.plan(scenario, "sync_parallel", 10, 1)["wait"] == "eos"
    assert plan.plan(scenario, "async", 10, 1)["wait"] == "trap"


def test_without_a_final_answer_the_bound_ends_at_the_last_written_token():
    # Latency runs to the last generated token: the last results' wait is not part of it.
    calls = [BoundCall(10, 100), BoundCall(10, 300)]
    assert bound_ms("sync", calls, answers=False) == 10 + 100 + 10
    assert bound_ms("sync", calls) == 10 + 100 + 10 + 300
    assert bound_ms("sync_parallel", calls, trap_ms=2, answers=False) == 10 + 10 + 2
    # async: both written by 20, a trap (22), the 100 ms call back at 120, a second trap ends at 122
    assert bound_ms("async", calls, trap_ms=2, answers=False) == 122
