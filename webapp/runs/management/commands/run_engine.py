"""The engine worker: a long-running process that decodes submitted tasks."""

from __future__ import annotations

import signal
import sys
import threading
import time

import redis
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from engine import health
from engine.backends.base import Backend, BackendError
from engine.backends.llamacpp import LlamaCppBackend
from engine.backends.llamacpp_batched import BatchedLlamaBackend
from engine.backends.sglang import ServedModelMismatch, SGLangBackend
from engine.backends.simulated import SimulatedBackend
from engine.catalog import UnknownModel, get_model
from engine.drivers.chunks import ChunkSizer
from engine.intake import Intake
from engine.modelfiles import ModelFileError, verified_adapter_path, verified_path
from engine.proc import EngineConfig, EngineProcess
from engine.publish import TracePublisher
from engine.scheduler import Scheduler
from webapp.runs.dispatch import CeleryDispatcher
from webapp.runs.store import DjangoTaskStore
from webapp.runs.submit import on_task_final


class BackendCache:
    """Loads each model once, on first use; a model that fails to load fails its tasks with the
    reason, and is tried again for the next task (the file may have been fixed)."""

    def __init__(self, wake: threading.Event, sequences: int = 16) -> None:
        self._loaded: dict[str, Backend] = {}
        self._wake = wake
        self._sequences = sequences  # a batched backend's sequences: every task the engine may hold
        self.problems: dict[str, str] = {}  # model -> why it could not be loaded (shown on the health bar)

    def __call__(self, name: str) -> Backend:
        try:
            backend = self._load(name)
        except ServedModelMismatch as exc:
            self.problems[name] = str(exc)
            raise
        self.problems.pop(name, None)
        return backend

    def _load(self, name: str) -> Backend:
        backend = self._loaded.get(name)
        if backend is None:
            spec = get_model(name)
            if spec.backend == "simulated":
                backend = SimulatedBackend(spec)
            elif settings.ASYNCLM_SGLANG_URL and name in settings.ASYNCLM_SGLANG_MODELS:
                # Streamed tokens wake the engine's loop like results do. A tuned model is its base
                # model on the server plus the server's copy of its adapter, by the adapter's name.
                backend = SGLangBackend(spec, settings.ASYNCLM_SGLANG_URL, notify=self._wake.set,
                                        served_name=settings.ASYNCLM_SGLANG_SERVED.get(spec.base or name, ""),
                                        lora=spec.adapter.name if spec.adapter else "")
            else:
                path = verified_path(spec, settings.ASYNCLM_MODEL_DIR)
                adapter = verified_adapter_path(spec, settings.BASE_DIR) if spec.adapter else None
                if settings.ASYNCLM_EMBEDDED_BATCHED:
                    backend = BatchedLlamaBackend(spec, path, adapter_path=adapter, n_ctx=settings.ASYNCLM_N_CTX,
                                                  n_threads=settings.ASYNCLM_ENGINE_THREADS, n_seq=self._sequences,
                                                  step_tokens=settings.ASYNCLM_ENGINE_STEP_TOKENS)
                else:
                    backend = LlamaCppBackend(spec, path, adapter_path=adapter, n_ctx=settings.ASYNCLM_N_CTX,
                                              n_threads=settings.ASYNCLM_ENGINE_THREADS,
                                              max_idle_contexts=settings.ASYNCLM_ENGINE_MAX_ACTIVE)
            self._loaded[name] = backend
        return backend

    @property
    def names(self) -> list[str]:
        return sorted(self._loaded)


def wait_for_redis(client: redis.Redis, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            client.ping()
            return
        except redis.RedisError as exc:
            if time.monotonic() > deadline:
                raise CommandError(f"Redis at {settings.REDIS_URL} is not reachable: {exc}") from exc
            time.sleep(0.5)


class Command(BaseCommand):
    help = "Run an engine worker: take tasks from the Redis intake and decode them."

    def add_arguments(self, parser):
        parser.add_argument("--preload", default=settings.ASYNCLM_DEFAULT_MODEL,
                            help="comma-separated models to load at start (default: the default model)")
        parser.add_argument("--id", default="", help="engine id (default: engine-<host>-<pid>)")
        parser.add_argument("--max-active", type=int, default=settings.ASYNCLM_ENGINE_MAX_ACTIVE)
        parser.add_argument("--redis-wait", type=float, default=15.0,
                            help="seconds to wait for Redis at start")

    def handle(self, *args, preload, id, max_active, redis_wait, **options):
        client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=10)
        wait_for_redis(client, redis_wait)
        wake = threading.Event()
        max_held = max(max_active, settings.ASYNCLM_ENGINE_MAX_HELD)
        backends = BackendCache(wake, sequences=max_held)
        for name in filter(None, (n.strip() for n in preload.split(","))):
            try:
                backends(name)
            except ServedModelMismatch as exc:
                # The engine stays up (other models, the health bar says why); this model's tasks
                # fail with the reason until the server serves it.
                self.stderr.write(f"engine: {name} refused: {exc}")
                continue
            except (UnknownModel, ModelFileError, BackendError) as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write(f"engine: loaded {name}")
        config = EngineConfig(engine_id=id or health.process_id("engine"), max_active=max_active,
                              max_held=max_held, spin_s=settings.ASYNCLM_ENGINE_SPIN_US / 1e6,
                              heartbeat_ttl=settings.ASYNCLM_HEARTBEAT_TTL, models=backends.names,
                              model_problems=backends.problems)
        engine = EngineProcess(
            config,
            Scheduler(backends, engine_id=config.engine_id,
                      chunks=ChunkSizer(budget_s=settings.ASYNCLM_ENGINE_STEP_S)),
            Intake(client), DjangoTaskStore(),
            TracePublisher(settings.REDIS_URL, get_channel_layer()), client, CeleryDispatcher(), wake=wake,
            on_final=on_task_final,
        )

        def stop(signum, frame):  # noqa: ARG001
            engine.stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.stdout.write(f"engine {config.engine_id}: waiting for tasks")
        sys.stdout.flush()
        engine.run()
