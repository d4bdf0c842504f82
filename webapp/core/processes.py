"""Starting the system's own processes outside a supervisor: the engine and Celery workers that
tests and benchmarks run against, each with its output in a log file, waited on until its first
heartbeat, and torn down after; a private Redis for when none answers.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import redis
from django.conf import settings

from engine import health


class ProcessError(RuntimeError):
    """A process did not start, or exited while it was waited on."""


def redis_url(db: int, base: str | None = None) -> str:
    """The Redis URL of database `db` on the server of `base` (default: settings.REDIS_URL)."""
    parsed = urllib.parse.urlparse(base or settings.REDIS_URL)
    return parsed._replace(path=f"/{db}").geturl()


def current_database_url() -> str:
    """The URL of the database this process uses, for child processes to share it."""
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def service_env(url: str, **extra: str) -> dict[str, str]:
    """The environment for a child process that uses Redis at `url` for everything."""
    env = dict(os.environ)
    env.update(REDIS_URL=url, CELERY_BROKER_URL=url, CELERY_RESULT_BACKEND=url, PYTHONUNBUFFERED="1",
               DJANGO_SETTINGS_MODULE=os.environ.get("DJANGO_SETTINGS_MODULE", "webapp.settings.local"))
    env.update(extra)
    return env


class Proc:
    """One process with its output in `<log_dir>/<name>.log` (the tail goes into error messages)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.log"
        self.log = self.log_path.open("wb")
        self.popen = subprocess.Popen(args, cwd=settings.BASE_DIR, env=env, stdout=self.log,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if not self.alive:
                raise ProcessError(f"{self.name} exited ({self.popen.returncode}) before {what}:\n{self.output()}")
            time.sleep(0.1)
        raise ProcessError(f"{self.name}: timed out waiting for {what}:\n{self.output()}")

    def wait_for_heartbeat(self, client: redis.Redis, kind: str, beat_id: str, timeout: float = 60) -> None:
        self.wait_until(lambda: any(b["id"] == beat_id for b in health.alive(client, kind)), timeout,
                        "its first heartbeat")

    def kill(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        """Signal the process group; SIGKILL if it has not exited within `timeout`."""
        if self.alive:
            os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        self.log.close()


def start_engine(engine_id: str, model: str, env: dict[str, str], log_dir: Path, client: redis.Redis,
                 *extra: str, timeout: float = 60) -> Proc:
    """`manage.py run_engine` with `model` preloaded; returns once it has sent a heartbeat."""
    proc = Proc(engine_id, [sys.executable, "manage.py", "run_engine", "--id", engine_id, "--preload", model, *extra],
                env, log_dir)
    proc.wait_for_heartbeat(client, "engine", engine_id, timeout)
    return proc


# How every worker runs (Procfile, compose, tests, benchmarks). Celery's gossip, mingle and event
# heartbeats are off: nothing here uses them (revocation is a broadcast, and calls expire; our
# heartbeat is a bootstep of its own), and their traffic woke the worker's main loop, which also
# hands each call to a pool process (enqueue -> call started p50 3.6 -> 3.3 ms at 100 calls/s).
WORKER_ARGS = ("worker", "--pool", "prefork", "-Q", "default,tools", "--without-gossip", "--without-mingle",
               "--without-heartbeat")


def start_worker(name: str, env: dict[str, str], log_dir: Path, client: redis.Redis, *, concurrency: int = 2,
                 loglevel: str = "INFO", timeout: float = 60) -> Proc:
    """A Celery worker (prefork, as deployed: the time limits need it) on the default and tools
    queues; returns once it has sent a heartbeat."""
    proc = Proc(name.split("@", 1)[0], [sys.executable, "-m", "celery", "-A", "webapp", *WORKER_ARGS,
                                        "--concurrency", str(concurrency), "-n", name, "--loglevel", loglevel],
                env, log_dir)
    proc.wait_for_heartbeat(client, "worker", name, timeout)
    return proc


def free_port() -> int:
    """A TCP port nothing listens on now (for a server a test or benchmark starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def redis_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return bool(redis.Redis(host=host, port=port, socket_timeout=1).ping())
    except (OSError, redis.RedisError):
        return False


class PrivateRedis:
    """A throw-away Redis on the host and port of `url` (scripts/redis-private.sh, the one private
    Redis starter), started only when none answers there."""

    def __init__(self, url: str, log_dir: Path) -> None:
        parsed = urllib.parse.urlparse(url)
        self.url = url
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 6379
        self.log_path = log_dir / f"redis-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def started(self) -> bool:
        return self.proc is not None

    def ensure(self) -> None:
        if redis_answers(self.host, self.port):
            return
        if not shutil.which("redis-server"):
            raise ProcessError(f"no Redis answers at {self.host}:{self.port} and redis-server is not installed")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([str(Path(settings.BASE_DIR) / "scripts" / "redis-private.sh")],
                                         env={**os.environ, "REDIS_URL": self.url}, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        while not redis_answers(self.host, self.port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise ProcessError(f"the private Redis on port {self.port} did not answer; see {self.log_path}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None
