"""`bench --agents` end to end through the real processes (engines with the simulated decoder,
a Celery worker that starts the sub-agents, Redis): every sub-agent runs as its own task, the
bound holds, async overlaps the sub-agents and beats sync, and --append keeps another setup's rows."""

import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.conftest import database_url
from webapp.runs.models import Task

pytestmark = pytest.mark.django_db(transaction=True)
DB = ("--redis-db", "14")  # not the benchmark's default database: a real run may be using it


@pytest.fixture
def bench_env(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", database_url())  # the processes it starts use the test database
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "webapp.settings.test")


def test_an_agents_run_delegates_to_sub_agent_tasks_and_writes_its_report(tmp_path, bench_env, redis_client):
    call_command("bench", "--agents", "--ks", "3", "--limit", "1", "--engines", "2", "--token-ms", "5",
                 "--out", str(tmp_path), *DB)
    out = tmp_path / "agents"
    rows = [json.loads(line) for line in (out / "agents.jsonl").read_text().splitlines()]
    assert [(r["k"], r["mode"], r["engines"]) for r in rows] == [(3, m, 2) for m in ("sync", "sync_parallel", "async")]
    for row in rows:
        assert not row["errors"], row["errors"]
        assert 0.9 < row["measured_over_bound"] < 2.0, row  # never faster than the ideal system
        assert [c["call_id"] for c in row["children"]] == ["c1", "c2", "c3"]
        parent = Task.objects.get(pk=row["task_id"])
        children = list(parent.children.order_by("parent_call_id"))
        assert [c.pk for c in children] == [c["task_id"] for c in row["children"]]
        assert all(c.status == "finished" and c.mode == row["mode"] and c.calls.count() == 2 for c in children)
    latency = {r["mode"]: r["latency_ms"] for r in rows}
    assert latency["async"] < latency["sync"]
    # Sync waits for each sub-agent in turn; async runs them side by side.
    sync, async_ = rows[0], rows[2]
    assert _overlapping_children(async_) >= 2 and _overlapping_children(sync) == 1
    report = json.loads((out / "agents.json").read_text())
    assert {(r["k"], r["mode"]) for r in report["results"]} == {(3, m) for m in ("sync", "sync_parallel", "async")}
    assert next(r for r in report["results"] if r["mode"] == "async")["speedup_vs_sync"] > 1
    assert "| simulated | 2 | 3 | async |" in (out / "agents.md").read_text()

    call_command("bench", "--agents", "--append", "--ks", "2", "--limit", "1", "--engines", "1", "--modes", "async",
                 "--token-ms", "5", "--out", str(tmp_path), *DB)
    rows = [json.loads(line) for line in (out / "agents.jsonl").read_text().splitlines()]
    assert sorted({(r["engines"], r["k"]) for r in rows}) == [(1, 2), (2, 3)]
    assert [p["engines"] for p in json.loads((out / "agents.json").read_text())["params"]["parts"]] == [2, 1]


def _overlapping_children(row: dict) -> int:
    """The most sub-agents of a run that were running at one moment."""
    spans = []
    for c in row["children"]:
        child = Task.objects.get(pk=c["task_id"])
        spans.append((child.started_at, child.finished_at))
    return max(sum(1 for s, f in spans if s <= start < f) for start, _ in spans)


def test_bad_agent_options_are_refused_with_the_reason(tmp_path, bench_env):
    with pytest.raises(CommandError, match="each k must be from 1 to 8"):
        call_command("bench", "--agents", "--ks", "2,9", "--out", str(tmp_path), *DB)
    with pytest.raises(CommandError, match="--ks takes numbers"):
        call_command("bench", "--agents", "--ks", "two", "--out", str(tmp_path), *DB)
    with pytest.raises(CommandError, match="--engines must be from 1 to 16"):
        call_command("bench", "--agents", "--engines", "0", "--out", str(tmp_path), *DB)
