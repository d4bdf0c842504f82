"""Stateful BFCL instances on the real Redis, driven through the worker's own execute() (the
same code a Celery task runs): state between calls, instances kept apart, one application per
call id, order, the lock, and integrity of the stored state."""

import threading

import pytest

from engine.tools import ToolSpec
from workers.executors import CallFailed
from workers.executors.base import CallContext
from workers.instances import instance_key, load_state
from workers.tasks import execute

NAME = {"type": "object", "properties": {"dir_name": {"type": "string"}}, "required": ["dir_name"]}
FILE = {"type": "object", "properties": {"file_name": {"type": "string"}}, "required": ["file_name"]}
NONE = {"type": "object", "properties": {}}


def fs(method, params=NONE, instance="e1", initial=None):
    config = {"class": "GorillaFileSystem", "method": method, "instance": instance}
    if initial is not None:
        config["initial_config"] = initial
    return ToolSpec(f"{instance}.{method}", method, params, kind="bfcl", config=config)


def run(tool, args, call_id, order=0, task=1):
    return execute(tool, args, CallContext(task, call_id, order))


@pytest.fixture(autouse=True)
def _redis(redis_client):
    return redis_client


def test_it_keeps_an_instances_state_between_calls():
    run(fs("mkdir", NAME), {"dir_name": "alpha"}, "c1", 0)
    assert run(fs("ls"), {}, "c2", 1) == {"current_directory_content": ["alpha"]}


def test_it_keeps_two_instances_of_one_class_apart():
    work = {"root": {"work": {"type": "directory", "contents": {"notes.txt": {"type": "file", "content": "hi"}}}}}
    run(fs("mkdir", NAME, "e1"), {"dir_name": "alpha"}, "c1", 0)
    assert run(fs("ls", instance="e2", initial=work), {}, "c2", 1) == {"current_directory_content": ["notes.txt"]}
    assert run(fs("ls", instance="e1"), {}, "c3", 2) == {"current_directory_content": ["alpha"]}
    assert run(fs("ls", instance="e1"), {}, "c4", 3, task=2) == {"current_directory_content": []}  # other task


def test_a_redelivered_call_is_applied_once_and_gets_its_first_outcome():
    first = run(fs("touch", FILE), {"file_name": "a.txt"}, "c1", 0)
    again = run(fs("touch", FILE), {"file_name": "a.txt"}, "c1", 0)  # applied twice BFCL would say "exists"
    assert first == again
    assert run(fs("ls"), {}, "c2", 1) == {"current_directory_content": ["a.txt"]}


def test_a_call_older_than_one_already_applied_is_refused():
    run(fs("ls"), {}, "c5", 5)
    with pytest.raises(CallFailed) as exc:
        run(fs("mkdir", NAME), {"dir_name": "late"}, "c3", 3)
    assert exc.value.kind == "out_of_order"
    assert run(fs("ls"), {}, "c6", 6) == {"current_directory_content": []}


def test_a_failed_call_leaves_the_state_as_it_was_and_is_recorded(redis_client):
    run(fs("mkdir", NAME), {"dir_name": "alpha"}, "c1", 0)
    with pytest.raises(CallFailed) as exc:
        run(fs("mkdir", NAME), {"dir_name": 7}, "c2", 1)
    assert exc.value.kind == "invalid_arguments"
    with pytest.raises(CallFailed):  # the redelivery replays the recorded error
        run(fs("mkdir", NAME), {"dir_name": 7}, "c2", 1)
    assert load_state(redis_client, 1, "e1").ls() == {"current_directory_content": ["alpha"]}


def test_concurrent_calls_on_one_instance_do_not_lose_updates():
    errors = []

    def touch(i):
        try:
            run(fs("touch", FILE), {"file_name": f"f{i:02d}"}, f"c{i}", 0)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=touch, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    listed = run(fs("ls"), {}, "last", 1)["current_directory_content"]
    assert sorted(listed) == [f"f{i:02d}" for i in range(12)]


def test_a_tampered_state_is_refused(redis_client):
    run(fs("mkdir", NAME), {"dir_name": "alpha"}, "c1", 0)
    key = instance_key(1, "e1")
    blob = redis_client.hget(key, "state")
    redis_client.hset(key, "state", blob[:32] + b"x" + blob[33:])
    with pytest.raises(CallFailed) as exc:
        run(fs("ls"), {}, "c2", 1)
    assert exc.value.kind == "state_corrupt"


def test_a_state_copied_to_another_instance_or_task_is_refused(redis_client):
    run(fs("mkdir", NAME), {"dir_name": "alpha"}, "c1", 0)  # task 1, instance e1
    run(fs("mkdir", NAME), {"dir_name": "beta"}, "c1", 0, task=2)  # task 2 has a state of its own
    redis_client.hset(instance_key(2, "e1"), "state", redis_client.hget(instance_key(1, "e1"), "state"))
    with pytest.raises(CallFailed) as exc:
        run(fs("ls"), {}, "c2", 1, task=2)
    assert exc.value.kind == "state_corrupt"


def test_math_api_needs_no_scenario():
    add = ToolSpec("add", "add", {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}},
                   kind="bfcl", config={"class": "MathAPI", "method": "add"})
    assert run(add, {"a": 2, "b": 3.5}, "m1") == {"result": 5.5}


def test_a_runaway_precision_is_refused_and_mpmaths_digits_are_restored_after_each_call():
    import mpmath

    log = ToolSpec("logarithm", "logarithm", {"type": "object", "properties": {}},
                   kind="bfcl", config={"class": "MathAPI", "method": "logarithm"})
    before = mpmath.mp.dps
    with pytest.raises(CallFailed) as exc:
        run(log, {"value": 8, "base": 2, "precision": 10**6}, "m1")
    assert "precision is at most 100" in str(exc.value)
    result = run(log, {"value": 8, "base": 2, "precision": 60}, "m2")
    assert abs(result["result"] - 3.0) < 1e-9
    assert mpmath.mp.dps == before  # BFCL's MathAPI set 60 for the call; later calls get the default
