"""`make soak` at a small size: the real processes under load while two engines (each in the middle
of decoding a task) and a worker process are killed and Redis restarts; every task ends, none is
stuck, every call's result goes into its task's context exactly once, traces stay dense and every
task keeps its owner."""

import json

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_service_survives_the_soak_at_a_small_size(tmp_path, redis_client, test_model, demo_pack):
    call_command("soak", tasks=30, users=3, rate=1.0, model=test_model, timeout=150, out=str(tmp_path))
    result = json.loads((tmp_path / "soak.json").read_text())
    assert result["misses"] == []
    tasks, calls = result["tasks"], result["calls"]
    assert tasks["accepted"] == tasks["submitted"] == 32 and tasks["stuck"] == 0  # 30, and a long task per kill
    # Each engine kill cut a long task mid-decode, and another engine resumed it.
    assert sum("mid-decode" in f["what"] for f in result["faults"]) == 2, result["faults"]
    assert tasks["resumed"] >= 2, result["faults"]  # the long tasks, and whatever else the engines held
    resumes = result["resume_after_kill_ms"]
    assert len(resumes) == 2 and all(r["ms"] is not None and r["ms"] > 0 for r in resumes), resumes
    assert calls["dispatched"] > 0 and calls["duplicates"] == [] and calls["missing"] == []
    assert [f["what"].split(" ")[0] for f in result["faults"]] == ["SIGKILL", "SIGKILL", "Redis", "SIGKILL"]
    assert all("expected" not in name for name in result["hostile"])
