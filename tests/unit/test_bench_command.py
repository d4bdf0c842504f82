"""`manage.py bench` refuses bad options with a clear message before it starts anything."""

import pytest
from django.core.management import CommandError, call_command

from webapp.bench.management.commands.bench import Command


@pytest.mark.parametrize(("args", "message"), [
    (["--datasets", "parallel,nope"], "unknown datasets: nope"),
    (["--modes", "fast"], "unknown modes: fast"),
    (["--limit", "0"], "at least 1"),
    (["--model", "qwen2.5-coder-0.5b"], "for --decoder embedded"),
    (["--no-cheat-sheet"], "for --decoder embedded"),
    (["--decoder", "embedded", "--model", "simulated"], "needs a real model"),
    (["--decoder", "embedded", "--model", "gpt-9"], "Unknown model 'gpt-9'"),
    (["--token-ms", "0"], "--token-ms must be positive"),
    (["--datasets", "human_message"], "human_message needs a real model"),
    (["--latency-profile", "satellite"], "invalid choice: 'satellite'"),
    (["--redis-db", "0"], "never database 0"),
])
def test_it_refuses_bad_options(args, message, tmp_path):
    with pytest.raises(CommandError, match=message):
        call_command("bench", *args, "--out", str(tmp_path))
    assert not (tmp_path / "bench.json").exists()


def test_append_and_remeasure_need_an_earlier_run(tmp_path):
    with pytest.raises(CommandError, match="no earlier run"):
        call_command("bench", "--remeasure", "--out", str(tmp_path))


def _setup(*args):
    command = Command()
    parser = command.create_parser("manage.py", "bench")
    return command._setup(vars(parser.parse_args(list(args))))


def test_it_runs_the_embedded_model_on_heldout_entries_unless_told_otherwise():
    assert _setup("--decoder", "embedded").heldout is True
    assert _setup("--decoder", "embedded", "--no-heldout").heldout is False
    assert _setup().heldout is False  # the simulated decoder replays the ground truth: nothing to hold out
    assert _setup("--heldout").heldout is True


def test_it_uses_the_papers_latencies_unless_told_otherwise():
    assert _setup().profile == "paper" and _setup("--latency-profile", "web").profile == "web"
    embedded = _setup("--decoder", "embedded", "--model", "smollm2-135m", "--latency-profile", "web")
    assert embedded.profile == "web" and embedded.label == "embedded smollm2-135m, with cheat sheet"


def test_it_refuses_a_redis_database_where_another_benchmark_is_running(tmp_path, redis_client, monkeypatch):
    from django.conf import settings

    from engine import health
    from webapp.bench import runner
    from webapp.bench.runner import BenchError, Services

    db = int(settings.REDIS_URL.rsplit("/", 1)[1])
    health.beat(redis_client, "engine", "bench-engine-other", ttl=30)
    redis_client.set("asynclm:keep", "1")
    services = Services(tmp_path, redis_db=db)
    monkeypatch.setattr(runner, "start_engine", lambda *a, **k: pytest.fail("started processes"))
    with pytest.raises(BenchError, match=f"another benchmark is running on Redis database {db} .*bench-engine-other"):
        services.start(lambda text: None)
    assert redis_client.get("asynclm:keep") == b"1"  # nothing was flushed
