"""A small benchmark run end to end through the real processes (engine with the simulated
decoder or the embedded model, Celery workers, Redis): valid files, the bound respected, async
ahead of sync, BFCL's checker applied to what ran."""

import json

import pytest
from django.core.management import call_command

from tests.conftest import database_url

pytestmark = pytest.mark.django_db(transaction=True)
# Not the default database 11: a benchmark of the real service may be running there.
DB = ("--redis-db", "14")


def test_a_small_bench_run_writes_valid_files(tmp_path, monkeypatch, redis_client, capsys):
    monkeypatch.setenv("DATABASE_URL", database_url())  # the processes it starts use the test database
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "webapp.settings.test")
    call_command("bench", "--datasets", "parallel,multistep_parallel", "--limit", "1", "--token-ms", "5",
                 "--out", str(tmp_path), *DB)
    rows = [json.loads(line) for line in (tmp_path / "scenarios.jsonl").read_text().splitlines()]
    assert [(r["dataset"], r["mode"]) for r in rows] == [
        (d, m) for d in ("parallel", "multistep_parallel") for m in ("sync", "sync_parallel", "async")]
    for row in rows:
        assert not row["errors"], row["errors"]
        assert row["latency_ms"] > 0 and row["bound_ms"] > 0
        assert 0.9 < row["measured_over_bound"] < 2.0, row  # never faster than the ideal system
        assert all(c["started_ms"] is not None and c["finished_ms"] >= c["started_ms"] for c in row["calls"])
        assert row["checker"] == {"valid": True, "error": ""}  # the simulated decoder writes the ground truth
        assert len(row["executed"]) == len(row["calls"]) and not row["model_errors"]
    by_mode = {(r["dataset"], r["mode"]): r["latency_ms"] for r in rows}
    for dataset in ("parallel", "multistep_parallel"):
        assert by_mode[(dataset, "async")] < by_mode[(dataset, "sync")]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["params"]["decoder"] == "simulated" and report["params"]["git_commit"]
    assert {r["mode"] for r in report["results"]} == {"sync", "sync_parallel", "async"}
    for result in report["results"]:
        assert {"dataset", "decoder", "mode", "n", "latency_ms", "speedup_vs_sync", "bound_ms",
                "measured_over_bound", "extra_tokens_vs_sync", "accuracy", "errors"} <= set(result)
        assert result["accuracy"] == 1.0
    assert "| parallel | async |" in (tmp_path / "bench.md").read_text()
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
    (kept,) = (tmp_path / "runs").iterdir()  # the dashboard lists it
    assert {p.name for p in kept.iterdir()} == {"bench.json", "bench.md", "bench.png", "scenarios.jsonl"}
    # Recomputed from the stored traces with the same code: the same rows.
    call_command("bench", "--remeasure", "--out", str(tmp_path))
    again = [json.loads(line) for line in (tmp_path / "scenarios.jsonl").read_text().splitlines()]
    assert again == rows
    assert json.loads((tmp_path / "bench.json").read_text())["params"]["remeasured"]["git_commit"]
    assert len(list((tmp_path / "runs").iterdir())) == 2


def test_an_embedded_run_is_added_beside_a_simulated_one(tmp_path, monkeypatch, redis_client):
    monkeypatch.setenv("DATABASE_URL", database_url())
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "webapp.settings.test")
    call_command("bench", "--datasets", "parallel", "--modes", "sync,async", "--limit", "2", "--token-ms", "5",
                 "--concurrency", "2", "--out", str(tmp_path), *DB)
    call_command("bench", "--append", "--decoder", "embedded", "--model", "qwen2.5-coder-0.5b", "--datasets",
                 "parallel", "--modes", "sync,async", "--limit", "1", "--max-tokens", "160", "--out", str(tmp_path),
                 *DB)
    rows = [json.loads(line) for line in (tmp_path / "scenarios.jsonl").read_text().splitlines()]
    # Two at once: the simulated rows come in the order they finished.
    assert sorted((r["scenario"], r["mode"]) for r in rows[:4]) == [
        ("parallel_0", "async"), ("parallel_0", "sync"), ("parallel_1", "async"), ("parallel_1", "sync")]
    assert [(r["decoder"], r["mode"]) for r in rows[4:]] == [("embedded", "sync"), ("embedded", "async")]
    assert all(r["decoder"] == "simulated" and not r["errors"] for r in rows[:4])
    for row in rows[4:]:
        assert row["cheat_sheet"] is True and row["label"] == "embedded qwen2.5-coder-0.5b, with cheat sheet"
        assert row["latency_ms"] > 0 and row["token_ms"] > 0 and row["bound_ms"] > 0
        assert 0.9 < row["measured_over_bound"] < 3.0, row
        assert isinstance(row["checker"]["valid"], bool)
        # The embedded model runs on held-out entries by default: parallel_6 is the first of them.
        assert row["scenario"] == "parallel_6" and row["heldout"] is True and row["profile"] == "paper"
        assert all(c["name"] == "calculate_sales_tax" for c in row["executed"])  # the scenario's one tool
        assert row["expected_calls"] == 3  # parallel_6 asks for three sales-tax calculations
        assert row["expected_functions"] == ["calculate_sales_tax"] * 3
        assert row["bound_standalone_ms"] > 0 and row["measured_over_bound_standalone"] > 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [(p["decoder"], p["concurrency"], p["heldout"]) for p in report["params"]["parts"]] == [
        ("simulated", 2, False), ("embedded", 1, True)]
    assert report["params"]["standalone_ms_per_token"]["qwen2.5-coder-0.5b"] > 0
    embedded = [r for r in report["results"] if r["decoder"] == "embedded"]
    assert {r["mode"] for r in embedded} == {"sync", "async"}
    assert all(r["accuracy"] in (0.0, 1.0) for r in embedded)  # one scenario: accepted or not
    for result in embedded:  # the failure breakdown agrees with the accuracy
        assert result["failures"]["by_calls_needed"]["3"]["accepted"] == result["accuracy"]
    text = (tmp_path / "bench.md").read_text()
    assert "## simulated" in text and "## embedded qwen2.5-coder-0.5b, with cheat sheet" in text


def test_an_embedded_run_on_human_messages_reports_whether_the_extra_call_was_made(
        tmp_path, monkeypatch, redis_client, test_model):
    monkeypatch.setenv("DATABASE_URL", database_url())
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "webapp.settings.test")
    call_command("bench", "--decoder", "embedded", "--model", test_model, "--datasets", "human_message", "--modes",
                 "async", "--limit", "1", "--max-tokens", "120", "--out", str(tmp_path), *DB)
    (row,) = [json.loads(line) for line in (tmp_path / "scenarios.jsonl").read_text().splitlines()]
    assert (row["dataset"], row["mode"], row["profile"], row["heldout"]) == ("human_message", "async", "paper", True)
    assert not row["errors"], row["errors"]  # the run completed; whether the small model followed is not asserted
    message = row["message"]
    assert message["text"] and message["calls"] and isinstance(message["extra_call_made"], bool)
    assert message["delivered"] is (message["sent_ms"] is not None)
    assert row["bound_standalone_ms"] is None or row["bound_standalone_ms"] > 0
    report = json.loads((tmp_path / "bench.json").read_text())
    (part,) = report["params"]["parts"]
    assert part["heldout"] is True and part["split"]["datasets"]["human_message"]
    assert report["params"]["standalone_ms_per_token"][test_model] == part["standalone_ms_per_token"] > 0
    (result,) = report["results"]
    assert result["messages"]["runs"] == 1 and result["messages"]["extra_call_made"] in (0, 1)
    text = (tmp_path / "bench.md").read_text()
    made = result["messages"]["extra_call_made"]
    assert "## Human messages" in text and f"extra call made in {made} of 1 runs" in text
