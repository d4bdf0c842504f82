"""The dashboard's benchmark pages read the runs kept by `manage.py bench`."""

import json

import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db

RESULT = {"dataset": "parallel", "decoder": "simulated", "label": "simulated", "mode": "async", "n": 2,
          "latency_ms": {"p10": 600.0, "p50": 650.0, "p90": 700.0, "mean": 651.0},
          "speedup_vs_sync": {"mean": 1.31, "median": 1.3}, "bound_ms": 620.0, "measured_over_bound": 1.05,
          "extra_tokens_vs_sync": 2.5, "accuracy": None, "errors": 0}
EMBEDDED = {**RESULT, "decoder": "embedded", "label": "embedded qwen2.5-coder-0.5b, with cheat sheet",
            "accuracy": 0.9, "mode": "sync", "speedup_vs_sync": {"mean": 1.0, "median": 1.0}, "profile": "web",
            "heldout": True, "bound_standalone_ms": 512.5, "measured_over_bound_standalone": 1.2702}
HUMAN = {**EMBEDDED, "dataset": "human_message", "mode": "async",
         "messages": {"runs": 3, "delivered": 3, "extra_call_made": 2}}
PARTS = [{"decoder": "simulated", "label": "simulated", "model": "simulated", "token_ms": 10, "inject_ms": 1,
          "datasets": ["parallel"], "modes": ["async"], "limit": 2, "cheat_sheet": True, "seconds": 12},
         {"decoder": "embedded", "label": EMBEDDED["label"], "model": "qwen2.5-coder-0.5b", "token_ms": None,
          "inject_ms": None, "datasets": ["parallel", "human_message"], "modes": ["sync", "async"], "limit": 2,
          "cheat_sheet": True, "seconds": 40, "profile": "web", "heldout": True, "standalone_ms_per_token": 24.5,
          "split": {"heldout": True, "datasets": {"parallel": "50 held-out of 200 entries"}}}]
PARAMS = {"decoder": f"simulated + {EMBEDDED['label']}", "parts": PARTS, "seed": 0, "git_commit": "abc1234",
          "date": "2026-11-25", "machine": "vm", "latency_model": "lognormal"}


@pytest.fixture
def bench_dir(tmp_path, settings):
    settings.ASYNCLM_BENCH_DIR = tmp_path
    run = tmp_path / "runs" / "20261125-120000-abc1234"
    run.mkdir(parents=True)
    (run / "bench.json").write_text(json.dumps({"params": PARAMS, "results": [RESULT, EMBEDDED, HUMAN]}))
    (run / "bench.png").write_bytes(b"\x89PNG fake")
    return tmp_path


def test_the_pages_list_runs_and_show_their_tables_and_plots(client, alice, bench_dir):
    client.force_login(alice)
    listing = client.get(reverse("bench_runs")).content.decode()
    assert "20261125-120000-abc1234" in listing and "<strong>simulated + embedded" in listing
    assert "simulated at 10 ms/token: parallel" in listing
    page = client.get(reverse("bench_run", args=["20261125-120000-abc1234"])).content.decode()
    assert "1.31 / 1.3" in page and "not measured" in page and "bench.png" in page
    assert "<strong>embedded model qwen2.5-coder-0.5b</strong>, with the cheat sheet" in page and "90%" in page
    assert "standalone decode 24.5 ms/token" in page and "web tool latencies" in page
    assert "held-out entries" in page and "parallel: 50 held-out of 200 entries" in page
    assert "<td>512.5</td><td>1.2702</td>" in page and "<td>web</td>" in page
    assert "Human messages" in page and "<td>2 of 3</td>" in page
    assert "web tool latencies, held-out entries: parallel, human_message" in listing
    image = client.get(reverse("bench_file", args=["20261125-120000-abc1234", "bench.png"]))
    assert image["Content-Type"] == "image/png" and b"".join(image.streaming_content) == b"\x89PNG fake"


def test_a_run_with_a_tuned_model_shows_its_goals_rated(client, alice, bench_dir):
    from webapp.bench.goals import accuracy_goals

    tuned = {**EMBEDDED, "model": "qwen2.5-coder-0.5b-cml", "label": "tuned, without cheat sheet", "cheat_sheet": False,
             "profile": "paper", "calls_per_scenario": 2.0, "runs_at_token_limit": 1, "repeated_calls": 0}
    results = [{**tuned, "mode": "sync", "accuracy": 0.6}, {**tuned, "mode": "async", "accuracy": 0.64},
               {**tuned, "model": "qwen2.5-coder-0.5b", "label": "base", "mode": "async", "accuracy": 0.4}]
    goals = accuracy_goals(results, {"qwen2.5-coder-0.5b-cml": "qwen2.5-coder-0.5b"})
    run = bench_dir / "runs" / "20261125-140000-abc1234"
    run.mkdir()
    (run / "bench.json").write_text(json.dumps({"params": PARAMS, "results": results, "goals": goals}))
    client.force_login(alice)
    page = client.get(reverse("bench_run", args=[run.name])).content.decode()
    assert "<h2>The tuned model's accuracy goals</h2>" in page
    assert "<td>64% (met)</td>" in page and "60% (met)" in page and "40% of 2 (missed)" in page
    assert "<td>1.2 (met)</td>" in page and "async &gt;= 60%" in page
    assert "accuracy goals" not in client.get(reverse("bench_run", args=["20261125-120000-abc1234"])).content.decode()


def test_a_run_of_a_real_model_shows_where_its_answers_fail(client, alice, bench_dir):
    from tests.unit.test_bench_failures import RUNS
    from webapp.bench.report import summarize

    run = bench_dir / "runs" / "20261125-150000-abc1234"
    run.mkdir()
    (run / "bench.json").write_text(json.dumps({"params": PARAMS, "results": summarize(RUNS)}))
    client.force_login(alice)
    page = client.get(reverse("bench_run", args=[run.name])).content.decode()
    assert "<h2>Where the answers fail</h2>" in page
    assert "<td>5</td><td>2</td><td>1</td><td>2 (1)</td><td>1</td><td>2: 1 / 2, 0 too few; 3: 1 / 3, 1 too few;" in page
    other = client.get(reverse("bench_run", args=["20261125-120000-abc1234"])).content.decode()
    assert "Where the answers fail" not in other


def test_a_run_without_human_messages_has_no_such_section(client, alice, bench_dir):
    client.force_login(alice)
    run = bench_dir / "runs" / "20261125-130000-abc1234"
    run.mkdir()
    (run / "bench.json").write_text(json.dumps({"params": {**PARAMS, "parts": PARTS[:1]}, "results": [RESULT]}))
    page = client.get(reverse("bench_run", args=[run.name])).content.decode()
    assert "Human messages" not in page and "<td>paper</td>" in page


def test_only_kept_runs_and_known_files_are_served(client, alice, bench_dir):
    client.force_login(alice)
    (bench_dir / "secret.txt").write_text("no")
    assert client.get(reverse("bench_run", args=["..%2F..%2Fetc"])).status_code == 404
    assert client.get(reverse("bench_file", args=["20261125-120000-abc1234", "secret.txt"])).status_code == 404
    assert client.get(reverse("bench_file", args=["20261125-120000-abc1234", "scenarios.jsonl"])).status_code == 404


def test_the_pages_need_a_login(client, bench_dir):
    assert client.get(reverse("bench_runs")).status_code == 302
