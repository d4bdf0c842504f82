"""Calls on one stateful instance are dispatched one at a time, in the order the model issued
them; calls on other instances are not held up."""

from engine.tools import ToolSpec
from tests.unit.test_scheduler_calls import make, run_until_idle


def fs_tool(instance: str, method: str) -> ToolSpec:
    return ToolSpec(f"{instance}.{method}", method, {"type": "object", "properties": {"name": {"type": "string"}}},
                    kind="bfcl", config={"class": "GorillaFileSystem", "method": method, "instance": instance})


TOOLS = [fs_tool("e1", "mkdir"), fs_tool("e1", "ls"), fs_tool("e2", "ls")]
SCRIPT = ['[CALL] a [HEAD] e1.mkdir(name="x") [END]', "[CALL] b [HEAD] e1.ls() [END]",
          "[CALL] c [HEAD] e2.ls() [END]", "[CALL] d [HEAD] e1.ls() [END]", " done"]


def dispatched(scheduler):
    return [r.call_id for r in scheduler.take_dispatches()]


def test_it_dispatches_the_next_call_on_an_instance_only_after_the_previous_one_finished():
    scheduler, events, *_ = make(SCRIPT, tools=TOOLS)
    events += run_until_idle(scheduler)
    assert dispatched(scheduler) == ["a", "c"]  # e2 is not held up by e1
    waiting = {e.payload["call_id"]: e.payload["on"] for e in events if e.kind == "call_waiting"}
    assert waiting == {"b": ["a"], "d": ["b"]}
    scheduler.deliver(1, "a", ok=True, value=None)
    assert dispatched(scheduler) == ["b"]
    scheduler.deliver(1, "c", ok=True, value={})
    assert dispatched(scheduler) == []
    scheduler.deliver(1, "b", ok=True, value={"current_directory_content": ["x"]})
    (last,) = scheduler.take_dispatches()
    assert last.call_id == "d" and last.order == 3  # the model's order travels with the call


def test_a_failed_call_releases_the_next_one_on_its_instance():
    scheduler, events, *_ = make(SCRIPT, tools=TOOLS)
    run_until_idle(scheduler)
    scheduler.take_dispatches()
    scheduler.deliver(1, "a", ok=False, error="boom", error_type="exception")
    assert dispatched(scheduler) == ["b"]


def test_sync_parallel_batches_respect_instance_order():
    scheduler, events, *_ = make(SCRIPT[:3] + ["[TRAP]", " done"], mode="sync_parallel", tools=TOOLS)
    run_until_idle(scheduler)
    assert dispatched(scheduler) == ["a", "c"]
    scheduler.deliver(1, "a", ok=True, value=None)
    assert dispatched(scheduler) == ["b"]


def test_an_instance_scenario_kept_once_by_the_task_travels_with_each_call_of_that_instance():
    scenario = {"root": {"w": {"type": "directory", "contents": {}}}}
    scheduler, *_ = make(SCRIPT, tools=TOOLS, instances={"e1": scenario})
    run_until_idle(scheduler)
    requests = {r.call_id: r for r in scheduler.take_dispatches()}
    assert requests["a"].tool["config"]["initial_config"] == scenario
    assert "initial_config" not in requests["c"].tool["config"]  # e2 starts from the class's default
    assert "initial_config" not in scheduler.task(1).tools["e1.mkdir"].config  # the snapshot stays small
