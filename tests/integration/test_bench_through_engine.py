"""The concurrency benchmark's second half: scripted tasks submitted together to a real engine
process (each embedded backend), their calls run by a real Celery worker."""

import pytest
from django.conf import settings

from tests.conftest import database_url
from webapp.bench.management.commands.bench_engine import LOOKUP
from webapp.bench.through_engine import through_engine

pytestmark = pytest.mark.django_db(transaction=True)
DB = 14  # not the benchmark's default database: a real run may be using it


def test_it_runs_tasks_together_on_each_backend_and_reads_their_figures_from_the_traces(tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", database_url())  # the processes it starts use the test database
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "webapp.settings.test")
    said: list[str] = []
    out = through_engine(settings.ASYNCLM_TEST_MODEL, [LOOKUP], tmp_path, said.append, tokens=24, ns=(1, 2),
                         redis_db=DB)
    for backend in ("batched", "contexts"):
        runs = {(r["tasks"], r["calls"]): r for r in out[backend]}
        assert set(runs) == {(1, False), (2, False), (1, True), (2, True)}
        for (n, calls), run in runs.items():
            assert run["tokens"] == 24 * n  # every task wrote its scripted tokens
            assert run["aggregate_tok_s"] > 0 and run["per_task_tok_s_p50"] > 0 and run["ttft_ms_p50"] > 0
            assert (run["calls_dispatched"] > 0) is calls  # with calls, the worker ran them
    assert any("engine process, contexts" in line for line in said)
