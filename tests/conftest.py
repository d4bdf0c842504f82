"""Shared fixtures: users, the real Redis, and the real processes (engine, Celery worker, web)
started as subprocesses against the test database."""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from django.conf import settings

from webapp.core import processes
from webapp.core.processes import Proc, free_port, service_env

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    # A forked child deadlocks once asgiref has run in the parent.
    multiprocessing.set_start_method("spawn", force=True)


@pytest.fixture(autouse=True)
def fresh_channel_layer() -> Iterator[None]:
    """Each test gets channel layers of its own: channels_redis keeps receive state (a lock, a
    count, the loop) per layer, and a receive left over from an earlier test's event loop would
    hold this test's consumer back."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    """The real Redis on the tests' own database number, with the service's keys removed before
    each test (the broker's own keys stay, so a shared Celery worker keeps its queues)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    keys = list(client.scan_iter(match="asynclm:*", count=1000))
    if keys:
        client.delete(*keys)
    from webapp.core.redis import client as web_client

    web_client.cache_clear()
    yield client
    client.close()


@pytest.fixture
def demo_pack(db):
    from webapp.tools.demo import install_demo_pack
    from webapp.tools.models import Tool, ToolPack

    install_demo_pack(ToolPack, Tool)
    return ToolPack.objects.get(name="demo")


@pytest.fixture
def make_user(django_user_model) -> Callable[..., object]:
    def make(username: str = "alice", password: str = "pw-for-tests-123", **extra):
        return django_user_model.objects.create_user(username=username, password=password, **extra)

    return make


@pytest.fixture
def alice(make_user):
    return make_user("alice")


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


@pytest.fixture
def bob(make_user):
    return make_user("bob")


@pytest.fixture
def test_model() -> str:
    return settings.ASYNCLM_TEST_MODEL


def database_url() -> str:
    return processes.current_database_url()


def subprocess_env(**extra: str) -> dict[str, str]:
    return service_env(settings.REDIS_URL, DJANGO_SETTINGS_MODULE="webapp.settings.test", DATABASE_URL=database_url(),
                       **extra)


@pytest.fixture
def start_engine(tmp_path, redis_client) -> Iterator[Callable[..., Proc]]:
    procs: list[Proc] = []

    def start(engine_id: str = "engine-test", preload: str | None = None, **env: str) -> Proc:
        preload = settings.ASYNCLM_TEST_MODEL if preload is None else preload
        proc = processes.start_engine(engine_id, preload, subprocess_env(**env), tmp_path, redis_client)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()


def _start_worker(log_dir: Path, name: str) -> Proc:
    return processes.start_worker(name, subprocess_env(), log_dir, redis.Redis.from_url(settings.REDIS_URL))


@pytest.fixture(scope="module")
def celery_worker_proc(tmp_path_factory, django_db_setup, django_db_blocker) -> Iterator[Proc]:
    """One real worker per test module (starting one takes seconds)."""
    with django_db_blocker.unblock():
        proc = _start_worker(tmp_path_factory.mktemp("worker"), f"worker-test-{os.getpid()}@localhost")
    yield proc
    proc.kill()


@pytest.fixture
def own_celery_worker(tmp_path, redis_client) -> Iterator[Proc]:
    """A worker of the test's own, for tests that kill it."""
    proc = _start_worker(tmp_path, f"worker-own-{time.monotonic_ns()}@localhost")
    yield proc
    proc.kill()


@pytest.fixture
def web_server(tmp_path, redis_client, web_server_env) -> Iterator[str]:
    """The real web server (daphne) as a subprocess; its URL."""
    port = free_port()
    proc = Proc("web", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "webapp.asgi:application"],
                subprocess_env(**web_server_env), tmp_path)
    proc.wait_until(lambda: processes.listening(port), 30, "it to listen")
    yield f"http://127.0.0.1:{port}"
    proc.kill()


@pytest.fixture
def web_server_env() -> dict[str, str]:
    """Settings for the web server subprocess (a test module overrides this to change them)."""
    return {}


def start_sglang_imitation(model: str, log_dir: Path, *args: str) -> tuple[Proc, str]:
    """The SGLang imitation server (tests/sglang_imitation.py) with `model`, on a free port
    (`args`: more of its options)."""
    import urllib.request

    port = free_port()
    proc = Proc(f"sglang-imitation-{port}", [sys.executable, "-m", "tests.sglang_imitation", "--port", str(port),
                                              "--model", model, "--model-dir", str(settings.ASYNCLM_MODEL_DIR), *args],
                subprocess_env(), log_dir)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return urllib.request.urlopen(url + "/health", timeout=1).status == 200
        except OSError:
            return False

    proc.wait_until(healthy, 60, "it to answer /health")
    return proc, url
