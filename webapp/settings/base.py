import re
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from webapp.settings.env import Env

env = Env()

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = env.path("ASYNCLM_VAR_DIR", BASE_DIR / "var")

SECRET_KEY = env.str("DJANGO_SECRET_KEY", "")
DEBUG = env.bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "ninja",
    "webapp.core",
    "webapp.tools",
    "webapp.runs",
    "webapp.api",
    "webapp.bench",
    "webapp.openai_api",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "webapp.core.middleware.RedisUnavailableMiddleware",
]

ROOT_URLCONF = "webapp.urls"
ASGI_APPLICATION = "webapp.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "webapp.core.context_processors.health",
                "webapp.core.context_processors.test_hooks",
            ],
        },
    },
]

DATABASES = {"default": env.database("DATABASE_URL", "sqlite:///var/db.sqlite3", base_dir=BASE_DIR)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns on every start otherwise
# Serve straight from the source folders: no collectstatic step before `make run`.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

REDIS_URL = env.redis_url("REDIS_URL", "redis://127.0.0.1:6379/0")

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": "asynclm:channels"},
    }
}

# Shared by every process (the API's rate limits count across web processes).
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "asynclm:cache",
    }
}

CELERY_BROKER_URL = env.redis_url("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = env.redis_url("CELERY_RESULT_BACKEND", REDIS_URL)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# No unacknowledged-message bookkeeping in Redis: kombu's ack emulation costs the worker's main
# process a Redis round trip before each call reaches a pool process and another at its ack (0.7-1.3 ms
# of a dispatch's p50 on two busy cores), and what it buys is a redelivery after a killed main
# process once the visibility timeout (an hour) has passed, when every call's message has expired
# (timeout + grace); the engine's deadline already turns such a call into a timeout error. A killed
# pool process is still redelivered (reject on worker lost, from the main process's memory).
CELERY_BROKER_TRANSPORT_OPTIONS = {"ack_emulation": False}
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", 300, min=1)
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", 240, min=1)
CELERY_RESULT_EXPIRES = 3600
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {"workers.tasks.run_tool": {"queue": "tools"}}

# Engine and models.
ASYNCLM_MODEL_DIR = env.path("ASYNCLM_MODEL_DIR", VAR_DIR / "models")
# The 0.5B with the shipped CML adapter: on held-out BFCL entries it meets the accuracy goals the
# base model misses (docs/benchmarks.md); `qwen2.5-coder-0.5b` is the same weights without it.
ASYNCLM_DEFAULT_MODEL = env.str("ASYNCLM_DEFAULT_MODEL", "qwen2.5-coder-0.5b-cml")
ASYNCLM_ENGINE_THREADS = env.int("ASYNCLM_ENGINE_THREADS", 2, min=1)
ASYNCLM_ENGINE_MAX_ACTIVE = env.int("ASYNCLM_ENGINE_MAX_ACTIVE", 4, min=1, max=64)
# Sub-agents (tools of kind `agent`): how deep they may nest below a person's task, and how many
# one task may start.
ASYNCLM_AGENT_MAX_DEPTH = env.int("ASYNCLM_AGENT_MAX_DEPTH", 2, min=0, max=8)
ASYNCLM_AGENT_MAX_FANOUT = env.int("ASYNCLM_AGENT_MAX_FANOUT", 8, min=1, max=64)
# Tasks one engine holds at once, parked and blocked ones included (they wait without decoding).
ASYNCLM_ENGINE_MAX_HELD = env.int("ASYNCLM_ENGINE_MAX_HELD", 16, min=1, max=256)
# The time one engine step may take: prefill and injection chunks (128 tokens) are halved for a
# model too slow to evaluate them within it (other tasks, heartbeats and wall budgets wait for a
# step to end).
ASYNCLM_ENGINE_STEP_S = env.float("ASYNCLM_ENGINE_STEP_S", 2.0, min=0.05)
# The last microseconds (600) of a wait for a busy sequence (a device's step, e.g. the simulated decoder's
# token) are spun instead of slept, so the next token is sampled when its work is done rather than
# when the VM wakes the loop (0.15 ms late at the median here); 0 sleeps the whole wait.
ASYNCLM_ENGINE_SPIN_US = env.int("ASYNCLM_ENGINE_SPIN_US", 600, min=0, max=5000)
ASYNCLM_N_CTX = env.int("ASYNCLM_N_CTX", 4096, min=256)
# The embedded model with continuous batching: one llama.cpp context, a sequence per task, one
# batch per step (engine/backends/llamacpp_batched.py); false: a context per task, round-robin.
ASYNCLM_EMBEDDED_BATCHED = env.bool("ASYNCLM_EMBEDDED_BATCHED", True)
# Prefill and interrupt-frame tokens one batched step evaluates at most, beside every decoding
# task's next token.
ASYNCLM_ENGINE_STEP_TOKENS = env.int("ASYNCLM_ENGINE_STEP_TOKENS", 128, min=16, max=2048)
ASYNCLM_MAX_PROMPT_CHARS = env.int("ASYNCLM_MAX_PROMPT_CHARS", 8000, min=1)
ASYNCLM_MAX_TOKENS_LIMIT = env.int("ASYNCLM_MAX_TOKENS_LIMIT", 2048, min=1)
ASYNCLM_HEARTBEAT_TTL = env.int("ASYNCLM_HEARTBEAT_TTL", 15, min=3)
# Failed logins allowed per user name in the window before it is locked until the window ends (an
# address may fail five times as often).
ASYNCLM_LOGIN_FAILURES = env.int("ASYNCLM_LOGIN_FAILURES", 10, min=1)
ASYNCLM_LOGIN_WINDOW_S = env.int("ASYNCLM_LOGIN_WINDOW_S", 900, min=1)
# Queued + running tasks one user may have at once (a comparison counts three).
ASYNCLM_MAX_OPEN_TASKS_PER_USER = env.int("ASYNCLM_MAX_OPEN_TASKS_PER_USER", 20, min=1)
# Named BFCL instances per task, and the size of their starting states as JSON (stored once each).
ASYNCLM_MAX_INSTANCES = env.int("ASYNCLM_MAX_INSTANCES", 8, min=1)
ASYNCLM_MAX_INSTANCES_CHARS = env.int("ASYNCLM_MAX_INSTANCES_CHARS", 65536, min=2)
# Offer benchmark-only decoders (the simulated one) to every user, not only to staff.
ASYNCLM_OFFER_BENCHMARK_DECODERS = env.bool("ASYNCLM_OFFER_BENCHMARK_DECODERS", False)
# An SGLang server (e.g. http://sglang:30000) serving these catalog models; empty: all embedded.
ASYNCLM_SGLANG_URL = env.str("ASYNCLM_SGLANG_URL", "")
# The adapter is llama.cpp's: a server serves the base weights.
ASYNCLM_SGLANG_MODELS = env.list("ASYNCLM_SGLANG_MODELS", ["qwen2.5-coder-0.5b"])
# What the server reports as its model when it loads one from a local path, per catalog model:
# "smollm2-135m=/srv/models/smollm2,..." (checked at start; the architecture and tokenizer always are).
ASYNCLM_SGLANG_SERVED = env.mapping("ASYNCLM_SGLANG_SERVED", {})
ASYNCLM_MAX_MESSAGE_CHARS = env.int("ASYNCLM_MAX_MESSAGE_CHARS", 2000, min=1)
# Task creation through the API, per user ("N/s", "N/m", "N/h" or "N/d").
ASYNCLM_API_TASK_RATE = env.str("ASYNCLM_API_TASK_RATE", "30/m")
# Tasks one user may create through the form and the API together ("N/s", "N/m", "N/h", "N/d").
ASYNCLM_TASK_RATE = env.str("ASYNCLM_TASK_RATE", "30/m")
if not re.fullmatch(r"[1-9][0-9]*/[smhd][a-z]*", ASYNCLM_TASK_RATE):
    raise ImproperlyConfigured(f"ASYNCLM_TASK_RATE={ASYNCLM_TASK_RATE!r}: expected N/s, N/m, N/h or N/d (e.g. 30/m)")
# `python manage.py purge_tasks` deletes tasks (and their events) older than this.
ASYNCLM_TASK_RETENTION_DAYS = env.int("ASYNCLM_TASK_RETENTION_DAYS", 30, min=1)
# Where `manage.py bench` writes by default; the dashboard lists the runs kept in its runs/ folder.
ASYNCLM_BENCH_DIR = env.path("ASYNCLM_BENCH_DIR", VAR_DIR / "bench")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", "INFO")},
    "loggers": {"daphne": {"level": "WARNING"}, "django.channels.server": {"level": "WARNING"},
                # one line per SGLang request, and per MCP call (httpx2: the MCP client's), otherwise
                "httpx": {"level": "WARNING"}, "httpx2": {"level": "WARNING"}, "mcp": {"level": "WARNING"}},
}
ASYNCLM_PYTHON_TOOL_MODULES = env.list("ASYNCLM_PYTHON_TOOL_MODULES", ["workers.toolbox"])
ASYNCLM_WORKER_MAX_RESULT_BYTES = env.int("ASYNCLM_WORKER_MAX_RESULT_BYTES", 1_000_000, min=1000)
ASYNCLM_HTTP_TOOL_HOSTS = env.list("ASYNCLM_HTTP_TOOL_HOSTS", ["127.0.0.1", "localhost"])
# MCP servers: streamable HTTP servers on these hosts ("host" for any port, or "host:port"), and
# stdio servers started from these commands only (name=command line; the admin picks a name).
ASYNCLM_MCP_HOSTS = env.list("ASYNCLM_MCP_HOSTS", ["127.0.0.1", "localhost"])
ASYNCLM_MCP_STDIO_COMMANDS = env.mapping("ASYNCLM_MCP_STDIO_COMMANDS", {})
